"""The public pages over HTTP: ranking (full and htmx), model, compare, plots, CSV export."""

from __future__ import annotations

import json
import re

import pytest

from leaderboard.public.export import rows_from_csv
from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, VERSION, edge, flag, ranked, repository

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database


def figure(html: str, name: str) -> dict:
    source = html.split(f'<script type="application/json" id="figure-{name}">', 1)[1]
    return json.loads(source.split("</script>", 1)[0])


def rows_in(html: str) -> list[str]:
    return re.findall(r'<tr data-model="([^"]+)"', html)


def test_ranking_page_lists_rows_with_explained_headers(anonymous_client):
    ranked("org/alpha", 0.6, is_synthetic=True)
    ranked("org/beta", 0.5)
    response = anonymous_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert rows_in(html) == ["org/alpha", "org/beta"]
    assert 'title="AI2 Reasoning Challenge' in html
    assert (
        "lm-eval task arc_challenge, 25-shot, metric acc_norm; random guessing scores 25.0." in html
    )
    assert '<span class="badge synthetic"' in html
    assert 'href="/models/org/alpha/"' in html
    assert 'src="/static/plotly/plotly.min.js"' in html
    assert "cdn" not in html.lower()


def test_ranking_rows_escape_what_a_submitter_wrote(anonymous_client):
    """The rows are written in Python (public/table.py), not by the template: what a card
    declares is escaped as the template escaped it."""
    ranked("org/merged", 0.6, license='<b onmouseover="x()">mine</b>', merge_method="<i>slerp</i>")
    html = anonymous_client.get("/").content.decode()
    assert '<td title="unknown">&lt;b onmouseover=&quot;x()&quot;&gt;mine&lt;/b&gt;</td>' in html
    assert '<span class="badge merge" title="Merge (&lt;i&gt;slerp&lt;/i&gt;)">merge</span>' in html
    assert "<b onmouseover" not in html and "<i>slerp" not in html
    assert '<td class="num energy">—</td>' in html


def test_htmx_request_gets_only_the_swappable_part(anonymous_client):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get("/?sort=model&dir=desc", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert 'id="filters"' in html and 'id="ranking-table"' in html
    assert '<input type="hidden" name="sort" value="model">' in html


def test_refused_query_shows_the_message_and_the_default_view(anonymous_client):
    ranked("org/alpha", 0.6)
    response = anonymous_client.get("/?min_params=lots")
    assert response.status_code == 400
    html = response.content.decode()
    assert '<li data-field="min_params"><code>min_params</code>:' in html
    assert rows_in(html) == ["org/alpha"]
    # Through htmx the message must still be swapped in: 2xx.
    assert anonymous_client.get("/?min_params=lots", HTTP_HX_REQUEST="true").status_code == 200


def test_hidden_rows_are_counted_with_reveal_links(anonymous_client, maintainer):
    root = ranked("org/root", 0.7).repository
    child = ranked("org/child", 0.6).repository
    edge(child, root)
    flag(root, maintainer)
    html = anonymous_client.get("/").content.decode()
    assert rows_in(html) == []
    assert "<strong>2 hidden</strong>" in html
    assert f'href="/?suite={SUITE}&amp;version={VERSION}&amp;show_flagged=1"' in html
    shown = anonymous_client.get("/?show_flagged=1&show_tainted=1").content.decode()
    assert rows_in(shown) == ["org/root", "org/child"]
    assert 'title="org/child ← org/root (contamination, confirmed' in shown
    assert '<span class="badge flagged" title="report #' in shown


def test_model_page_shows_scores_run_config_lineage_and_sanitized_card(anonymous_client):
    parent = ranked("org/base", 0.5).repository
    payload = {
        "dtype": "bfloat16",
        "device": "cuda:0",
        "batch_size": 8,
        "versions": {"lm_eval": "0.4.13", "transformers": "5.23", "torch": "2.13"},
        "duration_seconds": 125.0,
        "loglikelihood_requests": 4000,
        "reproduce": {"command": "lm_eval --model hf --model_args pretrained=org/tuned"},
    }
    card = (
        "# Tuned\n\n<script>alert(1)</script>"
        '<a href="javascript:alert(2)">x</a> <b onclick="x()">ok</b>'
    )
    submission = ranked(
        "org/tuned", 0.6, payload=payload, artifact_path="runs/1/details.jsonl.gz", card_text=card
    )
    edge(submission.repository, parent)
    response = anonymous_client.get("/models/org/tuned/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<tr data-task="arc_challenge"><td' in html
    assert "60.00 <small>± 1.00</small>" in html
    assert '<pre id="reproduce">lm_eval --model hf --model_args pretrained=org/tuned</pre>' in html
    assert "<dt>batch size</dt><dd>8</dd>" in html
    assert "<dt>duration</dt><dd>2 min 5 s</dd>" in html
    run_id = submission.runs.get().pk
    assert f'href="/runs/{run_id}/artifact/"' in html
    assert 'data-figure="figure-scores"' in html and 'data-figure="figure-lineage"' in html
    assert 'id="integrity"' in html
    assert 'href="/models/org/base/">org/base</a> (fine-tune)' in html
    card_html = html.split('<article class="model-card">', 1)[1].split("</article>", 1)[0]
    assert card_html == (
        '<h1>Tuned</h1>\n\n<p><a rel="nofollow noopener noreferrer">x</a> <b>ok</b></p>'
    )
    assert f'<tr class="selected" data-submission="{submission.pk}">' in html


def test_model_page_of_an_unknown_model_is_404(anonymous_client):
    assert anonymous_client.get("/models/org/nothing/").status_code == 404


def test_model_page_lists_every_submission_and_selects_one(anonymous_client):
    first = ranked("org/model", 0.4, precision="float16")
    second = ranked("org/model", 0.6, precision="bfloat16")
    html = anonymous_client.get("/models/org/model/").content.decode()
    assert f'<tr class="selected" data-submission="{second.pk}">' in html
    assert f'data-submission="{first.pk}"' in html
    html = anonymous_client.get(f"/models/org/model/?submission={first.pk}").content.decode()
    assert f'<tr class="selected" data-submission="{first.pk}">' in html


def test_compare_page_differences_and_common_ancestor(anonymous_client):
    base = repository("org/base")
    a = ranked("org/a", 0.5, stderr=0.01).repository
    b = ranked("org/b", 0.6, stderr=0.02).repository
    edge(a, base)
    edge(b, base, "merge")
    response = anonymous_client.get("/compare/?models=org/a,org/b")
    assert response.status_code == 200
    html = response.content.decode()
    # +10 points on arc_challenge; combined stderr = 100 * sqrt(0.01² + 0.02²) = 2.24.
    assert '<td class="num significant">+10.00 <small>± 2.24</small></td>' in html
    assert "common ancestor org/base (1 step above org/a, 1 step above org/b)" in html
    assert 'data-figure="figure-compare"' in html
    # The shared parent was never submitted: its page says so instead of failing.
    base_page = anonymous_client.get("/models/org/base/")
    assert base_page.status_code == 200
    assert (
        "No finished evaluation of this model on open-llm-v1 1 yet." in base_page.content.decode()
    )


def test_compare_refuses_bad_model_lists(anonymous_client):
    ranked("org/a", 0.5)
    # One model is the picker's start (the model page's link), seven are refused.
    assert anonymous_client.get("/compare/?models=org/a").status_code == 200
    response = anonymous_client.get("/compare/?models=" + ",".join(f"o/m{i}" for i in range(7)))
    assert response.status_code == 400
    assert "Compare 2 to 6 models" in response.content.decode()
    response = anonymous_client.get("/compare/?models=org/a,org/ghost")
    assert response.status_code == 400
    assert "org/ghost: no finished evaluation on open-llm-v1 @ 1" in response.content.decode()
    assert anonymous_client.get("/compare/").status_code == 200


def test_plots_page_honours_filters(anonymous_client):
    for i in range(6):
        ranked(f"org/chat-{i}", 0.4 + i / 50, model_type="chat", parameter_count=(i + 1) * 10**8)
    ranked("org/merged", 0.5, model_type="merge", merge_method="ties")
    html = anonymous_client.get("/plots/?model_type=chat").content.decode()
    assert '<p id="plots-count">6 <abbr title="One row per evaluated submission: a model ' in html
    assert 'two rows">rows</abbr> on open-llm-v1 version 1' in html
    for name in ("size", "correlation", "types", "merges", "time"):
        assert f'data-figure="figure-{name}"' in html
    size = figure(html, "size")
    assert sorted(size["data"][0]["customdata"]) == [f"org/chat-{i}" for i in range(6)]
    assert [trace["name"] for trace in figure(html, "types")["data"]] == ["chat (6 rows)"]
    everything = anonymous_client.get("/plots/").content.decode()
    assert [trace["name"] for trace in figure(everything, "types")["data"]] == [
        "chat (6 rows)",
        "merge (1 row)",
    ]
    merges = figure(everything, "merges")["data"]
    assert [trace["name"] for trace in merges] == [
        "SLERP (0 rows)",
        "TIES (1 row)",
        "DARE-TIES (0 rows)",
        "linear (0 rows)",
    ]


def test_csv_export_honours_filters_and_round_trips(anonymous_client):
    ranked("org/chat", 0.5, model_type="chat")
    ranked("org/base", 0.4, model_type="pretrained")
    response = anonymous_client.get("/export.csv?model_type=chat")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = rows_from_csv(response.content.decode())
    assert [row["model"] for row in rows] == ["org/chat"]
    api = anonymous_client.get("/api/v1/leaderboard?model_type=chat").json()
    assert rows == api["rows"]
    assert anonymous_client.get("/export.csv?page=x").status_code == 400
