"""The public JSON API, checked against the OpenAPI document it serves: shapes, filters,
conditional requests, CORS, and an offline docs page."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.utils.http import http_date
from jsonschema import Draft202012Validator

from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, VERSION, edge, flag, ranked, repository

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database


@pytest.fixture
def openapi(anonymous_client) -> dict[str, Any]:
    response = anonymous_client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def _closed(schema: Any) -> Any:
    """Every object schema that lists properties also forbids others: the serializers must
    emit exactly what the document declares."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and closed.get("type") == "object":
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def validate(openapi: dict[str, Any], path: str, status: int, body: Any) -> None:
    operation = openapi["paths"][path]["get"]
    response_schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    document = {"components": _closed(copy.deepcopy(openapi["components"]))} | response_schema
    errors = sorted(Draft202012Validator(document).iter_errors(body), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.fixture
def catalog(maintainer):
    root = ranked("org/root", 0.7, model_type="pretrained").repository
    child = ranked("org/child", 0.6, merge_method="ties", model_type="merge").repository
    ranked("org/clean", {"arc_challenge": 0.5, "hellaswag": 0.5}, stderr=None, license="other")
    ranked("synthetic-org/fake", 0.3, is_synthetic=True)
    edge(child, root, "merge")
    flag(root, maintainer)


def test_leaderboard_matches_the_schema_and_carries_lineage(anonymous_client, openapi, catalog):
    response = anonymous_client.get("/api/v1/leaderboard?show_flagged=1&show_tainted=1")
    assert response.status_code == 200
    body = response.json()
    validate(openapi, "/api/v1/leaderboard", 200, body)
    assert (body["count"], body["hidden"], body["page"], body["per_page"]) == (4, 0, None, None)
    assert [task["key"] for task in body["suite"]["tasks"]] == [
        "arc_challenge",
        "hellaswag",
        "mmlu",
        "winogrande",
    ]
    rows = {row["model"]: row for row in body["rows"]}
    assert list(rows) == ["org/root", "org/child", "synthetic-org/fake", "org/clean"]
    root, child, fake, partial = rows.values()
    assert root["lineage_status"] == "flagged"
    assert root["flags"][0]["kind"] == "contamination"
    assert root["flags"][0]["status"] == "confirmed"
    assert child["lineage_status"] == "tainted"
    assert child["taint_path"].startswith("org/child ← org/root (contamination, confirmed ")
    assert child["is_merge"] is True and child["merge_method"] == "ties"
    assert fake["is_synthetic"] is True
    assert root["scores"]["arc_challenge"] == pytest.approx(70.0)
    assert root["normalized_scores"]["winogrande"] == pytest.approx(40.0)
    assert root["stderr"]["mmlu"] == pytest.approx(1.0)
    assert root["average"] == pytest.approx(70.0)
    assert partial["average"] is None
    assert partial["scores"]["mmlu"] is None and partial["stderr"]["arc_challenge"] is None
    assert partial["license_family"] == "unknown"


def test_leaderboard_defaults_hide_flagged_and_tainted(anonymous_client, catalog):
    body = anonymous_client.get("/api/v1/leaderboard").json()
    assert [row["model"] for row in body["rows"]] == ["synthetic-org/fake", "org/clean"]
    assert (body["hidden"], body["hidden_flagged"], body["hidden_tainted"]) == (2, 1, 1)
    paged = anonymous_client.get("/api/v1/leaderboard?page=1&per_page=1").json()
    assert (paged["page"], paged["pages"], paged["per_page"], len(paged["rows"])) == (1, 2, 1, 1)


def test_refused_query_uses_the_error_shape(anonymous_client, openapi):
    response = anonymous_client.get("/api/v1/leaderboard?sort=vibes&colour=red")
    assert response.status_code == 400
    assert response["Access-Control-Allow-Origin"] == "*"
    body = response.json()
    validate(openapi, "/api/v1/leaderboard", 400, body)
    assert [error["field"] for error in body["errors"]] == ["colour", "sort"]
    response = anonymous_client.get("/api/v1/leaderboard?sort=vibes")
    assert response.json()["errors"][0]["code"] == "unknown_sort"


def test_model_matches_the_schema(anonymous_client, openapi, catalog):
    repository("data/web", kind="dataset")
    response = anonymous_client.get("/api/v1/models/org/child")
    assert response.status_code == 200
    body = response.json()
    validate(openapi, "/api/v1/models/{org}/{name}", 200, body)
    assert body["lineage_status"] == "tainted"
    assert body["parents"] == [{"repo_id": "org/root", "kind": "model", "relation": "merge"}]
    [submission] = body["submissions"]
    assert (submission["repo_id"], submission["parameters"]) == ("org/child", 1_000_000_000)
    [run] = submission["runs"]
    assert (run["state"], run["suite"]) == ("finished", {"name": SUITE, "version": VERSION})
    assert [score["value"] for score in run["scores"]] == pytest.approx([60.0] * 4)
    assert run["average"] == pytest.approx(60.0)

    root = anonymous_client.get("/api/v1/models/org/root").json()
    validate(openapi, "/api/v1/models/{org}/{name}", 200, root)
    assert [(r["kind"], r["status"]) for r in root["reports"]] == [("contamination", "confirmed")]

    missing = anonymous_client.get("/api/v1/models/org/ghost")
    assert missing.status_code == 404
    validate(openapi, "/api/v1/models/{org}/{name}", 404, missing.json())


def test_suites_match_the_schema(anonymous_client, openapi):
    response = anonymous_client.get("/api/v1/suites")
    body = response.json()
    validate(openapi, "/api/v1/suites", 200, body)
    assert (body["suites"][0]["name"], body["suites"][0]["version"]) == (SUITE, VERSION)
    assert response["ETag"]
    again = anonymous_client.get("/api/v1/suites", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304


def test_conditional_requests_answer_304_until_the_data_changes(
    anonymous_client, django_assert_num_queries
):
    ranked("org/a", 0.5)
    first = anonymous_client.get("/api/v1/leaderboard")
    etag, modified = first["ETag"], first["Last-Modified"]
    assert etag.startswith('"') and modified.endswith("GMT")
    assert first["Cache-Control"] == "public, no-cache"

    # The 304 path reads its aggregates (ranked rows, lineage statuses, integrity events) in
    # one query; a shipped suite version resolves without the database.
    with django_assert_num_queries(1):
        again = anonymous_client.get("/api/v1/leaderboard", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert again["Access-Control-Allow-Origin"] == "*"

    since = anonymous_client.get("/api/v1/leaderboard", HTTP_IF_MODIFIED_SINCE=modified)
    assert since.status_code == 304
    # Another filter is another representation.
    other = anonymous_client.get("/api/v1/leaderboard?q=a", HTTP_IF_NONE_MATCH=etag)
    assert other.status_code == 200

    ranked("org/b", 0.6)
    changed = anonymous_client.get("/api/v1/leaderboard", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert [row["model"] for row in changed.json()["rows"]] == ["org/b", "org/a"]
    old = http_date(0)
    assert (
        anonymous_client.get("/api/v1/leaderboard", HTTP_IF_MODIFIED_SINCE=old).status_code == 200
    )


def test_model_resource_is_conditional_too(anonymous_client, maintainer):
    submission = ranked("org/a", 0.5)
    first = anonymous_client.get("/api/v1/models/org/a")
    assert (
        anonymous_client.get("/api/v1/models/org/a", HTTP_IF_NONE_MATCH=first["ETag"]).status_code
        == 304
    )
    flag(submission.repository, maintainer)
    after = anonymous_client.get("/api/v1/models/org/a", HTTP_IF_NONE_MATCH=first["ETag"])
    assert after.status_code == 200
    assert after.json()["lineage_status"] == "flagged"


@pytest.mark.parametrize("path", ["/api/v1/leaderboard", "/api/v1/models/org/a", "/api/v1/suites"])
def test_read_routes_allow_cross_origin_reads(anonymous_client, path):
    ranked("org/a", 0.5)
    response = anonymous_client.get(path, HTTP_ORIGIN="https://elsewhere.example")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["Access-Control-Expose-Headers"] == "ETag, Last-Modified"
    preflight = anonymous_client.options(
        path,
        HTTP_ORIGIN="https://elsewhere.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="if-none-match",
    )
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "*"
    assert preflight["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    assert "If-None-Match" in preflight["Access-Control-Allow-Headers"]


def test_docs_page_works_offline(anonymous_client):
    response = anonymous_client.get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<script src="/static/ninja/swagger-ui-bundle.js"></script>' in html
    assert 'href="/static/ninja/swagger-ui.css"' in html
    assert "cdn" not in html.lower()
    assert "https://" not in html and "http://" not in html
    assert anonymous_client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200


def test_spliced_body_equals_the_serialized_rows(catalog):
    """The API splices stored row JSON with live fields; it must equal serializing each row."""
    from leaderboard.public import serializers
    from leaderboard.public.query import parse_ranking_query
    from leaderboard.public.selection import ranking, ranking_for_api

    for params in ({"show_flagged": "1", "show_tainted": "1"}, {"sort": "model", "page": "1"}):
        query = parse_ranking_query(params, paginate=False)
        spliced = json.loads(serializers.leaderboard_json(ranking_for_api(query)))
        assert spliced == serializers.leaderboard_to_dict(ranking(query))
    assert len(spliced["rows"]) == 2


def test_row_schema_and_csv_columns_derive_from_the_declaration(openapi):
    from leaderboard.public.row import PUBLIC_FIELDS, csv_header

    declared = [f.name for f in PUBLIC_FIELDS]
    row = openapi["components"]["schemas"]["LeaderboardRowOut"]
    assert list(row["properties"]) == declared
    assert row["required"] == declared
    assert row["properties"]["parameters"]["description"] == "Parameter count"
    assert row["properties"]["flags"]["items"] == {"$ref": "#/components/schemas/RowFlagOut"}
    assert csv_header(["arc", "mmlu"]) == [
        *("rank", "model", "url", "submission_id", "revision", "precision", "model_type"),
        *("weight_type", "parameters", "license", "license_family", "merge_method", "is_merge"),
        *("is_synthetic", "submitted_at", "evaluated_at", "average", "average_normalized"),
        *("verified", "energy_wh", "co2_grams", "energy_method"),
        *("lineage_status", "taint_path"),
        *("score:arc", "score:mmlu", "normalized:arc", "normalized:mmlu"),
        *("stderr:arc", "stderr:mmlu", "flags"),
    ]


def test_leaderboard_parameters_are_the_ranking_query_fields(openapi):
    from leaderboard.public.query import RankingQuery

    parameters = openapi["paths"]["/api/v1/leaderboard"]["get"]["parameters"]
    assert [p["name"] for p in parameters] == list(RankingQuery.model_fields)
    by_name = {p["name"]: p for p in parameters}
    assert by_name["precision"]["schema"] == {
        "type": "array",
        "items": {"type": "string", "enum": ["float16", "bfloat16", "float32"]},
    }
    assert by_name["per_page"]["schema"] == {
        "type": "integer",
        "default": 50,
        "minimum": 1,
        "maximum": 500,
    }
    assert by_name["dir"]["schema"] == {"type": "string", "enum": ["asc", "desc"]}
