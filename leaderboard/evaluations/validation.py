"""The checks of a worker's result that need the web side's own knowledge: the run's suite (every
task exactly once, on the suite's metric and few-shot count) and the details artifact on disk.
The payload's shape is the message schema's (evaluator/messages.py). The worker is untrusted:
nothing it says is stored unchecked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from evaluator.messages import Artifact, InvalidMessage, ResultPayload, parse


class InvalidResult(Exception):
    """The payload failed validation; `problems` lists each one in words."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_payload(raw: Any) -> ResultPayload:
    try:
        return parse(ResultPayload, raw, whole="payload")
    except InvalidMessage as invalid:
        raise InvalidResult(invalid.problems) from None


def check_against_suite(payload: ResultPayload, suite: Any, suite_version: str) -> list[str]:
    """Problems with the payload given the run's suite: every task exactly once, on the
    suite's metric and few-shot count, from the suite version the run asked for."""
    problems: list[str] = []
    if payload.suite.name != suite.name or str(payload.suite.version) != suite_version:
        problems.append(
            f"suite: the run asked for {suite.name}@{suite_version}, "
            f"the result is for {payload.suite.name}@{payload.suite.version}"
        )
    expected = {task.key: task for task in suite.tasks}
    seen: set[str] = set()
    for result in payload.tasks:
        if result.task in seen:
            problems.append(f"tasks: {result.task} is reported twice")
            continue
        seen.add(result.task)
        spec = expected.get(result.task)
        if spec is None:
            problems.append(f"tasks: {result.task} is not a task of {suite.name}@{suite_version}")
            continue
        if result.metric != spec.metric:
            problems.append(
                f"tasks: {result.task} reports {result.metric}, the suite counts {spec.metric}"
            )
        if result.num_fewshot != spec.num_fewshot:
            ran, says = result.num_fewshot, spec.num_fewshot
            problems.append(f"tasks: {result.task} ran {ran}-shot, the suite says {says}")
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append(f"tasks: missing {', '.join(missing)}")
    return problems


def resolve_artifact(artifact_root: Path, reported: str) -> Path | None:
    """The artifact's path under the artifact root, or None when it points outside it."""
    root = artifact_root.resolve()
    candidate = Path(reported)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    return path if path.is_relative_to(root) else None


def check_artifact(artifact: Artifact, artifact_root: Path) -> tuple[Path | None, list[str]]:
    """The artifact file must be under the artifact root with the size and sha256 reported."""
    path = resolve_artifact(artifact_root, artifact.path)
    if path is None:
        return None, [
            f"artifact.path: {artifact.path} is outside the artifact root {artifact_root}"
        ]
    if not path.is_file():
        return None, [f"artifact.path: no file at {path}"]
    size = path.stat().st_size
    if size != artifact.size:
        return None, [f"artifact.size: the file has {size} bytes, the result says {artifact.size}"]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != artifact.sha256:
        return None, [
            f"artifact.sha256: the file's sha256 is {digest.hexdigest()}, not the one reported"
        ]
    return path, []
