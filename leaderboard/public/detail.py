"""Model pages and comparisons: every submission and finished run of a repository with its
per-task results, and how several models relate through the lineage graph."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Max, Q

from leaderboard.catalog.models import LineageEdge, Repository, RepositoryKind
from leaderboard.catalog.services import ancestor_distances
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.integrity.status import path_text
from leaderboard.public.models import RankingEntry
from leaderboard.public.services import RankingQuery, Validator
from leaderboard.public.suites import SuiteView, suite_view
from leaderboard.submissions.models import Submission

MIN_COMPARE, MAX_COMPARE = 2, 6
# How far up the graph the compare page looks for a common ancestor.
ANCESTOR_DEPTH = 24


@dataclass
class TaskResult:
    key: str
    lm_eval_task: str
    metric: str
    num_fewshot: int
    n_samples: int | None
    random_baseline: float
    description: str
    value: float | None  # percent
    stderr: float | None  # percent
    normalized: float | None
    normalized_stderr: float | None

    def shown(self, normalized: bool) -> tuple[float | None, float | None]:
        if normalized:
            return self.normalized, self.normalized_stderr
        return self.value, self.stderr


@dataclass
class RunResult:
    run: EvaluationRun
    view: SuiteView | None
    tasks: list[TaskResult]

    @property
    def complete(self) -> bool:
        return bool(self.tasks) and all(task.value is not None for task in self.tasks)

    @property
    def average(self) -> float | None:
        if not self.complete:
            return None
        return sum(task.value or 0.0 for task in self.tasks) / len(self.tasks)

    @property
    def average_normalized(self) -> float | None:
        if not self.complete:
            return None
        return sum(task.normalized or 0.0 for task in self.tasks) / len(self.tasks)

    @property
    def payload(self) -> dict[str, Any]:
        return self.run.payload if isinstance(self.run.payload, dict) else {}

    @property
    def reproduce_command(self) -> str | None:
        reproduce = self.payload.get("reproduce")
        command = reproduce.get("command") if isinstance(reproduce, dict) else None
        return command if isinstance(command, str) and command else None

    @property
    def configuration(self) -> list[tuple[str, str]]:
        """The run's settings as (label, value) pairs, for the model page."""
        payload = self.payload
        versions = payload.get("versions") if isinstance(payload.get("versions"), dict) else {}
        pairs = [
            ("suite", f"{self.run.suite_name} @ {self.run.suite_version}"),
            ("dtype", payload.get("dtype")),
            ("device", payload.get("device")),
            ("batch size", payload.get("batch_size")),
            ("lm-eval", versions.get("lm_eval") if versions else None),
            ("transformers", versions.get("transformers") if versions else None),
            ("torch", versions.get("torch") if versions else None),
            ("loglikelihood requests", payload.get("loglikelihood_requests")),
            ("duration", _duration(payload.get("duration_seconds"))),
            ("worker", self.run.worker or None),
        ]
        return [(label, str(value)) for label, value in pairs if value not in (None, "")]


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float):
        return None
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


@dataclass
class SubmissionResults:
    submission: Submission
    runs: list[EvaluationRun]
    results: list[RunResult]  # finished runs, newest first

    def result_for(self, suite: str, version: str) -> RunResult | None:
        return next(
            (
                r
                for r in self.results
                if r.run.suite_name == suite and r.run.suite_version == version
            ),
            None,
        )


@dataclass
class ModelDetail:
    repository: Repository
    parents: list[tuple[Repository, str]]
    children: int
    submissions: list[SubmissionResults]
    selected: SubmissionResults | None = None
    selected_result: RunResult | None = None

    @property
    def taint_path(self) -> str:
        return path_text(self.repository.status_path)


def find_model(repo_id: str) -> Repository | None:
    return Repository.objects.filter(kind=RepositoryKind.MODEL, repo_id=repo_id).first()


def model_detail(
    repository: Repository, query: RankingQuery, submission_id: int | None = None
) -> ModelDetail:
    """Everything the model page shows. The selected submission is `submission_id` when it
    belongs to the repository, else the one with the best average on the query's suite
    version, else the newest."""
    parents = [
        (edge.parent, edge.relation)
        for edge in LineageEdge.objects.filter(child=repository)
        .select_related("parent")
        .order_by("relation", "parent__repo_id")
    ]
    children = LineageEdge.objects.filter(parent=repository).count()
    submissions = list(repository.submissions.order_by("-created_at", "-id"))
    runs = list(
        EvaluationRun.objects.filter(submission__repository=repository).order_by(
            "-created_at", "-id"
        )
    )
    results = _run_results([run for run in runs if run.state == RunState.FINISHED])
    by_submission = [
        SubmissionResults(
            submission=submission,
            runs=[run for run in runs if run.submission_id == submission.pk],
            results=[r for r in results if r.run.submission_id == submission.pk],
        )
        for submission in submissions
    ]
    detail = ModelDetail(repository, parents, children, by_submission)
    version = query.version or ""
    candidates = [s for s in by_submission if s.result_for(query.suite, version)]
    chosen = next((s for s in by_submission if s.submission.pk == submission_id), None)
    if chosen is None and candidates:
        chosen = max(
            candidates,
            key=lambda s: _sort_average(s.result_for(query.suite, version), query.normalized),
        )
    if chosen is None and by_submission:
        chosen = by_submission[0]
    detail.selected = chosen
    if chosen is not None:
        detail.selected_result = chosen.result_for(query.suite, version) or (
            chosen.results[0] if chosen.results else None
        )
    return detail


def _sort_average(result: RunResult | None, normalized: bool) -> float:
    if result is None:
        return -math.inf
    value = result.average_normalized if normalized else result.average
    return value if value is not None else -math.inf


def _run_results(runs: list[EvaluationRun]) -> list[RunResult]:
    scores: dict[int, dict[str, TaskScore]] = {}
    for score in TaskScore.objects.filter(run__in=runs):
        scores.setdefault(score.run_id, {})[score.task] = score
    views: dict[tuple[str, str], SuiteView | None] = {}
    results = []
    for run in runs:
        key = (run.suite_name, run.suite_version)
        if key not in views:
            views[key] = suite_view(*key)
        results.append(_run_result(run, views[key], scores.get(run.pk, {})))
    return results


def _run_result(
    run: EvaluationRun, view: SuiteView | None, scores: dict[str, TaskScore]
) -> RunResult:
    tasks = []
    columns = list(view.columns) if view is not None else []
    for column in columns:
        score = scores.get(column.key)
        scale = 1 - column.random_baseline if column.random_baseline < 1 else 1.0
        tasks.append(
            TaskResult(
                key=column.key,
                lm_eval_task=column.lm_eval_task,
                metric=column.metric,
                num_fewshot=column.num_fewshot,
                n_samples=score.n_samples if score else None,
                random_baseline=100 * column.random_baseline,
                description=column.description,
                value=100 * score.value if score else None,
                stderr=100 * score.stderr if score and score.stderr is not None else None,
                normalized=column.normalize(score.value) if score else None,
                normalized_stderr=(
                    100 * score.stderr / scale if score and score.stderr is not None else None
                ),
            )
        )
    return RunResult(run=run, view=view, tasks=tasks)


def model_validator(repository: Repository) -> Validator:
    """ETag/Last-Modified of a model resource, from a handful of aggregates."""
    import hashlib

    from leaderboard.public import integrity_bridge

    runs = EvaluationRun.objects.filter(submission__repository=repository).aggregate(
        n=Count("id"),
        finished=Count("id", filter=Q(state=RunState.FINISHED)),
        created=Max("created_at"),
        last=Max("finished_at"),
    )
    submissions = repository.submissions.aggregate(n=Count("id"), last=Max("created_at"))
    edges = LineageEdge.objects.filter(Q(child=repository) | Q(parent=repository)).aggregate(
        n=Count("id"), last=Max("created_at")
    )
    integrity = integrity_bridge.last_change_for(repository.pk)
    stamps = [
        repository.updated_at,
        repository.status_updated_at,
        runs["created"],
        runs["last"],
        submissions["last"],
        edges["last"],
        integrity,
    ]
    fingerprint = "|".join(
        [
            repository.status,
            str(runs["n"]),
            str(runs["finished"]),
            str(submissions["n"]),
            str(edges["n"]),
            *(stamp.isoformat() if stamp else "-" for stamp in stamps),
        ]
    )
    last = max((stamp for stamp in stamps if stamp is not None), default=None)
    return Validator(etag=hashlib.sha256(fingerprint.encode()).hexdigest()[:32], last_modified=last)


# --- comparison --------------------------------------------------------------------------------


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


class CompareError(ValueError):
    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


def parse_models_param(raw: str) -> list[str]:
    """`models=a/b,c/d` (also repeated `models=`), in order, duplicates dropped; checked."""
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    if not MIN_COMPARE <= len(names) <= MAX_COMPARE:
        raise CompareError(
            [
                {
                    "code": "invalid_count",
                    "field": "models",
                    "message": f"Compare {MIN_COMPARE} to {MAX_COMPARE} models, given as "
                    f"models=org/name,org/name (got {len(names)}).",
                }
            ]
        )
    return names


def compare(repo_ids: list[str], query: RankingQuery) -> Comparison:
    """The best-scoring submission of each model on the query's suite version, the per-task
    differences against the first model, and how each pair is related in the lineage graph."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise CompareError(
            [{"code": "unknown_version", "field": "version", "message": str(query.version)}]
        )
    average = "-average_normalized" if query.normalized else "-average"
    entries: dict[str, RankingEntry] = {}
    for entry in RankingEntry.objects.filter(
        suite_name=view.name, suite_version=view.version, repo_id__in=repo_ids
    ).order_by("repo_id", average, "-id"):
        entries.setdefault(entry.repo_id, entry)
    missing = [repo_id for repo_id in repo_ids if repo_id not in entries]
    if missing:
        raise CompareError(
            [
                {
                    "code": "not_ranked",
                    "field": "models",
                    "message": f"{', '.join(missing)}: no finished evaluation on "
                    f"{view.name} @ {view.version}; check the name or pick another version.",
                }
            ]
        )
    runs = {
        run.pk: run
        for run in EvaluationRun.objects.filter(pk__in=[e.run_id for e in entries.values()])
    }
    repositories = {r.repo_id: r for r in Repository.objects.filter(repo_id__in=repo_ids)}
    results = {r.run.pk: r for r in _run_results(list(runs.values()))}
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
