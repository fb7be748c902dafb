"""Sending queued runs to a GPU queue: the job message (evaluator/messages.py) built from the
run, published by task name. The web side never imports the GPU task's code: it lives in the GPU
worker's own application (evaluator/worker.py).

The database decides what is sent (`dispatch`): per queue, at most TRELLIS_DISPATCH_IN_FLIGHT
runs are sent and not yet ended; the others stay queued, unsent, and leave in priority order
(priority.py) as those end. leaderboard.flow calls `dispatch` when a worker reports a start, a
result or a failure and at each reconciler pass; a run created or queued again is dispatched
when its transaction commits."""

from __future__ import annotations

import logging
import zlib
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from evaluator.messages import EVALUATE_TASK, EvaluationJob
from leaderboard.celery import app
from leaderboard.evaluations.artifacts import artifact_store
from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.evaluations.priority import in_start_order

logger = logging.getLogger(__name__)


def in_flight(queue: str) -> int:
    """Runs of `queue` handed to the broker and not ended: sent and waiting, or running."""
    return (
        EvaluationRun.objects.filter(queue=queue)
        .filter(Q(state=RunState.QUEUED, sent_at__isnull=False) | Q(state=RunState.RUNNING))
        .count()
    )


def dispatch(queues: list[str] | None = None) -> list[int]:
    """Send the next runs of each queue (all queues with unsent runs by default) while it has
    room. Returns the ids sent, in the order they were sent.

    Each queue's pick is claimed in a short transaction (its unsent runs' `sent_at` set by a
    conditional UPDATE, under a per-queue lock on PostgreSQL so two dispatchers never both fill
    the last slot); the publish happens after commit, and a publish that fails gives the claim
    back, so the run is picked again by the next call."""
    if queues is None:
        queues = list(
            EvaluationRun.objects.filter(state=RunState.QUEUED, sent_at__isnull=True)
            .values_list("queue", flat=True)
            .distinct()
            .order_by()
        )
    sent: list[int] = []
    for queue in sorted(set(queues)):
        for run_id, attempt, claimed_at in _claim(queue):
            try:
                _publish(
                    EvaluationRun.objects.select_related("submission__repository").get(pk=run_id)
                )
            except Exception:
                logger.exception("run %s: publish failed; the next dispatch tries again", run_id)
                EvaluationRun.objects.filter(
                    pk=run_id, attempt=attempt, state=RunState.QUEUED, sent_at=claimed_at
                ).update(sent_at=None)
                continue
            sent.append(run_id)
    return sent


def _claim(queue: str) -> list[tuple[int, int, Any]]:
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                key = zlib.crc32(f"trellis-dispatch:{queue}".encode())
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        room = settings.TRELLIS_DISPATCH_IN_FLIGHT - in_flight(queue)
        if room <= 0:
            return []
        unsent = EvaluationRun.objects.filter(
            state=RunState.QUEUED, queue=queue, sent_at__isnull=True
        )
        picked = list(in_start_order(unsent).values_list("pk", "attempt")[:room])
        claimed = []
        for run_id, attempt in picked:
            if (
                EvaluationRun.objects.filter(
                    pk=run_id, attempt=attempt, state=RunState.QUEUED, sent_at__isnull=True
                ).update(sent_at=now)
                == 1
            ):
                claimed.append((run_id, attempt, now))
    return claimed


def send_run(run_id: int, attempt: int) -> bool:
    """Publish the evaluation message of a queued run again, whatever the bound (the reconciler
    replaces a message the broker lost); False when it is no longer queued."""
    run = (
        EvaluationRun.objects.select_related("submission__repository")
        .filter(pk=run_id, attempt=attempt, state=RunState.QUEUED)
        .first()
    )
    if run is None:
        return False
    _publish(run)
    EvaluationRun.objects.filter(pk=run_id, attempt=attempt).update(sent_at=timezone.now())
    return True


def _publish(run: EvaluationRun) -> None:
    # The limits travel in the message (Celery's sender decides them), so they are the web
    # side's TRELLIS_EVAL_*_TIME_LIMIT whatever a GPU worker's own settings say.
    app.send_task(
        EVALUATE_TASK,
        args=[build_job(run)],
        queue=run.queue,
        soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        time_limit=settings.CELERY_TASK_TIME_LIMIT,
    )


def build_job(run: EvaluationRun) -> dict[str, Any]:
    """The self-contained job a GPU worker needs: what to load and run, no database."""
    submission = run.submission
    local = settings.TRELLIS_MODEL_SOURCE == "local"
    job = {
        "run_id": run.pk,
        "attempt": run.attempt,
        "repo_id": submission.repository.repo_id,
        "revision": submission.revision,
        "precision": str(submission.precision),
        "suite_name": run.suite_name,
        "suite_version": run.suite_version,
        "model_source": settings.TRELLIS_MODEL_SOURCE,
        "model_path": str(settings.TRELLIS_MODEL_ROOT) if local else None,
        "data_source": settings.TRELLIS_DATA_SOURCE,
        "data_root": settings.TRELLIS_DATA_ROOT or None,
        "artifact_store": artifact_store().location,
        "limit": settings.TRELLIS_EVAL_LIMIT or None,
    }
    # Validated here too: a job the schema refuses is a bug on this side, better found now.
    return EvaluationJob.model_validate(job).to_message()
