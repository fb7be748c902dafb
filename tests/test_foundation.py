"""The foundation itself: settings helpers, services in CI, roles and tokens."""

from __future__ import annotations

import os

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from leaderboard.accounts.models import MAINTAINERS_GROUP, ApiToken
from leaderboard.accounts.roles import is_maintainer
from leaderboard.env import env_bool, env_int
from tests.conftest import REQUIRE_SERVICES


def test_env_bool_is_strict(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env_bool("X_FLAG") is True
    monkeypatch.setenv("X_FLAG", "off")
    assert env_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG='maybe' is not a boolean"):
        env_bool("X_FLAG")


def test_env_int_rejects_garbage_and_small_values(monkeypatch):
    monkeypatch.setenv("X_N", "12")
    assert env_int("X_N", 3) == 12
    monkeypatch.setenv("X_N", "twelve")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("X_N", 3)
    monkeypatch.setenv("X_N", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X_N", 3, minimum=1)


@pytest.mark.django_db
def test_tests_run_on_the_database_that_database_url_names():
    scheme = os.environ.get("DATABASE_URL", "sqlite://").split("://", 1)[0]
    expected = {"postgres": "postgresql", "postgresql": "postgresql", "sqlite": "sqlite"}[scheme]
    assert connection.vendor == expected
    if REQUIRE_SERVICES:  # CI points DATABASE_URL at PostgreSQL
        assert connection.vendor == "postgresql"


def test_redis_reachable(redis_url):
    import redis

    assert redis.Redis.from_url(redis_url).ping() is True


@pytest.mark.django_db
def test_maintainers_group_has_moderation_permissions(maintainer, submitter):
    group = Group.objects.get(name=MAINTAINERS_GROUP)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert {"moderate", "requeue_any_run"} <= codenames
    assert is_maintainer(maintainer) is True
    assert is_maintainer(submitter) is False


@pytest.mark.django_db
def test_issue_token_command_prints_a_working_token(submitter, capsys, client):
    call_command("issue_token", "alice")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("trl_")
    assert ApiToken.objects.filter(user=submitter).count() == 1
    # The raw value is never stored.
    assert not ApiToken.objects.filter(key_hash=raw).exists()


@pytest.mark.django_db
def test_profile_creates_and_revokes_tokens(submitter_client, submitter):
    response = submitter_client.post("/accounts/profile/tokens/", {"name": "laptop"})
    assert response.status_code == 200
    token = ApiToken.objects.get(user=submitter)
    assert token.name == "laptop"
    assert token.key_prefix in response.content.decode()
    before = timezone.now()
    response = submitter_client.post(f"/accounts/profile/tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    token.refresh_from_db()
    assert before <= token.revoked_at <= timezone.now()


@pytest.mark.django_db
def test_signup_logs_in(client):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "dora",
            "password1": "a-long-pass-phrase-42",
            "password2": "a-long-pass-phrase-42",
        },
    )
    assert response.status_code == 302
    assert client.get("/accounts/profile/").status_code == 200


@pytest.mark.slow
def test_no_torch_in_web_process():
    """The web side must not import torch or lm-eval (they belong to the worker extra)."""
    import subprocess
    import sys

    code = (
        "import django, os, sys;"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'leaderboard.settings');"
        "django.setup(); import leaderboard.urls;"
        "bad = [m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_filesystem_broker_writes_only_under_var(tmp_path, monkeypatch):
    """kombu's filesystem transport puts its exchange tables in ./control unless told otherwise;
    with the options both sides use, every file it writes lands under var/broker/."""
    from kombu import Connection

    from evaluator.config import broker_transport_options

    var, cwd = tmp_path / "var", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    options = broker_transport_options("filesystem://", var)
    with Connection("filesystem://", transport_options=options) as connection:
        queue = connection.SimpleQueue("gpu-small")
        queue.put({"run_id": 1})
        queue.close()
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (var / "broker" / "control").iterdir()) == ["gpu-small.exchange"]
    assert len(list((var / "broker" / "queue").iterdir())) == 1
