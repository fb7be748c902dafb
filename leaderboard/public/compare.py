"""Comparing two to six models on one suite version: the per-task differences against the first
model with their combined standard errors, and how each pair relates in the lineage graph."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from leaderboard.catalog.lineage import ancestor_distances
from leaderboard.catalog.models import Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.problems import Refusal
from leaderboard.public.detail import RunResult, TaskResult, run_results
from leaderboard.public.models import RankingEntry
from leaderboard.public.query import RankingQuery
from leaderboard.public.suites import SuiteView, suite_view

MIN_COMPARE, MAX_COMPARE = 2, 6
# How far up the graph the compare page looks for a common ancestor.
ANCESTOR_DEPTH = 24


@dataclass
class Compared:
    repository: Repository
    entry: RankingEntry
    result: RunResult


@dataclass
class Difference:
    key: str
    diff: float | None
    stderr: float | None

    @property
    def significant(self) -> bool:
        """Outside 1.96 combined standard errors: unlikely to be noise at the 95% level."""
        if self.diff is None or not self.stderr:
            return False
        return abs(self.diff) > 1.96 * self.stderr


@dataclass
class Relationship:
    a: str
    b: str
    text: str
    common_ancestor: str | None = None
    shared_datasets: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    models: list[Compared]
    view: SuiteView
    differences: list[tuple[Compared, list[Difference], Difference]]
    relationships: list[Relationship]


def parse_models_param(raw: str) -> list[str]:
    """`models=a/b,c/d` (also repeated `models=`), in order, duplicates dropped; checked."""
    names = chosen_models(raw)
    if not MIN_COMPARE <= len(names) <= MAX_COMPARE:
        raise Refusal.one(
            "invalid_count",
            "models",
            f"Compare {MIN_COMPARE} to {MAX_COMPARE} models, given as "
            f"models=org/name,org/name (got {len(names)}).",
        )
    return names


def chosen_models(raw: str) -> list[str]:
    """The models named so far (for the picker), in order, duplicates dropped, unchecked."""
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    return names


SEARCH_LIMIT = 10


def search_models(text: str, query: RankingQuery, exclude: list[str]) -> list[str]:
    """Ranked models of the query's suite version whose name contains `text` (the compare
    page's picker), names first that start with it, at most SEARCH_LIMIT."""
    text = text.strip()
    if not text:
        return []
    names = (
        RankingEntry.objects.filter(
            suite_name=query.suite, suite_version=query.version, repo_id__icontains=text
        )
        .exclude(repo_id__in=exclude)
        .values_list("repo_id", flat=True)
        .distinct()
        .order_by("repo_id")[: SEARCH_LIMIT * 5]
    )
    lowered = text.lower()
    ordered = sorted(
        names,
        key=lambda name: (
            not name.lower().startswith(lowered),
            not name.split("/", 1)[-1].lower().startswith(lowered),
            name,
        ),
    )
    return ordered[:SEARCH_LIMIT]


def compare(repo_ids: list[str], query: RankingQuery) -> Comparison:
    """The best-scoring submission of each model on the query's suite version, the per-task
    differences against the first model, and how each pair is related in the lineage graph."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise Refusal.one(
            "unknown_version", "version", f"Suite '{query.suite}' has no version '{query.version}'."
        )
    average = "-average_normalized" if query.normalized else "-average"
    entries: dict[str, RankingEntry] = {}
    for entry in RankingEntry.objects.filter(
        suite_name=view.name, suite_version=view.version, repo_id__in=repo_ids
    ).order_by("repo_id", average, "-id"):
        entries.setdefault(entry.repo_id, entry)
    missing = [repo_id for repo_id in repo_ids if repo_id not in entries]
    if missing:
        raise Refusal.one(
            "not_ranked",
            "models",
            f"{', '.join(missing)}: no finished evaluation on {view.name} @ {view.version}; "
            "check the name or pick another version.",
        )
    runs = {
        run.pk: run
        for run in EvaluationRun.objects.filter(pk__in=[e.run_id for e in entries.values()])
    }
    repositories = {r.repo_id: r for r in Repository.objects.filter(repo_id__in=repo_ids)}
    results = {r.run.pk: r for r in run_results(list(runs.values()))}
    models = [
        Compared(repositories[repo_id], entries[repo_id], results[entries[repo_id].run_id])
        for repo_id in repo_ids
    ]
    reference = models[0]
    differences = [
        (
            other,
            [
                _difference(ref_task, task, query.normalized)
                for ref_task, task in zip(reference.result.tasks, other.result.tasks, strict=True)
            ],
            _average_difference(reference.result, other.result, query.normalized),
        )
        for other in models[1:]
    ]
    return Comparison(
        models=models,
        view=view,
        differences=differences,
        relationships=relationships([m.repository for m in models]),
    )


def _difference(a: TaskResult, b: TaskResult, normalized: bool) -> Difference:
    value_a, err_a = a.shown(normalized)
    value_b, err_b = b.shown(normalized)
    if value_a is None or value_b is None:
        return Difference(a.key, None, None)
    combined = math.hypot(err_a, err_b) if err_a is not None and err_b is not None else None
    return Difference(a.key, value_b - value_a, combined)


def _average_difference(a: RunResult, b: RunResult, normalized: bool) -> Difference:
    """Difference of the averages; tasks are independent samples, so the stderr of a mean of
    n tasks is sqrt(sum of squared stderrs) / n."""
    avg_a = a.average_normalized if normalized else a.average
    avg_b = b.average_normalized if normalized else b.average
    if avg_a is None or avg_b is None:
        return Difference("average", None, None)
    errors = [t.shown(normalized)[1] for t in (*a.tasks, *b.tasks)]
    if any(e is None for e in errors):
        return Difference("average", avg_b - avg_a, None)
    combined = math.sqrt(sum(e * e for e in errors if e is not None)) / len(a.tasks)
    return Difference("average", avg_b - avg_a, combined)


def ancestors(start: Repository) -> dict[int, tuple[int, Repository]]:
    """Every node above `start` with its distance (shortest number of edges)."""
    distances = ancestor_distances(start, max_depth=ANCESTOR_DEPTH)
    nodes = Repository.objects.in_bulk(list(distances))
    return {pk: (depth, nodes[pk]) for pk, depth in distances.items()}


def relationships(repositories: Iterable[Repository]) -> list[Relationship]:
    """For each pair: direct descent, else the nearest common model ancestor, plus any
    training datasets both declare (directly or through ancestors)."""
    repos = list(repositories)
    above = {repo.pk: ancestors(repo) for repo in repos}
    result = []
    for i, a in enumerate(repos):
        for b in repos[i + 1 :]:
            result.append(_relationship(a, b, above[a.pk], above[b.pk]))
    return result


def _relationship(
    a: Repository,
    b: Repository,
    above_a: dict[int, tuple[int, Repository]],
    above_b: dict[int, tuple[int, Repository]],
) -> Relationship:
    shared = sorted(
        above_a[pk][1].repo_id
        for pk in above_a.keys() & above_b.keys()
        if above_a[pk][1].kind == RepositoryKind.DATASET
    )
    if b.pk in above_a:
        steps = above_a[b.pk][0]
        return Relationship(a.repo_id, b.repo_id, _descends(a, b, steps), b.repo_id, shared)
    if a.pk in above_b:
        steps = above_b[a.pk][0]
        return Relationship(a.repo_id, b.repo_id, _descends(b, a, steps), a.repo_id, shared)
    common = [
        (above_a[pk][0] + above_b[pk][0], above_a[pk][1].repo_id, pk)
        for pk in above_a.keys() & above_b.keys()
        if above_a[pk][1].kind == RepositoryKind.MODEL
    ]
    if not common:
        text = "no common model ancestor"
        if shared:
            text += f"; both trained on {', '.join(shared)}"
        return Relationship(a.repo_id, b.repo_id, text, None, shared)
    _total, name, pk = min(common)
    text = (
        f"common ancestor {name} ({_steps(above_a[pk][0])} above {a.repo_id}, "
        f"{_steps(above_b[pk][0])} above {b.repo_id})"
    )
    return Relationship(a.repo_id, b.repo_id, text, name, shared)


def _descends(child: Repository, parent: Repository, steps: int) -> str:
    return f"{child.repo_id} descends from {parent.repo_id} ({_steps(steps)})"


def _steps(n: int) -> str:
    return "1 step" if n == 1 else f"{n} steps"
