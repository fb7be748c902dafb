"""The model-source interface: what the submission checks and lineage resolution need to know
about a repository at a revision, without ever downloading its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["model", "dataset"]


class SourceError(Exception):
    """Base class of everything a model source raises on purpose."""


class RepoNotFound(SourceError):
    pass


class InvalidRepoId(RepoNotFound):
    """The id cannot name a repository (not <org>/<name>, or it would leave the model root)."""


class RepoAccessDenied(RepoNotFound):
    """The repository exists but is gated or private: Trellis can read its card at most, and a
    worker could not download its weights."""


class RevisionNotFound(SourceError):
    pass


class SourceUnavailable(SourceError):
    """The source could not be reached or answered garbage; the user may retry later."""


@dataclass
class RepoSnapshot:
    """A repository at one pinned revision."""

    repo_id: str
    kind: Kind
    sha: str  # a full commit sha (Hub, git folder) or a content hash (plain folder)
    files: list[str]  # repository-relative paths
    card_text: str | None = None  # README.md as text, front matter included
    config: dict[str, Any] | None = None  # config.json
    mergekit_config: dict[str, Any] | None = None  # mergekit_config.yml, parsed
    adapter_config: dict[str, Any] | None = None  # adapter_config.json
    # From the safetensors headers (sum of tensor element counts), None when unknown.
    parameter_count: int | None = None
    tags: list[str] = field(default_factory=list)
    # Where the worker can load it from: a local folder path, or None for the Hub.
    local_path: str | None = None


class ModelSource(Protocol):
    name: str

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSource: ...

    def snapshot(
        self,
        repo_id: str,
        revision: str | None = None,
        kind: Kind = "model",
        *,
        card_only: bool = False,
    ) -> RepoSnapshot:
        """The repository at `revision` (default branch when None).

        card_only: read the file list and README.md only (lineage resolution of ancestors); a
        gated or private ancestor's card is still readable then, while a full snapshot of one
        raises RepoAccessDenied.

        Raises RepoNotFound (InvalidRepoId, RepoAccessDenied), RevisionNotFound or
        SourceUnavailable."""
        ...

    def exists(self, repo_id: str, kind: Kind = "model") -> bool: ...
