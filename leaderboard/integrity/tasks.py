"""Celery tasks of integrity, a table of contents: the weight-provenance check of a submitted
model after its submission commits (web queue; retried, since it reads the model source)."""

from __future__ import annotations

from celery import shared_task

from leaderboard import flow
from leaderboard.celery import SOURCE_READING_TASK


@shared_task(
    name=flow.CHECK_WEIGHTS_TASK,
    **SOURCE_READING_TASK,
)
def check_weights(repository_id: int) -> int:
    return len(flow.check_weights(repository_id))
