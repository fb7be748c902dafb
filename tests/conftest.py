"""Shared fixtures: the fixed cast of users, service guards, a local model root, an S3-compatible
server (moto) for the artifact store, and the marker guard that keeps `make test-fast` fast (a
worker process, Chromium, or a model loaded through lm-eval by a test without its marker fails
that test)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


# --- markers: what `make test-fast` leaves out must say so ---------------------------------------
# The fast loop selects by marker (-m "not browser and not slow and not worker"). A test that
# starts one of these without its marker would make that loop slow or flaky without anyone
# noticing, so the thing itself refuses to start.

_running: list[pytest.Item] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    # Module- and session-scoped fixtures are set up inside the first test that uses them, so
    # the test running now is the one whose markers count.
    _running.append(item)
    try:
        yield
    finally:
        _running.pop()


def require_marker(marker: str, what: str) -> None:
    if _running and _running[-1].get_closest_marker(marker) is None:
        pytest.fail(
            f"{_running[-1].nodeid} {what} but is not marked @pytest.mark.{marker}: mark it "
            "(the fast loop, make test-fast, deselects by marker)",
            pytrace=False,
        )


# --- transactional tests: each starts and ends with the migrated data ---------------------------
# A transactional test ends by emptying every table. Without serialized rollback Django then
# re-creates content types and permissions under new keys (and not the maintainers group its
# data migration made), so a later test loading the serialized snapshot collided with them
# ("duplicate key ... django_content_type") or missed the group: the outcome depended on the
# order of files. So every transactional test is serialized (it starts from the snapshot), and
# after it the tables are emptied again without post_migrate and the snapshot loaded, because:
# - under pytest-xdist's --dist loadfile a plain test can run after it in the same process;
# - Django keeps the snapshot on the connection object, and a test driving Playwright's sync API
#   (greenlets) gets a new connection object without it, so Django's own flush after such a test
#   re-creates content types under new keys and its next setup skips the snapshot.

_snapshot: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("django_db")
        options = dict(marker.kwargs) if marker is not None else {}
        fixtures = getattr(item, "fixturenames", ())
        transactional = options.get("transaction") or {"transactional_db", "live_server"} & set(
            fixtures
        )
        if transactional and not options.get("serialized_rollback"):
            options.update(transaction=True, serialized_rollback=True)
            item.add_marker(pytest.mark.django_db(**options), append=False)


@pytest.fixture(scope="session", autouse=True)
def _migrated_snapshot(request: pytest.FixtureRequest) -> None:
    """The serialized snapshot, read once from the connection that made it."""
    if any(_is_serialized(item) for item in request.session.items):
        request.getfixturevalue("django_db_setup")
        from django.db import connections

        _snapshot["default"] = getattr(connections["default"], "_test_serialized_contents", "")


def _is_serialized(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    return marker is not None and bool(marker.kwargs.get("serialized_rollback"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    yield
    # After the last test the test database is gone and the connection names the real one.
    if nextitem is None or not _is_serialized(item) or not _snapshot.get("default"):
        return
    from django.core.management import call_command
    from django.db import connections
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        call_command("flush", verbosity=0, interactive=False, inhibit_post_migrate=True)
        connections["default"].creation.deserialize_db_from_string(_snapshot["default"])


def _guard_processes(popen_init: Callable[..., None]) -> Callable[..., None]:
    def init(self: subprocess.Popen, args: Any, *rest: Any, **options: Any) -> None:
        argv = [str(part) for part in args] if isinstance(args, list | tuple) else [str(args)]
        words = " ".join(argv)
        if "celery" in words and "worker" in argv:
            require_marker("worker", "starts a Celery worker process")
        if "run-driver" in argv or "chromium" in os.path.basename(argv[0]):
            # Playwright's driver, which launches Chromium.
            require_marker("browser", "starts Chromium")
        popen_init(self, args, *rest, **options)

    return init


def _guard_evaluation(simple_evaluate: Callable[..., Any]) -> Callable[..., Any]:
    def evaluate(*args: Any, **kwargs: Any) -> Any:
        require_marker("slow", "runs a real model evaluation (lm_eval.simple_evaluate)")
        return simple_evaluate(*args, **kwargs)

    return evaluate


def _guard_model(module: Any) -> None:
    init = module.HFLM.__init__

    def guarded(self: Any, *args: Any, **kwargs: Any) -> None:
        require_marker("slow", "loads a model (lm-eval's HFLM)")
        init(self, *args, **kwargs)

    module.HFLM.__init__ = guarded


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` once `name` is imported. lm-eval's model module pulls in torch and
    transformers (seconds), so it is guarded when a test imports it, not imported here."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, then = spec.loader.exec_module, self.then

        def exec_and_guard(module: Any) -> None:
            exec_module(module)
            then(module)

        spec.loader.exec_module = exec_and_guard  # type: ignore[method-assign]
        return spec


subprocess.Popen.__init__ = _guard_processes(subprocess.Popen.__init__)  # type: ignore[method-assign]
try:
    import lm_eval  # cheap: torch and transformers load only when a model does
except ImportError:  # the web-only install has no evaluator extra
    pass
else:
    lm_eval.simple_evaluate = _guard_evaluation(lm_eval.simple_evaluate)
    sys.meta_path.insert(0, _AfterImport("lm_eval.models.huggingface", _guard_model))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default PBKDF2 hasher costs ~0.3 s per user; the fixed cast is created in most tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    from django.core.cache import cache

    import leaderboard.public.selection  # noqa: F401  (registers its copies)
    from leaderboard.public.process import forget_process_copies

    cache.clear()
    forget_process_copies()  # cached bodies, rows and versions too: each test has its own database


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


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright, for every browser test file alike: without it a
    test fails under TRELLIS_REQUIRE_SERVICES=1 (CI) and skips elsewhere (`make setup`
    installs it with apt where it can)."""
    if not Path(CHROMIUM).exists():
        service_unavailable(
            "Chromium",
            FileNotFoundError(f"{CHROMIUM}: apt-get install chromium (never playwright install)"),
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


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


# --- an S3-compatible artifact store ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server (a real HTTP server, in a thread) on a free loopback port,
    with boto3's variables pointing at it for the module (a GPU host and the web host set the
    same ones). Its address; `bucket` makes a bucket on it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", url)
        env.setenv("AWS_ACCESS_KEY_ID", "trellis-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "trellis-test-secret")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        yield url
    server.stop()


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A new, empty bucket; its store's location (with a prefix, as a shared bucket has)."""
    from evaluator.artifacts import endpoint_url, s3_client

    name = f"trellis-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint_url()).create_bucket(Bucket=name)
    return f"s3://{name}/artifacts"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """SQLite test databases live in a file (not in memory), so a worker subprocess started by a
    test can open the same database as the test (tests/test_evaluation_worker.py). Under
    pytest-xdist each process has its own temp folder, hence its own file; PostgreSQL databases
    get pytest-django's _gw<N> suffix."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        # Replaces the parallel suffix's name, which is derived from a path and is no path.
        database.setdefault("TEST", {})["NAME"] = str(
            tmp_path_factory.mktemp("db") / "test.sqlite3"
        )
