"""Model sources: where repositories are read from (the Hub, or a local directory).

Backends are found through a lazy "module:Class" registry so the web process imports only the
one it uses."""

from __future__ import annotations

import importlib
from functools import cache

from django.conf import settings

from leaderboard.catalog.sources.base import (
    InvalidRepoId,
    ModelSource,
    RepoAccessDenied,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    SourceUnavailable,
)

SOURCE_BACKENDS = {
    "hub": "leaderboard.catalog.sources.hub:HubSource",
    "local": "leaderboard.catalog.sources.local:LocalSource",
}


def load_backend(name: str) -> type[ModelSource]:
    module_name, _, class_name = SOURCE_BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@cache
def _source_for(name: str, root: str) -> ModelSource:
    backend = load_backend(name)
    return backend.from_settings(settings)


def get_source() -> ModelSource:
    """The configured model source (TRELLIS_MODEL_SOURCE / TRELLIS_MODEL_ROOT)."""
    return _source_for(settings.TRELLIS_MODEL_SOURCE, str(settings.TRELLIS_MODEL_ROOT))


__all__ = [
    "InvalidRepoId",
    "ModelSource",
    "RepoAccessDenied",
    "RepoNotFound",
    "RepoSnapshot",
    "RevisionNotFound",
    "SourceUnavailable",
    "get_source",
]
