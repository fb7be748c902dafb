"""What the public evaluation queue shows (/queue/, GET /api/v1/queue): pending runs in the
order they will start (priority.py, per queue), running runs with their progress, and the
recently finished and failed ones (with the reason). One dict shape feeds the page and the API."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from leaderboard.evaluations.models import EvaluationRun, RunState, Vote
from leaderboard.evaluations.runs import position_order
from leaderboard.evaluations.serializers import elapsed_seconds

RECENT = timedelta(days=7)
RECENT_LIMIT = 50


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _base(run: EvaluationRun, votes: dict[int, int]) -> dict[str, Any]:
    submission = run.submission
    return {
        "run_id": run.pk,
        "submission_id": submission.pk,
        "repo_id": submission.repository.repo_id,
        "revision": submission.revision,
        "precision": submission.precision,
        "submitter": submission.submitter.get_username() if submission.submitter else None,
        "suite": {"name": run.suite_name, "version": run.suite_version},
        "queue": run.queue,
        "attempt": run.attempt,
        "votes": votes.get(submission.pk, 0),
        "boost": run.boost,
        "enqueued_at": _iso(run.enqueued_at),
    }


def queue_to_dict(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    runs = EvaluationRun.objects.select_related("submission__repository", "submission__submitter")
    order = position_order()
    queued = runs.in_bulk([run_id for run_id, _ in order])
    running = list(runs.filter(state=RunState.RUNNING).order_by("started_at", "pk"))
    since = now - RECENT
    finished = list(
        runs.filter(state=RunState.FINISHED, finished_at__gte=since).order_by("-finished_at")[
            :RECENT_LIMIT
        ]
    )
    failed = list(
        runs.filter(state=RunState.FAILED, finished_at__gte=since).order_by("-finished_at")[
            :RECENT_LIMIT
        ]
    )
    wanted = {run.submission_id for run in [*queued.values(), *running, *finished, *failed]}
    votes = dict(
        Vote.objects.filter(submission_id__in=wanted)
        .values_list("submission_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    positions: dict[str, int] = {}
    pending = []
    for run_id, queue in order:
        positions[queue] = positions.get(queue, 0) + 1
        run = queued[run_id]
        pending.append(
            {**_base(run, votes), "position": positions[queue], "sent": run.sent_at is not None}
        )
    return {
        "pending": pending,
        "running": [
            {
                **_base(run, votes),
                "started_at": _iso(run.started_at),
                "worker": run.worker or None,
                "progress": {
                    "done": run.progress_done,
                    "total": run.progress_total,
                    "share": (
                        round(run.progress_done / run.progress_total, 4)
                        if run.progress_total
                        else None
                    ),
                },
                "elapsed_seconds": elapsed_seconds(run, now),
            }
            for run in running
        ],
        "finished": [
            {
                **_base(run, votes),
                "finished_at": _iso(run.finished_at),
                "elapsed_seconds": elapsed_seconds(run),
                "energy_wh": run.energy_wh,
                "co2_grams": run.co2_grams,
            }
            for run in finished
        ],
        "failed": [
            {
                **_base(run, votes),
                "finished_at": _iso(run.finished_at),
                "failure": {"code": run.failure_code, "reason": run.failure_reason},
            }
            for run in failed
        ],
    }


def pending_count() -> int:
    return EvaluationRun.objects.filter(state__in=[RunState.QUEUED, RunState.RUNNING]).count()
