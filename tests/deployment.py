"""Real worker processes for the fault tests, started on loopback: a private redis-server that
can be restarted empty, the web-side and GPU workers of one deployment on one broker, and the
signals an operator or a failing host sends them. Used by tests/test_faults_workers.py and
tests/test_faults_database.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.test_evaluation_worker import LIMIT, _database_url, gpu_python, wait_for

ROOT = Path(__file__).resolve().parent.parent


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


class Deployment:
    """The worker processes of one deployment on one broker: web-side workers (the test
    database, or `database_url`; optionally with beat embedded, as `make worker` runs it) and
    GPU workers (no database settings at all)."""

    def __init__(
        self,
        broker_url: str,
        tmp_path: Path,
        models: Path,
        database_url: str | None = None,
        **env: str,
    ) -> None:
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
            "DATABASE_URL": database_url or _database_url(),
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


def signal_tree(process: subprocess.Popen, sig: int) -> None:
    """`sig` to a worker and its pool processes at once, as a host losing power or a frozen VM."""
    import psutil

    parent = psutil.Process(process.pid)
    for child in [parent, *parent.children(recursive=True)]:
        os.kill(child.pid, sig)
