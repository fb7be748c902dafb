"""Production settings, login lockout, per-minute rate limits, /healthz and /metrics: through
the HTTP entry points, `manage.py check --deploy` as an operator runs it, and real gunicorn
processes sharing one Redis."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from django.urls import resolve
from django.utils import timezone

from leaderboard.accounts.models import ApiToken
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.operations import metrics, views
from tests.conftest import PASSWORD
from tests.factories import RunFactory, drain

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "TRELLIS_DEBUG": "0",
    "TRELLIS_SECURE_COOKIES": "1",
    "TRELLIS_BEHIND_TLS_PROXY": "1",
    "TRELLIS_ALLOWED_HOSTS": "leaderboard.example.org",
}


def _example_env(name: str) -> dict[str, str]:
    values = {}
    for line in (ROOT / "deploy" / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def _bare_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TRELLIS_VAR_DIR": str(tmp_path)}


# --- production settings ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("environment", ["issue command", "deploy/trellis.env.example"])
def test_check_deploy_passes_with_the_production_environment(tmp_path, environment):
    env = _bare_env(tmp_path) | PRODUCTION
    if environment != "issue command":
        env |= _example_env("trellis.env.example") | {"TRELLIS_VAR_DIR": str(tmp_path)}
    # What an operator generates; the example's placeholder is refused by W009, as it should be.
    env["TRELLIS_SECRET_KEY"] = secrets.token_urlsafe(50)
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


@pytest.mark.slow
def test_check_deploy_fails_without_the_tls_proxy_setting(tmp_path):
    env = _bare_env(tmp_path) | PRODUCTION | {"TRELLIS_BEHIND_TLS_PROXY": "0"}
    env["TRELLIS_SECRET_KEY"] = secrets.token_urlsafe(50)
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "security.W004" in done.stderr and "security.W008" in done.stderr


@pytest.mark.slow
def test_production_settings_behind_the_tls_proxy(tmp_path):
    env = _bare_env(tmp_path) | PRODUCTION | {"TRELLIS_SECRET_KEY": secrets.token_urlsafe(50)}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
        "s.SECURE_HSTS_PRELOAD, s.SECURE_PROXY_SSL_HEADER, s.PASSWORD_HASHERS[0])"
    )
    env["DJANGO_SETTINGS_MODULE"] = "leaderboard.settings"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == [
        "True", "31536000", "True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
    ]  # fmt: skip
    env["TRELLIS_HSTS_SECONDS"] = "soon"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert "ImproperlyConfigured: TRELLIS_HSTS_SECONDS='soon' is not an integer" in done.stderr


@pytest.fixture
def production_hashers(settings):
    from leaderboard import settings as production

    settings.PASSWORD_HASHERS = production.PASSWORD_HASHERS


def test_passwords_are_hashed_with_argon2_and_old_hashes_upgrade(
    production_hashers, django_user_model, anonymous_client
):
    from django.contrib.auth.hashers import make_password

    new = django_user_model.objects.create_user("dora", password=PASSWORD)
    assert new.password.startswith("argon2$argon2id$")
    old = django_user_model.objects.create_user("eve")
    old.password = make_password(PASSWORD, hasher="pbkdf2_sha256")
    old.save()
    response = anonymous_client.post("/accounts/login/", {"username": "eve", "password": PASSWORD})
    assert response.status_code == 302
    old.refresh_from_db()
    assert old.password.startswith("argon2$argon2id$")


# --- login lockout ------------------------------------------------------------------------------


def _login(client, username: str, password: str, address: str = "203.0.113.7"):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_five_failed_logins_lock_that_user_from_that_address(submitter, anonymous_client):
    for _ in range(4):
        assert _login(anonymous_client, "alice", "wrong").status_code == 200
    assert _login(anonymous_client, "alice", "wrong").status_code == 429  # the fifth
    locked = _login(anonymous_client, "alice", PASSWORD)  # even the right password, now
    assert locked.status_code == 429
    text = locked.content.decode()
    assert "There were 5 failed log-ins for\n<strong>alice</strong> from your address" in text
    assert "locked for\n900 seconds after the last attempt" in text
    # Another address is not locked out, nor is another user from the same address.
    assert _login(anonymous_client, "alice", PASSWORD, "198.51.100.2").status_code == 302
    assert _login(anonymous_client, "bob", "wrong").status_code == 200


def test_the_lockout_ends_after_the_cool_off(submitter, anonymous_client):
    from axes.models import AccessAttempt

    for _ in range(5):
        _login(anonymous_client, "alice", "wrong")
    assert _login(anonymous_client, "alice", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert _login(anonymous_client, "alice", PASSWORD).status_code == 302


def test_a_successful_login_forgets_earlier_failures(submitter, anonymous_client):
    for _ in range(4):
        _login(anonymous_client, "alice", "wrong")
    assert _login(anonymous_client, "alice", PASSWORD).status_code == 302
    anonymous_client.logout()
    for _ in range(4):
        assert _login(anonymous_client, "alice", "wrong").status_code == 200
    assert _login(anonymous_client, "alice", PASSWORD).status_code == 302


def test_the_client_address_behind_the_proxy_is_the_one_nginx_appended(settings):
    from leaderboard.operations.clients import client_ip

    settings.TRELLIS_PROXY_HOPS = 1
    request = RequestFactory().get(
        "/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9"
    )
    assert client_ip(request) == "203.0.113.9"
    settings.TRELLIS_PROXY_HOPS = 0
    assert client_ip(request) == "127.0.0.1"


# --- per-minute rate limits ----------------------------------------------------------------------


def test_token_issuing_is_limited_per_minute_and_nothing_is_recorded_past_it(
    submitter, submitter_client, other_submitter, settings
):
    settings.TRELLIS_THROTTLE_TOKENS = 2
    for _ in range(2):
        assert submitter_client.post("/accounts/profile/tokens/", {"name": "ci"}).status_code == 200
    refused = submitter_client.post("/accounts/profile/tokens/", {"name": "ci"})
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert (
        "Too many tokens: at most 2 a minute (TRELLIS_THROTTLE_TOKENS). Try again in "
        f"{refused['Retry-After']} seconds." in refused.content.decode()
    )
    assert ApiToken.objects.filter(user=submitter).count() == 2
    # The limit is per user.
    other = type(submitter_client)()
    other.force_login(other_submitter)
    assert other.post("/accounts/profile/tokens/", {"name": "ci"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "setting", "what"),
    [
        ("/api/v1/submissions", "TRELLIS_THROTTLE_SUBMISSIONS", "submissions"),
        ("/api/v1/flags", "TRELLIS_THROTTLE_REPORTS", "reports"),
    ],
)
def test_api_routes_that_create_are_limited_per_token(
    submitter, anonymous_client, settings, path, setting, what
):
    setattr(settings, setting, 3)
    _, token = ApiToken.issue(submitter)
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    statuses = [
        anonymous_client.post(path, {}, content_type="application/json", **bearer).status_code
        for _ in range(4)
    ]
    assert statuses[:3] == [400, 400, 400]  # the view saw them (and refused the empty body)
    refused = anonymous_client.post(path, {}, content_type="application/json", **bearer)
    assert refused.status_code == 429
    seconds = refused["Retry-After"]
    assert refused.json() == {
        "errors": [
            {
                "code": "rate_limited",
                "field": "",
                "message": f"Too many {what}: at most 3 a minute ({setting}). "
                f"Try again in {seconds} seconds.",
            }
        ]
    }
    # Reading is never limited.
    assert anonymous_client.get("/api/v1/suites").status_code == 200


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    env = env | {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}
    command = [sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py"]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _post(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _get(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60):
        pass


def _wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"gunicorn on {port} did not start:\n{log.read_text()}")


@pytest.mark.worker
@pytest.mark.parametrize("cache", ["redis", "locmem"])
def test_the_limit_holds_across_two_web_processes_sharing_redis(redis_url, db, tmp_path, cache):
    """Two gunicorn servers with the deploy config, one client alternating between them: with
    the cache in Redis the fourth request is refused whichever server it reaches; with the
    per-process cache (the embedded default) each server counts alone and none is refused."""
    env = {
        **os.environ,
        "TRELLIS_DEBUG": "0",
        "TRELLIS_VAR_DIR": str(tmp_path),
        "DATABASE_URL": _database_url(),  # the test database: the token is looked up there
        "TRELLIS_CACHE_URL": redis_url if cache == "redis" else "locmem://",
        "TRELLIS_THROTTLE_SUBMISSIONS": "3",
    }
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / f"gunicorn-{port}.log" for port in ports]
    servers = [_serve(port, env, log) for port, log in zip(ports, logs, strict=True)]
    try:
        for port, server, log in zip(ports, servers, logs, strict=True):
            _wait_listening(port, server, log)
            _get(f"http://127.0.0.1:{port}/healthz")  # the app is loaded on the first request
        # The window is one clock minute: start with room to spare in it.
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        token = uuid.uuid4().hex  # a fresh identity: no count from an earlier run
        statuses = [
            _post(f"http://127.0.0.1:{ports[i % 2]}/api/v1/submissions", token) for i in range(5)
        ]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    expected = [401, 401, 401, 429, 429] if cache == "redis" else [401] * 5
    assert statuses == expected, [log.read_text()[-2000:] for log in logs]


# --- health --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_answers_200_with_every_part(anonymous_client):
    for queue in ("trellis", "gpu-small", "gpu-large"):
        drain(queue)  # the in-process broker keeps what earlier tests in this process sent
    RunFactory(
        state="running", queue="gpu-small", heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    response = anonymous_client.get("/healthz", HTTP_HOST="10.1.2.3:8000")  # a probe by address
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["down"]) == ("ok", [])
    assert body["database"]["ok"] is True and body["broker"]["ok"] is True
    assert body["queues"] == {"trellis": 0, "gpu-small": 0, "gpu-large": 0}
    assert 30 <= body["workers"]["newest_heartbeat_age_seconds"] < 60
    assert (body["workers"]["running_runs"], body["workers"]["queued_runs"]) == (1, 0)
    assert response["Cache-Control"] == "no-store"


def use_broker(monkeypatch, url: str) -> None:
    """Point the Celery app's broker (what /healthz reads) at `url` for the test. Celery takes
    the URL from the environment first, as in every deployed process."""
    from leaderboard.celery import app

    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setitem(app.conf, "broker_transport_options", {})


def _closed_port() -> int:
    port = _free_port()  # bound then released: nothing listens there
    return port


@pytest.mark.django_db
def test_healthz_answers_503_naming_the_broker_when_it_is_down(anonymous_client, monkeypatch):
    use_broker(monkeypatch, f"redis://127.0.0.1:{_closed_port()}/0")
    started = time.monotonic()
    response = anonymous_client.get("/healthz")
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["down"]) == ("down", ["broker"])
    assert body["broker"]["ok"] is False
    assert "Connection refused" in body["broker"]["error"] or "111" in body["broker"]["error"]
    assert body["database"]["ok"] is True
    assert body["queues"] == {"trellis": None, "gpu-small": None, "gpu-large": None}


@pytest.mark.django_db
def test_healthz_counts_the_messages_waiting_on_each_redis_queue(
    redis_url, anonymous_client, settings, monkeypatch
):
    from kombu import Connection

    queue = f"gpu-small-{uuid.uuid4().hex[:8]}"
    use_broker(monkeypatch, redis_url)
    settings.TRELLIS_QUEUE_SMALL = queue
    with Connection(redis_url) as conn:
        simple = conn.SimpleQueue(queue)
        for n in range(3):
            simple.put({"n": n})
        try:
            body = anonymous_client.get("/healthz").json()
        finally:
            simple.queue.delete()
            simple.close()
    assert body["queues"][queue] == 3
    assert body["status"] == "ok"


def test_a_database_outage_is_a_503_page_not_a_500():
    for path in ("/", "/api/v1/leaderboard"):
        request = RequestFactory().get(path)
        try:
            raise OperationalError("connection to server at 127.0.0.1 failed")
        except OperationalError:
            response = views.server_error(request)
        assert response.status_code == 503
        assert response["Retry-After"] == "30"
        text = response.content.decode()
        assert "Trellis cannot reach its database right now" in text
    assert json.loads(response.content)["errors"][0]["code"] == "unavailable"


# --- metrics -------------------------------------------------------------------------------------


def _sample(text: str, line_start: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.django_db
def test_metrics_show_runs_by_state_queue_wait_and_run_duration(anonymous_client):
    now = timezone.now()
    RunFactory(state="queued", queue="gpu-small", enqueued_at=now - timedelta(seconds=120))
    RunFactory(
        state="finished",
        queue="gpu-small",
        enqueued_at=now - timedelta(seconds=700),
        started_at=now - timedelta(seconds=690),  # waited 10 s
        finished_at=now - timedelta(seconds=90),  # ran 600 s
    )
    RunFactory(
        state="failed",
        queue="gpu-large",
        failure_code="invalid_result",
        enqueued_at=now - timedelta(seconds=100),
        started_at=now - timedelta(seconds=40),  # waited 60 s
        finished_at=now - timedelta(seconds=30),
    )
    anonymous_client.get("/api/v1/suites")
    response = anonymous_client.get("/metrics", HTTP_HOST="10.1.2.3:9100")
    assert response.status_code == 200
    text = response.content.decode()
    assert _sample(text, 'trellis_runs{queue="gpu-small",state="queued"}') == 1
    assert _sample(text, 'trellis_runs{queue="gpu-small",state="finished"}') == 1
    assert _sample(text, 'trellis_runs{queue="gpu-large",state="failed"}') == 1
    assert _sample(text, 'trellis_runs{queue="gpu-large",state="running"}') == 0
    assert 120 <= _sample(text, 'trellis_oldest_queued_run_age_seconds{queue="gpu-small"}') < 180
    wait = "trellis_run_queue_wait_seconds"
    assert _sample(text, f'{wait}_bucket{{le="5.0"}}') == 0
    assert _sample(text, f'{wait}_bucket{{le="15.0"}}') == 1
    assert _sample(text, f'{wait}_bucket{{le="60.0"}}') == 2
    assert (_sample(text, f"{wait}_count"), _sample(text, f"{wait}_sum")) == (2, 70)
    duration = "trellis_run_duration_seconds"  # finished runs only
    assert _sample(text, f'{duration}_bucket{{le="300.0"}}') == 0
    assert _sample(text, f'{duration}_bucket{{le="600.0"}}') == 1
    assert (_sample(text, f"{duration}_count"), _sample(text, f"{duration}_sum")) == (1, 600)
    assert _sample(text, 'trellis_runs_failed{reason="invalid_result"}') == 1
    assert _sample(text, "trellis_ingest_failures") == 1
    assert EvaluationRun.objects.count() == 3


@pytest.mark.django_db
def test_metrics_count_requests_by_route(anonymous_client):
    view = resolve("/api/v1/suites").view_name
    counter = metrics.REQUESTS.labels(view=view, method="GET", status="200")
    before = counter._value.get()
    for _ in range(3):
        assert anonymous_client.get("/api/v1/suites").status_code == 200
    assert counter._value.get() == before + 3
    text = anonymous_client.get("/metrics").content.decode()
    line = f'trellis_http_requests_total{{method="GET",status="200",view="{view}"}}'
    assert _sample(text, line) == before + 3


@pytest.mark.django_db
def test_metrics_are_closed_to_other_addresses_unless_they_bring_the_token(
    anonymous_client, settings
):
    settings.TRELLIS_METRICS_TOKEN = "s3cret-scrape-token"
    outside = {"REMOTE_ADDR": "198.51.100.20"}
    denied = anonymous_client.get("/metrics", **outside)
    assert denied.status_code == 403
    assert b"TRELLIS_METRICS_ALLOWED_IPS" in denied.content
    wrong = anonymous_client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope", **outside)
    assert wrong.status_code == 403
    allowed = anonymous_client.get(
        "/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token", **outside
    )
    assert allowed.status_code == 200
    # Through nginx every request comes from 127.0.0.1: the forwarded address decides.
    settings.TRELLIS_PROXY_HOPS = 1
    proxied = anonymous_client.get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.20")
    assert proxied.status_code == 403


# --- deploy/ ------------------------------------------------------------------------------------


def test_every_deployed_process_runs_as_a_non_root_user():
    for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        users = [
            line.split("=", 1)[1].strip()
            for line in unit.read_text().splitlines()
            if line.startswith("User=")
        ]
        assert len(users) == 1 and users[0] not in ("root", "0"), unit.name
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    last_user = [line.split()[1] for line in dockerfile if line.startswith("USER ")][-1]
    assert last_user not in ("root", "0")
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "user: root" not in compose and 'user: "0' not in compose


def test_redis_in_deploy_keeps_messages_append_only_and_never_evicts():
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert '"--appendonly", "yes"' in compose
    assert '"--maxmemory-policy", "noeviction"' in compose
    conf = (ROOT / "deploy" / "redis" / "trellis.conf").read_text().splitlines()
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
