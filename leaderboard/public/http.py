"""HTTP plumbing shared by the public API and exports: conditional requests and CORS."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.cache import get_conditional_response
from django.utils.http import http_date, quote_etag

from leaderboard.public.etags import Validator

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, Last-Modified",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "If-None-Match, If-Modified-Since, Accept, Content-Type",
    "Access-Control-Max-Age": "86400",
}


def with_cors(response: HttpResponse) -> HttpResponse:
    for name, value in CORS_HEADERS.items():
        response[name] = value
    return response


def preflight() -> HttpResponse:
    response = HttpResponse(status=204)
    for name, value in PREFLIGHT_HEADERS.items():
        response[name] = value
    return response


def conditional(
    request: HttpRequest, validator: Validator, build: Callable[[], HttpResponse]
) -> HttpResponse:
    """A 304 when the client's copy is current, else `build()`; both carry the validators.
    `build` runs only when needed, so the 304 path costs just the validator's aggregates."""
    etag = quote_etag(validator.etag)
    last_modified = (
        int(validator.last_modified.timestamp()) if validator.last_modified is not None else None
    )
    response = get_conditional_response(request, etag=etag, last_modified=last_modified)
    if response is None:
        response = build()
    response["ETag"] = etag
    if last_modified is not None:
        response["Last-Modified"] = http_date(last_modified)
    # Revalidate every time: the validator is cheap and the data changes with every ingest.
    response["Cache-Control"] = "public, no-cache"
    return response
