"""The trust boundary for real. The GPU worker is its own Celery application (evaluator.worker):
it imports neither Django nor `leaderboard`, runs the evaluator with the database out of reach
and reports by message; the trusted web-side tasks validate and ingest what it says. End to
end, a submission through the API is evaluated by a GPU worker process started with no database
settings at all (in CI from a virtualenv holding only the worker extra) and ingested by a
web-side worker process, surviving a GPU worker killed mid-run."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery.utils.nodenames import gethostname
from django.db import connection
from kombu import pools

from evaluator import worker
from evaluator.messages import SCHEMA_VERSION
from evaluator.suites import load_suite
from leaderboard.celery import app
from leaderboard.evaluations import tasks
from leaderboard.evaluations.models import EvaluationRun, TaskScore
from tests.conftest import REQUIRE_SERVICES
from tests.factories import drain
from tests.tiny_model import TINY_REPO_ID, build_tiny_repo

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 2
RUN_ID = 4242


def job_message(model_root: Path, artifact_root: Path, **changes: Any) -> dict[str, Any]:
    """A job as the web side sends it (leaderboard/evaluations/dispatch.py)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": RUN_ID,
        "attempt": 3,
        "repo_id": TINY_REPO_ID,
        "revision": "0" * 40,
        "precision": "float32",
        "suite_name": "quick",
        "suite_version": "1",
        "model_source": "local",
        "model_path": str(model_root),
        "data_source": "local",
        "data_root": None,
        "artifact_store": str(artifact_root),
        "limit": LIMIT,
        "batch_size": None,
    } | changes


@contextmanager
def gpu_config(**changes: Any):
    """This process's GPU worker configuration with some fields replaced, for one test."""
    saved = worker.config
    worker.configure(**changes)
    try:
        yield
    finally:
        worker.config = saved


# --- the boundary in code -------------------------------------------------------------------------

# Makes `django` and `leaderboard` impossible to import, as on a GPU host with the worker extra
# alone, then imports the GPU worker's application and prints what got imported.
BLOCKED_IMPORT = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "leaderboard"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

if "--block" in sys.argv:
    sys.meta_path.insert(0, Absent())
import evaluator.worker
print(sorted(evaluator.worker.app.tasks.keys() & {"evaluations.evaluate"}))
print(sorted({m.split(".")[0] for m in sys.modules} & {"django", "leaderboard", "psycopg"}))
print(sorted(m for m in sys.modules if m.startswith(("django.conf", "django.db"))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("block", [True, False], ids=["django-absent", "django-installed"])
def test_the_gpu_worker_app_imports_neither_django_nor_leaderboard(block):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    env["CELERY_BROKER_URL"] = "memory://"
    command = [sys.executable, "-c", BLOCKED_IMPORT] + (["--block"] if block else [])
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    registered, packages, django_setup = result.stdout.splitlines()
    assert registered == "['evaluations.evaluate']"
    # kombu probes for django.utils when Django is installed; nothing reaches for the rest.
    assert packages == ("[]" if block else "['django']")
    assert django_setup == "[]"


def test_the_web_side_app_does_not_register_the_gpu_task():
    app.loader.import_default_modules()
    assert "evaluations.evaluate" not in app.tasks
    assert {
        "evaluations.mark_started",
        "evaluations.record_progress",
        "evaluations.ingest_result",
        "evaluations.record_failure",
        "evaluations.reconcile",
    } <= set(app.tasks)


# --- the GPU task in this process, the database blocked -------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-models")
    build_tiny_repo(root)
    return root


@pytest.fixture(scope="module")
def gpu_reports(tiny_model_root: Path, tmp_path_factory, django_db_blocker) -> dict[str, Any]:
    """Run the GPU task in this process with the database blocked and keep what it sent."""
    artifact_root = tmp_path_factory.mktemp("worker-artifacts")
    # The worker's own paths win over the job's (they describe the web host).
    job = job_message(Path("/web-host/models"), Path("/web-host/artifacts"))
    drain("trellis")
    here = gpu_config(artifact_root=artifact_root, model_root=tiny_model_root, web_queue="trellis")
    with django_db_blocker.block(), here:
        outcome = worker.evaluate.apply(args=[job]).get()
    return {"outcome": outcome, "messages": drain("trellis"), "artifact_root": artifact_root}


@pytest.mark.slow
def test_gpu_task_reports_by_message_without_the_database(gpu_reports):
    messages = gpu_reports["messages"]
    names = [name for name, _ in messages]
    # Any database access would have raised inside the task and ended in record_failure.
    assert gpu_reports["outcome"] == "finished"
    assert names[0] == "evaluations.mark_started"
    assert names[-1] == "evaluations.ingest_result"
    assert set(names[1:-1]) == {"evaluations.record_progress"}
    ids = {"schema_version": SCHEMA_VERSION, "run_id": RUN_ID, "attempt": 3}
    assert messages[0][1] == [ids | {"worker": gethostname()}]
    progress = [args[0] for name, args in messages if name == "evaluations.record_progress"]
    done, total = progress[-1]["done"], progress[-1]["total"]
    [result] = messages[-1][1]
    assert {key: result[key] for key in ids} == ids
    payload = result["payload"]
    # One loglikelihood request per answer choice of every document in the details artifact.
    artifact = gpu_reports["artifact_root"] / payload["artifact"]["path"]
    with gzip.open(artifact, "rt") as rows:
        choices = sum(len(json.loads(row)["choices"]) for row in rows)
    assert done == total == payload["loglikelihood_requests"] == choices
    assert sorted(t["task"] for t in payload["tasks"]) == sorted(
        t.key for t in load_suite("quick").tasks
    )


def test_gpu_task_reports_a_model_that_cannot_load(tmp_path, django_db_blocker):
    drain("trellis")
    models = tmp_path / "models"  # holds no repository
    job = job_message(tmp_path, tmp_path, repo_id="nobody/missing-model", attempt=1)
    here = gpu_config(artifact_root=tmp_path, model_root=models, web_queue="trellis")
    with django_db_blocker.block(), here:
        assert worker.evaluate.apply(args=[job]).get() == "failed"
    messages = drain("trellis")
    assert [name for name, _ in messages] == [
        "evaluations.mark_started",
        "evaluations.record_failure",
    ]
    [failure] = messages[-1][1]
    assert (failure["run_id"], failure["attempt"], failure["code"]) == (RUN_ID, 1, "model_load")
    assert failure["message"] == (
        f"There is no repository folder for nobody/missing-model at {models}."
    )


def test_gpu_task_refuses_a_job_of_another_schema_version(tmp_path, django_db_blocker):
    drain("trellis")
    job = job_message(tmp_path, tmp_path, schema_version=SCHEMA_VERSION + 1, attempt=1)
    with django_db_blocker.block(), gpu_config(web_queue="trellis"):
        assert worker.evaluate.apply(args=[job]).get() == "refused"
    [(name, [failure])] = drain("trellis")
    assert (name, failure["run_id"], failure["code"]) == (
        "evaluations.record_failure",
        RUN_ID,
        "error",
    )
    assert failure["message"] == (
        "This worker could not read the job: schema_version: Input should be 2"
    )


def test_an_evaluation_killed_at_the_hard_time_limit_is_reported(django_db_blocker):
    from billiard.exceptions import TimeLimitExceeded, WorkerLostError

    job = {"run_id": RUN_ID, "attempt": 2}
    drain("trellis")
    with django_db_blocker.block(), gpu_config(web_queue="trellis"):
        # What the pool's main process calls when it kills the task at the hard limit.
        worker.evaluate.on_failure(TimeLimitExceeded(25), "task-id", [job], {}, None)
        # A lost worker is not a failure: its message goes back to the queue.
        worker.evaluate.on_failure(WorkerLostError("killed"), "task-id", [job], {}, None)
    assert drain("trellis") == [
        (
            "evaluations.record_failure",
            [
                {
                    "schema_version": SCHEMA_VERSION,
                    "run_id": RUN_ID,
                    "attempt": 2,
                    "code": "time_limit",
                    "message": "It was stopped at the hard limit of 25 s.",
                    "log_tail": "",
                }
            ],
        )
    ]


# --- the web side validates what it consumes ------------------------------------------------------

WEB_TASKS = {
    "evaluations.mark_started": tasks.mark_started,
    "evaluations.record_progress": tasks.record_progress,
    "evaluations.ingest_result": tasks.ingest_result,
    "evaluations.record_failure": tasks.record_failure,
}


@pytest.mark.slow
@pytest.mark.django_db
def test_web_side_tasks_ingest_what_the_gpu_task_sent(gpu_reports, settings):
    from tests.factories import RunFactory

    settings.TRELLIS_ARTIFACT_ROOT = gpu_reports["artifact_root"]
    RunFactory(id=RUN_ID, attempt=3, queue="gpu-small")
    messages = gpu_reports["messages"]
    outcomes = [WEB_TASKS[name].apply(args=args).get() for name, args in messages]
    assert outcomes[0] is True
    assert outcomes[-1] == "ingested"
    run = EvaluationRun.objects.get(pk=RUN_ID)
    assert (run.state, run.worker, run.submission.state) == ("finished", gethostname(), "finished")
    payload = messages[-1][1][0]["payload"]
    assert run.payload == payload
    stored = {s.task: s.value for s in TaskScore.objects.filter(run=run)}
    assert stored == {t["task"]: t["value"] for t in payload["tasks"]}
    # Redelivered, the same report changes nothing.
    assert tasks.ingest_result.apply(args=messages[-1][1]).get() == "duplicate"
    assert TaskScore.objects.filter(run=run).count() == len(stored)


def report(run_id: int, attempt: int = 1, **fields: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "attempt": attempt, **fields}


INVALID_REPORTS = [
    (
        "evaluations.record_progress",
        {"done": -1, "total": 5},
        "done: Input should be greater than or equal to 0",
    ),
    ("evaluations.mark_started", {"worker": 7}, "worker: Input should be a valid string"),
    (
        "evaluations.record_failure",
        {"code": "worker_lost", "message": "", "log_tail": ""},
        "code: Input should be 'out_of_memory', 'model_load', 'tokenizer_missing', "
        "'time_limit', 'unsafe_weights', 'data_missing' or 'error'",
    ),
    (
        "evaluations.ingest_result",
        {"payload": {"tasks": []}},
        "payload.tasks: List should have at least 1 item after validation, not 0",
    ),
    ("evaluations.record_progress", {"done": 1, "total": 2, "gpu": 0}, "gpu: Extra inputs"),
    (
        "evaluations.record_progress",
        {"done": 1, "total": 2, "schema_version": 1},
        "schema_version: Input should be 2",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("task", "fields", "problem"), INVALID_REPORTS)
def test_a_report_that_fails_the_schema_fails_the_run_it_names(task, fields, problem):
    from tests.factories import RunFactory

    run = RunFactory(state="running", queue="gpu-small")
    assert WEB_TASKS[task].apply(args=[report(run.pk) | fields]).get() == "rejected"
    run.refresh_from_db()
    assert (run.state, run.failure_code, run.submission.state) == (
        "failed",
        "invalid_result",
        "failed",
    )
    assert problem in run.log_tail
    assert run.failure_reason.startswith("The worker's result did not pass validation. ")


@pytest.mark.django_db
def test_a_report_naming_no_run_is_dropped_and_one_for_an_old_attempt_changes_nothing():
    from tests.factories import RunFactory

    run = RunFactory(state="running", queue="gpu-small", attempt=2)
    assert tasks.ingest_result.apply(args=[["not", "a", "message"]]).get() == "rejected"
    assert tasks.record_progress.apply(args=[{"done": 1}]).get() == "rejected"
    stale = report(run.pk, attempt=1, done=-1, total=2)
    assert tasks.record_progress.apply(args=[stale]).get() == "rejected"
    run.refresh_from_db()
    assert (run.state, run.failure_code) == ("running", "")


# --- real worker processes ------------------------------------------------------------------------


def _database_url() -> str:
    """The URL of the test database this process uses, for the web-side worker."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


@contextmanager
def app_broker(url: str):
    """Point this process's Celery app at `url` (the tests default to the in-memory broker).
    Celery reads CELERY_BROKER_URL from the environment before its configuration."""

    def reset() -> None:
        # kombu keeps connection and producer pools per broker URL process-wide: drop them
        # all, then each app (the web side's, and the GPU worker's that in-process tests run)
        # builds new ones for the current URL instead of acquiring from a closed pool.
        pools.reset()
        for celery_app in (app, worker.app):
            celery_app._pool = None
            celery_app.amqp._producer_pool = None

    saved = os.environ.get("CELERY_BROKER_URL"), app.conf.broker_transport_options
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_transport_options = {}
    reset()
    try:
        yield
    finally:
        if saved[0] is None:
            del os.environ["CELERY_BROKER_URL"]
        else:
            os.environ["CELERY_BROKER_URL"] = saved[0]
        app.conf.broker_transport_options = saved[1]
        reset()


def start_worker(
    python: str, app_name: str, name: str, queues: str, env: dict[str, str], log: Path, pool: str
) -> subprocess.Popen:
    command = [
        python, "-m", "celery", "-A", app_name, "worker",
        f"--queues={queues}", f"--hostname={name}@%h", f"--pool={pool}", "--concurrency=1",
        "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def gpu_python() -> str:
    """The interpreter of the GPU worker: TRELLIS_GPU_PYTHON, a virtualenv holding the worker
    extra alone (CI builds .venv-gpu), which must not be able to import Django; else, on a
    developer machine, this one."""
    python = os.environ.get("TRELLIS_GPU_PYTHON")
    if not python:
        if REQUIRE_SERVICES:
            pytest.fail("CI runs the GPU worker from .venv-gpu: set TRELLIS_GPU_PYTHON")
        return sys.executable
    probe = subprocess.run([python, "-c", "import django"], capture_output=True, text=True)
    assert probe.returncode == 1, f"{python} can import django"
    assert "No module named 'django'" in probe.stderr
    return python


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pool_children(process: subprocess.Popen) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(process.pid).children()]


def wait_for(predicate, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tails}")


@pytest.fixture
def workers(redis_url, transactional_db, tmp_path, tiny_model_root, settings):
    """A web-side worker (this virtualenv, the test database) and a GPU worker process
    (evaluator.worker, in CI from the worker-extra virtualenv) started without any database
    settings. Queue names are unique, so nothing else on the same Redis interferes."""
    suffix = uuid.uuid4().hex[:8]
    web_queue, gpu_queue = f"trellis-{suffix}", f"gpu-small-{suffix}"
    artifact_root = tmp_path / "artifacts"
    artifact_root.mkdir()
    settings.TRELLIS_MODEL_SOURCE = "local"
    settings.TRELLIS_MODEL_ROOT = tiny_model_root
    settings.TRELLIS_ARTIFACT_ROOT = artifact_root
    settings.TRELLIS_QUEUE_SMALL = gpu_queue
    settings.TRELLIS_EVAL_LIMIT = LIMIT
    from leaderboard.catalog.sources import _source_for

    _source_for.cache_clear()
    paths = {
        "CELERY_BROKER_URL": redis_url,
        "TRELLIS_WEB_QUEUE": web_queue,
        "TRELLIS_QUEUE_SMALL": gpu_queue,
        "TRELLIS_ARTIFACT_ROOT": str(artifact_root),
        "TRELLIS_VAR_DIR": str(tmp_path / "var"),
        "TRELLIS_MODEL_ROOT": str(tiny_model_root),
        # Two reference items per task: the default hundred took over four minutes on a loaded
        # 2-core machine, past this test's bound, and they are not what it is about.
        "TRELLIS_REFERENCE_ITEMS": "2",
    }
    web_env = {
        **os.environ,
        **paths,
        "CELERY_RESULT_BACKEND": "cache+memory://",
        "TRELLIS_MODEL_SOURCE": "local",
        "TRELLIS_DB_CONN_MAX_AGE": "0",
        "DATABASE_URL": _database_url(),
    }
    # No database settings at all: nothing to connect with, and no Django to connect through.
    no_database = ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PGHOST", "PGUSER", "PGPASSWORD")
    gpu_env = {k: v for k, v in os.environ.items() if k not in no_database} | paths
    logs = [tmp_path / "web-worker.log", tmp_path / "gpu-worker.log"]
    web = start_worker(
        sys.executable, "leaderboard", f"web-{suffix}", web_queue, web_env, logs[0], "solo"
    )
    gpu = start_worker(
        gpu_python(), "evaluator.worker", f"gpu-{suffix}", gpu_queue, gpu_env, logs[1], "prefork"
    )
    try:
        with app_broker(redis_url):
            yield {"gpu": gpu, "queue": gpu_queue, "logs": logs, "artifact_root": artifact_root}
    finally:
        stop(gpu)
        stop(web)
        _source_for.cache_clear()
        import redis

        client = redis.Redis.from_url(redis_url)
        # The queues and kombu's bindings of them.
        leftovers = list(client.scan_iter(f"*{suffix}*"))
        if leftovers:
            client.delete(*leftovers)


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_submission_is_evaluated_by_real_workers_and_survives_a_killed_worker(
    workers, submitter, anonymous_client
):
    from leaderboard.accounts.models import ApiToken

    _, token = ApiToken.issue(submitter)
    response = anonymous_client.post(
        "/api/v1/submissions",
        {"repo_id": TINY_REPO_ID, "precision": "float32", "model_type": "pretrained"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 201, response.content
    submission_id = response.json()["id"]
    run = EvaluationRun.objects.get(submission_id=submission_id)
    assert (run.state, run.queue) == ("queued", workers["queue"])
    logs = workers["logs"]

    def state() -> str:
        return EvaluationRun.objects.values_list("state", flat=True).get(pk=run.pk)

    wait_for(lambda: state() == "running", 120, "the run to start", logs)
    first_start = EvaluationRun.objects.get(pk=run.pk).started_at
    # Kill the pool process mid-evaluation: late acknowledgement and reject-on-worker-lost put
    # the message back, a fresh pool process takes it, and the run finishes exactly once.
    children = pool_children(workers["gpu"])
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)

    wait_for(lambda: state() in ("finished", "failed"), 300, "the run to finish", logs)
    run.refresh_from_db()
    assert run.state == "finished", (run.failure_reason, run.log_tail)
    assert run.attempt == 1
    assert run.started_at > first_start  # started again after the kill
    suite = load_suite("quick")
    scores = list(TaskScore.objects.filter(run=run))
    assert sorted(s.task for s in scores) == sorted(t.key for t in suite.tasks)
    assert all(0.0 <= s.value <= 1.0 for s in scores)
    assert (workers["artifact_root"] / run.artifact_path).is_file()
    with gzip.open(workers["artifact_root"] / run.artifact_path, "rt") as rows:
        choices = sum(len(json.loads(row)["choices"]) for row in rows)
    assert run.payload["loglikelihood_requests"] == run.progress_total == choices

    body = anonymous_client.get(f"/api/v1/submissions/{submission_id}").json()
    assert body["state"] == "finished"
    assert len(body["runs"][0]["scores"]) == len(suite.tasks)
    assert "WorkerLostError" in logs[1].read_text()


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_evaluation_past_its_time_limit_fails_with_that_reason(workers, settings):
    from leaderboard.evaluations.runs import create_run_for
    from tests.factories import RepositoryFactory, SubmissionFactory

    # open-llm-v1 without document limits is hours of work even for the tiny model: it cannot
    # finish inside the limits, whether the soft limit interrupts it or (when the soft limit
    # lands in code that swallows exceptions, such as an import probe) the hard limit kills it.
    # The limits are the sender's: they travel in the message.
    settings.TRELLIS_EVAL_LIMIT = 0
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 10
    settings.CELERY_TASK_TIME_LIMIT = 25
    submission = SubmissionFactory(
        repository=RepositoryFactory(repo_id=TINY_REPO_ID), precision="float32"
    )
    run = create_run_for(submission, suite_name="open-llm-v1")

    def state() -> str:
        return EvaluationRun.objects.values_list("state", flat=True).get(pk=run.pk)

    wait_for(lambda: state() in ("failed", "finished"), 90, "the run to end", workers["logs"])
    run.refresh_from_db()
    assert run.state == "failed"
    assert run.failure_code == "time_limit"
    assert run.failure_reason.startswith("The evaluation ran past its time limit.")
    assert run.log_tail != ""
    assert TaskScore.objects.filter(run=run).count() == 0
    assert run.submission.state == "failed"
