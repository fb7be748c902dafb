"""One error body for the whole API: every operation in the served OpenAPI document declares its
refusals (4xx) with the `Errors` schema, and the refusals the routes really send validate
against it."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.factories import RepositoryFactory, report

pytestmark = pytest.mark.django_db

ERRORS = {"$ref": "#/components/schemas/Errors"}

# Each operation's refusals, exactly: a new route, or a new way to refuse, is declared here and
# in its `response=` on purpose.
DECLARED = {
    ("post", "/api/v1/submissions"): {"400", "401", "413", "429"},
    ("get", "/api/v1/submissions/{submission_id}"): {"400", "404"},
    ("post", "/api/v1/submissions/{submission_id}/requeue"): {"400", "401", "403", "404", "409"},
    ("get", "/api/v1/queue"): set(),
    ("post", "/api/v1/submissions/{submission_id}/vote"): {"401", "404", "409", "429"},
    ("delete", "/api/v1/submissions/{submission_id}/vote"): {"401", "404"},
    ("post", "/api/v1/runs/{run_id}/boost"): {"400", "401", "403", "404", "409"},
    ("post", "/api/v1/flags"): {"400", "401", "404", "409", "413", "429"},
    ("get", "/api/v1/flags"): {"400"},
    ("post", "/api/v1/flags/{report_id}/resolve"): {"400", "401", "403", "404", "409", "413"},
    ("get", "/api/v1/lineage/{org}/{name}"): {"400", "404"},
    ("get", "/api/v1/leaderboard"): {"400"},
    ("get", "/api/v1/models/{org}/{name}"): {"400", "404"},
    ("get", "/api/v1/suites"): {"400"},
}


@pytest.fixture
def openapi(anonymous_client) -> dict[str, Any]:
    response = anonymous_client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }


def test_the_errors_schema_is_the_one_error_body(openapi):
    schemas = openapi["components"]["schemas"]
    assert schemas["Errors"] == {
        "description": "The error body of every API route, as the OpenAPI document names it.",
        "properties": {
            "errors": {
                "items": {"$ref": "#/components/schemas/ErrorItem"},
                "title": "Errors",
                "type": "array",
            }
        },
        "required": ["errors"],
        "title": "Errors",
        "type": "object",
    }
    assert schemas["ErrorItem"]["required"] == ["code", "field", "message"]
    assert {name: p["type"] for name, p in schemas["ErrorItem"]["properties"].items()} == {
        "code": "string",
        "field": "string",
        "message": "string",
    }


def test_every_operation_declares_its_refusals_with_the_errors_schema(openapi):
    found = {}
    for key, operation in operations(openapi).items():
        refusals = {status for status in operation["responses"] if status.startswith("4")}
        found[key] = refusals
        for status in refusals:
            content = operation["responses"][status]["content"]
            assert content == {"application/json": {"schema": ERRORS}}, (key, status)
        if operation.get("security"):
            assert "401" in refusals, key
    assert found == DECLARED


def check(openapi: dict[str, Any], method: str, path: str, response: Any) -> dict[str, Any]:
    """The response's status is declared by its operation, and its body is an `Errors`."""
    operation = operations(openapi)[(method, path)]
    assert str(response.status_code) in operation["responses"]
    body = response.json()
    document = {"components": openapi["components"]} | ERRORS
    problems = sorted(Draft202012Validator(document).iter_errors(body), key=str)
    assert problems == [], [f"{list(p.absolute_path)}: {p.message}" for p in problems]
    return body


def codes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(error["code"], error["field"]) for error in body["errors"]]


def test_refusals_of_authenticated_routes_validate(
    openapi, anonymous_client, submitter_client, maintainer
):
    response = anonymous_client.post("/api/v1/submissions", {}, content_type="application/json")
    assert response.status_code == 401
    assert codes(check(openapi, "post", "/api/v1/submissions", response)) == [
        ("not_authenticated", "Authorization")
    ]

    response = submitter_client.post(
        "/api/v1/submissions", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert codes(check(openapi, "post", "/api/v1/submissions", response)) == [
        ("malformed_json", "body")
    ]

    response = submitter_client.post(
        "/api/v1/submissions", {"repo_id": "org/model"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert codes(check(openapi, "post", "/api/v1/submissions", response)) == [
        ("invalid_missing", "precision"),
        ("invalid_missing", "model_type"),
    ]

    response = submitter_client.post("/api/v1/submissions/999999/requeue")
    assert response.status_code == 404
    path = "/api/v1/submissions/{submission_id}/requeue"
    assert codes(check(openapi, "post", path, response)) == [("not_found", "id")]

    target = RepositoryFactory(repo_id="org/suspect")
    report(target)
    [filed] = target.reports.all()
    response = submitter_client.post(
        f"/api/v1/flags/{filed.pk}/resolve",
        {"decision": "confirm", "note": "I think so."},
        content_type="application/json",
    )
    assert response.status_code == 403
    path = "/api/v1/flags/{report_id}/resolve"
    assert codes(check(openapi, "post", path, response)) == [("not_a_maintainer", "Authorization")]

    response = submitter_client.post(
        "/api/v1/flags",
        {"target": "org/nowhere", "kind": "contamination", "evidence": "Seen it."},
        content_type="application/json",
    )
    assert response.status_code == 404
    assert codes(check(openapi, "post", "/api/v1/flags", response)) == [
        ("unknown_target", "target")
    ]


def test_a_burst_of_submissions_is_refused_in_the_error_shape(openapi, submitter_client, settings):
    settings.TRELLIS_THROTTLE_SUBMISSIONS = 1
    body = {"repo_id": "org/model"}  # refused by validation; the throttle counts it all the same
    first = submitter_client.post("/api/v1/submissions", body, content_type="application/json")
    assert first.status_code == 400
    response = submitter_client.post("/api/v1/submissions", body, content_type="application/json")
    assert response.status_code == 429
    assert codes(check(openapi, "post", "/api/v1/submissions", response)) == [("rate_limited", "")]


def test_a_body_over_the_upload_limit_is_refused_in_the_error_shape(
    openapi, submitter_client, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"target": "org/model", "kind": "other", "evidence": "x" * 2000}
    response = submitter_client.post("/api/v1/flags", body, content_type="application/json")
    assert response.status_code == 413
    assert codes(check(openapi, "post", "/api/v1/flags", response)) == [("body_too_large", "body")]


def test_refusals_of_public_routes_validate(openapi, anonymous_client):
    response = anonymous_client.get("/api/v1/submissions/999999")
    assert response.status_code == 404
    path = "/api/v1/submissions/{submission_id}"
    assert codes(check(openapi, "get", path, response)) == [("not_found", "id")]

    response = anonymous_client.get("/api/v1/submissions/not-a-number")
    assert response.status_code == 400
    assert codes(check(openapi, "get", path, response)) == [
        ("invalid_int_parsing", "submission_id")
    ]

    response = anonymous_client.get("/api/v1/flags?status=pending")
    assert response.status_code == 400
    assert codes(check(openapi, "get", "/api/v1/flags", response)) == [("invalid_status", "status")]

    response = anonymous_client.get("/api/v1/lineage/org/nowhere")
    assert response.status_code == 404
    path = "/api/v1/lineage/{org}/{name}"
    assert codes(check(openapi, "get", path, response)) == [("unknown_target", "target")]

    response = anonymous_client.get("/api/v1/leaderboard?sort=vibes")
    assert response.status_code == 400
    assert codes(check(openapi, "get", "/api/v1/leaderboard", response)) == [
        ("unknown_sort", "sort")
    ]
    # The public read routes keep their CORS headers on a refusal.
    assert response["Access-Control-Allow-Origin"] == "*"

    response = anonymous_client.get("/api/v1/models/org/nowhere")
    assert response.status_code == 404
    path = "/api/v1/models/{org}/{name}"
    assert codes(check(openapi, "get", path, response)) == [("not_found", "model")]
    assert response["Access-Control-Allow-Origin"] == "*"
