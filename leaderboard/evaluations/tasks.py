"""Celery tasks of the evaluation pipeline, a table of contents: one task on the GPU queues that
only runs the evaluator, and trusted web-side tasks that record what GPU workers report.

Every task takes ids and plain dicts; the rules live in services.py and worker.py."""

from __future__ import annotations

from functools import partial
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Task, shared_task
from django.conf import settings

from leaderboard.celery import app
from leaderboard.evaluations import services
from leaderboard.evaluations.worker import localize_job, run_evaluation

# Web-side tasks are short and idempotent; their limits are far below an evaluation's.
WEB_TASK = {"ignore_result": True, "soft_time_limit": 240, "time_limit": 300}


class EvaluationTask(Task):
    """The GPU task: late acknowledgement, so a worker killed mid-run leaves the message to be
    re-delivered (reject_on_worker_lost); the web side makes the repeat harmless."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The task ended without reporting: the pool killed it at the hard time limit (Celery
        calls this in the worker's main process then), or an exception escaped. Report it, so
        the run fails now with its reason instead of being reaped later. A lost worker is not
        reported: its message is re-delivered."""
        if isinstance(exc, WorkerLostError) or len(args) < 2:
            return
        job, attempt = args[0], args[1]
        if isinstance(exc, TimeLimitExceeded):
            code, message = "time_limit", f"It was stopped at the hard limit of {exc.args[0]} s."
        else:
            code, message = "error", f"{type(exc).__name__}: {exc}"
        tail = "\n".join(str(einfo or "").rstrip().splitlines()[-40:])
        _report(job["run_id"], attempt, "failure", code, message, tail)


@shared_task(bind=True, base=EvaluationTask, name="evaluations.evaluate")
def evaluate(self: Task, job: dict[str, Any], attempt: int) -> str:
    heartbeat = max(5.0, min(120.0, settings.TRELLIS_HEARTBEAT_TIMEOUT / 5))
    send = partial(_report, job["run_id"], attempt)
    local_job = localize_job(
        job,
        artifact_root=settings.TRELLIS_ARTIFACT_ROOT,
        data_root=settings.TRELLIS_DATA_ROOT,
        model_root=settings.TRELLIS_MODEL_ROOT,
    )
    return run_evaluation(
        local_job, self.request.hostname or "unknown", send, heartbeat_interval=heartbeat
    )


_REPORT_TASKS = {
    "started": "evaluations.mark_started",
    "progress": "evaluations.record_progress",
    "result": "evaluations.ingest_result",
    "failure": "evaluations.record_failure",
}


def _report(run_id: int, attempt: int, message: str, *args: Any) -> None:
    """Publish a worker report to the web queue; the GPU side never opens the database."""
    app.send_task(
        _REPORT_TASKS[message],
        args=[run_id, attempt, *args],
        queue=settings.CELERY_TASK_DEFAULT_QUEUE,
    )


@shared_task(name="evaluations.mark_started", **WEB_TASK)
def mark_started(run_id: int, attempt: int, worker_hostname: str) -> bool:
    return services.mark_started(run_id, attempt, worker_hostname)


@shared_task(name="evaluations.record_progress", **WEB_TASK)
def record_progress(run_id: int, attempt: int, done: int, total: int) -> bool:
    return services.record_progress(run_id, attempt, done, total)


@shared_task(name="evaluations.ingest_result", **WEB_TASK)
def ingest_result(run_id: int, attempt: int, payload: dict[str, Any]) -> str:
    return services.ingest_result(run_id, attempt, payload)


@shared_task(name="evaluations.record_failure", **WEB_TASK)
def record_failure(run_id: int, attempt: int, code: str, message: str, log_tail: str) -> bool:
    return services.record_failure(run_id, attempt, code, message, log_tail)


@shared_task(name="evaluations.reconcile", **WEB_TASK)
def reconcile() -> dict[str, list[int]]:
    report = services.reconcile_runs()
    return {"resent": report.resent, "reaped": report.reaped}
