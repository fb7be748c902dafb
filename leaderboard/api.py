"""The versioned JSON API: one NinjaAPI, one router per app that owns the resource. Every refusal
answers with the one error body (`leaderboard.problems.Errors`): routes raise `Refusal`, and
ninja's own errors (validation, authentication, unparsable bodies) are translated to it here."""

from __future__ import annotations

import copy

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from leaderboard.problems import Problem, Refusal

api = NinjaAPI(
    title="Trellis API",
    version="1.0.0",
    description="Leaderboard, lineage and integrity data of a Trellis instance. Every refusal "
    'answers {"errors": [{"code", "field", "message"}]} (the `Errors` schema).',
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url="/docs",
    auth=None,
)


@api.exception_handler(Refusal)
def _refusal(request: HttpRequest, refusal: Refusal) -> HttpResponse:
    return api.create_response(request, refusal.as_dict(), status=refusal.status)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = []
    for item in exc.errors:
        loc = [
            str(part)
            for part in item.get("loc", [])
            if part not in ("body", "payload", "query", "path")
        ]
        problems.append(
            Problem(
                code="invalid_" + (item.get("type") or "value").split(".")[0],
                field=".".join(loc) or "body",
                message=item.get("msg", "invalid value"),
            )
        )
    return _refusal(request, Refusal(problems, 400))


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    refusal = Refusal.one(
        "not_authenticated",
        "Authorization",
        "Sign in, or send 'Authorization: Bearer <token>' with a token from your profile page.",
        401,
    )
    return _refusal(request, refusal)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja raises HttpError(400, "Cannot parse request body") for malformed JSON; without this
    # it would answer {"detail": ...} instead of the one error shape.
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        refusal = Refusal.one(
            "malformed_json",
            "body",
            "The request body is not valid JSON: send one JSON object, with "
            "'Content-Type: application/json'.",
        )
    else:
        refusal = Refusal.one(f"http_{exc.status_code}", "", str(exc), exc.status_code)
    return _refusal(request, refusal)


@api.exception_handler(RequestDataTooBig)
def _too_large(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    # Django would answer its own HTML 400 page; an API client gets the one error shape.
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    refusal = Refusal.one(
        "body_too_large",
        "body",
        f"The request body is larger than {limit} bytes: send only the fields the route takes.",
        413,
    )
    return _refusal(request, refusal)


def _register_routers() -> None:
    from leaderboard.evaluations.api import router as evaluations_router
    from leaderboard.integrity.api import router as integrity_router
    from leaderboard.public.api import router as public_router
    from leaderboard.submissions.api import router as submissions_router

    api.add_router("/", submissions_router)
    api.add_router("/", evaluations_router)
    api.add_router("/", integrity_router)
    api.add_router("/", public_router)


def _answer_head() -> None:
    """Every GET route answers HEAD too (RFC 9110): a HEAD twin of each GET operation, left out
    of the OpenAPI document; Django's handlers send the GET's headers without its body."""
    for _prefix, router in api._routers:
        for path_view in router.path_operations.values():
            for operation in list(path_view.operations):
                if "GET" in operation.methods and "HEAD" not in operation.methods:
                    head = copy.copy(operation)
                    head.methods = ["HEAD"]
                    head.include_in_schema = False
                    path_view.operations.append(head)


_register_routers()
_answer_head()
