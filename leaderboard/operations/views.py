"""The operator's endpoints: /healthz (JSON, 200 or 503), /metrics (Prometheus text, for allowed
addresses or the metrics token), and the page a request gets while the database is down."""

from __future__ import annotations

import hmac
import sys

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults

from leaderboard.operations import health
from leaderboard.operations.clients import client_ip
from leaderboard.problems import Refusal

UNAVAILABLE_RETRY_AFTER = 30  # seconds


def healthz(request: HttpRequest) -> HttpResponse:
    report = health.check()
    response = JsonResponse(report.as_dict(), status=503 if report.down else 200)
    response["Cache-Control"] = "no-store"
    return response


def metrics_allowed(request: HttpRequest) -> bool:
    token = settings.TRELLIS_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)
    return client_ip(request) in settings.TRELLIS_METRICS_ALLOWED_IPS


def metrics(request: HttpRequest) -> HttpResponse:
    from leaderboard.operations.metrics import exposition

    if not metrics_allowed(request):
        return HttpResponse(
            "Metrics are open to the addresses in TRELLIS_METRICS_ALLOWED_IPS, or with "
            "'Authorization: Bearer <TRELLIS_METRICS_TOKEN>'.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: a database that is down or restarting is a 503 with a page that says so and
    when to retry, not a bare 500; anything else is Django's 500."""
    error = sys.exc_info()[1]
    if not isinstance(error, OperationalError | InterfaceError):
        return defaults.server_error(request)
    message = (
        "Trellis cannot reach its database right now (it may be restarting). Nothing you "
        f"submitted before is lost. Try again in {UNAVAILABLE_RETRY_AFTER} seconds."
    )
    response: HttpResponse
    if request.path.startswith("/api/"):
        refusal = Refusal.one("unavailable", "", message, 503)
        response = JsonResponse(refusal.as_dict(), status=503)
    else:
        # Rendered without the request context: base.html would ask the database for the user.
        body = render_to_string("operations/unavailable.html", {"message": message})
        response = HttpResponse(body, status=503)
    response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
    return response
