"""The checks of a worker's result that need the web side's own knowledge: the run's suite (every
task exactly once, on the suite's metric and few-shot count) and the details artifact in the
artifact store.
The payload's shape is the message schema's (evaluator/messages.py). The worker is untrusted:
nothing it says is stored unchecked."""

from __future__ import annotations

import hashlib
from typing import Any

from evaluator.artifacts import ArtifactStore, name_problem
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


def check_artifact(artifact: Artifact, store: ArtifactStore) -> tuple[str | None, list[str]]:
    """The artifact must be in the artifact store, under a name inside it, with the size and
    sha256 reported; its name, or the problems."""
    name = artifact.path
    if name_problem(name):
        return None, [f"artifact.path: {name} is outside the artifact store {store.location}"]
    opened = store.open(name)
    if opened is None:
        return None, [f"artifact.path: no file at {store.location}/{name}"]
    with opened.stream as stream:
        if opened.size != artifact.size:
            size = opened.size
            return None, [
                f"artifact.size: the file has {size} bytes, the result says {artifact.size}"
            ]
        digest = hashlib.sha256()
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != artifact.sha256:
        return None, [
            f"artifact.sha256: the file's sha256 is {digest.hexdigest()}, not the one reported"
        ]
    return name, []
