"""The versioned JSON API: one NinjaAPI, one router per app that owns the resource."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from leaderboard.accounts.auth import api_auth

api = NinjaAPI(
    title="Trellis API",
    version="1.0.0",
    description="Leaderboard, lineage and integrity data of a Trellis instance.",
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url="/docs",
    auth=None,
)


def error_response(
    request: HttpRequest, errors: list[dict[str, str]], status: int = 400
) -> HttpResponse:
    """The one error shape every route uses: {"errors": [{"code", "field", "message"}]}."""
    return api.create_response(request, {"errors": errors}, status=status)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = []
    for item in exc.errors:
        loc = [
            str(part) for part in item.get("loc", []) if part not in ("body", "payload", "query")
        ]
        errors.append(
            {
                "code": "invalid_" + (item.get("type") or "value").split(".")[0],
                "field": ".".join(loc) or "body",
                "message": item.get("msg", "invalid value"),
            }
        )
    return error_response(request, errors, 400)


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(
        request,
        [
            {
                "code": "not_authenticated",
                "field": "Authorization",
                "message": "Sign in, or send 'Authorization: Bearer <token>' with a token "
                "from your profile page.",
            }
        ],
        401,
    )


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja raises HttpError(400, "Cannot parse request body") for malformed JSON; without this
    # it would answer {"detail": ...} instead of the one error shape.
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        error = {
            "code": "malformed_json",
            "field": "body",
            "message": "The request body is not valid JSON: send one JSON object, with "
            "'Content-Type: application/json'.",
        }
    else:
        error = {"code": f"http_{exc.status_code}", "field": "", "message": str(exc)}
    return error_response(request, [error], exc.status_code)


def _register_routers() -> None:
    from leaderboard.evaluations.api import router as evaluations_router
    from leaderboard.integrity.api import router as integrity_router
    from leaderboard.public.api import router as public_router
    from leaderboard.submissions.api import router as submissions_router

    api.add_router("/", submissions_router)
    api.add_router("/", evaluations_router)
    api.add_router("/", integrity_router)
    api.add_router("/", public_router)


_register_routers()
_ = api_auth  # re-exported for routers: `from leaderboard.api import api_auth`
