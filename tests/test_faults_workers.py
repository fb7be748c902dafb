"""Faults injected into real processes on loopback, each test bounded in time: SIGTERM to idle
workers on both brokers, Redis restarted without its data while runs are queued and one runs,
the whole GPU worker killed with SIGKILL, a GPU worker frozen with SIGSTOP. The rules these rely
on are tested without processes in tests/test_faults.py; what happened is in docs/operations.md.

The Redis of these tests is a private redis-server on a free port (the machine's shared one is
never restarted)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from leaderboard.evaluations.models import EvaluationRun, TaskScore
from tests.conftest import service_unavailable
from tests.test_evaluation_worker import (
    LIMIT,
    _database_url,
    app_broker,
    gpu_python,
    wait_for,
)
from tests.tiny_model import TINY_REPO_ID, build_tiny_repo

ROOT = Path(__file__).resolve().parent.parent
# The documented grace periods (deploy/systemd: TimeoutStopSec of each unit).
GRACE = {"web": 300.0, "gpu": 60.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, without persistence, that can be restarted empty."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        command = [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder),
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("the private redis-server did not start")

    def shutdown_nosave(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=20,
        )
        assert self.process is not None
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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


class Deployment:
    """The worker processes of one deployment on one broker: web-side workers (the test
    database; optionally with beat embedded, as `make worker` runs it) and GPU workers (no
    database settings at all)."""

    def __init__(self, broker_url: str, tmp_path: Path, models: Path, **env: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.suffix = suffix
        self.web_queue, self.gpu_queue = f"trellis-{suffix}", f"gpu-small-{suffix}"
        self.tmp_path = tmp_path
        self.artifact_root = tmp_path / "artifacts"
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        common = {
            "CELERY_BROKER_URL": broker_url,
            "TRELLIS_WEB_QUEUE": self.web_queue,
            "TRELLIS_QUEUE_SMALL": self.gpu_queue,
            "TRELLIS_ARTIFACT_ROOT": str(self.artifact_root),
            "TRELLIS_VAR_DIR": str(tmp_path / "var"),
            "TRELLIS_MODEL_ROOT": str(models),
            # Short evaluations: two documents per task (the web side builds the jobs, also
            # those it sends again), no contamination reference sets.
            "TRELLIS_EVAL_LIMIT": str(LIMIT),
            "TRELLIS_REFERENCE_ITEMS": "0",
            **env,
        }
        self.web_env = {
            **os.environ,
            **common,
            "CELERY_RESULT_BACKEND": "cache+memory://",
            "TRELLIS_MODEL_SOURCE": "local",
            "TRELLIS_DB_CONN_MAX_AGE": "0",
            "DATABASE_URL": _database_url(),
        }
        no_database = ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PGHOST", "PGUSER", "PGPASSWORD")
        self.gpu_env = {k: v for k, v in os.environ.items() if k not in no_database} | common
        self.processes: list[tuple[subprocess.Popen, Path]] = []

    def _start(self, command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = self.tmp_path / f"{name}-{len(self.processes)}.log"
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.processes.append((process, log))
        return process

    def web(self, *, beat: bool = False) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "celery", "-A", "leaderboard", "worker",
            f"--queues={self.web_queue}", f"--hostname=web-{self.suffix}-{len(self.processes)}@%h",
            "--pool=prefork", "--concurrency=1", "--loglevel=INFO",
        ]  # fmt: skip
        if beat:
            command += ["-B", f"--schedule={self.tmp_path / 'celerybeat-schedule'}"]
        return self._start(command, self.web_env, "web")

    def gpu(self) -> subprocess.Popen:
        command = [
            gpu_python(), "-m", "celery", "-A", "evaluator.worker", "worker",
            f"--queues={self.gpu_queue}", f"--hostname=gpu-{self.suffix}-{len(self.processes)}@%h",
            "--pool=prefork", "--concurrency=1", "--loglevel=INFO",
        ]  # fmt: skip
        return self._start(command, self.gpu_env, "gpu")

    def log_of(self, process: subprocess.Popen) -> Path:
        return next(log for p, log in self.processes if p is process)

    @property
    def logs(self) -> list[Path]:
        return [log for _, log in self.processes]

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a frozen one must be able to stop
                process.send_signal(signal.SIGTERM)
        for process, _ in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(deployment: Deployment, process: subprocess.Popen, timeout: float = 120) -> None:
    log = deployment.log_of(process)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        return " ready." in log.read_text()

    wait_for(ready, timeout, f"{log.name} to be ready", [log])


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
@pytest.mark.parametrize("broker", ["filesystem", "redis"])
@pytest.mark.django_db(transaction=True)
def test_sigterm_stops_idle_workers_within_their_grace_every_time(
    broker, tmp_path, private_redis, tiny_models
):
    """20 rounds: a web-side worker with beat embedded (as `make worker` runs it) and a GPU
    worker start, the web side runs a reconciler pass (so the stop comes just after a task
    finished, with beat still sending), then both get SIGTERM. Each must be gone well inside
    its unit's TimeoutStopSec, with exit status 0."""
    url = private_redis.url if broker == "redis" else "filesystem://"
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


def signal_tree(process: subprocess.Popen, sig: int) -> None:
    """`sig` to a worker and its pool processes at once, as a host losing power or a frozen VM."""
    import psutil

    parent = psutil.Process(process.pid)
    for child in [parent, *parent.children(recursive=True)]:
        os.kill(child.pid, sig)


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
