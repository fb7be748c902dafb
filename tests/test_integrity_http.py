"""Integrity over HTTP: the permission matrix (anonymous, submitter, maintainer) of every
moderation route in pages and API, the report form, the lineage page and API, the Plotly bundle."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from leaderboard import flow
from leaderboard.accounts.models import ApiToken
from leaderboard.catalog.models import Repository
from leaderboard.integrity import derived
from leaderboard.integrity.models import AuditEntry, Report
from leaderboard.integrity.plots import lineage_figure
from tests.factories import DatasetFactory, EdgeFactory, RepositoryFactory, SubmissionFactory

pytestmark = pytest.mark.django_db

EVIDENCE = "Benchmark test items appear verbatim in the SFT mix."


@pytest.fixture
def family():
    root = RepositoryFactory(repo_id="org/root")
    child = RepositoryFactory(repo_id="org/child")
    data = DatasetFactory(repo_id="data-org/mix")
    external = RepositoryFactory(
        repo_id="ext/parent", lineage_resolved=False, resolution_note="not found on the hub"
    )
    EdgeFactory(child=child, parent=root, relation="fine-tune")
    EdgeFactory(child=child, parent=data, relation="trained-on")
    EdgeFactory(child=root, parent=external, relation="fine-tune")
    SubmissionFactory(repository=child)
    derived.recompute_all()
    return {"root": root, "child": child, "data": data, "external": external}


@pytest.fixture
def open_report(family, other_submitter):
    return flow.file_report(
        reporter=other_submitter, target=family["root"], kind="contamination", evidence=EVIDENCE
    ).report


def bearer(user) -> dict[str, str]:
    _, raw = ApiToken.issue(user)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


# --- moderation pages ---------------------------------------------------------------------------


def test_queue_page_is_for_maintainers_only(
    anonymous_client, submitter_client, maintainer_client, open_report
):
    assert anonymous_client.get("/integrity/queue/").status_code == 403
    assert submitter_client.get("/integrity/queue/").status_code == 403
    response = maintainer_client.get("/integrity/queue/")
    assert response.status_code == 200
    body = response.content.decode()
    assert f'id="report-{open_report.pk}"' in body
    assert "confirming this affects 1 ranked model" not in body  # nothing is evaluated yet
    assert "confirming this affects 0 ranked models" in body


@pytest.mark.parametrize("decision", ["confirm", "dismiss"])
def test_resolving_from_a_page_is_for_maintainers_only(
    anonymous_client, submitter_client, maintainer_client, open_report, decision
):
    url = f"/integrity/reports/{open_report.pk}/resolve/"
    data = {"decision": decision, "note": "Checked."}
    assert anonymous_client.post(url, data).status_code == 403
    assert submitter_client.post(url, data).status_code == 403
    assert Report.objects.get().status == "open"
    response = maintainer_client.post(url, data)
    assert response.status_code == 302
    assert response["Location"] == "/integrity/queue/"
    assert Report.objects.get().status == {"confirm": "confirmed", "dismiss": "dismissed"}[decision]


def test_lifting_from_a_page_is_for_maintainers_only(
    anonymous_client, submitter_client, maintainer_client, maintainer, open_report, family
):
    flow.resolve(open_report.pk, "confirm", "Confirmed.", maintainer)
    url = f"/integrity/reports/{open_report.pk}/resolve/"
    data = {"decision": "lift", "note": "Fixed upstream."}
    assert anonymous_client.post(url, data).status_code == 403
    assert submitter_client.post(url, data).status_code == 403
    assert Repository.objects.get(pk=family["child"].pk).status == "tainted"
    assert maintainer_client.post(url, data).status_code == 302
    assert Report.objects.get().status == "lifted"
    # The external parent is unresolved: lifting leaves the family incomplete, not clean.
    assert Repository.objects.get(pk=family["child"].pk).status == "incomplete"


def test_a_refused_decision_is_a_message_not_an_error(maintainer_client, open_report):
    response = maintainer_client.post(
        f"/integrity/reports/{open_report.pk}/resolve/",
        {"decision": "confirm", "note": ""},
        follow=True,
    )
    assert response.status_code == 200
    assert (
        f"Report #{open_report.pk}: Write a note explaining the decision; it is shown in the "
        "public audit log." in response.content.decode()
    )
    assert Report.objects.get().status == "open"


def test_resolve_route_refuses_get(maintainer_client, open_report):
    assert maintainer_client.get(f"/integrity/reports/{open_report.pk}/resolve/").status_code == 405


# --- the report form ----------------------------------------------------------------------------


def test_report_form_requires_sign_in(anonymous_client, family):
    response = anonymous_client.get("/integrity/report/?target=org/root&type=model")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/integrity/report/")


def test_report_form_files_a_report_and_shows_problems_next_to_fields(submitter_client, family):
    url = "/integrity/report/?target=data-org/mix&type=dataset"
    page = submitter_client.get(url)
    assert page.status_code == 200
    assert "Report a problem with dataset <code>data-org/mix</code>" in page.content.decode()

    refused = submitter_client.post(
        url, {"kind": "contamination", "evidence": "", "links": "ftp://x"}
    )
    assert refused.status_code == 200
    body = refused.content.decode()
    assert 'id="problems-evidence"' in body and 'id="problems-links"' in body
    assert Report.objects.count() == 0

    filed = submitter_client.post(
        url, {"kind": "contamination", "evidence": EVIDENCE, "links": "https://example.org/a"}
    )
    assert filed.status_code == 302
    assert filed["Location"] == "/integrity/lineage/data-org/mix/?type=dataset"
    report = Report.objects.get()
    assert (report.target.repo_id, report.target.kind, report.links) == (
        "data-org/mix",
        "dataset",
        ["https://example.org/a"],
    )
    assert Repository.objects.get(pk=family["child"].pk).status == "under-review"


def test_report_form_for_an_unknown_target_says_so(submitter_client):
    response = submitter_client.get("/integrity/report/?target=nobody/nothing&type=model")
    assert response.status_code == 404
    assert "No model &#x27;nobody/nothing&#x27; in the catalog" in response.content.decode()


# --- lineage page and figure --------------------------------------------------------------------


def test_lineage_page_draws_the_graph_with_plotly_served_locally(
    anonymous_client, family, maintainer
):
    report = flow.file_report(
        reporter=None, target=family["data"], kind="contamination", evidence=EVIDENCE
    ).report
    flow.resolve(report.pk, "confirm", "Verified the overlap.", maintainer)
    response = anonymous_client.get("/integrity/lineage/org/child/")
    assert response.status_code == 200
    body = response.content.decode()
    assert '<script src="/static/plotly/plotly.min.js" defer></script>' in body
    assert "org/child ← trained on data-org/mix (contamination, confirmed " in body
    assert "Verified the overlap." not in body  # the note is on the dataset's page, not here
    figure = response.context["figure"]
    meta = figure["layout"]["meta"]
    assert (meta["nodes"], meta["left_out"], meta["focus"]) == (4, 0, "org/child")

    dataset_page = anonymous_client.get("/integrity/lineage/data-org/mix/?type=dataset")
    assert dataset_page.status_code == 200
    assert "Verified the overlap." in dataset_page.content.decode()  # public audit log
    assert anonymous_client.get("/integrity/lineage/data-org/mix/").status_code == 404


def test_plotly_bundle_is_served_from_the_installed_package(anonymous_client):
    response = anonymous_client.get("/static/plotly/plotly.min.js")
    assert response.status_code == 200
    head = (
        b"".join(response.streaming_content)[:2000]
        if response.streaming
        else response.content[:2000]
    )
    assert b"plotly.js" in head


def test_lineage_figure_marks_status_kind_submission_and_the_path(family, maintainer):
    report = flow.file_report(
        reporter=None, target=family["root"], kind="contamination", evidence=EVIDENCE
    ).report
    flow.resolve(report.pk, "confirm", "Verified.", maintainer)
    child = Repository.objects.get(pk=family["child"].pk)
    figure = lineage_figure(child, depth=2)
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert set(traces) == {
        "explaining path",
        "declared edge",
        "relation",
        "flagged",
        "tainted",
        "incomplete",
        "clean",
    }
    assert traces["tainted"]["text"] == ["org/child"]
    assert traces["tainted"]["marker"]["symbol"] == ["circle"]  # submitted model
    assert traces["flagged"]["text"] == ["org/root"]
    assert traces["flagged"]["marker"]["symbol"] == ["circle-open"]  # never submitted
    assert traces["clean"]["marker"]["symbol"] == ["square-open"]  # a dataset
    assert traces["incomplete"]["text"] == ["ext/parent"]
    # The explaining path child ← root is one highlighted segment; two plain edges remain.
    # Columns are spaced by their widest labels plus a gap of four characters: ext/parent (10)
    # at 0, the parents' column (data-org/mix, 12) at 5 + 6 + 4 = 15, org/child (9) at 29.5.
    assert traces["explaining path"]["x"] == [15.0, 29.5, None]
    assert len(traces["declared edge"]["x"]) == 6
    assert sorted(traces["relation"]["text"]) == ["fine-tune", "fine-tune", "trained-on"]


# --- API ----------------------------------------------------------------------------------------


def post_json(client: Client, url: str, payload: dict, **extra):
    return client.post(url, json.dumps(payload), content_type="application/json", **extra)


def test_api_filing_needs_authentication_and_answers_201(
    anonymous_client, submitter, other_submitter, family
):
    payload = {
        "target_type": "model",
        "target": "org/root",
        "kind": "contamination",
        "evidence": EVIDENCE,
        "links": ["https://example.org/a"],
    }
    refused = post_json(anonymous_client, "/api/v1/flags", payload)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["code"] == "not_authenticated"

    created = post_json(Client(), "/api/v1/flags", payload, **bearer(submitter))
    assert created.status_code == 201
    body = created.json()
    assert (body["status"], body["kind"], body["reporter"], body["joined"]) == (
        "open",
        "contamination",
        "alice",
        False,
    )
    assert body["target"] == {"type": "model", "repo_id": "org/root"}

    joined = post_json(Client(), "/api/v1/flags", payload, **bearer(other_submitter))
    assert joined.status_code == 201
    assert (joined.json()["id"], joined.json()["joined"], joined.json()["supporters"]) == (
        body["id"],
        True,
        ["bob"],
    )


def test_api_filing_errors_use_the_house_shape(submitter_client, family):
    response = post_json(
        submitter_client,
        "/api/v1/flags",
        {
            "target_type": "model",
            "target": "org/root",
            "kind": "spam",
            "evidence": "",
            "links": ["x"],
        },
    )
    assert response.status_code == 400
    assert [(e["code"], e["field"]) for e in response.json()["errors"]] == [
        ("invalid_kind", "kind"),
        ("missing_evidence", "evidence"),
        ("invalid_link", "links"),
    ]
    missing = post_json(
        submitter_client,
        "/api/v1/flags",
        {"target_type": "dataset", "target": "org/root", "kind": "other", "evidence": EVIDENCE},
    )
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["field"] == "target"
    bad_type = post_json(
        submitter_client,
        "/api/v1/flags",
        {"target_type": "space", "target": "org/root", "kind": "other", "evidence": EVIDENCE},
    )
    assert bad_type.status_code == 400
    assert bad_type.json()["errors"][0]["field"] == "target_type"


def test_api_rate_limit_answers_429(settings, submitter_client, family):
    settings.TRELLIS_REPORTS_PER_DAY = 1
    payload = {"target_type": "model", "target": "org/root", "kind": "other", "evidence": EVIDENCE}
    assert post_json(submitter_client, "/api/v1/flags", payload).status_code == 201
    payload["target"] = "org/child"
    response = post_json(submitter_client, "/api/v1/flags", payload)
    assert response.status_code == 429
    assert response.json()["errors"][0]["code"] == "rate_limited"


@pytest.mark.parametrize(
    ("decision", "status_after"), [("confirm", "confirmed"), ("dismiss", "dismissed")]
)
def test_api_resolve_permission_matrix(
    anonymous_client, submitter, maintainer, open_report, decision, status_after
):
    url = f"/api/v1/flags/{open_report.pk}/resolve"
    payload = {"decision": decision, "note": "Reviewed the evidence."}
    assert post_json(anonymous_client, url, payload).status_code == 401
    forbidden = post_json(Client(), url, payload, **bearer(submitter))
    assert forbidden.status_code == 403
    assert forbidden.json()["errors"][0]["code"] == "not_a_maintainer"
    assert Report.objects.get().status == "open"
    done = post_json(Client(), url, payload, **bearer(maintainer))
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["resolved_by"]) == (status_after, "charlie")
    assert AuditEntry.objects.filter(report=open_report).count() == 2


def test_api_lift_permission_matrix_and_lifecycle_errors(
    anonymous_client, submitter, maintainer, open_report, family
):
    url = f"/api/v1/flags/{open_report.pk}/resolve"
    maint = bearer(maintainer)
    conflict = post_json(Client(), url, {"decision": "lift", "note": "n"}, **maint)
    assert conflict.status_code == 409
    assert conflict.json()["errors"][0]["code"] == "invalid_transition"
    assert (
        post_json(Client(), url, {"decision": "confirm", "note": "ok"}, **maint).status_code == 200
    )
    assert Repository.objects.get(pk=family["child"].pk).status == "tainted"

    payload = {"decision": "lift", "note": "Retrained cleanly."}
    assert post_json(anonymous_client, url, payload).status_code == 401
    assert post_json(Client(), url, payload, **bearer(submitter)).status_code == 403
    assert post_json(Client(), url, payload, **maint).status_code == 200
    assert Repository.objects.get(pk=family["child"].pk).status == "incomplete"
    missing = post_json(Client(), "/api/v1/flags/999999/resolve", payload, **maint)
    assert missing.status_code == 404


def test_api_lists_flags_by_status_and_target(
    anonymous_client, open_report, maintainer, family, submitter
):
    flow.resolve(open_report.pk, "confirm", "Yes.", maintainer)
    other = flow.file_report(
        reporter=submitter, target=family["data"], kind="license", evidence=EVIDENCE
    ).report
    everything = anonymous_client.get("/api/v1/flags")
    assert everything.status_code == 200
    assert [r["id"] for r in everything.json()] == [other.pk, open_report.pk]
    confirmed = anonymous_client.get("/api/v1/flags?status=confirmed")
    assert [r["id"] for r in confirmed.json()] == [open_report.pk]
    by_target = anonymous_client.get("/api/v1/flags?target=data-org/mix&target_type=dataset")
    assert [r["id"] for r in by_target.json()] == [other.pk]
    bad = anonymous_client.get("/api/v1/flags?status=pending")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "status"


def test_api_lineage_lists_ancestors_descendants_edges_and_paths(
    anonymous_client, family, maintainer
):
    report = flow.file_report(
        reporter=None, target=family["root"], kind="contamination", evidence=EVIDENCE
    ).report
    flow.resolve(report.pk, "confirm", "Verified.", maintainer)
    confirmed = Report.objects.get(pk=report.pk).confirmed_at.date().isoformat()
    response = anonymous_client.get("/api/v1/lineage/org/root")
    assert response.status_code == 200
    body = response.json()
    assert body["node"]["status"] == "flagged"
    assert body["node"]["taint_path"] == f"org/root (contamination, confirmed {confirmed})"
    assert [(n["repo_id"], n["status"], n["submitted"]) for n in body["ancestors"]] == [
        ("ext/parent", "incomplete", False)
    ]
    assert [(n["repo_id"], n["status"], n["depth"]) for n in body["descendants"]] == [
        ("org/child", "tainted", 1)
    ]
    assert body["descendants"][0]["taint_path"] == (
        f"org/child ← org/root (contamination, confirmed {confirmed})"
    )
    assert body["edges"] == [
        {
            "child": {"type": "model", "repo_id": "org/child"},
            "parent": {"type": "model", "repo_id": "org/root"},
            "relation": "fine-tune",
        },
        {
            "child": {"type": "model", "repo_id": "org/root"},
            "parent": {"type": "model", "repo_id": "ext/parent"},
            "relation": "fine-tune",
        },
    ]
    dataset = anonymous_client.get("/api/v1/lineage/data-org/mix?type=dataset")
    assert [n["repo_id"] for n in dataset.json()["descendants"]] == ["org/child"]
    missing = anonymous_client.get("/api/v1/lineage/data-org/mix")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "unknown_target"
