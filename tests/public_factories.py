"""Builders for the public views' tests: ranked models on a real suite version, in one call."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from django.utils import timezone

from leaderboard.catalog.models import LineageEdge, Relation, Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.public.services import refresh_entries_for
from leaderboard.submissions.models import ModelType, Precision, Submission

# The suite the tests rank on: shipped by the evaluator, never edited once shipped.
SUITE, VERSION = "open-llm-v1", "1"
TASKS = ("arc_challenge", "hellaswag", "mmlu", "winogrande")
BASELINES = {"arc_challenge": 0.25, "hellaswag": 0.25, "mmlu": 0.25, "winogrande": 0.5}
FEWSHOT = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "winogrande": 5}
METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "winogrande": "acc"}


def repository(repo_id: str, *, kind: str = RepositoryKind.MODEL, **fields: Any) -> Repository:
    repo, _ = Repository.objects.get_or_create(
        kind=kind,
        repo_id=repo_id,
        defaults={"license": fields.pop("license", "apache-2.0"), "lineage_resolved": True}
        | fields,
    )
    return repo


def edge(child: Repository, parent: Repository, relation: str = Relation.FINE_TUNE) -> None:
    LineageEdge.objects.create(child=child, parent=parent, relation=relation)


def ranked(
    repo_id: str,
    scores: dict[str, float] | float,
    *,
    stderr: float | None = 0.01,
    model_type: str = ModelType.FINE_TUNED,
    precision: str = Precision.BFLOAT16,
    parameter_count: int = 1_000_000_000,
    license: str = "apache-2.0",
    merge_method: str = "",
    is_synthetic: bool = False,
    created_at: datetime | None = None,
    card_text: str = "---\nlicense: apache-2.0\n---\n# A model\n\nIt is a model.\n",
    payload: dict[str, Any] | None = None,
    artifact_path: str = "",
    version: str = VERSION,
    refresh: bool = True,
) -> Submission:
    """A model with one submission and one finished run on the test suite, already ranked.
    `scores` is one value for every task, or a value per task (0..1)."""
    repo = repository(repo_id, license=license, is_synthetic=is_synthetic)
    values = scores if isinstance(scores, dict) else dict.fromkeys(TASKS, scores)
    revision = hashlib.sha1(f"{repo_id}:{precision}:{version}".encode()).hexdigest()
    submission = Submission.objects.create(
        repository=repo,
        requested_revision="main",
        revision=revision,
        precision=precision,
        model_type=model_type,
        parameter_count=parameter_count,
        license=license,
        card_text=card_text,
        merge_method=merge_method,
        is_synthetic=is_synthetic,
        state="finished",
    )
    if created_at is not None:
        Submission.objects.filter(pk=submission.pk).update(created_at=created_at)
        submission.refresh_from_db()
    run = EvaluationRun.objects.create(
        submission=submission,
        suite_name=SUITE,
        suite_version=version,
        state=RunState.FINISHED,
        finished_at=timezone.now(),
        payload=payload,
        artifact_path=artifact_path,
        is_synthetic=is_synthetic,
    )
    TaskScore.objects.bulk_create(
        TaskScore(
            run=run,
            task=task,
            metric=METRIC[task],
            value=value,
            stderr=stderr,
            n_samples=1000,
            num_fewshot=FEWSHOT[task],
        )
        for task, value in values.items()
    )
    if refresh:
        refresh_entries_for([submission.pk])
    return submission


def flag(target: Repository, maintainer: Any, kind: str = "contamination") -> None:
    """Confirm a flag on `target` through the integrity services (descendants become tainted)."""
    from leaderboard.integrity.services import file_report, resolve

    filed = file_report(
        reporter=None, target=target, kind=kind, evidence="Test items appear in its training data."
    )
    resolve(filed.report.pk, "confirm", "Confirmed from the overlap report.", maintainer)


def report(target: Repository, kind: str = "contamination") -> None:
    """An open report on `target` (it and its descendants are under review)."""
    from leaderboard.integrity.services import file_report

    file_report(reporter=None, target=target, kind=kind, evidence="Suspicious jump on MMLU.")
