"""PostgreSQL stopped and started again under the web process (gunicorn with the deploy
config): while it is down every page is a 503 with a clear message and /healthz names the
database; when it is back the web answers by itself, nothing restarted. Under traffic: no
accepted submission is lost, none made during the outage is half-saved, and a worker's result
reported during it is ingested once the database is back (the web-side worker retries it). The
PostgreSQL is a private cluster on a free port (the machine's shared one is never stopped)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_unavailable
from tests.deployment import Deployment, wait_ready
from tests.factories import quick_payload
from tests.tiny_model import TINY_REPO_ID, build_tiny_repo

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PrivatePostgres:
    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.folder, self.bin = folder, bin_dir
        self.port = _free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/trellis"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_owner, *command], check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        self.folder.mkdir(parents=True)
        if self.as_owner:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-A", "trust",
                  "-U", "postgres")  # fmt: skip
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "trellis")  # fmt: skip
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-o", options,
                  "-l", str(self.folder / "server.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                  "-w", "stop")  # fmt: skip


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None or shutil.which("runuser") is None:
        service_unavailable("PostgreSQL server binaries", FileNotFoundError("initdb/runuser"))
    folder = Path("/tmp") / f"trellis-pg-{os.getpid()}-{_free_port()}"
    database = PrivatePostgres(folder, bin_dir).init()
    yield database
    with contextlib.suppress(subprocess.CalledProcessError):
        database.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _get(url: str, **request: Any) -> tuple[int, str, dict[str, str]]:
    """GET `url` (or the request `request` describes: data, headers, method)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, **request), timeout=90) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)
    except urllib.error.URLError:  # not listening (yet)
        return 0, "", {}


def _wait(predicate, timeout: float, what: str, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


@pytest.mark.worker
def test_the_web_answers_503_while_postgresql_is_down_and_recovers_by_itself(
    private_postgres, tmp_path
):
    env = {
        **os.environ,
        "DATABASE_URL": private_postgres.url,
        "TRELLIS_DEBUG": "0",
        "TRELLIS_VAR_DIR": str(tmp_path / "var"),
        # Connections kept between requests, as in production: a restart breaks them.
        "TRELLIS_DB_CONN_MAX_AGE": "60",
        "CELERY_BROKER_URL": "memory://",
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py"],
        cwd=ROOT, env=env | {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _get(base + "/healthz")[0] == 200, 120, "the web process", log)
        for _ in range(4):  # every gunicorn process holds a connection now
            assert _get(base + "/")[0] == 200

        private_postgres.stop()
        for _ in range(4):
            status, body, headers = _get(base + "/")
            assert status == 503, body[:500]
            assert "Trellis cannot reach its database right now" in body
            assert headers["Retry-After"] == "30"
        status, body, _ = _get(base + "/api/v1/leaderboard")
        assert status == 503 and '"code": "unavailable"' in body
        status, body, _ = _get(base + "/healthz")
        assert status == 503 and '"down": ["database"]' in body

        private_postgres.start()
        recovered = _wait(
            lambda: all(_get(base + "/")[0] == 200 for _ in range(4)), 60, "recovery", log
        )
        assert _get(base + "/healthz")[0] == 200
        assert server.poll() is None  # nothing restarted
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"200 again {recovered:.1f} s after PostgreSQL came back")
    assert " 500 " not in log.read_text()  # access log: a 503 each time, never a 500


def _manage(env: dict[str, str], *command: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# A submitter and an API token in the private database; the token's one showing is printed.
ISSUE_TOKEN = """
from django.contrib.auth import get_user_model
from leaderboard.accounts.models import ApiToken
user = get_user_model().objects.create_user("alice", "alice@example.org", "a long pass phrase 7")
print(ApiToken.issue(user)[1])
"""
COUNT = """
import json
from leaderboard.evaluations.models import TaskScore
from leaderboard.submissions.models import Submission
print(json.dumps({"submissions": sorted(Submission.objects.values_list("pk", flat=True)),
                  "scores": TaskScore.objects.count()}))
"""


@pytest.mark.worker
@pytest.mark.slow
def test_under_traffic_no_submission_is_lost_or_half_saved_and_a_result_waits_for_postgresql(
    private_postgres, redis_url, tmp_path
):
    """Three submissions through the API, PostgreSQL stopped: two more submissions get a 503
    (never a 500) and a GPU worker's result arrives at the web-side worker, which cannot record
    it; PostgreSQL started again: the result is ingested by a retry, the three submissions are
    there and the two refused ones are not."""
    from celery import Celery

    from evaluator.messages import RESULT_TASK, STARTED_TASK, Result, Started

    models = tmp_path / "models"
    build_tiny_repo(models)
    deployment = Deployment(redis_url, tmp_path, models, database_url=private_postgres.url)
    env = deployment.web_env | {
        "TRELLIS_DEBUG": "0",
        "TRELLIS_DB_CONN_MAX_AGE": "60",
        "TRELLIS_THROTTLE_SUBMISSIONS": "0",
    }
    _manage(env, "migrate", "--noinput", "-v0")
    token = _manage(env, "shell", "-c", ISSUE_TOKEN).splitlines()[-1]
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py"],
        cwd=ROOT, env=env | {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    sender = Celery("trellis-test")

    def report(task: str, message: dict[str, Any]) -> None:
        with sender.connection_for_write(redis_url) as conn:
            sender.send_task(task, args=[message], queue=deployment.web_queue, connection=conn)

    def submit(precision: str) -> tuple[int, str]:
        body = {"repo_id": TINY_REPO_ID, "precision": precision, "model_type": "pretrained"}
        status, text, _ = _get(
            base + "/api/v1/submissions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        return status, text

    def submission(pk: int) -> dict[str, Any]:
        status, text, _ = _get(f"{base}/api/v1/submissions/{pk}")
        return json.loads(text) if status == 200 else {}

    try:
        web = deployment.web()
        _wait(lambda: _get(base + "/healthz")[0] == 200, 120, "the web process", log)
        wait_ready(deployment, web)
        accepted = []
        for precision in ("float32", "bfloat16", "float16"):
            status, text = submit(precision)
            assert status == 201, text
            accepted.append(json.loads(text)["id"])
        run_id = submission(accepted[0])["runs"][0]["id"]
        report(STARTED_TASK, Started(run_id=run_id, attempt=1, worker="gpu@h").to_message())
        worker_log = deployment.log_of(web)
        _wait(lambda: submission(accepted[0]).get("state") == "running", 60, "started", worker_log)

        private_postgres.stop()
        stopped_at = time.monotonic()
        for precision in ("float32", "bfloat16"):  # a repeat and a new one: both refused alike
            status, text = submit(precision)
            assert status == 503, text[:500]
            assert json.loads(text)["errors"][0]["code"] == "unavailable"
        payload = quick_payload(run_id, deployment.artifact_root)
        result = Result.model_validate({"run_id": run_id, "attempt": 1, "payload": payload})
        report(RESULT_TASK, result.to_message())
        _wait(
            lambda: worker_log.read_text().count("could not be recorded (OperationalError)") >= 3,
            120,
            "the result to be retried",
            worker_log,
        )
        down_for = time.monotonic() - stopped_at

        private_postgres.start()
        ingested = _wait(
            lambda: submission(accepted[0]).get("state") == "finished", 300, "ingest", worker_log
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
        deployment.stop_all()
    counted = json.loads(_manage(env, "shell", "-c", COUNT).splitlines()[-1])
    assert counted["submissions"] == sorted(accepted)  # all three kept, nothing half-saved
    assert counted["scores"] == len(payload["tasks"])  # ingested once
    assert worker_log.read_text().count("succeeded in") >= 2  # started, then the result
    assert " 500 " not in log.read_text()
    print(
        f"down {down_for:.0f} s; the result was ingested {ingested:.1f} s after PostgreSQL "
        "came back"
    )
