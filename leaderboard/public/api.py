"""Public read API (mounted under /api/v1/): the leaderboard, one model, the suites.

Each route answers conditional requests from a cheap validator before building anything, sends
CORS headers, and answers OPTIONS preflights. Bodies are serialized by
leaderboard.public.serializers (the same functions the exports use); the schemas below declare
them for the OpenAPI document."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema
from ninja.decorators import decorate_view

from leaderboard.evaluations.serializers import SubmissionDetailOut
from leaderboard.problems import Refusal, error_responses
from leaderboard.public import detail, serializers
from leaderboard.public.cache import cached_response
from leaderboard.public.etags import (
    data_version,
    model_state,
    ranking_validator,
    suites_validator,
)
from leaderboard.public.http import conditional, preflight, with_cors
from leaderboard.public.query import (
    RankingQuery,
    parse_ranking_query,
    refuse_unknown_parameters,
)
from leaderboard.public.row import row_schema
from leaderboard.public.selection import ranking_for_api
from leaderboard.public.suites import suite_names, suite_view, versions_of

router = Router(tags=["public"])


class SuiteTaskOut(Schema):
    key: str
    lm_eval_task: str
    metric: str
    num_fewshot: int
    random_baseline: float
    description: str


class RankedSuiteOut(Schema):
    name: str
    version: str
    description: str
    defined: bool
    tasks: list[SuiteTaskOut]


class SuiteListOut(Schema):
    suites: list[RankedSuiteOut]


# Field by field from the declaration in leaderboard/public/row.py.
LeaderboardRowOut = row_schema()


class LeaderboardOut(Schema):
    suite: RankedSuiteOut
    normalized: bool
    sort: str
    dir: str
    count: int
    hidden: int
    hidden_flagged: int
    hidden_tainted: int
    page: int | None
    pages: int
    per_page: int | None
    rows: list[LeaderboardRowOut]  # type: ignore[valid-type]  # built from the declaration


class ModelParentOut(Schema):
    repo_id: str
    kind: str
    relation: str


class ModelReportOut(Schema):
    id: int
    kind: str
    status: str
    evidence: str
    links: list[Any]
    reporter: str | None
    supporters: list[str]
    created_at: datetime
    confirmed_at: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str


class ModelOut(Schema):
    model: str
    url: str
    license: str
    is_synthetic: bool
    lineage_status: str
    taint_path: str | None
    status_path: list[dict[str, Any]]
    parents: list[ModelParentOut]
    children: int
    reports: list[ModelReportOut]
    submissions: list[SubmissionDetailOut]


def _query_parameters() -> list[dict[str, Any]]:
    """The ranking query's parameters for the OpenAPI document, from RankingQuery's fields."""
    document = RankingQuery.model_json_schema()
    definitions = document.get("$defs", {})

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            schema = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
        if len(options) == 1:
            schema = options[0] | {k: v for k, v in schema.items() if k != "anyOf"}
        kept = ("type", "enum", "default", "minimum", "maximum", "maxLength")
        result = {key: schema[key] for key in kept if key in schema and schema[key] is not None}
        if schema.get("type") == "array":
            result["items"] = resolved(schema["items"])
            result.pop("default", None)
        return result

    parameters = []
    for name, field_schema in document["properties"].items():
        schema = resolved(field_schema)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        parameter["schema"] = schema
        if schema.get("type") == "array":
            parameter |= {"style": "form", "explode": True}
        if "description" in field_schema:
            parameter["description"] = field_schema["description"]
        parameters.append(parameter)
    return parameters


_CONDITIONAL_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
}


def _cors(run: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """CORS headers on every answer of a read route, refusals included (ninja's `decorate_view`
    wraps the operation outside its exception handling)."""

    @functools.wraps(run)
    def answer(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return with_cors(run(request, *args, **kwargs))

    return answer


@decorate_view(_cors)
@router.get(
    "/leaderboard",
    url_name="public_leaderboard",
    response={200: LeaderboardOut, 304: None, **error_responses(400)},
    summary="The ranking of one suite version, filtered like the ranking page",
    openapi_extra={
        "parameters": _query_parameters(),
        "responses": {200: {"headers": _CONDITIONAL_HEADERS}},
    },
)
def leaderboard(request: HttpRequest) -> HttpResponse:
    query = parse_ranking_query(request.GET, paginate=False)
    # The body changes only when its data version (the ETag) does: built once per version,
    # shared by every web process, gzip-compressed for clients that accept it; a page is cut
    # from the order of every row, itself computed once per version.
    data = data_version(query)
    return cached_response(
        request,
        "leaderboard",
        ranking_validator(query, extra="api", data=data),
        lambda: serializers.leaderboard_json(ranking_for_api(query, data_version=data.etag)),
        content_type="application/json",
    )


@decorate_view(_cors)
@router.get(
    "/models/{org}/{name}",
    url_name="public_model",
    response={200: ModelOut, 304: None, **error_responses(400, 404)},
    summary="One model: lineage status, reports, every submission and its evaluations",
    openapi_extra={"responses": {200: {"headers": _CONDITIONAL_HEADERS}}},
)
def model(request: HttpRequest, org: str, name: str) -> HttpResponse:
    refuse_unknown_parameters(request.GET)
    repository = detail.find_model(f"{org}/{name}")
    if repository is None:
        raise Refusal.one(
            "not_found",
            "model",
            f"No model {org}/{name} in this catalog; list ranked models with "
            "GET /api/v1/leaderboard.",
            404,
        )
    query = RankingQuery()  # every evaluation is listed; no suite version is singled out
    # Built once per version of the model's own data, shared by every web process.
    return cached_response(
        request,
        f"model:{repository.pk}",
        model_state(repository),
        lambda: serializers.to_json(
            serializers.model_to_dict(detail.model_detail(repository, query))
        ),
        content_type="application/json",
    )


@decorate_view(_cors)
@router.get(
    "/suites",
    url_name="public_suites",
    response={200: SuiteListOut, 304: None, **error_responses(400)},
    summary="Every suite version with ranked rows or defined by the evaluator, newest first",
)
def suites(request: HttpRequest) -> HttpResponse:
    refuse_unknown_parameters(request.GET)
    views = [suite_view(name, version) for name in suite_names() for version in versions_of(name)]
    body = {"suites": [serializers.suite_to_dict(view) for view in views if view is not None]}
    text = serializers.to_json(body)
    return conditional(
        request, suites_validator(text), lambda: HttpResponse(text, content_type="application/json")
    )


@router.api_operation(["OPTIONS"], "/leaderboard", include_in_schema=False)
def leaderboard_preflight(request: HttpRequest) -> HttpResponse:
    return preflight()


@router.api_operation(["OPTIONS"], "/models/{org}/{name}", include_in_schema=False)
def model_preflight(request: HttpRequest, org: str, name: str) -> HttpResponse:
    return preflight()


@router.api_operation(["OPTIONS"], "/suites", include_in_schema=False)
def suites_preflight(request: HttpRequest) -> HttpResponse:
    return preflight()
