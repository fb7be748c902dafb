"""The reconciler's answers to lost workers and a broker that lost its messages, through its
pass (runs.reconcile_runs, what beat runs) with the default settings: a silent run is queued
again as the next attempt until TRELLIS_MAX_ATTEMPTS, the lost attempt's late reports change
nothing, and queued runs whose message the broker no longer holds are sent again at the second
pass. The same faults with real processes: tests/test_faults_workers.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from leaderboard import flow
from leaderboard.evaluations import runs
from leaderboard.evaluations.models import EvaluationRun, RunState
from tests.factories import QUEUES, RunFactory, SubmissionFactory, drain


@pytest.fixture
def broker():
    for queue in QUEUES:
        drain(queue)
    yield drain
    for queue in QUEUES:
        drain(queue)


def silent_run(attempt: int = 1, **fields) -> EvaluationRun:
    long_ago = timezone.now() - timedelta(hours=1)
    return RunFactory(
        state=RunState.RUNNING,
        queue="gpu-small",
        attempt=attempt,
        submission=SubmissionFactory(state="running"),
        enqueued_at=long_ago,
        sent_at=long_ago,
        started_at=long_ago,
        heartbeat_at=long_ago,
        worker="gpu@lost-host",
        **fields,
    )


# --- a lost worker ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_lost_workers_run_is_queued_again_as_the_next_attempt(
    broker, django_capture_on_commit_callbacks
):
    run = silent_run(progress_done=40, progress_total=100)
    with django_capture_on_commit_callbacks(execute=True):
        report = runs.reconcile_runs()
    assert (report.retried, report.reaped) == ([run.pk], [])
    run.refresh_from_db()
    assert (run.state, run.attempt, run.worker, run.failure_code) == ("queued", 2, "", "")
    assert (run.started_at, run.heartbeat_at, run.progress_done) == (None, None, 0)
    assert run.log_tail == (
        "Attempt 1: no progress for 900 seconds (the worker was lost); queued again "
        "automatically as attempt 2."
    )
    assert run.submission.state == "queued"
    [(task, [job])] = broker("gpu-small")
    assert (task, job["run_id"], job["attempt"]) == ("evaluations.evaluate", run.pk, 2)
    assert EvaluationRun.objects.get(pk=run.pk).sent_at is not None


@pytest.mark.django_db
def test_after_the_last_attempt_a_lost_run_fails_and_nothing_is_sent(broker):
    run = silent_run(attempt=3)
    report = runs.reconcile_runs()
    assert (report.retried, report.reaped) == ([], [run.pk])
    run.refresh_from_db()
    assert (run.state, run.attempt, run.failure_code) == ("failed", 3, "worker_lost")
    assert run.failure_reason == (
        "The worker stopped reporting: it was killed or lost its connection. "
        "No progress for 900 seconds (attempt 3 of 3)."
    )
    assert broker("gpu-small") == []


@pytest.mark.django_db
def test_the_lost_attempts_late_reports_change_nothing(broker, artifact_root):
    from tests.factories import quick_payload

    run = silent_run(suite_name="quick", suite_version="1")
    runs.reconcile_runs()
    payload = quick_payload(run.pk, artifact_root)
    # The frozen worker wakes up (SIGCONT) and reports what it did as attempt 1.
    assert flow.mark_started(run.pk, 1, "gpu@lost-host") is False
    assert flow.record_progress(run.pk, 1, 50, 100) is False
    assert flow.ingest_result(run.pk, 1, payload) == "stale"
    run.refresh_from_db()
    assert (run.state, run.attempt, run.payload) == ("queued", 2, None)
    # Attempt 2 goes its normal way.
    assert flow.mark_started(run.pk, 2, "gpu@other-host") is True
    assert flow.ingest_result(run.pk, 2, payload) == "ingested"
    assert EvaluationRun.objects.get(pk=run.pk).state == "finished"


# --- a broker that lost its messages ----------------------------------------------------------


def sent_runs(n: int, minutes_ago: int = 10) -> list[EvaluationRun]:
    now = timezone.now()
    return [
        RunFactory(
            queue="gpu-small",
            enqueued_at=now - timedelta(minutes=minutes_ago + 1),
            sent_at=now - timedelta(minutes=minutes_ago, seconds=-i),
        )
        for i in range(n)
    ]


@pytest.mark.django_db
def test_runs_the_broker_lost_are_sent_again_at_the_second_pass(broker):
    a, b, c = sent_runs(3)
    # The broker holds one message (the newest: a queue is first in, first out); two are gone.
    runs.send_run(c.pk, c.attempt)
    EvaluationRun.objects.filter(pk=c.pk).update(sent_at=c.sent_at)
    first = runs.reconcile_runs()
    assert first.resent == []  # suspected at the first pass only
    second = runs.reconcile_runs()
    assert second.resent == [a.pk, b.pk]
    jobs = [job["run_id"] for _, [job] in broker("gpu-small")]
    assert jobs == [c.pk, a.pk, b.pk]
    # Now the broker holds all three: nothing more is sent.
    for run in (c, a, b):
        runs.send_run(run.pk, run.attempt)
    EvaluationRun.objects.filter(pk__in=[a.pk, b.pk, c.pk]).update(
        sent_at=timezone.now() - timedelta(minutes=5)
    )
    assert runs.reconcile_runs().resent == []
    assert runs.reconcile_runs().resent == []


@pytest.mark.django_db
def test_a_run_a_worker_took_a_moment_ago_is_not_sent_twice(broker):
    (taken,) = sent_runs(1)
    assert runs.reconcile_runs().resent == []  # no message: suspected
    flow.mark_started(taken.pk, taken.attempt, "gpu@host")  # its `started` report arrives
    assert runs.reconcile_runs().resent == []
    assert broker("gpu-small") == []


@pytest.mark.django_db
def test_nothing_is_decided_while_reports_wait_on_the_web_queue(broker):
    from leaderboard.celery import app

    sent_runs(2)
    app.send_task("evaluations.record_progress", args=[{}], queue="trellis")
    assert runs.reconcile_runs().resent == []
    assert runs.reconcile_runs().resent == []
    assert broker("gpu-small") == []


@pytest.mark.django_db
def test_nothing_is_decided_when_the_broker_does_not_answer(monkeypatch):
    from tests.test_operations import _closed_port, use_broker

    sent_runs(2)
    use_broker(monkeypatch, f"redis://127.0.0.1:{_closed_port()}/0")
    assert runs.reconcile_runs().resent == []
    assert runs.reconcile_runs().resent == []


@pytest.mark.django_db
def test_a_message_a_busy_worker_holds_is_not_sent_twice(broker, monkeypatch):
    from leaderboard import broker as broker_state

    held, lost = sent_runs(2)
    # A worker busy with another run has taken `held` off the queue without starting it.
    monkeypatch.setattr(broker_state, "reserved_runs", lambda: {(held.pk, held.attempt)})
    assert runs.reconcile_runs().resent == []
    assert runs.reconcile_runs().resent == [lost.pk]
    assert [job["run_id"] for _, [job] in broker("gpu-small")] == [lost.pk]


# --- a report that meets an outage ---------------------------------------------------------------


def test_a_report_is_retried_through_an_outage_with_growing_delays_then_given_up():
    from django.db import IntegrityError, InterfaceError, OperationalError

    from evaluator.artifacts import StoreUnavailable

    down = OperationalError("connection refused")
    delays = [runs.report_retry_delay(down, retries) for retries in range(runs.REPORT_RETRIES)]
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert runs.report_retry_delay(down, runs.REPORT_RETRIES) is None
    store_down = StoreUnavailable("the artifact store s3://x failed")
    for outage in (InterfaceError("connection already closed"), store_down):
        assert runs.report_retry_delay(outage, 0) == 2
    # Not an outage: retrying cannot help, the error stands.
    for error in (IntegrityError("duplicate key"), ValueError("bad"), KeyError("payload")):
        assert runs.report_retry_delay(error, 0) is None
