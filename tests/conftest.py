"""Shared fixtures: the fixed cast of users, service guards, and a local model root."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Messages sent by tests stay in this process instead of landing in var/broker, where a running
# `make demo` worker would pick them up. Tests with a real worker switch to Redis themselves.
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("CELERY_RESULT_BACKEND", "cache+memory://")
# Rate limits count in this process's cache, emptied before every test (tests that share Redis
# between processes set TRELLIS_CACHE_URL for those processes themselves).
os.environ.setdefault("TRELLIS_CACHE_URL", "locmem://")

from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from leaderboard.accounts.models import MAINTAINERS_GROUP

REQUIRE_SERVICES = os.environ.get("TRELLIS_REQUIRE_SERVICES") == "1"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default PBKDF2 hasher costs ~0.3 s per user; the fixed cast is created in most tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    from django.core.cache import cache

    cache.clear()


def service_unavailable(what: str, error: Exception) -> None:
    """A test that needs a service fails in CI (TRELLIS_REQUIRE_SERVICES=1), skips elsewhere."""
    message = f"{what} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    import redis

    url = os.environ.get("TRELLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        service_unavailable("Redis", exc)
    return url


PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def submitter(db, django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.org", PASSWORD)


@pytest.fixture
def other_submitter(db, django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.org", PASSWORD)


@pytest.fixture
def maintainer(db, django_user_model):
    user = django_user_model.objects.create_user("charlie", "charlie@example.org", PASSWORD)
    user.groups.add(Group.objects.get(name=MAINTAINERS_GROUP))
    return user


@pytest.fixture
def anonymous_client() -> Client:
    return Client()


@pytest.fixture
def submitter_client(submitter) -> Client:
    client = Client()
    client.force_login(submitter)
    return client


@pytest.fixture
def maintainer_client(maintainer) -> Client:
    client = Client()
    client.force_login(maintainer)
    return client


@pytest.fixture
def artifact_root(tmp_path: Path, settings) -> Path:
    """Where ingested runs' details artifacts live, for the test."""
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.TRELLIS_ARTIFACT_ROOT = root
    return root


@pytest.fixture
def model_root(tmp_path: Path, settings) -> Path:
    """A local model source rooted in a temp dir, active for the test."""
    from leaderboard.catalog.sources import _source_for

    root = tmp_path / "models"
    root.mkdir()
    settings.TRELLIS_MODEL_SOURCE = "local"
    settings.TRELLIS_MODEL_ROOT = root
    _source_for.cache_clear()
    yield root
    _source_for.cache_clear()


@pytest.fixture
def fake_hub(tmp_path: Path, settings, monkeypatch):
    """A local fake Hub serving repositories built under `fake_hub.root`, active as the model
    source. Offline mode is lifted for huggingface_hub's calls during the test only, and its
    default endpoint points at the fake, so nothing can reach the real Hub."""
    from huggingface_hub import constants

    from leaderboard.catalog.sources import _source_for
    from tests.fakehub import FakeHub

    root = tmp_path / "hub"
    root.mkdir()
    hub = FakeHub(root).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    settings.TRELLIS_MODEL_SOURCE = "hub"
    settings.HF_ENDPOINT = hub.url
    settings.HF_TOKEN = ""
    _source_for.cache_clear()
    yield hub
    _source_for.cache_clear()
    hub.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """SQLite test databases live in a file (not in memory), so a worker subprocess started by a
    test can open the same database as the test (tests/test_evaluation_worker.py)."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        test = database.setdefault("TEST", {})
        if not test.get("NAME"):
            test["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
