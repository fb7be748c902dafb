"""Faults injected into real processes on loopback, each test bounded in time: SIGTERM to idle
workers on both brokers, Redis restarted without its data while runs are queued and one runs,
the whole GPU worker killed with SIGKILL, a GPU worker frozen with SIGSTOP. The rules these rely
on are tested without processes in tests/test_faults.py; what happened is in docs/operations.md.

The Redis of these tests is a private redis-server on a free port (the machine's shared one is
never restarted). The processes are started by tests/deployment.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from leaderboard.evaluations.models import EvaluationRun, TaskScore
from tests.conftest import service_unavailable
from tests.deployment import Deployment, PrivateRedis, signal_tree, wait_ready
from tests.test_evaluation_worker import LIMIT, app_broker, wait_for
from tests.test_operations_brokers import rabbitmq_url  # noqa: F401 (a fixture)
from tests.tiny_model import TINY_REPO_ID, build_tiny_repo

# The documented grace periods (deploy/systemd: TimeoutStopSec of each unit).
GRACE = {"web": 300.0, "gpu": 60.0}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server", FileNotFoundError("redis-server is not installed"))
    folder = tmp_path / "redis"
    folder.mkdir()
    redis = PrivateRedis(folder).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fault-models")
    build_tiny_repo(root)
    return root


def delete_queues(url: str, queues: list[str]) -> None:
    from kombu import Connection

    with Connection(url) as conn:
        for queue in queues:
            conn.default_channel.queue_delete(queue)


# --- 0. stopping is clean ------------------------------------------------------------------------

ROUNDS = int(os.environ.get("TRELLIS_FAULT_ROUNDS", "20"))
BATCH = 5  # deployments started side by side, so 20 rounds fit in the test's time


def _exit_times(processes: dict[str, subprocess.Popen], limit: float) -> dict[str, float]:
    """SIGTERM to every process at once; seconds until each is gone (inf past `limit`)."""
    started = time.monotonic()
    for process in processes.values():
        process.send_signal(signal.SIGTERM)
    gone: dict[str, float] = {}
    while len(gone) < len(processes) and time.monotonic() - started < limit:
        for name, process in processes.items():
            if name not in gone and process.poll() is not None:
                gone[name] = time.monotonic() - started
        time.sleep(0.05)
    return {name: gone.get(name, float("inf")) for name in processes}


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.parametrize("broker", ["filesystem", "redis", "rabbitmq"])
@pytest.mark.django_db(transaction=True)
def test_sigterm_stops_idle_workers_within_their_grace_every_time(
    broker, tmp_path, private_redis, tiny_models, request
):
    """TRELLIS_FAULT_ROUNDS (20) rounds: a web-side worker with beat embedded (as `make worker`
    runs it) and a GPU worker start, the web side runs a reconciler pass (so the stop comes just
    after a task finished, with beat still sending), then both get SIGTERM. Each must be gone
    well inside its unit's TimeoutStopSec, with exit status 0. RabbitMQ is the machine's own
    (tests/test_operations_brokers.py); each deployment's queues are deleted afterwards."""
    url = {
        "filesystem": "filesystem://",
        "redis": private_redis.url,
        "rabbitmq": request.getfixturevalue("rabbitmq_url") if broker == "rabbitmq" else "",
    }[broker]
    times: dict[str, list[float]] = {"web": [], "gpu": []}
    for batch in range(-(-ROUNDS // BATCH)):
        # Beat every 5 s: a reconciler pass has just run, or is being sent, when SIGTERM comes.
        deployments = [
            Deployment(
                url,
                tmp_path / f"round-{batch}-{i}",
                tiny_models,
                TRELLIS_RECONCILE_INTERVAL="5",
            )
            for i in range(min(BATCH, ROUNDS))
        ]
        try:
            processes: dict[str, subprocess.Popen] = {}
            for i, deployment in enumerate(deployments):
                processes[f"web-{i}"] = deployment.web(beat=True)
                processes[f"gpu-{i}"] = deployment.gpu()
            for i, deployment in enumerate(deployments):
                web, gpu = processes[f"web-{i}"], processes[f"gpu-{i}"]
                wait_ready(deployment, web, timeout=300)
                wait_ready(deployment, gpu, timeout=300)
                log = deployment.log_of(web)
                wait_for(
                    lambda log=log: re.search(
                        r"Task evaluations\.reconcile\[[^]]+\] succeeded", log.read_text()
                    ),
                    120,
                    "a reconciler pass",
                    [log],
                )
            exits = _exit_times(processes, GRACE["gpu"])
            for name, seconds in exits.items():
                times[name.split("-")[0]].append(round(seconds, 1))
            codes = {name: process.returncode for name, process in processes.items()}
            assert set(codes.values()) == {0}, codes
        finally:
            for deployment in deployments:
                deployment.stop_all()
                if broker == "rabbitmq":
                    delete_queues(url, [deployment.web_queue, deployment.gpu_queue])
    print(f"SIGTERM to exit (s), {broker}: {times}")
    assert len(times["web"]) == len(times["gpu"]) >= ROUNDS
    assert max(times["gpu"]) < GRACE["gpu"] and max(times["web"]) < GRACE["gpu"], times


# --- 2. Redis restarted without its data ---------------------------------------------------------


@contextmanager
def runs_sent_through(url: str, settings: Any, deployment: Deployment, models: Path):
    from leaderboard.catalog.sources import _source_for

    settings.TRELLIS_MODEL_SOURCE = "local"
    settings.TRELLIS_MODEL_ROOT = models
    settings.TRELLIS_ARTIFACT_ROOT = deployment.artifact_root
    settings.TRELLIS_QUEUE_SMALL = deployment.gpu_queue
    settings.CELERY_TASK_DEFAULT_QUEUE = deployment.web_queue
    settings.TRELLIS_EVAL_LIMIT = LIMIT
    _source_for.cache_clear()
    with app_broker(url):
        yield
    _source_for.cache_clear()


def new_runs(n: int) -> list[EvaluationRun]:
    from leaderboard.evaluations.runs import create_run_for
    from tests.factories import RepositoryFactory, SubmissionFactory

    repository = RepositoryFactory(repo_id=TINY_REPO_ID)
    return [
        create_run_for(
            SubmissionFactory(repository=repository, precision=precision), suite_name="quick"
        )
        for precision in ("float32", "bfloat16", "float16")[:n]
    ]


def states(runs: list[EvaluationRun]) -> list[str]:
    return [EvaluationRun.objects.values_list("state", flat=True).get(pk=r.pk) for r in runs]


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_redis_restarted_without_data_every_run_finishes_once(
    tmp_path, private_redis, tiny_models, settings
):
    """Default settings (reconciler every 60 s, TRELLIS_RESEND_AFTER 6 h, two runs in flight
    per queue): three runs, one running, one sent and waiting in Redis, one waiting in the
    database; then `redis-cli shutdown nosave` and a fresh, empty Redis. The lost message is
    sent again within three reconciler passes and every run finishes once."""
    deployment = Deployment(private_redis.url, tmp_path, tiny_models)
    try:
        web, gpu = deployment.web(beat=True), deployment.gpu()
        wait_ready(deployment, web)
        wait_ready(deployment, gpu)
        with runs_sent_through(private_redis.url, settings, deployment, tiny_models):
            runs = new_runs(3)
            wait_for(lambda: "running" in states(runs), 300, "a run to start", deployment.logs)
            assert states(runs).count("queued") == 2
            sent = EvaluationRun.objects.filter(pk__in=[r.pk for r in runs], sent_at__isnull=False)
            assert sent.count() == 2  # the running one and the one waiting in Redis
            private_redis.shutdown_nosave()
            lost_at = time.monotonic()
            private_redis.start()
            wait_for(
                lambda: all(s in ("finished", "failed") for s in states(runs)),
                1500,
                "every run to end",
                deployment.logs,
            )
            ended_after = time.monotonic() - lost_at
    finally:
        deployment.stop_all()
    for run in runs:
        run.refresh_from_db()
        assert run.state == "finished", (run.pk, run.failure_reason, run.log_tail)
    # Once each: one set of scores per run, no duplicate ingest.
    per_run = {r.pk: TaskScore.objects.filter(run=r).count() for r in runs}
    assert len(set(per_run.values())) == 1 and next(iter(per_run.values())) > 0, per_run
    web_log = deployment.log_of(web).read_text()
    print(f"all three finished {ended_after:.0f} s after Redis lost its data")
    assert "reconciler: resent" in web_log


# --- 1. the whole GPU worker killed; 4. a GPU worker frozen --------------------------------------

# The reaper's thresholds shortened so a lost worker is noticed in seconds (the minimum
# heartbeat timeout is 30 s); the workers beat every sixth of it.
QUICK_REAPER = {"TRELLIS_HEARTBEAT_TIMEOUT": "30", "TRELLIS_RECONCILE_INTERVAL": "5"}


def the(run: EvaluationRun) -> EvaluationRun:
    return EvaluationRun.objects.get(pk=run.pk)


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_killed_gpu_worker_run_is_retried_on_another_worker_as_the_next_attempt(
    tmp_path, private_redis, tiny_models, settings
):
    settings.TRELLIS_HEARTBEAT_TIMEOUT = 30
    deployment = Deployment(private_redis.url, tmp_path, tiny_models, **QUICK_REAPER)
    try:
        web, first = deployment.web(beat=True), deployment.gpu()
        wait_ready(deployment, web)
        wait_ready(deployment, first)
        with runs_sent_through(private_redis.url, settings, deployment, tiny_models):
            [run] = new_runs(1)
            wait_for(lambda: the(run).state == "running", 180, "the run to start", deployment.logs)
            assert the(run).attempt == 1
            signal_tree(first, signal.SIGKILL)
            killed_at = time.monotonic()
            deployment.gpu()  # another worker (hostname index 2)
            wait_for(lambda: the(run).attempt == 2, 120, "the retry", deployment.logs)
            retried_after = time.monotonic() - killed_at
            wait_for(
                lambda: the(run).state in ("finished", "failed"), 600, "the end", deployment.logs
            )
    finally:
        deployment.stop_all()
    run.refresh_from_db()
    assert (run.state, run.attempt) == ("finished", 2), (run.failure_reason, run.log_tail)
    assert run.worker.startswith(f"gpu-{deployment.suffix}-2@")  # not the killed one (-1)
    assert TaskScore.objects.filter(run=run).count() > 0
    print(f"retried as attempt 2 {retried_after:.0f} s after SIGKILL (heartbeat timeout 30 s)")


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_frozen_worker_is_reaped_and_its_late_result_changes_nothing(
    tmp_path, private_redis, tiny_models, settings
):
    settings.TRELLIS_HEARTBEAT_TIMEOUT = 30
    deployment = Deployment(private_redis.url, tmp_path, tiny_models, **QUICK_REAPER)
    try:
        web, frozen = deployment.web(beat=True), deployment.gpu()
        wait_ready(deployment, web)
        wait_ready(deployment, frozen)
        with runs_sent_through(private_redis.url, settings, deployment, tiny_models):
            [run] = new_runs(1)
            wait_for(lambda: the(run).state == "running", 180, "the run to start", deployment.logs)
            signal_tree(frozen, signal.SIGSTOP)
            wait_for(lambda: the(run).attempt == 2, 120, "the reaper", deployment.logs)
            deployment.gpu()
            wait_for(
                lambda: the(run).state in ("finished", "failed"), 600, "attempt 2", deployment.logs
            )
            finished = the(run)
            scores = sorted(TaskScore.objects.filter(run=run).values_list("task", "value"))
            signal_tree(frozen, signal.SIGCONT)
            web_log = deployment.log_of(web)
            # The old worker finishes attempt 1 and reports it: the web side answers "stale".
            wait_for(
                lambda: re.search(
                    r"Task evaluations\.ingest_result\[[^]]+\] succeeded in [0-9.]+s: 'stale'",
                    web_log.read_text(),
                ),
                600,
                "the frozen worker's late result",
                deployment.logs,
            )
    finally:
        deployment.stop_all()
    assert (finished.state, finished.attempt) == ("finished", 2)
    after = the(run)
    assert (after.state, after.attempt, after.worker) == ("finished", 2, finished.worker)
    assert after.payload == finished.payload and after.finished_at == finished.finished_at
    assert sorted(TaskScore.objects.filter(run=run).values_list("task", "value")) == scores


# --- 0. SIGTERM to a GPU worker mid-run ----------------------------------------------------------


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_sigterm_to_a_gpu_worker_mid_run_hands_its_run_back_within_the_grace(
    tmp_path, private_redis, tiny_models, settings
):
    """A GPU worker gets SIGTERM while it evaluates: it exits (status 0) well inside its unit's
    TimeoutStopSec, the message goes back to the queue, and a worker started afterwards finishes
    the same attempt once (default settings: no reaper, no new attempt)."""
    deployment = Deployment(private_redis.url, tmp_path, tiny_models)
    try:
        web, first = deployment.web(beat=True), deployment.gpu()
        wait_ready(deployment, web)
        wait_ready(deployment, first)
        with runs_sent_through(private_redis.url, settings, deployment, tiny_models):
            [run] = new_runs(1)
            wait_for(lambda: the(run).state == "running", 300, "the run to start", deployment.logs)
            first_start = the(run).started_at
            exits = _exit_times({"gpu": first}, GRACE["gpu"])
            assert first.returncode == 0, deployment.log_of(first).read_text()[-3000:]
            deployment.gpu()  # a restarted worker (hostname index 2)
            wait_for(
                lambda: the(run).started_at != first_start, 300, "the run again", deployment.logs
            )
            wait_for(
                lambda: the(run).state in ("finished", "failed"), 900, "the end", deployment.logs
            )
    finally:
        deployment.stop_all()
    run.refresh_from_db()
    assert (run.state, run.attempt) == ("finished", 1), (run.failure_reason, run.log_tail)
    assert run.worker.startswith(f"gpu-{deployment.suffix}-2@")  # the restarted worker
    suite_tasks = TaskScore.objects.filter(run=run).values_list("task", flat=True)
    assert len(suite_tasks) == len(set(suite_tasks)) > 0  # one set of scores
    assert exits["gpu"] < GRACE["gpu"], exits
    print(
        f"the GPU worker exited {exits['gpu']:.1f} s after SIGTERM mid-run; run finished as "
        f"attempt 1 on the restarted worker"
    )


# --- 1. a job that kills its worker every time ---------------------------------------------------


def pool_child(process: subprocess.Popen) -> int | None:
    import psutil

    children = psutil.Process(process.pid).children()
    return children[0].pid if children else None


def broker_holds(url: str, queue: str) -> int:
    """Messages for `queue` still in Redis: waiting on it (every priority list) or taken and not
    yet acknowledged (kombu's `unacked` hash)."""
    import redis

    client = redis.Redis.from_url(url)
    waiting = sum(client.llen(key) for key in client.scan_iter(f"{queue}*"))
    unacked = [raw for raw in client.hvals("unacked") if queue.encode() in raw]
    return waiting + len(unacked)


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_job_that_kills_its_worker_every_time_fails_as_worker_lost_and_the_queue_drains(
    tmp_path, private_redis, tiny_models, settings
):
    """Each time the doomed run starts, its pool process is killed (as the OOM killer would):
    each attempt is sent again once (LOST_POOL_RETRIES), then reaped and queued as the next
    attempt, and after TRELLIS_MAX_ATTEMPTS (2 here) it fails with worker_lost. Nothing is left
    in the broker for it, and the run queued behind it finishes."""
    from evaluator.worker import LOST_POOL_RETRIES

    settings.TRELLIS_HEARTBEAT_TIMEOUT = 30
    settings.TRELLIS_MAX_ATTEMPTS = 2
    deployment = Deployment(
        private_redis.url, tmp_path, tiny_models, **QUICK_REAPER, TRELLIS_MAX_ATTEMPTS="2"
    )
    kills: list[tuple[int, int]] = []  # (attempt, pool pid) of each kill
    try:
        web, gpu = deployment.web(beat=True), deployment.gpu()
        wait_ready(deployment, web)
        wait_ready(deployment, gpu)
        with runs_sent_through(private_redis.url, settings, deployment, tiny_models):
            doomed, behind = new_runs(2)
            started = time.monotonic()
            seen = None

            def kill_each_start() -> bool:
                nonlocal seen
                run = the(doomed)
                if run.state == "running" and run.started_at != seen:
                    pid = pool_child(gpu)
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    kills.append((run.attempt, pid))
                    seen = run.started_at
                return run.state == "failed" and the(behind).state in ("finished", "failed")

            wait_for(kill_each_start, 1500, "the doomed run to fail", deployment.logs)
            ended_after = time.monotonic() - started
            held = broker_holds(private_redis.url, deployment.gpu_queue)
    finally:
        deployment.stop_all()
    doomed.refresh_from_db()
    behind.refresh_from_db()
    assert (doomed.state, doomed.failure_code, doomed.attempt) == ("failed", "worker_lost", 2)
    assert doomed.failure_reason.endswith("(attempt 2 of 2)."), doomed.failure_reason
    # Every start of the doomed run was killed, attempt 1 then attempt 2. Each message of an
    # attempt is tried 1 + LOST_POOL_RETRIES times; a retry that waited behind the other run
    # may find its attempt already reaped (it then starts nothing, evaluated in vain), and a
    # reconciler pass that gets no answer from a busy worker sends an attempt a second time.
    attempts = [attempt for attempt, _ in kills]
    assert attempts == sorted(attempts) and attempts[0] == 1 and attempts[-1] == 2, kills
    assert len(kills) <= 2 * (1 + LOST_POOL_RETRIES) * 2, kills
    assert TaskScore.objects.filter(run=doomed).count() == 0
    assert held == 0
    assert behind.state == "finished", (behind.failure_reason, behind.log_tail)
    assert TaskScore.objects.filter(run=behind).count() > 0
    print(f"pool processes killed at attempts {attempts}; worker_lost after {ended_after:.0f} s")


# --- 5. a pickle canary ---------------------------------------------------------------------------


class Canary:
    """Unpickled, it creates the file `path` (what a hostile pytorch_model.bin could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def canary_weights(repo: Path, canary: Path) -> None:
    import pickle

    (repo / "pytorch_model.bin").write_bytes(pickle.dumps(Canary(canary)))


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_pickle_canary_is_refused_and_never_unpickled(
    tmp_path, private_redis, settings, submitter, anonymous_client
):
    """A pytorch_model.bin whose unpickling would create a file: alone, the submission is refused
    (pickle_weights) and a GPU worker given the job anyway fails it as unsafe_weights; beside a
    valid model.safetensors, the evaluation runs on the safetensors. The file never appears."""
    import pickle

    from leaderboard.accounts.models import ApiToken
    from leaderboard.evaluations.runs import create_run_for
    from tests.factories import RepositoryFactory, SubmissionFactory

    # The canary is live: unpickling it here creates its file.
    live = tmp_path / "live-canary"
    pickle.loads(pickle.dumps(Canary(live)))
    assert live.exists()

    canary = tmp_path / "canary-was-unpickled"
    models = tmp_path / "models"
    pickled = build_tiny_repo(models, "canary/pickle-only")
    (pickled / "model.safetensors").unlink()
    canary_weights(pickled, canary)
    beside = build_tiny_repo(models, "canary/beside-safetensors")
    canary_weights(beside, canary)

    deployment = Deployment(private_redis.url, tmp_path, models)
    try:
        web, gpu = deployment.web(), deployment.gpu()
        with runs_sent_through(private_redis.url, settings, deployment, models):
            _, token = ApiToken.issue(submitter)
            response = anonymous_client.post(
                "/api/v1/submissions",
                {"repo_id": "canary/pickle-only", "precision": "float32"}
                | {"model_type": "pretrained"},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {token}",
            )
            assert response.status_code == 400, response.content
            [error] = response.json()["errors"]
            assert error["code"] == "pickle_weights", error
            assert "(pytorch_model.bin)" in error["message"]

            wait_ready(deployment, web)
            wait_ready(deployment, gpu)
            # The web checks bypassed: the worker refuses on its own.
            refused, evaluated = (
                create_run_for(
                    SubmissionFactory(repository=RepositoryFactory(repo_id=repo_id)),
                    suite_name="quick",
                )
                for repo_id in ("canary/pickle-only", "canary/beside-safetensors")
            )
            wait_for(
                lambda: {the(refused).state, the(evaluated).state} <= {"finished", "failed"},
                900,
                "both runs to end",
                deployment.logs,
            )
    finally:
        deployment.stop_all()
    refused.refresh_from_db()
    evaluated.refresh_from_db()
    assert (refused.state, refused.failure_code) == ("failed", "unsafe_weights")
    assert "It has only pytorch_model.bin." in refused.failure_reason
    assert evaluated.state == "finished", (evaluated.failure_reason, evaluated.log_tail)
    assert TaskScore.objects.filter(run=evaluated).count() > 0
    assert not canary.exists()
