"""Sending a queued run to a GPU queue: the job message (evaluator/messages.py) built from the
run, published by task name. The web side never imports the GPU task's code: it lives in the GPU
worker's own application (evaluator/worker.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone

from evaluator.messages import EVALUATE_TASK, EvaluationJob
from leaderboard.celery import app
from leaderboard.evaluations.models import EvaluationRun, RunState


def send_run(run_id: int, attempt: int) -> bool:
    """Publish the evaluation message of a queued run; False when it is no longer queued."""
    run = (
        EvaluationRun.objects.select_related("submission__repository")
        .filter(pk=run_id, attempt=attempt, state=RunState.QUEUED)
        .first()
    )
    if run is None:
        return False
    # The limits travel in the message (Celery's sender decides them), so they are the web
    # side's TRELLIS_EVAL_*_TIME_LIMIT whatever a GPU worker's own settings say.
    app.send_task(
        EVALUATE_TASK,
        args=[build_job(run)],
        queue=run.queue,
        soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        time_limit=settings.CELERY_TASK_TIME_LIMIT,
    )
    EvaluationRun.objects.filter(pk=run_id, attempt=attempt).update(sent_at=timezone.now())
    return True


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
        "artifact_root": str(settings.TRELLIS_ARTIFACT_ROOT),
        "limit": settings.TRELLIS_EVAL_LIMIT or None,
    }
    # Validated here too: a job the schema refuses is a bug on this side, better found now.
    return EvaluationJob.model_validate(job).to_message()
