"""The response cache keyed by data version (leaderboard/public/cache.py): built once per
version and shared across processes, gzip for clients that accept it, a cache outage costs a
rebuild only; the full leaderboard JSON and the CSV export are served from it."""

from __future__ import annotations

import gzip

import pytest
from django.core.cache import caches
from django.test import RequestFactory

from leaderboard.public import cache
from leaderboard.public.etags import Validator
from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, ranked

BODY = '{"rows": [' + ",".join(['{"model": "org/name", "average": 52.1}'] * 200) + "]}"


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # the caches are emptied before every test (conftest)


class Builder:
    def __init__(self, body: str = BODY) -> None:
        self.body = body
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.body


def respond(build, etag="v1", encoding=""):
    request = RequestFactory().get("/x", HTTP_ACCEPT_ENCODING=encoding)
    validator = Validator(etag=etag, last_modified=None)
    return cache.cached_response(request, "test", validator, build, content_type="application/json")


def test_a_body_is_built_once_per_data_version():
    build = Builder()
    first, second = respond(build), respond(build)
    assert (build.calls, first.content, second.content) == (1, BODY.encode(), BODY.encode())
    respond(build, etag="v2")
    assert build.calls == 2


def test_another_process_reads_the_shared_copy():
    build = Builder()
    respond(build)
    cache.forget_local_copies()  # what a second web process starts with
    assert respond(build).content == BODY.encode()
    assert build.calls == 1


def test_gzip_for_clients_that_accept_it():
    build = Builder()
    packed = respond(build, encoding="br, gzip;q=0.8")
    assert packed["Content-Encoding"] == "gzip"
    assert packed["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.content) == BODY.encode()
    assert len(packed.content) < len(BODY) // 10
    plain = respond(build, encoding="gzip;q=0")
    assert (plain.has_header("Content-Encoding"), plain.content) == (False, BODY.encode())
    assert build.calls == 1


def test_a_small_body_is_sent_as_it_is():
    response = respond(Builder("{}"), encoding="gzip")
    assert (response.has_header("Content-Encoding"), response.content) == (False, b"{}")


def test_a_cache_outage_costs_a_rebuild_not_the_request(monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(caches["default"], "get", broken)
    monkeypatch.setattr(caches["default"], "set_many", broken)
    build = Builder()
    assert respond(build).content == BODY.encode()
    cache.forget_local_copies()
    assert respond(build).content == BODY.encode()
    assert build.calls == 2


@pytest.mark.django_db
def test_the_full_leaderboard_is_served_from_the_cache_until_the_data_changes(
    anonymous_client, django_assert_num_queries
):
    ranked("org/alpha", 0.6)
    first = anonymous_client.get("/api/v1/leaderboard")
    assert first.status_code == 200
    # A hit costs the validator's aggregates (one query) only: no row is read.
    with django_assert_num_queries(1):
        again = anonymous_client.get("/api/v1/leaderboard")
    assert again.content == first.content
    packed = anonymous_client.get("/api/v1/leaderboard", HTTP_ACCEPT_ENCODING="gzip")
    assert packed["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.content) == first.content
    assert packed["ETag"] == first["ETag"]

    ranked("org/beta", 0.5)
    changed = anonymous_client.get("/api/v1/leaderboard")
    assert changed["ETag"] != first["ETag"]
    assert [row["model"] for row in changed.json()["rows"]] == ["org/alpha", "org/beta"]


@pytest.mark.django_db
def test_the_csv_export_is_cached_and_keeps_its_headers(
    anonymous_client, django_assert_num_queries
):
    for index in range(4):
        ranked(f"org/model-{index}", 0.5 + index / 100)
    first = anonymous_client.get("/export.csv")
    assert len(first.content) > cache.MIN_COMPRESS
    with django_assert_num_queries(1):
        again = anonymous_client.get("/export.csv", HTTP_ACCEPT_ENCODING="gzip")
    assert gzip.decompress(again.content) == first.content
    assert again["Content-Disposition"] == first["Content-Disposition"]
    assert again["Access-Control-Allow-Origin"] == "*"


def test_web_processes_share_bodies_through_redis(settings, redis_url):
    from leaderboard.env import env_cache

    settings.CACHES = {"default": env_cache("UNSET_FOR_THIS_TEST", redis_url)}
    caches["default"].clear()
    try:
        build = Builder()
        respond(build, etag="redis-v1", encoding="gzip")
        cache.forget_local_copies()  # a second process: only Redis holds the body
        plain = respond(build, etag="redis-v1")
        assert (plain.content, build.calls) == (BODY.encode(), 1)
    finally:
        caches["default"].clear()


def test_a_body_missing_everywhere_is_built_once_while_others_wait_for_it():
    import threading
    import time

    started = threading.Event()

    class Slow(Builder):
        def __call__(self) -> str:
            started.set()
            time.sleep(0.3)
            return super().__call__()

    build = Slow()
    first = threading.Thread(target=lambda: cache.cached_bytes("slow", "v1", build))
    first.start()
    assert started.wait(5)
    # The second request finds the first one's lock and waits for its body.
    assert cache.cached_bytes("slow", "v1", build) == BODY.encode()
    first.join(5)
    assert build.calls == 1


def test_a_failed_build_frees_its_lock_for_the_next_request():
    def broken() -> str:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        cache.cached_bytes("failing", "v1", broken)
    build = Builder()
    assert cache.cached_bytes("failing", "v1", build) == BODY.encode()
    assert build.calls == 1
