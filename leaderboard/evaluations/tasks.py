"""The web side's Celery tasks, a table of contents: each validates one report a GPU worker sent
(the message schema, evaluator/messages.py) and hands it on; one runs a reconciler pass.

The GPU task is not here: it runs in the GPU worker's own application (evaluator/worker.py),
which the web side reaches only by sending a job by task name (dispatch.py)."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from celery import shared_task

from evaluator.artifacts import StoreUnavailable
from evaluator.messages import (
    FAILURE_TASK,
    PROGRESS_TASK,
    RESULT_TASK,
    STARTED_TASK,
    Failure,
    InvalidMessage,
    Message,
    Progress,
    Result,
    Started,
    named_run,
    parse,
)
from leaderboard import flow

logger = logging.getLogger(__name__)

# Web-side tasks are short and idempotent; their limits are far below an evaluation's.
WEB_TASK = {"ignore_result": True, "soft_time_limit": 240, "time_limit": 300}
REJECTED = "rejected"

M = TypeVar("M", bound=Message)


def _read(kind: type[M], raw: Any) -> M | None:
    """The report, or None when it fails the schema: then it is dropped with the reason logged,
    and the run it names (at that attempt) fails as invalid_result. Never raised, so a bad
    message is never retried."""
    try:
        return parse(kind, raw)
    except InvalidMessage as invalid:
        ids = named_run(raw)
        logger.warning("rejected a %s report for run %s: %s", kind.__name__, ids, invalid)
        if ids is not None:
            problems = invalid.problems
            flow.record_failure(*ids, "invalid_result", "; ".join(problems), "\n".join(problems))
        return None


@shared_task(name=STARTED_TASK, **WEB_TASK)
def mark_started(message: dict[str, Any]) -> bool | str:
    report = _read(Started, message)
    if report is None:
        return REJECTED
    return flow.mark_started(report.run_id, report.attempt, report.worker)


@shared_task(name=PROGRESS_TASK, **WEB_TASK)
def record_progress(message: dict[str, Any]) -> bool | str:
    report = _read(Progress, message)
    if report is None:
        return REJECTED
    return flow.record_progress(report.run_id, report.attempt, report.done, report.total)


# An artifact bucket that cannot be reached says nothing about the result: checked again later
# (backoff up to 10 minutes, about an hour in all) rather than failed or dropped.
@shared_task(
    name=RESULT_TASK,
    **WEB_TASK,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=10,
)
def ingest_result(message: dict[str, Any]) -> str:
    report = _read(Result, message)
    if report is None:
        return REJECTED
    # The payload as the worker sent it: stored whole, unknown keys included.
    return flow.ingest_result(report.run_id, report.attempt, message["payload"])


@shared_task(name=FAILURE_TASK, **WEB_TASK)
def record_failure(message: dict[str, Any]) -> bool | str:
    report = _read(Failure, message)
    if report is None:
        return REJECTED
    return flow.record_failure(
        report.run_id, report.attempt, report.code, report.message, report.log_tail
    )


@shared_task(name="evaluations.reconcile", **WEB_TASK)
def reconcile() -> dict[str, list[int]]:
    report = flow.reconcile()
    return {
        "resent": report.resent,
        "reaped": report.reaped,
        "retried": report.retried,
        "dispatched": report.dispatched,
    }
