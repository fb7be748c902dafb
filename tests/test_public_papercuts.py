"""Paper cuts a new user found (issue 9), each pinned over HTTP: refusals instead of 500s or
silence, the headers clients rely on, HEAD, the favicon."""

from __future__ import annotations

from html import unescape
from itertools import pairwise

import pytest
from django.test import Client

from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, ranked, repository

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database


def errors_of(response) -> dict[str, dict[str, str]]:
    return {problem["field"]: problem for problem in response.json()["errors"]}


@pytest.mark.parametrize("value", ["inf", "-inf", "1e308", "1e400", "nan"])
@pytest.mark.parametrize("field", ["min_params", "max_params"])
def test_unbounded_sizes_are_refused_not_a_500(anonymous_client, field, value):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get(f"/api/v1/leaderboard?{field}={value}")
    assert response.status_code == 400
    problem = errors_of(response)[field]
    assert problem["code"] == "invalid_size"
    assert problem["message"] == (
        f"{field} is a size in billions of parameters: give a number from 0 to 1000000 "
        f"(e.g. 7 or 0.5); got '{value}'."
    )
    for path in ("/", "/plots/", "/export.csv"):
        page = anonymous_client.get(f"{path}?{field}={value}")
        assert (path, page.status_code) == (path, 400)
        assert "billions of parameters" in page.content.decode()


def test_every_query_problem_is_reported_at_once(anonymous_client):
    response = anonymous_client.get("/api/v1/leaderboard?sort=colour&min_params=lots&dir=up")
    assert response.status_code == 400
    assert sorted(errors_of(response)) == ["dir", "min_params", "sort"]
    assert errors_of(response)["sort"]["code"] == "unknown_sort"


def test_a_page_past_the_last_is_refused(anonymous_client):
    ranked("org/alpha", 0.6)
    ranked("org/beta", 0.5)
    response = anonymous_client.get("/api/v1/leaderboard?page=99999&per_page=1")
    assert response.status_code == 400
    assert errors_of(response)["page"] == {
        "code": "page_out_of_range",
        "field": "page",
        "message": "Page 99999 is past the last page: 2 rows make 2 page(s) of 1; ask for a "
        "page from 1 to 2.",
    }
    assert anonymous_client.get("/api/v1/leaderboard?page=2&per_page=1").status_code == 200
    page = anonymous_client.get("/?page=99999")
    assert page.status_code == 400
    assert "Page 99999 is past the last page: 2 rows make 1 page(s) of 50" in (
        page.content.decode()
    )
    # An empty ranking still has its first page.
    empty = anonymous_client.get("/api/v1/leaderboard?page=1&q=nothing-matches")
    assert (empty.status_code, empty.json()["pages"]) == (200, 1)


@pytest.mark.parametrize("path", ["/api/v1/suites", "/api/v1/models/org/alpha"])
def test_unknown_parameters_are_refused_on_every_read_route(anonymous_client, path):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get(f"{path}?colour=red")
    assert response.status_code == 400
    assert errors_of(response)["colour"]["code"] == "unknown_parameter"
    assert anonymous_client.get(path).status_code == 200


def test_lineage_page_refuses_a_bad_type_or_depth(anonymous_client):
    ranked("org/alpha", 0.6)
    bad_type = anonymous_client.get("/integrity/lineage/org/alpha/?type=foo")
    assert bad_type.status_code == 400
    assert "type 'foo' is not one of: model, dataset" in unescape(bad_type.content.decode())
    bad_depth = anonymous_client.get("/integrity/lineage/org/alpha/?depth=abc")
    assert bad_depth.status_code == 400
    assert "depth is a number of generations from 1 to 12; got 'abc'" in unescape(
        bad_depth.content.decode()
    )
    assert anonymous_client.get("/integrity/lineage/org/alpha/?depth=2").status_code == 200


def test_a_session_without_the_csrf_header_is_told_what_is_missing(submitter):
    client = Client(enforce_csrf_checks=True)
    client.force_login(submitter)
    response = client.post("/api/v1/submissions", {}, content_type="application/json")
    assert response.status_code == 401
    problem = errors_of(response)["X-CSRFToken"]
    assert problem["code"] == "csrf_missing"
    assert "X-CSRFToken" in problem["message"] and "csrftoken" in problem["message"]


def test_csv_export_is_an_attachment(anonymous_client):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get("/export.csv")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="trellis-{SUITE}-1.csv"'


def test_suites_carry_last_modified(anonymous_client):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get("/api/v1/suites")
    assert response.status_code == 200
    assert response["Last-Modified"]
    again = anonymous_client.get("/api/v1/suites", HTTP_IF_MODIFIED_SINCE=response["Last-Modified"])
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    ["/api/v1/leaderboard", "/api/v1/suites", "/api/v1/models/org/alpha", "/api/v1/flags"],
)
def test_api_read_routes_answer_head(anonymous_client, path):
    ranked("org/alpha", 0.6)
    get = anonymous_client.get(path)
    head = anonymous_client.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert head["Content-Type"] == get["Content-Type"]


@pytest.mark.parametrize("path", ["/", "/plots/", "/export.csv", "/models/org/alpha/"])
def test_pages_answer_head(anonymous_client, path):
    ranked("org/alpha", 0.6)
    head = anonymous_client.head(path)
    assert (head.status_code, head.content) == (200, b"")


def test_every_page_names_a_favicon_that_is_served(anonymous_client):
    repository("org/alpha")
    html = anonymous_client.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert anonymous_client.get("/favicon.ico").status_code in (200, 301, 302)
    icon = anonymous_client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert b"<svg" in b"".join(icon.streaming_content)


@pytest.mark.parametrize("path", ["/submissions/new/", "/integrity/report/?target=org/alpha"])
def test_a_form_posted_over_the_limit_gets_a_clear_page(submitter_client, settings, path):
    repository("org/alpha")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = submitter_client.post(path, {"evidence": "x" * 5000, "repo_id": "org/alpha"})
    assert response.status_code == 413
    html = unescape(response.content.decode())
    assert "<h1>Too much to send</h1>" in html
    assert "larger than this site accepts (0.001 MB)" in html


@pytest.mark.slow
def test_the_demo_database_checks_without_warnings(tmp_path):
    """`make demo` migrates SQLite: no index may need PostgreSQL's INCLUDE (models.W040)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = os.environ | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "TRELLIS_VAR_DIR": str(tmp_path),
        "TRELLIS_DEBUG": "1",
    }
    checked = subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues (0 silenced)." in checked.stdout, checked.stderr


def figure(html: str, name: str) -> dict:
    import json

    source = html.split(f'<script type="application/json" id="figure-{name}">', 1)[1]
    return json.loads(source.split("</script>", 1)[0])


def test_plots_of_one_row_are_readable(anonymous_client):
    ranked("org/alpha", 0.6)
    html = anonymous_client.get("/plots/").content.decode()
    size = figure(html, "size")
    # The lone point has no z (its bucket is too small): grey with an edge, not white on white.
    lone = next(trace for trace in size["data"] if trace.get("customdata") == ["org/alpha"])
    assert (lone["marker"]["color"], lone["marker"]["line"]["width"]) == ("#5b6475", 0.5)
    time = figure(html, "time")["layout"]["xaxis"]
    assert (time["type"], time["tickformat"], time["dtick"]) == ("date", "%Y-%m-%d", 86_400_000)
    correlation = figure(html, "correlation")["layout"]["annotations"][0]["text"]
    assert correlation == (
        "Not enough data to draw this chart. A correlation needs at least 3 rows scored on "
        "both tasks."
    )
    assert "1 <abbr" in html and '">row</abbr> on' in html


def test_empty_charts_say_there_is_not_enough_data(anonymous_client):
    ranked("org/alpha", 0.6)
    html = anonymous_client.get("/plots/?q=nothing-matches").content.decode()
    for name in ("size", "correlation", "types", "merges", "time"):
        annotations = figure(html, name)["layout"].get("annotations", [])
        assert [a["text"].split(".")[0] for a in annotations] == [
            "Not enough data to draw this chart"
        ], name


def test_the_explaining_path_is_a_disclosure_not_only_a_tooltip(anonymous_client, maintainer):
    from tests.factories import edge, flag

    root = ranked("org/root", 0.7).repository
    child = ranked("org/child", 0.6).repository
    edge(child, root)
    flag(root, maintainer)
    html = anonymous_client.get("/?show_tainted=1").content.decode()
    cell = html.split('<tr data-model="org/child"', 1)[1].split("</tr>", 1)[0]
    assert '<details class="status-path"><summary class="badge tainted"' in cell
    assert 'aria-label="tainted: show the path that explains it">tainted</summary>' in cell
    assert '<span class="path">org/child ← org/root (contamination, confirmed ' in cell


# --- the submitter's pages ------------------------------------------------------------------------

SUBMISSION_FORM = {
    "repo_id": "acme/tiny-chat",
    "revision": "main",
    "precision": "bfloat16",
    "model_type": "fine-tuned",
    "weight_type": "original",
}


@pytest.fixture
def tiny_chat(model_root):
    from tests.builders import default_card, make_dataset_repo, make_model_repo

    make_model_repo(model_root, "acme/base")
    make_dataset_repo(model_root, "acme/instructions")
    card = default_card("acme/tiny-chat", base_model="acme/base", datasets=["acme/instructions"])
    make_model_repo(model_root, "acme/tiny-chat", card=card)
    return model_root


def test_a_pasted_hub_url_is_understood_as_the_repository(submitter_client, tiny_chat):
    from leaderboard.submissions.models import Submission

    url = "https://huggingface.co/acme/tiny-chat/tree/main"
    response = submitter_client.post("/submissions/new/", {**SUBMISSION_FORM, "repo_id": url})
    assert response.status_code == 302
    assert Submission.objects.get().repository.repo_id == "acme/tiny-chat"


def test_submission_page_links_the_model_and_does_not_claim_queued(submitter_client, tiny_chat):
    response = submitter_client.post("/submissions/new/", SUBMISSION_FORM, follow=True)
    html = response.content.decode()
    assert '<a id="model-link" href="/models/acme/tiny-chat/"' in html
    assert "was accepted: its evaluation&#x27;s state is below and updates by itself." in html
    assert "queued." not in html.split('<section id="run-panel"', 1)[0]


def test_the_duplicate_refusal_links_the_earlier_submission(submitter_client, tiny_chat):
    from leaderboard.submissions.models import Submission

    submitter_client.post("/submissions/new/", SUBMISSION_FORM)
    first = Submission.objects.get()
    html = submitter_client.post("/submissions/new/", SUBMISSION_FORM).content.decode()
    link = f'<a href="/submissions/{first.pk}/">/submissions/{first.pk}/</a>'
    assert f"see its results at {link}" in html


def test_my_submissions_show_their_averages(submitter_client, submitter):
    entry = ranked("org/alpha", 0.6)
    entry.submitter = submitter
    entry.save()
    html = submitter_client.get("/submissions/mine/").content.decode()
    assert '<th class="num">Average (%)</th>' in html
    assert f'<td class="num averages"><span title="{SUITE}@1">60.00</span></td>' in html


# --- compare --------------------------------------------------------------------------------------


def test_the_model_pages_compare_link_opens_a_picker(anonymous_client):
    ranked("org/alpha", 0.6)
    model_page = anonymous_client.get("/models/org/alpha/").content.decode()
    link = model_page.split('<a href="/compare/?', 1)[1].split('"', 1)[0]
    response = anonymous_client.get(f"/compare/?{unescape(link)}")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Compare <strong>org/alpha</strong> with: search" in html
    assert 'hx-get="/compare/search" hx-trigger="input changed delay:250ms, search"' in html


def test_the_picker_searches_as_you_type(anonymous_client):
    for name in ("org/alpha", "org/alphabet", "other/alpine", "org/beta"):
        ranked(name, 0.5)
    response = anonymous_client.get("/compare/search?q=alp&models=org/alpha")
    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert [part.split('"', 1)[0] for part in html.split('data-model="')[1:]] == [
        "org/alphabet",
        "other/alpine",
    ]
    assert f"/compare/?suite={SUITE}&version=1&models=org/alpha,org/alphabet" in html.replace(
        "%2F", "/"
    ).replace("%2C", ",")
    nothing = anonymous_client.get("/compare/search?q=zzz").content.decode()
    assert "No ranked model on this suite version matches" in nothing


# --- the lineage graph ----------------------------------------------------------------------------


def _lineage_figure(client, repo_id: str, query: str = "") -> dict:
    response = client.get(f"/integrity/lineage/{repo_id}/{query}")
    assert response.status_code == 200
    return response.context["figure"]


def _nodes(figure: dict) -> dict[str, tuple[float, float, str]]:
    """repo_id -> (x, y, label) of every drawn node."""
    found = {}
    for trace in figure["data"]:
        for index, data in enumerate(trace.get("customdata") or []):
            found[data[1]] = (trace["x"][index], trace["y"][index], trace["text"][index])
    return found


def test_the_explaining_path_is_drawn_whole_beyond_the_depth(anonymous_client, maintainer):
    from tests.factories import edge, flag, repository

    chain = [repository(f"org/generation-{i}") for i in range(6)]
    for child, parent in pairwise(chain):
        edge(child, parent)
    flag(chain[-1], maintainer)  # five generations above org/generation-0
    figure = _lineage_figure(anonymous_client, "org/generation-0", "?depth=2")
    nodes = _nodes(figure)
    assert set(nodes) == {f"org/generation-{i}" for i in range(6)}
    path = next(t for t in figure["data"] if t.get("name") == "explaining path")
    assert len([x for x in path["x"] if x is not None]) == 10  # five edges, two ends each


def test_lineage_labels_fit_and_edges_do_not_cross(anonymous_client):
    from tests.factories import edge, repository

    focus = repository("org/focus")
    first, second = repository("org/a-parent"), repository("org/b-parent")
    # Sorted by name, the grandparents would sit crosswise to their children.
    edge(focus, first)
    edge(focus, second)
    edge(first, repository("zeta-organisation-with-a-long-name/grandparent-of-a"))
    edge(second, repository("alpha/grandparent-of-b"))
    figure = _lineage_figure(anonymous_client, "org/focus")
    nodes = _nodes(figure)
    low, high = figure["layout"]["xaxis"]["range"]
    for repo_id, (x, _y, label) in nodes.items():
        width = max(len(line) for line in label.split("<br>"))
        assert low <= x - width / 2 and x + width / 2 <= high, repo_id
    assert nodes["zeta-organisation-with-a-long-name/grandparent-of-a"][2] == (
        "zeta-organisation-with-a-long-name/<br>grandparent-of-a"
    )
    a_above_b = nodes["org/a-parent"][1] > nodes["org/b-parent"][1]
    grandparent_a_above = (
        nodes["zeta-organisation-with-a-long-name/grandparent-of-a"][1]
        > nodes["alpha/grandparent-of-b"][1]
    )
    assert a_above_b == grandparent_a_above
    assert all(trace.get("cliponaxis") is False for trace in figure["data"] if trace.get("text"))
    assert figure["layout"]["dragmode"] == "pan"
    assert figure["layout"]["meta"]["min_width"] > 0
    page = anonymous_client.get("/integrity/lineage/org/focus/").content.decode()
    assert "scrollZoom: true" in page
