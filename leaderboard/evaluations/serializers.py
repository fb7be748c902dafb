"""The one JSON shape of an evaluation run: the submission page, the API and exports use it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.urls import reverse
from django.utils import timezone
from ninja import Schema

from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.evaluations.services import queue_position
from leaderboard.submissions.models import Submission
from leaderboard.submissions.serializers import SubmissionOut, submission_to_dict

CONFIGURATION_KEYS = (
    "dtype",
    "device",
    "batch_size",
    "versions",
    "duration_seconds",
    "loglikelihood_requests",
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def elapsed_seconds(run: EvaluationRun, now: datetime | None = None) -> float | None:
    """Running: since the worker started; finished or failed: how long it took."""
    if run.started_at is None:
        return None
    end = run.finished_at if run.state in (RunState.FINISHED, RunState.FAILED) else None
    end = end or now or timezone.now()
    return round(max((end - run.started_at).total_seconds(), 0.0), 1)


def run_to_dict(run: EvaluationRun) -> dict[str, Any]:
    payload = run.payload or {}
    finished = run.state == RunState.FINISHED
    total = run.progress_total
    return {
        "id": run.pk,
        "suite": {"name": run.suite_name, "version": run.suite_version},
        "state": run.state,
        "queue": run.queue,
        "attempt": run.attempt,
        "position": queue_position(run),
        "progress": {
            "done": run.progress_done,
            "total": total,
            "share": round(run.progress_done / total, 4) if total else None,
        },
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "elapsed_seconds": elapsed_seconds(run),
        "worker": run.worker or None,
        "failure": (
            {"code": run.failure_code, "reason": run.failure_reason, "log_tail": run.log_tail}
            if run.state == RunState.FAILED
            else None
        ),
        "scores": [
            {
                "task": score.task,
                "metric": score.metric,
                "value": score.value,
                "stderr": score.stderr,
                "n_samples": score.n_samples,
                "num_fewshot": score.num_fewshot,
            }
            for score in run.scores.all()
        ]
        if finished
        else [],
        "reproduce": payload.get("reproduce") if finished else None,
        "configuration": (
            {key: payload.get(key) for key in CONFIGURATION_KEYS} if finished else None
        ),
        "artifact": (
            {
                "url": reverse("evaluations:artifact", args=[run.pk]),
                "sha256": run.artifact_sha256,
                "size": (payload.get("artifact") or {}).get("size"),
            }
            if finished and run.artifact_path
            else None
        ),
        "requeued_by": run.requeued_by.get_username() if run.requeued_by else None,
    }


def submission_detail_to_dict(submission: Submission) -> dict[str, Any]:
    """A submission with its evaluation runs, newest first (runs[0] is the one that counts)."""
    runs = submission.runs.select_related("requeued_by").prefetch_related("scores")
    return {
        **submission_to_dict(submission),
        "runs": [run_to_dict(run) for run in runs.order_by("-created_at", "-pk")],
    }


class ScoreOut(Schema):
    task: str
    metric: str
    value: float
    stderr: float | None
    n_samples: int
    num_fewshot: int


class RunOut(Schema):
    """OpenAPI description of run_to_dict's result."""

    id: int
    suite: dict[str, str]
    state: str
    queue: str
    attempt: int
    position: int | None
    progress: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    elapsed_seconds: float | None
    worker: str | None
    failure: dict[str, str] | None
    scores: list[ScoreOut]
    reproduce: dict[str, Any] | None
    configuration: dict[str, Any] | None
    artifact: dict[str, Any] | None
    requeued_by: str | None


class SubmissionDetailOut(SubmissionOut):
    runs: list[RunOut]
