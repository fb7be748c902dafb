"""Who is asking: the client's address as the trusted proxies saw it, and the identity a rate
limit counts against."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The address of the client (None when unknown, as for a request built in code). Behind
    TRELLIS_PROXY_HOPS proxies, the entry the outermost trusted proxy appended to
    X-Forwarded-For: what a client writes there itself sits to the left of it, never believed."""
    hops = settings.TRELLIS_PROXY_HOPS
    if hops:
        forwarded = [
            part.strip()
            for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR") or None


def requester(request: HttpRequest) -> str:
    """What a rate limit counts against: the API token, the signed-in user, else the address.
    A token is told apart by its hash alone, so no database read happens before the view."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        raw = header.removeprefix("Bearer ").strip()
        return "token:" + hashlib.sha256(raw.encode()).hexdigest()[:32]
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_ip(request) or 'unknown'}"
