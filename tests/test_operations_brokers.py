"""RabbitMQ, the documented alternative broker, tried once for real: a report published through
the RabbitMQ on 127.0.0.1:5672 waits on its queue (counted by /healthz over AMQP) until a real
web-side worker, started on that broker, consumes it and records it in the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.db import connection

from evaluator.messages import STARTED_TASK, Started
from leaderboard.evaluations.models import EvaluationRun
from tests.conftest import service_unavailable
from tests.factories import RunFactory
from tests.test_operations import use_broker

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = os.environ.get("TRELLIS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def rabbitmq_url() -> str:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        service_unavailable("RabbitMQ", exc)
    return RABBITMQ_URL


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_report_travels_through_rabbitmq_to_a_real_web_side_worker(
    rabbitmq_url, tmp_path, anonymous_client, settings, monkeypatch
):
    from kombu import Connection, Exchange, Queue

    web_queue = f"trellis-{uuid.uuid4().hex[:8]}"
    run = RunFactory(state="queued", queue="gpu-small", attempt=1)
    # Declared as the worker will declare it (Celery's default for a named queue), so the
    # message has somewhere to wait before any worker runs.
    with Connection(rabbitmq_url) as conn:
        Queue(web_queue, Exchange(web_queue), routing_key=web_queue)(conn.default_channel).declare()
    # The connection is given explicitly: CELERY_BROKER_URL in the environment (the tests'
    # in-memory broker) would win over a broker named to the app.
    sender = Celery("trellis-test")
    message = Started(run_id=run.pk, attempt=1, worker="gpu@rabbit-host").to_message()
    with sender.connection_for_write(rabbitmq_url) as conn:
        sender.send_task(STARTED_TASK, args=[message], queue=web_queue, connection=conn)

    # The message waits on its queue; /healthz counts it over AMQP.
    use_broker(monkeypatch, rabbitmq_url)
    settings.CELERY_TASK_DEFAULT_QUEUE = web_queue
    health = anonymous_client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["queues"][web_queue] == 1

    env = {
        **os.environ,
        "CELERY_BROKER_URL": rabbitmq_url,
        "CELERY_RESULT_BACKEND": "cache+memory://",
        "DATABASE_URL": _database_url(),
        "TRELLIS_WEB_QUEUE": web_queue,
        "TRELLIS_VAR_DIR": str(tmp_path / "var"),
        "TRELLIS_DB_CONN_MAX_AGE": "0",
    }
    log = tmp_path / "web-worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "leaderboard", "worker", f"--queues={web_queue}",
        f"--hostname=web-{web_queue}@%h", "--pool=solo", "--loglevel=INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.state == "running":
                break
            assert worker.poll() is None, log.read_text()
            time.sleep(0.3)
        assert (run.state, run.worker) == ("running", "gpu@rabbit-host"), log.read_text()[-3000:]
        assert anonymous_client.get("/healthz").json()["queues"][web_queue] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        with Connection(rabbitmq_url) as conn:
            conn.default_channel.queue_delete(web_queue)
    assert worker.returncode == 0, log.read_text()[-3000:]
    assert "evaluations.mark_started" in log.read_text()
    assert EvaluationRun.objects.get(pk=run.pk).submission.state == "running"
