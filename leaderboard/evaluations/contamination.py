"""The contamination signals of a finished run (docs/contamination.md): gathers what the signals
read — the run's reference sets, the same numbers of the other models on its suite version, its
declared parents' runs and stored scores — and hands them to `evaluator.contamination`.
Recording what fired is integrity's (`integrity.signals.record_findings`); flow calls both after
an ingest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from evaluator.contamination import (
    Finding,
    Score,
    Thresholds,
    family_findings,
    lineage_findings,
    nearest_relatives,
    reference_findings,
    score_findings,
)
from evaluator.suites import UnknownSuite, load_suite
from leaderboard.catalog.models import LineageEdge, LineageStatus, Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore


def thresholds() -> Thresholds:
    """The thresholds of the signals, from settings (README, "Configuration")."""
    return Thresholds(
        alpha=settings.TRELLIS_CONTAMINATION_ALPHA,
        min_effect=settings.TRELLIS_CONTAMINATION_MIN_EFFECT,
        min_difference=settings.TRELLIS_CONTAMINATION_MIN_DIFFERENCE,
        jump_z=settings.TRELLIS_CONTAMINATION_JUMP_Z,
        bucket_z=settings.TRELLIS_CONTAMINATION_BUCKET_Z,
        min_population=settings.TRELLIS_CONTAMINATION_MIN_POPULATION,
        min_relatives=settings.TRELLIS_CONTAMINATION_MIN_RELATIVES,
    )


@dataclass
class Assessment:
    """What one run's signals found, and what they could not test (said on the model page)."""

    run_id: int
    repository_id: int
    findings: list[Finding] = field(default_factory=list)
    population: int = 0
    parents_tested: list[str] = field(default_factory=list)
    relatives: list[str] = field(default_factory=list)


def _newest_per_repository(runs: Any) -> dict[int, EvaluationRun]:
    newest: dict[int, EvaluationRun] = {}
    for run in runs.order_by("submission__repository_id", "-finished_at", "-pk"):
        newest.setdefault(run.submission.repository_id, run)
    return newest


def _relatives(repository: Repository, candidates: list[int], minimum: int) -> list[int]:
    """The nearest relatives of `repository` among `candidates` in the models' lineage (a shared
    training dataset does not make a family): `evaluator.contamination.nearest_relatives`."""
    parents_of: dict[int, list[int]] = {}
    edges = LineageEdge.objects.filter(
        parent__kind=RepositoryKind.MODEL, child__kind=RepositoryKind.MODEL
    ).values_list("child_id", "parent_id")
    for child, parent in edges:
        parents_of.setdefault(child, []).append(parent)
    return nearest_relatives(repository.pk, parents_of, candidates, minimum)


def _scores(run: EvaluationRun) -> dict[str, Score]:
    return {s.task: Score(s.value, s.stderr) for s in run.scores.all()}


def assess(run_id: int, size_bucket: Callable[[int], str] | None = None) -> Assessment:
    """Every contamination statistic of run `run_id` (fired or not); nothing is written.
    `size_bucket` (parameter count -> bucket label, the plots' buckets: the caller passes it, as
    they sit in a higher layer) adds the size-outlier test against the same population."""
    run = EvaluationRun.objects.select_related("submission__repository").get(pk=run_id)
    repository = run.submission.repository
    result = Assessment(run.pk, repository.pk)
    if run.state != RunState.FINISHED or not run.payload:
        return result
    mine = run.payload.get("references") or []
    finished = EvaluationRun.objects.filter(
        state=RunState.FINISHED, suite_name=run.suite_name, suite_version=run.suite_version
    ).select_related("submission__repository")
    # The curve is drawn from models nobody suspects: no synthetic rows, nothing flagged or
    # tainted, not the model itself.
    others = _newest_per_repository(
        finished.filter(is_synthetic=False, submission__repository__is_synthetic=False)
        .exclude(submission__repository=repository)
        .exclude(submission__repository__status__in=[LineageStatus.FLAGGED, LineageStatus.TAINTED])
    )
    population = [o.payload.get("references") or [] for o in others.values() if o.payload]
    buckets: dict[str, list[float]] = {}
    if size_bucket is not None:
        mine_bucket = size_bucket(run.submission.parameter_count)
        peers = [
            o.pk
            for o in others.values()
            if size_bucket(o.submission.parameter_count) == mine_bucket
        ]
        for task, value in TaskScore.objects.filter(run_id__in=peers).values_list("task", "value"):
            buckets.setdefault(task, []).append(value)
    result.population = sum(1 for p in population if p)
    parent_ids = list(
        LineageEdge.objects.filter(child=repository).values_list("parent_id", flat=True)
    )
    parent_runs = _newest_per_repository(finished.filter(submission__repository_id__in=parent_ids))
    names = dict(Repository.objects.filter(pk__in=parent_ids).values_list("pk", "repo_id"))
    parent_refs = {
        names[pk]: p.payload.get("references") or [] for pk, p in parent_runs.items() if p.payload
    }
    result.parents_tested = sorted(name for name, refs in parent_refs.items() if refs)
    try:
        suite = load_suite(run.suite_name, run.suite_version)
        chance = {task.key: task.random_baseline for task in suite.tasks}
    except UnknownSuite:
        chance = {}
    limits = thresholds()
    measured = {
        pk: refs
        for pk, other in others.items()
        if (refs := (other.payload or {}).get("references"))
    }
    relative_refs = {
        others[pk].submission.repository.repo_id: measured[pk]
        for pk in _relatives(repository, list(measured), limits.min_relatives)
    }
    result.relatives = sorted(relative_refs)
    result.findings = (
        reference_findings(mine, population, chance, limits)
        + lineage_findings(mine, parent_refs, limits)
        + family_findings(mine, relative_refs, limits)
        + score_findings(
            _scores(run), {names[pk]: _scores(p) for pk, p in parent_runs.items()}, buckets, limits
        )
    )
    return result
