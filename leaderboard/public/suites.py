"""The ranking's view of evaluation suites: the columns (task, shots, metric, chance rate) of one
suite version, read from `evaluator.suites` and, for a version the evaluator no longer ships,
rebuilt from the scores stored for it."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from leaderboard.public.process import kept_per_process

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    key: str
    lm_eval_task: str
    metric: str
    num_fewshot: int
    random_baseline: float
    description: str

    @property
    def shots_label(self) -> str:
        return "0-shot" if self.num_fewshot == 0 else f"{self.num_fewshot}-shot"

    @property
    def tooltip(self) -> str:
        """What a column header explains: the task, its shots, its metric and chance rate."""
        described = f"{self.description}. " if self.description else ""
        return (
            f"{described}lm-eval task {self.lm_eval_task}, {self.shots_label}, metric "
            f"{self.metric}; random guessing scores {100 * self.random_baseline:.1f}."
        )

    def normalize(self, value: float) -> float:
        """Percent of the way from chance (0) to perfect (100); below chance is negative."""
        if self.random_baseline >= 1:
            return 0.0
        return 100 * (value - self.random_baseline) / (1 - self.random_baseline)


@dataclass(frozen=True)
class SuiteView:
    name: str
    version: str
    description: str
    columns: tuple[Column, ...]
    # False when the evaluator no longer defines this version: columns come from stored scores
    # and their chance rate is unknown (taken as 0).
    defined: bool = True

    @property
    def task_keys(self) -> list[str]:
        return [column.key for column in self.columns]

    def column(self, key: str) -> Column | None:
        return next((column for column in self.columns if column.key == key), None)


def suite_names() -> list[str]:
    """Every suite the evaluator defines, plus those that only stored runs remember."""
    return sorted(set(_defined_versions()) | set(_stored_only_versions()))


@functools.lru_cache(maxsize=1)
def _defined_versions() -> dict[str, tuple[str, ...]]:
    """Suite files ship with the code: read once per process."""
    from evaluator.suites import list_suites

    versions: dict[str, list[str]] = {}
    for suite in list_suites():
        versions.setdefault(str(suite.name), []).append(str(suite.version))
    return {name: tuple(found) for name, found in versions.items()}


@functools.lru_cache(maxsize=1)
def _stored_only_versions() -> dict[str, tuple[str, ...]]:
    """Versions with ranked rows that the evaluator no longer ships. Runs are ingested only
    for shipped versions, so this set changes only when a deploy removes a suite file (a new
    process) or `refresh_entries_for` writes such a version (it calls forget_stored_versions):
    one query per process instead of a DISTINCT over the ranking on every request."""
    from leaderboard.public.models import RankingEntry

    defined = _defined_versions()
    stored: dict[str, list[str]] = {}
    pairs = RankingEntry.objects.values_list("suite_name", "suite_version").distinct()
    for name, version in pairs:
        if version not in defined.get(name, ()):
            stored.setdefault(name, []).append(version)
    return {name: tuple(found) for name, found in stored.items()}


@kept_per_process
def forget_stored_versions() -> None:
    _stored_only_versions.cache_clear()


def is_defined(name: str, version: str) -> bool:
    return version in _defined_versions().get(name, ())


def current_version(name: str) -> str | None:
    """The newest version the evaluator ships, or None when it does not know the suite."""
    defined = _defined_versions().get(name)
    return max(defined, key=_version_key) if defined else None


def defined_versions(name: str) -> tuple[str, ...]:
    """The versions the evaluator ships (no database access)."""
    return _defined_versions().get(name, ())


def versions_of(name: str) -> list[str]:
    """Every version the evaluator ships or that has ranked rows, newest first."""
    versions = {*defined_versions(name), *_stored_only_versions().get(name, ())}
    return sorted(versions, key=_version_key, reverse=True)


def latest_version(name: str) -> str | None:
    versions = versions_of(name)
    return versions[0] if versions else None


def _version_key(version: str) -> tuple[tuple[int, object], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in version.split("."))


def suite_view(name: str, version: str) -> SuiteView | None:
    """The columns of `name` at `version`, or None when neither the evaluator nor any stored
    run knows that version."""
    defined = _defined_suite(name, version)
    if defined is not None:
        return defined
    return _stored_suite(name, version)


@functools.lru_cache(maxsize=64)
def _defined_suite(name: str, version: str | None) -> SuiteView | None:
    from evaluator.suites import load_suite

    try:
        suite = load_suite(name, version) if version is not None else load_suite(name)
    except Exception as exc:
        logger.debug("suite %s@%s is not defined by the evaluator: %s", name, version, exc)
        return None
    if version is not None and str(suite.version) != version:
        return None
    columns = tuple(
        Column(
            key=task.key,
            lm_eval_task=str(getattr(task, "lm_eval_task", task.key)),
            metric=str(task.metric),
            num_fewshot=int(task.num_fewshot),
            random_baseline=float(getattr(task, "random_baseline", 0.0) or 0.0),
            description=str(getattr(task, "description", "") or ""),
        )
        for task in suite.tasks
    )
    return SuiteView(
        name=str(suite.name),
        version=str(suite.version),
        description=str(getattr(suite, "description", "") or ""),
        columns=columns,
    )


def _stored_suite(name: str, version: str) -> SuiteView | None:
    from leaderboard.evaluations.models import TaskScore

    stored = (
        TaskScore.objects.filter(
            run__suite_name=name, run__suite_version=version, run__state="finished"
        )
        .values_list("task", "metric", "num_fewshot")
        .distinct()
        .order_by("task")
    )
    columns: dict[str, Column] = {}
    for task, metric, shots in stored:
        columns.setdefault(
            task,
            Column(
                key=task,
                lm_eval_task=task,
                metric=metric,
                num_fewshot=shots,
                random_baseline=0.0,
                description="",
            ),
        )
    if not columns:
        return None
    return SuiteView(
        name=name,
        version=version,
        description="",
        columns=tuple(columns.values()),
        defined=False,
    )
