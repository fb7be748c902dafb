"""What an operator's probe asks: is the database up, is the broker up, how many messages wait on
each queue, and when did a worker last report. One function, `check()`, answers it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from leaderboard import broker
from leaderboard.evaluations.models import EvaluationRun, RunState

BROKER_TIMEOUT = 3.0  # seconds; a probe must answer well inside a load balancer's own timeout


@dataclass
class Health:
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: dict[str, int | None] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)

    @property
    def down(self) -> list[str]:
        return [name for name, part in self.components.items() if not part["ok"]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "down" if self.down else "ok",
            "down": self.down,
            **self.components,
            "queues": self.queues,
            "workers": self.workers,
        }


def queue_names() -> list[str]:
    return list(
        dict.fromkeys(
            [
                settings.CELERY_TASK_DEFAULT_QUEUE,
                settings.TRELLIS_QUEUE_SMALL,
                settings.TRELLIS_QUEUE_LARGE,
            ]
        )
    )


def check() -> Health:
    health = Health()
    health.components["database"] = _database()
    broker, depths = _broker(queue_names())
    health.components["broker"] = broker
    health.queues = depths
    if health.components["database"]["ok"]:
        health.workers = _workers()
    return health


def _timed(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        # A broken connection must not stay in this process for the next request.
        connection.close_if_unusable_or_obsolete()
        return {"ok": False, "error": _short(exc)}
    return {"ok": True, "latency_ms": _timed(started)}


def _broker(queues: list[str]) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Connect to the broker with a short timeout and count each queue's waiting messages."""
    started = time.monotonic()
    try:
        depths: dict[str, int | None] = dict(broker.queue_depths(queues, BROKER_TIMEOUT))
    except broker.BrokerUnreachable as exc:
        return {"ok": False, "error": _short(exc)}, dict.fromkeys(queues)
    return {"ok": True, "latency_ms": _timed(started)}, depths


def _workers() -> dict[str, Any]:
    """The newest heartbeat any worker sent for a run (progress doubles as the heartbeat), and
    how many runs are in flight. An idle deployment has an old heartbeat: that alone is no
    fault, so it does not turn the status to down."""
    newest = EvaluationRun.objects.aggregate(newest=Max("heartbeat_at"))["newest"]
    age = round((timezone.now() - newest).total_seconds(), 1) if newest else None
    running = EvaluationRun.objects.filter(state=RunState.RUNNING).count()
    queued = EvaluationRun.objects.filter(state=RunState.QUEUED).count()
    return {"newest_heartbeat_age_seconds": age, "running_runs": running, "queued_runs": queued}


def _short(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, broker.BrokerUnreachable) else f"{type(exc).__name__}: {exc}"
    text = text.strip()
    return text if len(text) <= 200 else text[:199] + "…"
