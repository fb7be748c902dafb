"""The evaluation rules, through leaderboard.evaluations.runs: creating and routing runs,
what workers report (claims by conditional UPDATE), validating and ingesting results,
re-queueing, and the reconciler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from evaluator.suites import load_suite
from leaderboard import flow
from leaderboard.celery import app
from leaderboard.evaluations import runs
from leaderboard.evaluations.dispatch import build_job
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.problems import Refusal
from leaderboard.submissions.models import Submission
from tests.factories import (
    DELETE,
    QUEUES,
    RunFactory,
    SubmissionFactory,
    changed,
    drain,
    quick_payload,
)


@pytest.fixture
def broker():
    for queue in QUEUES:
        drain(queue)
    yield drain
    for queue in QUEUES:
        drain(queue)


def running_run(**kwargs) -> EvaluationRun:
    now = timezone.now()
    defaults = {"state": RunState.RUNNING, "queue": "gpu-small", "started_at": now}
    defaults["heartbeat_at"] = now
    return RunFactory(**(defaults | kwargs))


# --- create_run_for ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("parameters", "queue"),
    [(135_000_000, "gpu-small"), (14_999_999_999, "gpu-small"), (15_000_000_000, "gpu-large")],
)
def test_create_run_for_routes_by_size_and_sends_on_commit(
    parameters, queue, broker, django_capture_on_commit_callbacks
):
    submission = SubmissionFactory(parameter_count=parameters, state="failed")
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = runs.create_run_for(submission)
    # Nothing leaves before the transaction commits.
    assert broker(queue) == []
    assert len(callbacks) == 1

    assert (run.suite_name, run.suite_version, run.state, run.queue) == (
        "quick",
        "1",
        "queued",
        queue,
    )
    assert run.attempt == 1 and run.sent_at is None
    assert before <= run.enqueued_at <= timezone.now()
    assert Submission.objects.get(pk=submission.pk).state == "queued"

    callbacks[0]()
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        message = simple.get(timeout=1)
        # The evaluation's time limits travel with it: the web side's settings decide them.
        assert message.headers["timelimit"] == [4 * 3600 + 300, 4 * 3600]
        message.requeue()
        simple.close()
    messages = broker(queue)
    assert [name for name, _ in messages] == ["evaluations.evaluate"]
    [job] = messages[0][1]
    assert (job["schema_version"], job["attempt"]) == (2, 1)
    assert job["run_id"] == run.pk
    assert job["repo_id"] == submission.repository.repo_id
    assert job["revision"] == submission.revision
    assert (job["precision"], job["suite_name"], job["suite_version"]) == ("bfloat16", "quick", "1")
    run.refresh_from_db()
    assert run.enqueued_at <= run.sent_at <= timezone.now()


@pytest.mark.django_db
def test_create_run_for_honours_queue_settings_and_suite_name(settings, broker):
    settings.TRELLIS_QUEUE_SMALL = "cards-24gb"
    settings.TRELLIS_LARGE_MODEL_PARAMETERS = 1_000
    assert runs.queue_for(999) == "cards-24gb"
    assert runs.queue_for(1_000) == settings.TRELLIS_QUEUE_LARGE
    run = runs.create_run_for(SubmissionFactory(), suite_name="open-llm-v1")
    assert (run.suite_name, run.suite_version) == ("open-llm-v1", "1")


@pytest.mark.django_db
def test_job_carries_the_model_and_data_sources(settings, tmp_path):
    settings.TRELLIS_MODEL_SOURCE = "local"
    settings.TRELLIS_MODEL_ROOT = tmp_path / "models"
    settings.TRELLIS_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TRELLIS_EVAL_LIMIT = 3
    run = RunFactory(queue="gpu-small")
    job = build_job(run)
    assert job == {
        "schema_version": 2,
        "run_id": run.pk,
        "attempt": 1,
        "repo_id": run.submission.repository.repo_id,
        "revision": run.submission.revision,
        "precision": "bfloat16",
        "suite_name": "quick",
        "suite_version": "1",
        "model_source": "local",
        "model_path": str(tmp_path / "models"),
        "data_source": "local",
        "data_root": None,
        "artifact_store": str(tmp_path / "artifacts"),
        "limit": 3,
        "batch_size": None,
        "backend": None,
    }


# --- mark_started, progress, failure ----------------------------------------------------------


@pytest.mark.django_db
def test_mark_started_claims_a_queued_run_once_per_attempt():
    run = RunFactory(queue="gpu-small", attempt=2)
    assert runs.mark_started(run.pk, 1, "gpu-1") is False  # an older attempt's message
    assert runs.mark_started(run.pk, 2, "gpu-1") is True
    run.refresh_from_db()
    assert (run.state, run.worker) == ("running", "gpu-1")
    assert run.started_at is not None and run.heartbeat_at == run.started_at
    assert run.submission.state == "running"


@pytest.mark.django_db
def test_redelivery_restarts_a_running_run_and_revives_a_reaped_one():
    run = running_run(worker="gpu-1", progress_done=50, progress_total=100)
    assert runs.mark_started(run.pk, 1, "gpu-2") is True
    run.refresh_from_db()
    assert (run.worker, run.progress_done, run.progress_total) == ("gpu-2", 0, 0)

    EvaluationRun.objects.filter(pk=run.pk).update(state="failed", failure_code="worker_lost")
    assert runs.mark_started(run.pk, 1, "gpu-3") is True
    run.refresh_from_db()
    assert (run.state, run.failure_code, run.worker) == ("running", "", "gpu-3")

    EvaluationRun.objects.filter(pk=run.pk).update(state="failed", failure_code="out_of_memory")
    assert runs.mark_started(run.pk, 1, "gpu-4") is False
    EvaluationRun.objects.filter(pk=run.pk).update(state="finished")
    assert runs.mark_started(run.pk, 1, "gpu-4") is False


@pytest.mark.django_db
def test_progress_updates_running_runs_of_the_current_attempt_only():
    run = running_run(heartbeat_at=timezone.now() - timedelta(minutes=5))
    before = run.heartbeat_at
    assert runs.record_progress(run.pk, 1, 30, 120) is True
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total) == (30, 120)
    assert run.heartbeat_at > before
    # Clamped: never more done than total, never negative.
    assert runs.record_progress(run.pk, 1, 500, 120) is True
    run.refresh_from_db()
    assert (run.progress_done, run.progress_total) == (120, 120)
    assert runs.record_progress(run.pk, 2, 1, 120) is False
    queued = RunFactory()
    assert runs.record_progress(queued.pk, 1, 1, 10) is False


@pytest.mark.django_db
def test_record_failure_keeps_words_and_log_but_never_undoes_a_finished_run():
    run = running_run()
    assert runs.record_failure(run.pk, 1, "out_of_memory", "CUDA OOM at 2 GiB", "l1\nl2") is True
    run.refresh_from_db()
    assert run.state == "failed"
    assert run.failure_code == "out_of_memory"
    assert run.failure_reason == (
        "Out of memory: the model did not fit on the worker at this precision. CUDA OOM at 2 GiB"
    )
    assert run.log_tail == "l1\nl2"
    assert run.submission.state == "failed"

    finished = RunFactory(state="finished")
    assert runs.record_failure(finished.pk, 1, "error", "late duplicate", "") is False
    assert EvaluationRun.objects.get(pk=finished.pk).state == "finished"


@pytest.mark.django_db
def test_submission_state_follows_its_newest_run_only():
    submission = SubmissionFactory(state="finished")
    old = RunFactory(submission=submission, state="finished")
    RunFactory(submission=submission, state="running")
    submission.refresh_from_db()
    EvaluationRun.objects.filter(pk=old.pk).update(state="running", attempt=1)
    runs.record_failure(old.pk, 1, "error", "boom", "")
    assert Submission.objects.get(pk=submission.pk).state == "finished"


# --- ingest ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ingest_stores_scores_payload_and_artifact_in_one_go(artifact_root):
    run = running_run(progress_done=10, progress_total=1234)
    payload = quick_payload(run.pk, artifact_root, {"arc_easy": 0.62, "winogrande": 0.51})
    before = timezone.now()
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"

    run.refresh_from_db()
    assert run.state == "finished"
    assert run.payload == payload
    assert run.artifact_path == f"{run.pk}/quick@1-details.jsonl.gz"
    assert run.artifact_sha256 == payload["artifact"]["sha256"]
    assert run.progress_done == 1234
    assert before <= run.finished_at <= timezone.now()
    assert run.submission.state == "finished"
    shots = {task.key: task.num_fewshot for task in load_suite("quick").tasks}
    scores = {
        s.task: (s.metric, s.value, s.stderr, s.n_samples, s.num_fewshot) for s in run.scores.all()
    }
    assert scores == {
        "arc_easy": ("acc", 0.62, 0.05, 4, shots["arc_easy"]),
        "arc_challenge": ("acc_norm", 0.5, 0.05, 4, shots["arc_challenge"]),
        "hellaswag": ("acc_norm", 0.5, 0.05, 4, shots["hellaswag"]),
        "mmlu": ("acc", 0.5, 0.05, 4, shots["mmlu"]),
        "winogrande": ("acc", 0.51, 0.05, 4, shots["winogrande"]),
    }


@pytest.mark.django_db
def test_ingested_scores_enter_the_public_ranking(artifact_root, client):
    run = running_run()
    payload = quick_payload(run.pk, artifact_root, {"arc_easy": 0.62, "winogrande": 0.51})
    query = {"suite": "quick", "version": "1"}
    assert client.get("/api/v1/leaderboard", query).json()["rows"] == []

    assert flow.ingest_result(run.pk, 1, payload) == "ingested"

    rows = client.get("/api/v1/leaderboard", query).json()["rows"]
    assert [row["model"] for row in rows] == [run.submission.repository.repo_id]
    # The API shows percentages.
    assert (rows[0]["scores"]["arc_easy"], rows[0]["scores"]["winogrande"]) == (62.0, 51.0)


@pytest.mark.django_db
def test_ingesting_twice_changes_nothing_the_second_time(artifact_root):
    run = running_run()
    payload = quick_payload(run.pk, artifact_root)
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    finished_at = EvaluationRun.objects.get(pk=run.pk).finished_at
    other = changed(payload, "tasks.0.value", 0.99)
    assert flow.ingest_result(run.pk, 1, other) == "duplicate"
    assert TaskScore.objects.filter(run=run).count() == 5
    assert TaskScore.objects.get(run=run, task="arc_easy").value == 0.5
    assert EvaluationRun.objects.get(pk=run.pk).finished_at == finished_at


@pytest.mark.django_db
def test_results_of_an_older_attempt_are_stale(artifact_root):
    run = running_run(attempt=2)
    payload = quick_payload(run.pk, artifact_root)
    assert flow.ingest_result(run.pk, 1, payload) == "stale"
    assert flow.ingest_result(run.pk + 1000, 1, payload) == "stale"
    assert EvaluationRun.objects.get(pk=run.pk).state == "running"
    assert TaskScore.objects.count() == 0


@pytest.mark.django_db
def test_a_result_for_a_reaped_run_is_still_taken(artifact_root):
    run = running_run(state="failed", failure_code="worker_lost", failure_reason="lost")
    assert flow.ingest_result(run.pk, 1, quick_payload(run.pk, artifact_root)) == "ingested"
    run.refresh_from_db()
    assert (run.state, run.failure_code, run.failure_reason) == ("finished", "", "")


HELLASWAG_SHOTS = load_suite("quick").task("hellaswag").num_fewshot
BAD_PAYLOADS = [
    ("tasks.0.value", 1.2, "tasks.0.value: Input should be less than or equal to 1"),
    ("tasks.0.value", -0.1, "tasks.0.value: Input should be greater than or equal to 0"),
    ("tasks.0.value", "0.5", "tasks.0.value: Input should be a valid number"),
    ("tasks.0.value", float("nan"), "tasks.0.value: Input should be a finite number"),
    ("tasks.1.metric", "f1", "tasks.1.metric: Input should be 'acc' or 'acc_norm'"),
    ("tasks.0.metric", "acc_norm", "tasks: arc_easy reports acc_norm, the suite counts acc"),
    (
        "tasks.2.num_fewshot",
        10,
        f"tasks: hellaswag ran 10-shot, the suite says {HELLASWAG_SHOTS}",
    ),
    ("tasks.0.task", "gsm8k", "tasks: gsm8k is not a task of quick@1"),
    ("tasks.0.task", "mmlu", "tasks: mmlu is reported twice"),
    ("versions.torch", DELETE, "versions.torch: Field required"),
    ("versions.lm_eval", "", "versions.lm_eval: String should have at least 1 character"),
    ("suite.version", "2", "suite: the run asked for quick@1, the result is for quick@2"),
    ("artifact.sha256", "0" * 64, "artifact.sha256: the file's sha256 is "),
    ("artifact.size", 1, "artifact.size: the file has "),
    ("artifact.path", "../../etc/passwd", "artifact.path: ../../etc/passwd is outside"),
    ("artifact.path", "1/none.jsonl.gz", "artifact.path: no file at "),
    ("reproduce", DELETE, "reproduce: Field required"),
    ("run_id", 999_999, "run_id: the result is for run 999999, not "),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "value", "problem"), BAD_PAYLOADS)
def test_invalid_payloads_fail_the_run_with_the_problem_named(artifact_root, path, value, problem):
    run = running_run()
    payload = changed(quick_payload(run.pk, artifact_root), path, value)
    assert flow.ingest_result(run.pk, 1, payload) == "rejected"
    run.refresh_from_db()
    assert run.state == "failed"
    assert run.failure_code == "invalid_result"
    assert run.failure_reason.startswith("The worker's result did not pass validation. ")
    assert problem in run.log_tail
    assert TaskScore.objects.count() == 0
    assert run.payload is None


@pytest.mark.django_db
def test_a_missing_task_is_named(artifact_root):
    run = running_run()
    payload = quick_payload(run.pk, artifact_root)
    payload["tasks"] = [task for task in payload["tasks"] if task["task"] != "winogrande"]
    assert flow.ingest_result(run.pk, 1, payload) == "rejected"
    assert EvaluationRun.objects.get(pk=run.pk).log_tail == "tasks: missing winogrande"


@pytest.mark.django_db
def test_a_payload_that_is_not_a_mapping_is_rejected(artifact_root):
    run = running_run()
    assert flow.ingest_result(run.pk, 1, ["not", "a", "payload"]) == "rejected"
    assert (
        "payload: Input should be a valid dictionary"
        in EvaluationRun.objects.get(pk=run.pk).log_tail
    )


# --- requeue ----------------------------------------------------------------------------------


@pytest.fixture
def failed_run(submitter):
    return RunFactory(
        submission=SubmissionFactory(submitter=submitter, state="failed"),
        state="failed",
        queue="gpu-small",
        failure_code="model_load",
        failure_reason="The model would not load.",
        log_tail="Traceback ...",
    )


@pytest.mark.django_db
def test_requeue_permission_matrix(failed_run, submitter, other_submitter, maintainer):
    from django.contrib.auth.models import AnonymousUser

    refusal = runs.requeue_refusal(failed_run, AnonymousUser())
    assert (refusal.code, refusal.status) == ("not_authenticated", 401)
    refusal = runs.requeue_refusal(failed_run, other_submitter)
    assert (refusal.code, refusal.status) == ("forbidden", 403)
    assert runs.requeue_refusal(failed_run, submitter) is None
    assert runs.requeue_refusal(failed_run, maintainer) is None


@pytest.mark.django_db
def test_submitter_requeues_once_maintainer_any_time(
    failed_run, submitter, maintainer, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        run = runs.requeue(failed_run, submitter)
    assert (run.state, run.attempt, run.submitter_requeues) == ("queued", 2, 1)
    assert (run.failure_code, run.failure_reason, run.log_tail, run.requeued_by) == (
        "",
        "",
        "",
        submitter,
    )
    assert run.submission.state == "queued"
    messages = broker("gpu-small")
    assert [(name, args[0]["attempt"]) for name, args in messages] == [("evaluations.evaluate", 2)]

    runs.record_failure(run.pk, 2, "model_load", "again", "")
    run.refresh_from_db()
    with pytest.raises(Refusal) as refused:
        runs.requeue(run, submitter)
    assert (refused.value.code, refused.value.status) == ("requeue_limit", 403)
    assert refused.value.message == (
        "You have already re-queued this run once; ask a maintainer to re-queue it again."
    )

    for attempt in (3, 4):
        run = runs.requeue(run, maintainer)
        assert (run.attempt, run.submitter_requeues, run.requeued_by) == (attempt, 1, maintainer)
        runs.record_failure(run.pk, attempt, "error", "again", "")
        run.refresh_from_db()


@pytest.mark.django_db
def test_only_failed_runs_can_be_requeued(maintainer):
    for state in ("queued", "running", "finished"):
        run = RunFactory(state=state)
        with pytest.raises(Refusal) as refused:
            runs.requeue(run, maintainer)
        assert (refused.value.code, refused.value.status) == ("not_failed", 409)
        assert refused.value.message == f"Only a failed run can be re-queued; this one is {state}."


@pytest.mark.django_db
def test_a_requeue_that_lost_the_race_changes_nothing(failed_run, maintainer):
    stale_copy = EvaluationRun.objects.get(pk=failed_run.pk)
    runs.requeue(failed_run, maintainer)
    with pytest.raises(Refusal) as refused:
        runs.requeue(stale_copy, maintainer)
    assert refused.value.code == "already_requeued"
    assert EvaluationRun.objects.get(pk=failed_run.pk).attempt == 2


# --- queue position -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_queue_position_counts_queued_runs_ahead_in_the_same_queue():
    now = timezone.now()
    first = RunFactory(queue="gpu-small", enqueued_at=now - timedelta(minutes=3))
    RunFactory(queue="gpu-large", enqueued_at=now - timedelta(minutes=2))
    RunFactory(queue="gpu-small", state="running", enqueued_at=now - timedelta(minutes=9))
    second = RunFactory(queue="gpu-small", enqueued_at=now - timedelta(minutes=1))
    third = RunFactory(queue="gpu-small", enqueued_at=second.enqueued_at)
    assert [runs.queue_position(r) for r in (first, second, third)] == [1, 2, 3]
    assert runs.queue_position(running_run()) is None


# --- reconciler -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reconciler_pass_dispatches_unsent_runs_as_their_queue_has_room(settings, broker):
    # Unsent runs (a publish that failed, or runs waiting for room) are the dispatcher's: the
    # reconciler does not resend them, its pass (flow.reconcile) dispatches them by priority.
    from leaderboard import flow

    settings.TRELLIS_DISPATCH_IN_FLIGHT = 2
    now = timezone.now()
    older = RunFactory(queue="gpu-small", enqueued_at=now - timedelta(minutes=2))
    newer = RunFactory(queue="gpu-small", enqueued_at=now - timedelta(seconds=5))
    newest = RunFactory(queue="gpu-small", enqueued_at=now)
    assert runs.reconcile_runs(now).resent == []
    report = flow.reconcile()
    assert (report.resent, report.reaped, report.dispatched) == ([], [], [older.pk, newer.pk])
    assert [args[0]["run_id"] for _, args in broker("gpu-small")] == [older.pk, newer.pk]
    assert now <= EvaluationRun.objects.get(pk=older.pk).sent_at <= timezone.now()
    assert EvaluationRun.objects.get(pk=newest.pk).sent_at is None
    assert flow.reconcile().dispatched == []


@pytest.mark.django_db
def test_reconciler_resends_long_queued_runs_only_where_no_worker_is_seen(settings, broker):
    settings.TRELLIS_RESEND_AFTER = 3600
    now = timezone.now()
    old = now - timedelta(hours=2)
    idle = RunFactory(queue="gpu-large", enqueued_at=old, sent_at=old)
    busy = RunFactory(queue="gpu-small", enqueued_at=old, sent_at=old)
    # A worker on gpu-small reported ten minutes ago: its queue is only slow, not lost.
    running_run(queue="gpu-small", heartbeat_at=now - timedelta(minutes=10))
    recent = RunFactory(queue="gpu-large", enqueued_at=now, sent_at=now - timedelta(minutes=5))

    report = runs.reconcile_runs(now)
    assert report.resent == [idle.pk]
    assert [args[0]["run_id"] for _, args in broker("gpu-large")] == [idle.pk]
    assert broker("gpu-small") == []
    assert EvaluationRun.objects.get(pk=busy.pk).sent_at == old
    assert EvaluationRun.objects.get(pk=recent.pk).sent_at == now - timedelta(minutes=5)


@pytest.mark.django_db
def test_reconciler_reaps_runs_whose_heartbeat_stopped(settings, failed_run, submitter):
    settings.TRELLIS_HEARTBEAT_TIMEOUT = 900
    settings.TRELLIS_MAX_ATTEMPTS = 1  # no retry left: reaped means failed (retries: test_faults)
    settings.CELERY_TASK_TIME_LIMIT = 4 * 3600
    now = timezone.now()
    silent = running_run(
        submission=SubmissionFactory(submitter=submitter, state="running"),
        started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(seconds=901),
    )
    over_time = running_run(
        started_at=now - timedelta(hours=5), heartbeat_at=now - timedelta(hours=4, minutes=30)
    )
    alive = running_run(
        started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(seconds=60)
    )

    report = runs.reconcile_runs(now)
    assert sorted(report.reaped) == sorted([silent.pk, over_time.pk])
    silent.refresh_from_db()
    assert (silent.state, silent.failure_code) == ("failed", "worker_lost")
    assert silent.failure_reason == (
        "The worker stopped reporting: it was killed or lost its connection. "
        "No progress for 900 seconds (attempt 1 of 1)."
    )
    assert silent.submission.state == "failed"
    assert EvaluationRun.objects.get(pk=over_time.pk).failure_code == "time_limit"
    assert EvaluationRun.objects.get(pk=alive.pk).state == "running"
    # A reaped run is an ordinary failed run: its submitter may re-queue it.
    assert runs.requeue_refusal(silent, submitter) is None
    assert runs.reconcile_runs(now).reaped == []


def test_the_reconciler_runs_on_the_beat_schedule():
    from leaderboard.celery import app

    entry = app.conf.beat_schedule["reconcile-evaluation-runs"]
    assert entry["task"] == "evaluations.reconcile"
    assert entry["schedule"] == 60.0
    assert app.amqp.router.route({}, "evaluations.reconcile")["queue"].name == "trellis"
    assert app.amqp.router.route({}, "evaluations.ingest_result")["queue"].name == "trellis"
    assert app.amqp.router.route({}, "evaluations.evaluate")["queue"].name == "gpu-small"
