"""The result payload a GPU worker hands back, as a declarative schema, and its checks against
the run it claims to answer. The worker is untrusted: nothing it says is stored unchecked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    # Unknown keys are kept in the stored payload but never read; types are not coerced
    # (a score of "0.5" is a malformed payload, not 0.5).
    model_config = ConfigDict(extra="allow", strict=True)


class TaskResult(_Strict):
    task: str = Field(min_length=1)
    lm_eval_task: str = Field(min_length=1)
    metric: Literal["acc", "acc_norm"]
    value: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    stderr: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    n_samples: int = Field(ge=1)
    num_fewshot: int = Field(ge=0)


class SuiteRef(_Strict):
    name: str = Field(min_length=1)
    version: str | int  # YAML writes `version: 1` as an int; compared as text


class Versions(_Strict):
    lm_eval: str = Field(min_length=1)
    transformers: str = Field(min_length=1)
    torch: str = Field(min_length=1)


class Reproduce(_Strict):
    command: str = Field(min_length=1)
    task_overrides: Any = None


class Artifact(_Strict):
    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ResultPayload(_Strict):
    run_id: int | None = None
    tasks: list[TaskResult] = Field(min_length=1)
    suite: SuiteRef
    versions: Versions
    dtype: str = Field(min_length=1)
    device: str = Field(min_length=1)
    batch_size: int | str
    duration_seconds: float = Field(ge=0.0, allow_inf_nan=False)
    loglikelihood_requests: int = Field(ge=0)
    reproduce: Reproduce
    artifact: Artifact


class InvalidResult(Exception):
    """The payload failed validation; `problems` lists each one in words."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_payload(raw: Any) -> ResultPayload:
    try:
        return ResultPayload.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise InvalidResult(problems) from None


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
