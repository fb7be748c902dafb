"""Evaluation runs: creating, dispatching, tracking and ingesting them. Every rule lives here;
tasks, views and API routes only translate."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.submissions.models import Submission, SubmissionState

logger = logging.getLogger(__name__)


def queue_for(parameter_count: int) -> str:
    """The evaluation queue for a model of this size (GPU memory decides where it can run)."""
    if parameter_count >= settings.TRELLIS_LARGE_MODEL_PARAMETERS:
        return settings.TRELLIS_QUEUE_LARGE
    return settings.TRELLIS_QUEUE_SMALL


def create_run_for(submission: Submission, suite_name: str | None = None) -> EvaluationRun:
    """Create a queued run of `submission` on a suite (default TRELLIS_DEFAULT_SUITE).

    The Celery message leaves only when the surrounding transaction commits, so a worker never
    sees a run id that a rollback erased; if it is lost anyway, the reconciler re-sends it."""
    from evaluator.suites import load_suite

    suite = load_suite(suite_name or settings.TRELLIS_DEFAULT_SUITE)
    run = EvaluationRun.objects.create(
        submission=submission,
        suite_name=suite.name,
        suite_version=str(suite.version),
        state=RunState.QUEUED,
        queue=queue_for(submission.parameter_count),
        enqueued_at=timezone.now(),
    )
    Submission.objects.filter(pk=submission.pk).update(state=SubmissionState.QUEUED)
    submission.state = SubmissionState.QUEUED
    _send_on_commit(run)
    return run


def _send_on_commit(run: EvaluationRun) -> None:
    run_id, attempt = run.pk, run.attempt
    transaction.on_commit(lambda: send_run(run_id, attempt))


def send_run(run_id: int, attempt: int) -> bool:
    """Publish the evaluation message of a queued run; False when it is no longer queued."""
    from leaderboard.evaluations.tasks import evaluate

    run = (
        EvaluationRun.objects.select_related("submission__repository")
        .filter(pk=run_id, attempt=attempt, state=RunState.QUEUED)
        .first()
    )
    if run is None:
        return False
    evaluate.apply_async(args=[build_job(run), attempt], queue=run.queue)
    return True


def build_job(run: EvaluationRun) -> dict[str, Any]:
    """The self-contained job a GPU worker needs: no database, only what to load and run."""
    from evaluator.jobs import EvaluationJob

    submission = run.submission
    repo_id = submission.repository.repo_id
    model_path = (
        str(settings.TRELLIS_MODEL_ROOT / repo_id)
        if settings.TRELLIS_MODEL_SOURCE == "local"
        else None
    )
    job = EvaluationJob(
        run_id=run.pk,
        repo_id=repo_id,
        revision=submission.revision,
        precision=submission.precision,
        suite_name=run.suite_name,
        suite_version=run.suite_version,
        model_source=settings.TRELLIS_MODEL_SOURCE,
        model_path=model_path,
        data_source=settings.TRELLIS_DATA_SOURCE,
        data_root=settings.TRELLIS_DATA_ROOT or None,
        artifact_root=str(settings.TRELLIS_ARTIFACT_ROOT),
    )
    return job.to_dict()
