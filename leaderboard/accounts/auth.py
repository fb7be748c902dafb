"""API authentication: a Bearer token, or the browser's session (with CSRF)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from leaderboard.accounts.models import ApiToken, hash_token
from leaderboard.problems import Refusal


def user_from_bearer(request: HttpRequest) -> Any | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    raw = header.removeprefix("Bearer ").strip()
    token = (
        ApiToken.objects.active().select_related("user").filter(key_hash=hash_token(raw)).first()
    )
    if token is None or not token.user.is_active:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def _csrf_ok(request: HttpRequest) -> bool:
    reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})  # type: ignore[arg-type]
    return reason is None


def api_auth(request: HttpRequest) -> Any | None:
    """Ninja auth callable: returns the user, or None (which ninja turns into 401)."""
    user = user_from_bearer(request)
    if user is not None:
        request.user = user
        return user
    session_user = getattr(request, "user", AnonymousUser())
    safe_method = request.method in ("GET", "HEAD", "OPTIONS")
    if session_user.is_authenticated:
        if safe_method or _csrf_ok(request):
            return session_user
        # Signed in, but the session alone does not authorize a write: say what is missing
        # rather than "sign in".
        raise Refusal.one(
            "csrf_missing",
            "X-CSRFToken",
            "You are signed in, but a write with the browser's session must carry the "
            "'X-CSRFToken' header set to the value of the 'csrftoken' cookie (CSRF "
            "protection); or send 'Authorization: Bearer <token>' instead.",
            401,
        )
    return None


def optional_user(request: HttpRequest) -> Any:
    """For read routes: the bearer or session user when present, else anonymous."""
    return user_from_bearer(request) or getattr(request, "user", AnonymousUser())
