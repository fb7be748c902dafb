"""The one JSON shape of an evaluation run: the submission page, the submission API and the
public model API use it. Scores are percentages, as everywhere in the API (docs/api.md)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from django.urls import reverse
from django.utils import timezone
from ninja import Schema

from evaluator.suites import SuiteError, UnknownSuite, load_suite
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.evaluations.runs import queue_position
from leaderboard.submissions.models import Submission
from leaderboard.submissions.serializers import SubmissionOut, submission_to_dict

CONFIGURATION_KEYS = (
    "dtype",
    "device",
    "batch_size",
    "backend",
    "versions",
    "duration_seconds",
    "loglikelihood_requests",
)


# Percentages to 4 decimals: far below any task's standard error.
DECIMALS = 4


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DECIMALS)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, DECIMALS)


@functools.lru_cache(maxsize=64)
def chance_rates(suite_name: str, version: str) -> dict[str, float] | None:
    """Each task of a suite version with its chance rate, as the evaluator defines it; None for
    a version it no longer ships (its chance rates are unknown and taken as 0, as the ranking
    takes them)."""
    try:
        suite = load_suite(suite_name, version)
    except (UnknownSuite, SuiteError):
        return None
    if str(suite.version) != version:
        return None
    return {task.key: float(task.random_baseline) for task in suite.tasks}


def _normalized(value: float, chance: float) -> float:
    """Percent of the way from chance (0) to perfect (100); below chance is negative."""
    return 100 * (value - chance) / (1 - chance) if chance < 1 else 0.0


def _scores(run: EvaluationRun) -> tuple[list[dict[str, Any]], float | None, float | None]:
    """The run's task scores, and its averages (raw and normalized) when every task of the
    suite version has a score."""
    chance = chance_rates(run.suite_name, run.suite_version)
    scores: list[TaskScore] = list(run.scores.all())
    items = []
    for score in scores:
        baseline = (chance or {}).get(score.task, 0.0)
        items.append(
            {
                "task": score.task,
                "metric": score.metric,
                "num_fewshot": score.num_fewshot,
                "n_samples": score.n_samples,
                "random_baseline": _pct(baseline),
                "value": _pct(score.value),
                "stderr": _pct(score.stderr),
                "normalized": _round(_normalized(score.value, baseline)),
            }
        )
    tasks = set(chance) if chance is not None else {score.task for score in scores}
    scored = {score.task: score.value for score in scores}
    if not tasks or not tasks <= scored.keys():
        return items, None, None
    average = sum(100 * scored[task] for task in tasks) / len(tasks)
    normalized = sum(
        _normalized(scored[task], (chance or {}).get(task, 0.0)) for task in tasks
    ) / len(tasks)
    return items, _round(average), _round(normalized)


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
    scores, average, average_normalized = _scores(run) if finished else ([], None, None)
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
        "scores": scores,
        "average": average,
        "average_normalized": average_normalized,
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
        "boost": run.boost,
        "energy": energy_to_dict(run),
        "bundle_url": (
            reverse("evaluations:bundle", args=[run.pk])
            if finished and payload.get("reproduce")
            else None
        ),
    }


def energy_to_dict(run: EvaluationRun) -> dict[str, Any] | None:
    """The run's energy, its carbon and how the energy was obtained (docs/evaluation.md)."""
    if run.energy_wh is None:
        return None
    return {
        "wh": _round(run.energy_wh),
        "co2_grams": _round(run.co2_grams),
        "method": run.energy_method,
        "detail": ((run.payload or {}).get("energy") or {}).get("detail"),
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
    num_fewshot: int
    n_samples: int
    random_baseline: float
    value: float
    stderr: float | None
    normalized: float


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
    average: float | None
    average_normalized: float | None
    reproduce: dict[str, Any] | None
    configuration: dict[str, Any] | None
    artifact: dict[str, Any] | None
    requeued_by: str | None
    boost: int
    energy: dict[str, Any] | None
    bundle_url: str | None


class SubmissionDetailOut(SubmissionOut):
    runs: list[RunOut]
