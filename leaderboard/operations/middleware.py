"""Middleware of the operations app: the probe endpoints and request metrics (first in the
chain), and the per-minute rate limits (after authentication)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from leaderboard.operations import throttle, views
from leaderboard.operations.clients import client_ip, requester
from leaderboard.problems import Refusal

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
PROBES = {"/healthz": views.healthz, "/metrics": views.metrics}


class OperationsMiddleware:
    """Answers /healthz and /metrics before the host check and the HTTPS redirect: probes and
    scrapers reach the web process by its address. Times and counts every other request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return probe(request)
        from leaderboard.operations.metrics import observe_request

        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"
        observe_request(
            view, method or "other", response.status_code, time.perf_counter() - started
        )
        return response


class ThrottleMiddleware:
    """The per-minute limits of leaderboard.operations.throttle on the routes that create."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rule = throttle.rule_for(request.method or "", request.path_info)
        if rule is not None:
            if rule.scope == "logins":  # nobody is signed in yet: count by address
                who = f"ip:{client_ip(request) or 'unknown'}"
            else:
                who = requester(request)
            throttled = throttle.take(rule, who)
            if throttled is not None:
                return _throttled_response(request, throttled)
        return self.get_response(request)


def _throttled_response(request: HttpRequest, throttled: throttle.Throttled) -> HttpResponse:
    response: HttpResponse
    if request.path_info.startswith("/api/"):
        refusal = Refusal.one("rate_limited", "", throttled.message, 429)
        response = JsonResponse(refusal.as_dict(), status=429)
    else:
        context = {"message": throttled.message, "retry_after": throttled.retry_after}
        response = render(request, "operations/throttled.html", context, status=429)
    response["Retry-After"] = str(throttled.retry_after)
    return response
