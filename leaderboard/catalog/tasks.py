"""Celery tasks of the catalog, a table of contents: resolving a submitted model's ancestors
after its submission commits (web queue; retried, since it reads a model source)."""

from __future__ import annotations

from celery import shared_task

from leaderboard import flow


@shared_task(
    name=flow.RESOLVE_TASK,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=1200,
    time_limit=1260,
)
def resolve_ancestors(repository_id: int) -> int:
    return len(flow.resolve_ancestors(repository_id))
