"""Evaluation runs: creating, dispatching, tracking, ingesting, re-queueing and reconciling them.
Every rule lives here; tasks, views and API routes only translate.

State changes are conditional UPDATEs whose row count says whether this caller won: a message
for an attempt that was re-queued, a duplicate delivery, or a second ingest changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Count, F, Max, Q, QuerySet
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from evaluator.artifacts import StoreUnavailable
from evaluator.vocabulary import failure_words
from leaderboard.accounts.roles import is_maintainer
from leaderboard.evaluations.artifacts import artifact_store
from leaderboard.evaluations.dispatch import dispatch, send_run
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.evaluations.priority import in_start_order
from leaderboard.evaluations.validation import (
    InvalidResult,
    check_against_suite,
    check_artifact,
    parse_payload,
)
from leaderboard.problems import Refusal
from leaderboard.submissions.models import Submission

logger = logging.getLogger(__name__)

# A run sent less than this long ago is not suspected of being lost by the broker: a worker may
# have taken its message a moment ago, its `started` report still on the way.
UNSENT_GRACE = timedelta(seconds=30)
# The runs the previous reconciler pass suspected the broker had lost (_missing_from_broker).
SUSPECTS_KEY = "reconciler:suspected-lost"


# --- Creating and sending ----------------------------------------------------------------------


def queue_for(parameter_count: int) -> str:
    """The evaluation queue for a model of this size (GPU memory decides where it can run)."""
    if parameter_count >= settings.TRELLIS_LARGE_MODEL_PARAMETERS:
        return settings.TRELLIS_QUEUE_LARGE
    return settings.TRELLIS_QUEUE_SMALL


def create_run_for(submission: Submission, suite_name: str | None = None) -> EvaluationRun:
    """Create a queued run of `submission` on a suite (default TRELLIS_DEFAULT_SUITE).

    The Celery message leaves only when the surrounding transaction commits, so a worker never
    sees a run id that a rollback erased; if it is lost anyway, the reconciler re-sends it."""
    from evaluator.suites import load_suite

    suite = load_suite(suite_name or settings.TRELLIS_DEFAULT_SUITE)
    run = EvaluationRun.objects.create(
        submission=submission,
        suite_name=suite.name,
        suite_version=str(suite.version),
        state=RunState.QUEUED,
        queue=queue_for(submission.parameter_count),
        enqueued_at=timezone.now(),
    )
    _mirror_submission(run.pk, submission.pk, RunState.QUEUED)
    submission.state = RunState.QUEUED
    _dispatch_on_commit(run.queue)
    return run


def _dispatch_on_commit(queue: str) -> None:
    # The dispatcher sends the run if its queue has room (dispatch.py); otherwise it waits,
    # unsent, for a slot. robust: a broker outage must not undo (or 500) what the database
    # already committed; the run stays unsent and the next dispatch sends it.
    transaction.on_commit(lambda: dispatch([queue]), robust=True)


# --- What workers report -----------------------------------------------------------------------


def mark_started(run_id: int, attempt: int, worker_hostname: str) -> bool:
    """A worker began the attempt. A re-delivery (the first worker died) starts it afresh; a
    run reaped as worker_lost comes back to life when its message shows up after all."""
    now = timezone.now()
    startable = EvaluationRun.objects.filter(pk=run_id, attempt=attempt).filter(
        Q(state__in=[RunState.QUEUED, RunState.RUNNING])
        | Q(state=RunState.FAILED, failure_code="worker_lost")
    )
    return _move(
        startable,
        run_id,
        None,
        RunState.RUNNING,
        worker=worker_hostname[:200],
        started_at=now,
        heartbeat_at=now,
        progress_done=0,
        progress_total=0,
        failure_code="",
        failure_reason="",
        log_tail="",
    )


# A report that could not be recorded because the database or the artifact store is down for a
# while (a restart, a failover) says nothing about the run: it is recorded later, not lost. The
# delays double from 2 s up to 10 minutes; ten retries wait about an hour and a half in all.
REPORT_RETRIES = 10
REPORT_RETRY_MAX_DELAY = 600
TRANSIENT_ERRORS = (OperationalError, InterfaceError, StoreUnavailable)


def report_retry_delay(error: BaseException, retries: int) -> int | None:
    """Seconds to wait before recording a worker's report again after `error`, or None when it
    must not be retried: the error is not an outage, or `retries` retries were already made."""
    if not isinstance(error, TRANSIENT_ERRORS) or retries >= REPORT_RETRIES:
        return None
    return min(2 ** (retries + 1), REPORT_RETRY_MAX_DELAY)


def record_progress(run_id: int, attempt: int, done: int, total: int) -> bool:
    """Progress doubles as the heartbeat the reconciler watches."""
    total = max(int(total), 0)
    done = min(max(int(done), 0), total)
    return bool(
        EvaluationRun.objects.filter(pk=run_id, attempt=attempt, state=RunState.RUNNING).update(
            progress_done=done, progress_total=total, heartbeat_at=timezone.now()
        )
    )


def record_failure(run_id: int, attempt: int, code: str, message: str, log_tail: str) -> bool:
    """The attempt failed. Never overrides a finished run: a duplicate delivery that failed
    does not undo the one that succeeded."""
    return _move(
        _unfinished(run_id, attempt),
        run_id,
        None,
        RunState.FAILED,
        failure_code=code[:40],
        failure_reason=_reason_text(code, message),
        log_tail=log_tail[-20_000:],
        finished_at=timezone.now(),
    )


def _unfinished(run_id: int, attempt: int) -> QuerySet[EvaluationRun]:
    """The attempt's run unless it finished: no later report undoes a finished run."""
    return EvaluationRun.objects.filter(pk=run_id, attempt=attempt).exclude(state=RunState.FINISHED)


def _move(
    run: QuerySet[EvaluationRun], run_id: int, submission_id: int | None, state: str, **fields: Any
) -> bool:
    """Move the run `run` matches to `state` (with `fields`) if its conditions still hold, the
    row count saying whether this caller won, and its submission's state with it in one commit:
    a reader never sees the run failed and its submission still running (a polling client did,
    between two autocommits)."""
    with transaction.atomic():
        claimed = run.update(state=state, **fields)
        if claimed:
            _mirror_submission(run_id, submission_id, state)
    return bool(claimed)


def _reason_text(code: str, message: str) -> str:
    words = failure_words(code)
    text = f"{words} {message}".strip() if message and message not in words else words
    return text if len(text) <= 300 else text[:299] + "…"


INGESTED, DUPLICATE, STALE, REJECTED = "ingested", "duplicate", "stale", "rejected"


@dataclass(frozen=True)
class Ingested:
    """What an ingest changed: `outcome` is one of the four words above; `submission_id` is
    set when new scores were stored (the ranking read table must take them in)."""

    outcome: str
    submission_id: int | None = None


def ingest_result(run_id: int, attempt: int, payload: Any) -> Ingested:
    """Validate a worker's payload against the run's suite and store it in one transaction.

    The outcome is "ingested", "duplicate" (already finished: nothing changes), "stale" (the
    message is for an older attempt or a run that no longer exists) or "rejected" (invalid
    payload: the run fails with the problems listed)."""
    run = EvaluationRun.objects.filter(pk=run_id).first()
    if run is None or run.attempt != attempt:
        return Ingested(STALE)
    if run.state == RunState.FINISHED:
        return Ingested(DUPLICATE)
    try:
        result, artifact_name = validate_result(run, payload)
    except InvalidResult as invalid:
        logger.warning("run %s: rejected result: %s", run_id, invalid)
        problems = invalid.problems
        record_failure(run_id, attempt, "invalid_result", "; ".join(problems), "\n".join(problems))
        return Ingested(REJECTED)

    with transaction.atomic():
        claimed = _unfinished(run_id, attempt).update(
            state=RunState.FINISHED,
            payload=payload,
            artifact_path=artifact_name,
            artifact_sha256=result.artifact.sha256,
            **_energy_fields(result.energy),
            finished_at=timezone.now(),
            progress_done=Greatest(F("progress_done"), F("progress_total")),
            failure_code="",
            failure_reason="",
            log_tail="",
        )
        if not claimed:
            return Ingested(DUPLICATE)
        TaskScore.objects.bulk_create(
            TaskScore(
                run_id=run_id,
                task=task.task,
                metric=task.metric,
                value=task.value,
                stderr=task.stderr,
                n_samples=task.n_samples,
                num_fewshot=task.num_fewshot,
            )
            for task in result.tasks
        )
        _mirror_submission(run_id, run.submission_id, RunState.FINISHED)
    return Ingested(INGESTED, run.submission_id)


def _energy_fields(energy: Any) -> dict[str, Any]:
    """The run's energy columns from the payload's `energy` (none from older workers); carbon
    is the energy times this site's TRELLIS_CARBON_INTENSITY (g CO2e per kWh)."""
    if energy is None:
        return {"energy_wh": None, "energy_method": "", "co2_grams": None}
    return {
        "energy_wh": energy.wh,
        "energy_method": energy.method,
        "co2_grams": round(energy.wh / 1000 * settings.TRELLIS_CARBON_INTENSITY, 6),
    }


def validate_result(run: EvaluationRun, payload: Any) -> tuple[Any, Any]:
    """The parsed payload and the artifact's name in the store, or InvalidResult listing every
    problem. Reads the artifact through (from a bucket: over the network), so it runs before
    any transaction opens."""
    from evaluator.suites import load_suite

    result = parse_payload(payload)
    if result.run_id is not None and result.run_id != run.pk:
        raise InvalidResult([f"run_id: the result is for run {result.run_id}, not {run.pk}"])
    try:
        suite = load_suite(run.suite_name, run.suite_version)
    except Exception as exc:
        raise InvalidResult(
            [f"suite: {run.suite_name}@{run.suite_version} unknown: {exc}"]
        ) from None
    problems = check_against_suite(result, suite, run.suite_version)
    artifact_name, artifact_problems = check_artifact(result.artifact, artifact_store())
    problems += artifact_problems
    if problems:
        raise InvalidResult(problems)
    return result, artifact_name


def _mirror_submission(run_id: int, submission_id: int | None, state: str) -> None:
    """Submission.state follows its newest run, so lists can show it without a join."""
    if submission_id is None:
        submission_id = (
            EvaluationRun.objects.filter(pk=run_id).values_list("submission_id", flat=True).first()
        )
        if submission_id is None:
            return
    newer = EvaluationRun.objects.filter(submission_id=submission_id, pk__gt=run_id)
    if not newer.exists():
        Submission.objects.filter(pk=submission_id).update(state=state)


# --- Re-queueing ------------------------------------------------------------------------------


def _requeue_problem(code: str, message: str, status: int) -> Refusal:
    return Refusal.one(code, "id", message, status)


def next_attempt(now: datetime, log_tail: str = "") -> dict[str, Any]:
    """The fields of a run queued again as its next attempt (a re-queue, or the reaper's retry of
    a lost worker's run): messages of the old attempt become stale, its traces are cleared."""
    return {
        "state": RunState.QUEUED,
        "attempt": F("attempt") + 1,
        "enqueued_at": now,
        "sent_at": None,
        "started_at": None,
        "heartbeat_at": None,
        "finished_at": None,
        "progress_done": 0,
        "progress_total": 0,
        "worker": "",
        "failure_code": "",
        "failure_reason": "",
        "log_tail": log_tail,
    }


def requeue_refusal(run: EvaluationRun, user: Any) -> Refusal | None:
    """Why `user` may not re-queue `run` now, or None when they may."""
    if user is None or not user.is_authenticated:
        return _requeue_problem("not_authenticated", "Sign in to re-queue a run.", 401)
    maintainer = is_maintainer(user)
    if not maintainer and run.submission.submitter_id != user.pk:
        return _requeue_problem(
            "forbidden", "Only the submitter or a maintainer can re-queue this run.", 403
        )
    if run.state != RunState.FAILED:
        return _requeue_problem(
            "not_failed", f"Only a failed run can be re-queued; this one is {run.state}.", 409
        )
    if not maintainer and run.submitter_requeues >= 1:
        return _requeue_problem(
            "requeue_limit",
            "You have already re-queued this run once; ask a maintainer to re-queue it again.",
            403,
        )
    return None


def requeue(run: EvaluationRun, user: Any) -> EvaluationRun:
    """Queue a failed run again as a new attempt; messages of the old attempt become stale."""
    refusal = requeue_refusal(run, user)
    if refusal is not None:
        raise refusal
    by_submitter = not is_maintainer(user)
    with transaction.atomic():
        claimed = EvaluationRun.objects.filter(
            pk=run.pk, attempt=run.attempt, state=RunState.FAILED
        ).update(
            **next_attempt(timezone.now()),
            requeued_by=user,
            submitter_requeues=F("submitter_requeues") + (1 if by_submitter else 0),
        )
        if not claimed:
            raise _requeue_problem("already_requeued", "This run was re-queued a moment ago.", 409)
        run.refresh_from_db()
        _mirror_submission(run.pk, run.submission_id, RunState.QUEUED)
        _dispatch_on_commit(run.queue)
    return run


# --- Reconciling: the database is the truth, the broker only transport -------------------------


@dataclass
class ReconcileReport:
    resent: list[int] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # reaped, and queued as the next attempt
    dispatched: list[int] = field(default_factory=list)  # unsent runs handed to the broker


def reconcile_runs(now: datetime | None = None) -> ReconcileReport:
    """One pass of the reconciler: re-send queued runs whose message may be lost, and fail
    running runs whose worker stopped heart-beating. Safe to run anywhere, any time."""
    now = now or timezone.now()
    report = ReconcileReport()
    for run_id, attempt in _runs_to_resend(now):
        try:
            if send_run(run_id, attempt):
                report.resent.append(run_id)
        except Exception:
            logger.exception("run %s: re-send failed; next pass tries again", run_id)
    report.reaped, report.retried = _reap_silent_runs(now)
    if report.resent or report.reaped or report.retried:
        logger.info(
            "reconciler: resent %s, reaped %s, retried %s",
            report.resent,
            report.reaped,
            report.retried,
        )
    return report


def _runs_to_resend(now: datetime) -> list[tuple[int, int]]:
    """Runs sent long ago on a queue where nothing has happened since: no worker is taking that
    queue's messages, so they are presumed lost. A busy queue is left alone: its runs are only
    waiting, and a duplicate would cost a whole evaluation. Runs never sent are not resent
    here: they wait for room on their queue, and the dispatcher (dispatch.py, called by
    leaderboard.flow at each pass) sends them in priority order."""
    queued = EvaluationRun.objects.filter(state=RunState.QUEUED)
    cutoff = now - timedelta(seconds=settings.TRELLIS_RESEND_AFTER)
    # finished_at, else the heartbeat: the last moment a worker of the queue was seen.
    last_seen = Coalesce("finished_at", "heartbeat_at", "started_at")
    idle_queues = [
        queue
        for queue, last in EvaluationRun.objects.filter(
            queue__in=queued.values_list("queue", flat=True)
        )
        .values_list("queue")
        .annotate(last=Max(last_seen))
        .order_by()
        if last is None or last < cutoff
    ]
    due = queued.filter(sent_at__lt=cutoff, queue__in=idle_queues)
    found = list(due.order_by("enqueued_at", "pk").values_list("pk", "attempt"))
    return found + [lost for lost in _missing_from_broker(now) if lost not in found]


def _missing_from_broker(now: datetime) -> list[tuple[int, int]]:
    """Queued runs that were sent but whose message the broker no longer holds (a broker that
    restarted without its data): per queue, the database's sent runs outnumber the messages
    waiting there. Which ones are missing is not written anywhere, so the oldest sent are the
    candidates (a queue is first in, first out); a run is sent again only when it was a
    candidate at the previous pass as well, so a message a worker took a moment ago (its
    `started` report still on the way) is not mistaken for a lost one. Nothing is decided while
    the web queue has reports waiting, nor when the broker does not answer."""
    from leaderboard import broker

    sent = EvaluationRun.objects.filter(state=RunState.QUEUED, sent_at__isnull=False)
    counts = dict(sent.values_list("queue").annotate(n=Count("pk")).order_by())
    if not counts:
        cache.delete(SUSPECTS_KEY)
        return []
    web_queue = settings.CELERY_TASK_DEFAULT_QUEUE
    try:
        depths = broker.queue_depths([*counts, web_queue])
    except broker.BrokerUnreachable:
        return []
    if depths[web_queue]:
        return []
    suspects: list[tuple[int, int]] = []
    for queue, n in counts.items():
        shortfall = n - depths[queue]
        if shortfall > 0:
            oldest = sent.filter(queue=queue, sent_at__lt=now - UNSENT_GRACE)
            suspects += oldest.order_by("sent_at", "pk").values_list("pk", "attempt")[:shortfall]
    if suspects:
        # A busy worker holds its next message without starting it: not lost.
        held = broker.reserved_runs()
        suspects = [pair for pair in suspects if pair not in held]
    earlier = {tuple(pair) for pair in cache.get(SUSPECTS_KEY, [])}
    cache.set(SUSPECTS_KEY, suspects, timeout=3 * settings.TRELLIS_RECONCILE_INTERVAL)
    if suspects:
        logger.info(
            "reconciler: the broker holds %s of the sent runs %s; missing: %s",
            depths,
            counts,
            [run_id for run_id, _ in suspects],
        )
    return [pair for pair in suspects if pair in earlier]


def _reap_silent_runs(now: datetime) -> tuple[list[int], list[int]]:
    """Running runs whose worker went silent. A lost worker's run is queued again as the next
    attempt, up to TRELLIS_MAX_ATTEMPTS attempts, then fails with worker_lost; a run past the
    hard time limit fails with time_limit. Returns (failed, retried)."""
    cutoff = now - timedelta(seconds=settings.TRELLIS_HEARTBEAT_TIMEOUT)
    time_limit = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    reaped: list[int] = []
    retried: list[int] = []
    silent = EvaluationRun.objects.filter(state=RunState.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    for run in silent.only("pk", "attempt", "started_at", "submission_id"):
        over_time = run.started_at is not None and now - run.started_at >= time_limit
        code = "time_limit" if over_time else "worker_lost"
        silence = settings.TRELLIS_HEARTBEAT_TIMEOUT
        if code == "worker_lost" and run.attempt < settings.TRELLIS_MAX_ATTEMPTS:
            if _retry_lost_run(run.pk, run.attempt, run.submission_id, cutoff, silence, now):
                retried.append(run.pk)
            continue
        message = (
            f"No progress for {silence} seconds (attempt {run.attempt} of "
            f"{settings.TRELLIS_MAX_ATTEMPTS})."
            if code == "worker_lost"
            else f"Still running after the hard limit of {int(time_limit.total_seconds())} s."
        )
        if _move(
            _still_silent(run.pk, run.attempt, cutoff),
            run.pk,
            run.submission_id,
            RunState.FAILED,
            failure_code=code,
            failure_reason=_reason_text(code, message),
            finished_at=now,
        ):
            reaped.append(run.pk)
    return reaped, retried


def _still_silent(run_id: int, attempt: int, cutoff: datetime) -> QuerySet[EvaluationRun]:
    """The attempt's run if it is still running with no heartbeat since `cutoff`: a report that
    arrived since the reaper looked wins over the reaper."""
    return EvaluationRun.objects.filter(pk=run_id, attempt=attempt, state=RunState.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)
    )


def _retry_lost_run(
    run_id: int, attempt: int, submission_id: int, cutoff: datetime, silence: int, now: datetime
) -> bool:
    """Queue a silent run again as the next attempt: the old attempt's messages become stale,
    so its worker, should it wake up, changes nothing."""
    note = (
        f"Attempt {attempt}: no progress for {silence} seconds (the worker was lost); "
        f"queued again automatically as attempt {attempt + 1}."
    )
    with transaction.atomic():
        claimed = _still_silent(run_id, attempt, cutoff).update(**next_attempt(now, log_tail=note))
        if claimed:
            _mirror_submission(run_id, submission_id, RunState.QUEUED)
            queue = EvaluationRun.objects.values_list("queue", flat=True).get(pk=run_id)
            _dispatch_on_commit(queue)
    return bool(claimed)


# --- What the pages and the API show ------------------------------------------------------------


def evaluated_repositories() -> QuerySet[Any]:
    """Ids of the repositories with a finished run (the ranked models), as a subquery."""
    return (
        EvaluationRun.objects.filter(state=RunState.FINISHED)
        .values("submission__repository_id")
        .order_by()
    )


def latest_run(submission: Submission) -> EvaluationRun | None:
    return submission.runs.order_by("-created_at", "-pk").first()


def queue_position(run: EvaluationRun) -> int | None:
    """1 for the next run a worker of its queue takes (the start order of priority.py: runs
    already sent come first, as they are on their way); None unless queued."""
    if run.state != RunState.QUEUED or run.enqueued_at is None:
        return None
    order = [run_id for run_id, _ in position_order(run.queue)]
    return order.index(run.pk) + 1 if run.pk in order else None


def position_order(queue: str | None = None) -> list[tuple[int, str]]:
    """(run id, queue) of every queued run, the next to start first: on each queue the runs
    already sent (in the order sent), then the unsent in priority order."""
    queued = EvaluationRun.objects.filter(state=RunState.QUEUED)
    if queue is not None:
        queued = queued.filter(queue=queue)
    sent = queued.filter(sent_at__isnull=False).order_by("sent_at", "pk")
    unsent = in_start_order(queued.filter(sent_at__isnull=True))
    return list(sent.values_list("pk", "queue")) + list(unsent.values_list("pk", "queue"))
