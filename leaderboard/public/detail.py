"""The model page's content: a repository's parents, descendants, reports, every submission and
each finished run's per-task results on its suite version."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from leaderboard.catalog.models import LineageEdge, Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.integrity.models import Report
from leaderboard.integrity.status import path_text
from leaderboard.public.query import RankingQuery
from leaderboard.public.suites import SuiteView, suite_view
from leaderboard.submissions.models import Submission


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
    reports: list[dict[str, Any]] = field(default_factory=list)
    selected: SubmissionResults | None = None
    selected_result: RunResult | None = None

    @property
    def taint_path(self) -> str:
        return path_text(self.repository.status_path)


def find_model(repo_id: str) -> Repository | None:
    return Repository.objects.filter(kind=RepositoryKind.MODEL, repo_id=repo_id).first()


def model_detail(
    repository: Repository,
    query: RankingQuery,
    submission_id: int | None = None,
    *,
    reports: bool = True,
) -> ModelDetail:
    """Everything the model page shows. The selected submission is `submission_id` when it
    belongs to the repository, else the one with the best average on the query's suite
    version, else the newest. `reports=False` leaves out the reports' records (the resource
    lists them; the page shows them through the integrity panel)."""
    parents = [
        (edge.parent, edge.relation)
        for edge in LineageEdge.objects.filter(child=repository)
        .select_related("parent")
        .order_by("relation", "parent__repo_id")
    ]
    children = LineageEdge.objects.filter(parent=repository).count()
    submissions = list(
        repository.submissions.select_related("submitter").order_by("-created_at", "-id")
    )
    runs = list(
        EvaluationRun.objects.filter(submission__repository=repository).order_by(
            "-created_at", "-id"
        )
    )
    results = run_results([run for run in runs if run.state == RunState.FINISHED])
    by_submission = [
        SubmissionResults(
            submission=submission,
            runs=[run for run in runs if run.submission_id == submission.pk],
            results=[r for r in results if r.run.submission_id == submission.pk],
        )
        for submission in submissions
    ]
    detail = ModelDetail(
        repository, parents, children, by_submission, reports_on(repository) if reports else []
    )
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


def run_results(runs: list[EvaluationRun]) -> list[RunResult]:
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


def reports_on(repository: Repository) -> list[dict[str, Any]]:
    """Every report on a repository (all statuses), newest first, with its moderation record."""
    reports = (
        Report.objects.filter(target=repository)
        .select_related("target", "reporter", "resolved_by")
        .prefetch_related("supports__user")
    )
    return [report.to_dict() for report in reports]
