"""The public pages served from work done once per data version (public/views.py through
public/cache.py), over HTTP: an ingest or a status change gives a new body, a body built by one
cache client is read by another on the same Redis, two different queries never share a body, and
nothing of a signed-in visitor lands in the shared cache."""

from __future__ import annotations

import re

import pytest
import redis
from django.core.cache import caches

from leaderboard import flow
from leaderboard.env import env_cache
from leaderboard.evaluations import runs
from leaderboard.public import cache
from leaderboard.public.suites import forget_stored_versions
from tests.factories import (
    QUEUES,
    SUITE,
    RunFactory,
    SubmissionFactory,
    drain,
    flag,
    quick_payload,
    ranked,
)


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()


@pytest.fixture(autouse=True)
def _clean_broker():
    yield
    for queue in QUEUES:
        drain(queue)


def rows_in(html: str) -> list[str]:
    return re.findall(r'<tr data-model="([^"]+)"', html)


def unmasked(body: bytes) -> str:
    """A page without its CSRF token, which Django masks differently on every response."""
    return re.sub(r'"X-CSRFToken": "[^"]*"', "", body.decode())


def started(repo_id: str) -> int:
    """A running evaluation of the quick suite for a new model `repo_id`."""
    submission = SubmissionFactory(repository__repo_id=repo_id)
    run = RunFactory(submission=submission, state="running", queue="gpu-small")
    runs.mark_started(run.pk, 1, "celery@gpu-box")
    return run.pk


def ingest(run_id: int, artifact_root, value: float) -> None:
    payload = quick_payload(run_id, artifact_root, {"arc_easy": value})
    assert flow.ingest_result(run_id, 1, payload) == "ingested"


QUICK = "?suite=quick&version=1"


@pytest.mark.django_db
def test_an_ingest_gives_every_public_page_a_new_body(
    anonymous_client, artifact_root, django_assert_max_num_queries
):
    ingest(started("acme/first"), artifact_root, 0.7)
    second = started("acme/second")
    pages = {
        "ranking": f"/{QUICK}",
        "plots": f"/plots/{QUICK}",
        "model": f"/models/acme/second/{QUICK}",
    }
    before = {name: anonymous_client.get(url) for name, url in pages.items()}
    assert all(response.status_code == 200 for response in before.values())
    assert rows_in(before["ranking"].content.decode()) == ["acme/first"]
    assert "No finished evaluation of this model on quick 1 yet" in before["model"].content.decode()
    # Served again from the cache: the data version (and the ranking's queue line); no row read.
    for name, queries in (("ranking", 2), ("plots", 1), ("model", 2)):
        with django_assert_max_num_queries(queries):
            again = anonymous_client.get(pages[name]).content
        assert unmasked(again) == unmasked(before[name].content)

    ingest(second, artifact_root, 0.9)
    ranking = anonymous_client.get(pages["ranking"]).content.decode()
    assert rows_in(ranking) == ["acme/second", "acme/first"]
    plots = anonymous_client.get(pages["plots"]).content.decode()
    assert '<p id="plots-count">2 <abbr' in plots
    assert '<p id="plots-count">1 <abbr' in before["plots"].content.decode()
    model = anonymous_client.get(pages["model"]).content.decode()
    assert 'id="task-scores"' in model and "No finished evaluation" not in model


@pytest.mark.django_db
def test_a_status_change_gives_the_ranking_model_and_plots_pages_a_new_body(
    anonymous_client, maintainer
):
    alpha = ranked("org/alpha", 0.6).repository
    ranked("org/beta", 0.5)
    first = anonymous_client.get("/").content.decode()
    model = anonymous_client.get("/models/org/alpha/").content.decode()
    plots = anonymous_client.get("/plots/").content.decode()
    assert rows_in(first) == ["org/alpha", "org/beta"]
    assert '<span class="badge clean"' in model

    flag(alpha, maintainer)
    assert rows_in(anonymous_client.get("/").content.decode()) == ["org/beta"]
    flagged = anonymous_client.get("/models/org/alpha/").content.decode()
    assert '<span class="badge flagged"' in flagged and flagged != model
    changed = anonymous_client.get("/plots/").content.decode()
    assert "1 hidden by the lineage filters" in changed and changed != plots
    # htmx asks for the same fragment: the new one too.
    swapped = anonymous_client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in swapped and rows_in(swapped) == ["org/beta"]


@pytest.mark.django_db
def test_a_body_built_through_one_cache_client_is_read_through_another(
    settings, redis_url, anonymous_client, django_assert_num_queries
):
    """What a second web process starts with: its own Redis client and no copy of its own."""
    settings.CACHES = {"default": env_cache("UNSET_FOR_THIS_TEST", redis_url)}
    caches["default"].clear()
    try:
        for index in range(3):
            ranked(f"org/model-{index}", 0.5 + index / 10)
        built = anonymous_client.get("/?q=model")
        assert rows_in(built.content.decode()) == ["org/model-2", "org/model-1", "org/model-0"]
        assert len(redis.Redis.from_url(redis_url).keys("*response:ranking:*")) == 1
        first_client = caches["default"]
        del caches["default"]  # the next use opens a new client
        cache.forget_local_copies()
        # The data version and the queue line; the rows are not read again.
        with django_assert_num_queries(2):
            again = anonymous_client.get("/?q=model")
        assert caches["default"] is not first_client
        assert unmasked(again.content) == unmasked(built.content)
    finally:
        caches["default"].clear()


@pytest.mark.django_db
def test_two_different_queries_never_share_a_body(anonymous_client):
    # The query string spells sizes with 6 digits: 7 and 7.000000001 billion read the same
    # there, but select different rows.
    ranked("org/exactly-7b", 0.6, parameter_count=7_000_000_000)
    ranked("org/a-bit-more", 0.5, parameter_count=7_000_000_005)
    both = anonymous_client.get("/?min_params=7").content.decode()
    above = anonymous_client.get("/?min_params=7.000000001").content.decode()
    assert rows_in(both) == ["org/exactly-7b", "org/a-bit-more"]
    assert rows_in(above) == ["org/a-bit-more"]
    api = anonymous_client.get("/api/v1/leaderboard?min_params=7.000000001").json()
    assert [row["model"] for row in api["rows"]] == ["org/a-bit-more"]
    # A search matches case-insensitively but the page repeats what was typed.
    upper = anonymous_client.get("/?q=A-BIT").content.decode()
    lower = anonymous_client.get("/?q=a-bit").content.decode()
    assert 'name="q" value="A-BIT"' in upper and 'name="q" value="a-bit"' in lower
    plots = anonymous_client.get("/plots/?min_params=7.000000001").content.decode()
    assert '<p id="plots-count">1 <abbr' in plots


@pytest.mark.django_db
def test_a_signed_in_visitors_page_leaves_nothing_of_them_in_the_shared_cache(
    submitter, submitter_client, anonymous_client
):
    ranked("org/alpha", 0.6)
    pages = ("/", "/plots/", "/models/org/alpha/")
    for url in pages:
        mine = submitter_client.get(url)
        assert mine.status_code == 200
        assert submitter.username in mine.content.decode() and "Log out" in mine.content.decode()
    token = submitter_client.cookies["csrftoken"].value
    for url in pages:
        html = anonymous_client.get(url).content.decode()
        assert submitter.username not in html and "Log out" not in html
        assert token not in html
    # And the other way round: the signed-in menu is drawn around a body cached anonymously.
    for url in pages:
        assert submitter.username in submitter_client.get(url).content.decode()


@pytest.mark.django_db
def test_pages_cut_from_the_cached_placement_are_the_pages_sql_ranks(anonymous_client, maintainer):
    """Pages come from the order of every row, computed once per data version: the same rows,
    ranks (ties included) and counts as the SQL window over one page, before and after a flag
    hides a row."""
    from leaderboard.public.query import parse_ranking_query
    from leaderboard.public.selection import ranking

    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.5]
    repositories = [ranked(f"org/m{i}", score).repository for i, score in enumerate(scores)]

    def pages_match(pages: int, **shown: str) -> None:
        for page in range(1, pages + 1):
            params = {"per_page": "2", "page": str(page), **shown}
            expected = ranking(parse_ranking_query(params))
            html = anonymous_client.get("/", params).content.decode()
            assert rows_in(html) == [row.model for row in expected.rows], page
            ranks = re.findall(r'<tr data-model="[^"]+"[^>]*>\s*<td class="num">(\d+)</td>', html)
            assert [int(rank) for rank in ranks] == [row.rank for row in expected.rows], page
            api = anonymous_client.get("/api/v1/leaderboard", params).json()
            assert [
                (row["model"], row["rank"], row["lineage_status"], row["taint_path"])
                for row in api["rows"]
            ] == [
                (row.model, row.rank, row.lineage_status, row.taint_path or None)
                for row in expected.rows
            ]
            assert (api["count"], api["pages"]) == (expected.count, expected.pages)

    pages_match(4)
    flag(repositories[1], maintainer)
    pages_match(3)
    assert rows_in(anonymous_client.get("/", {"per_page": "2"}).content.decode()) == [
        "org/m0",
        "org/m2",
    ]
    past = anonymous_client.get("/", {"per_page": "2", "page": "4"})
    assert (
        past.status_code == 400 and "Page 4 is past the last page: 6 rows" in past.content.decode()
    )
    # Shown, a flagged row past the first page keeps its status and explaining path.
    flag(repositories[4], maintainer)
    pages_match(4, show_flagged="1")
    shown = anonymous_client.get(
        "/api/v1/leaderboard", {"per_page": "2", "page": "3", "show_flagged": "1"}
    ).json()["rows"][0]
    assert (shown["model"], shown["lineage_status"]) == ("org/m4", "flagged")
    assert "org/m4" in shown["taint_path"]


@pytest.mark.django_db
def test_the_model_resource_follows_its_runs_from_queued_to_progress(
    anonymous_client, django_assert_max_num_queries
):
    submission = SubmissionFactory(repository__repo_id="acme/running")
    run = RunFactory(submission=submission, state="queued", queue="gpu-small")
    url = "/api/v1/models/acme/running"

    def run_of(response) -> dict:
        return response.json()["submissions"][0]["runs"][0]

    queued = anonymous_client.get(url)
    assert run_of(queued)["state"] == "queued"
    # Served from the cache: the repository and its state in one query each.
    with django_assert_max_num_queries(2):
        assert anonymous_client.get(url).content == queued.content
    runs.mark_started(run.pk, 1, "celery@gpu-box")
    running = anonymous_client.get(url)
    assert run_of(running)["state"] == "running" and running["ETag"] != queued["ETag"]
    runs.record_progress(run.pk, 1, 3, 10)
    progressed = anonymous_client.get(url)
    assert run_of(progressed)["progress"]["done"] == 3
    assert progressed["ETag"] != running["ETag"]
    stale = anonymous_client.get(url, HTTP_IF_NONE_MATCH=running["ETag"])
    assert stale.status_code == 200


@pytest.mark.django_db
def test_a_status_change_off_the_ranking_keeps_its_version(
    anonymous_client, django_assert_max_num_queries
):
    """A submission's new repository (or any repository with no row in the suite version)
    changes no ranking: the pages stay cached; a ranked model's status change does not."""
    from django.utils import timezone

    from tests.factories import report, repository

    alpha = ranked("org/alpha", 0.6).repository
    first = anonymous_client.get("/api/v1/leaderboard")
    page = anonymous_client.get("/")
    repository("org/just-submitted", status_updated_at=timezone.now())
    assert anonymous_client.get("/api/v1/leaderboard")["ETag"] == first["ETag"]
    with django_assert_max_num_queries(2):
        assert unmasked(anonymous_client.get("/").content) == unmasked(page.content)
    report(alpha)
    assert anonymous_client.get("/api/v1/leaderboard")["ETag"] != first["ETag"]
    assert '<span class="badge under-review"' in anonymous_client.get("/").content.decode()
