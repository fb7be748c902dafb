"""Celery tasks of the catalog, a table of contents: resolving a submitted model's ancestors
after its submission commits (web queue; retried, since it reads a model source)."""

from __future__ import annotations

from celery import shared_task

from leaderboard import flow
from leaderboard.celery import SOURCE_READING_TASK


@shared_task(
    name=flow.RESOLVE_TASK,
    **SOURCE_READING_TASK,
)
def resolve_ancestors(repository_id: int) -> int:
    return len(flow.resolve_ancestors(repository_id))
