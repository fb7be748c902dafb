"""The web side's Celery tasks, a table of contents: each validates one report a GPU worker sent
(the message schema, evaluator/messages.py) and hands it on; one runs a reconciler pass.

The GPU task is not here: it runs in the GPU worker's own application (evaluator/worker.py),
which the web side reaches only by sending a job by task name (dispatch.py)."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from celery import Task, shared_task

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
from leaderboard.evaluations.runs import report_retry_delay

logger = logging.getLogger(__name__)

# Web-side tasks are short and idempotent; their limits are far below an evaluation's.
WEB_TASK = {"ignore_result": True, "soft_time_limit": 240, "time_limit": 300}
# The reports that carry an attempt's outcome are retried through an outage; the rule bounds
# them (runs.report_retry_delay), not Celery's own count.
REPORT_TASK = {**WEB_TASK, "bind": True, "max_retries": None}
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


def _retried_on_outage(task: Task, error: Exception) -> Exception:
    """The Celery retry for a report that met an outage (the rule: runs.report_retry_delay), or
    the error itself when it is no outage or the retries are spent."""
    delay = report_retry_delay(error, task.request.retries)
    if delay is None:
        return error
    logger.warning(
        "%s could not be recorded (%s); retry %d in %d s",
        task.name,
        type(error).__name__,
        task.request.retries + 1,
        delay,
    )
    return task.retry(exc=error, countdown=delay, throw=False)


@shared_task(name=STARTED_TASK, **REPORT_TASK)
def mark_started(self: Task, message: dict[str, Any]) -> bool | str:
    try:
        report = _read(Started, message)
        if report is None:
            return REJECTED
        return flow.mark_started(report.run_id, report.attempt, report.worker)
    except Exception as error:
        raise _retried_on_outage(self, error) from None


@shared_task(name=PROGRESS_TASK, **WEB_TASK)
def record_progress(message: dict[str, Any]) -> bool | str:
    # Not retried: the next progress report (or the result) supersedes a lost one.
    report = _read(Progress, message)
    if report is None:
        return REJECTED
    return flow.record_progress(report.run_id, report.attempt, report.done, report.total)


# Retried through an outage of the database (a restart) or of the artifact bucket: the result of
# hours of evaluation is recorded once they are back, not lost.
@shared_task(name=RESULT_TASK, **REPORT_TASK)
def ingest_result(self: Task, message: dict[str, Any]) -> str:
    try:
        report = _read(Result, message)
        if report is None:
            return REJECTED
        # The payload as the worker sent it: stored whole, unknown keys included.
        return flow.ingest_result(report.run_id, report.attempt, message["payload"])
    except Exception as error:
        raise _retried_on_outage(self, error) from None


@shared_task(name=FAILURE_TASK, **REPORT_TASK)
def record_failure(self: Task, message: dict[str, Any]) -> bool | str:
    try:
        report = _read(Failure, message)
        if report is None:
            return REJECTED
        return flow.record_failure(
            report.run_id, report.attempt, report.code, report.message, report.log_tail
        )
    except Exception as error:
        raise _retried_on_outage(self, error) from None


@shared_task(name="evaluations.reconcile", **WEB_TASK)
def reconcile() -> dict[str, list[int]]:
    report = flow.reconcile()
    return {
        "resent": report.resent,
        "reaped": report.reaped,
        "retried": report.retried,
        "dispatched": report.dispatched,
    }
