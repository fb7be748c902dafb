"""Suites as versioned data: each file evaluator/suites/<name>@<version>.yaml is one version of one
suite.

Scores are comparable only within one suite version, so a version, once shipped, is never edited:
a change of task, few-shot count, metric or limit is a new file with a new version.
Importing this module imports neither torch nor lm-eval (the web side uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluator.data import MIRRORED_TASKS
from evaluator.vocabulary import METRICS, name_error

SUITES_DIR = Path(__file__).parent / "suites"


class SuiteError(ValueError):
    """A suite file that does not describe a suite."""


class UnknownSuite(LookupError):
    """No suite of that name (or no such version of it)."""


@dataclass
class SuiteTask:
    key: str  # the column name in results, e.g. "arc_challenge"
    lm_eval_task: str  # the stock lm-eval task or group
    num_fewshot: int
    metric: str  # "acc" | "acc_norm": the one number that counts
    limit: int | None  # documents per lm-eval task (per subtask of a group); None = all
    random_baseline: float  # the chance rate, e.g. 0.25 for four choices
    description: str
    splits_note: str  # how its splits differ from the original leaderboard's
    dataset: str = ""  # the Hub dataset the stock task reads


@dataclass
class Suite:
    name: str
    version: str
    description: str
    tasks: list[SuiteTask] = field(default_factory=list)

    def task(self, key: str) -> SuiteTask:
        for task in self.tasks:
            if task.key == key:
                return task
        raise KeyError(f"{self.name}@{self.version} has no task {key}")


def _version_key(version: str) -> tuple[tuple[int, Any], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in version.split("."))


def _parse(path: Path) -> Suite:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path.name}: expected a mapping with name, version, tasks")
    missing = [key for key in ("name", "version", "description", "tasks") if not raw.get(key)]
    if missing:
        raise SuiteError(f"{path.name}: missing {', '.join(missing)}")
    tasks = [_parse_task(path.name, item) for item in raw["tasks"]]
    keys = [task.key for task in tasks]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise SuiteError(f"{path.name}: task keys repeat: {', '.join(duplicates)}")
    name, version = str(raw["name"]), str(raw["version"])
    for what, value in (("name", name), ("version", version), *(("task key", k) for k in keys)):
        if error := name_error(what, value):
            raise SuiteError(f"{path.name}: {error}")
    if path.name != f"{name}@{version}.yaml":
        raise SuiteError(
            f"{path.name}: a suite file is named <name>@<version>.yaml: {name}@{version}.yaml"
        )
    return Suite(
        name=name,
        version=version,
        description=" ".join(str(raw["description"]).split()),
        tasks=tasks,
    )


def _parse_task(filename: str, item: Any) -> SuiteTask:
    if not isinstance(item, dict):
        raise SuiteError(f"{filename}: each task is a mapping, not {item!r}")
    key = str(item.get("key", ""))
    where = f"{filename}: task {key or '?'}"
    lm_eval_task = str(item.get("lm_eval_task", ""))
    if lm_eval_task not in MIRRORED_TASKS:
        known = ", ".join(sorted(MIRRORED_TASKS))
        raise SuiteError(f"{where}: lm_eval_task {lm_eval_task!r} is not one of {known}")
    metric = item.get("metric")
    if metric not in METRICS:
        raise SuiteError(f"{where}: metric must be acc or acc_norm, not {metric!r}")
    num_fewshot = item.get("num_fewshot")
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise SuiteError(f"{where}: num_fewshot must be a whole number >= 0")
    limit = item.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise SuiteError(f"{where}: limit must be a whole number >= 1 or absent")
    baseline = item.get("random_baseline")
    if not isinstance(baseline, (int, float)) or not 0 <= baseline < 1:
        raise SuiteError(f"{where}: random_baseline must be a chance rate in [0, 1)")
    if not key or not item.get("description"):
        raise SuiteError(f"{where}: key and description are required")
    mirrored = MIRRORED_TASKS[lm_eval_task]
    return SuiteTask(
        key=key,
        lm_eval_task=lm_eval_task,
        num_fewshot=num_fewshot,
        metric=metric,
        limit=limit,
        random_baseline=float(baseline),
        description=" ".join(str(item["description"]).split()),
        splits_note=" ".join(str(item.get("splits_note") or mirrored.splits_note).split()),
        dataset=mirrored.hub_dataset,
    )


def list_suites() -> list[Suite]:
    """Every suite version shipped, by name then version (oldest first)."""
    suites = [_parse(path) for path in sorted(SUITES_DIR.glob("*.yaml"))]
    seen: set[tuple[str, str]] = set()
    for suite in suites:
        if (suite.name, suite.version) in seen:
            raise SuiteError(f"{suite.name}@{suite.version} is defined twice in {SUITES_DIR}")
        seen.add((suite.name, suite.version))
    return sorted(suites, key=lambda s: (s.name, _version_key(s.version)))


def load_suite(name: str, version: str | None = None) -> Suite:
    """The suite `name` at `version`, or its newest version when `version` is None."""
    candidates = [suite for suite in list_suites() if suite.name == name]
    if not candidates:
        names = sorted({suite.name for suite in list_suites()})
        raise UnknownSuite(f"no suite named {name!r}; suites: {', '.join(names)}")
    if version is None:
        return candidates[-1]
    for suite in candidates:
        if suite.version == str(version):
            return suite
    versions = ", ".join(suite.version for suite in candidates)
    raise UnknownSuite(f"suite {name!r} has no version {version!r}; versions: {versions}")
