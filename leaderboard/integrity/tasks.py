"""Celery tasks of integrity, a table of contents: the weight-provenance check of a submitted
model after its submission commits (web queue; retried, since it reads the model source)."""

from __future__ import annotations

from celery import shared_task

from leaderboard import flow


@shared_task(
    name=flow.CHECK_WEIGHTS_TASK,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=1200,
    time_limit=1260,
)
def check_weights(repository_id: int) -> int:
    return len(flow.check_weights(repository_id))
