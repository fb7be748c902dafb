"""Log-in lockout (django-axes): too many failed log-ins for one user name from one address lock
that pair out for a cool-off (settings: TRELLIS_LOGIN_FAILURE_LIMIT,
TRELLIS_LOGIN_COOLOFF_MINUTES)."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class LoginLockoutBackend(AxesStandaloneBackend):
    """Checks the lockout of log-ins over HTTP. An authentication without a request (a shell, a
    management command, a test) is no log-in attempt from anywhere: it is left to the next
    backend rather than refused."""

    def authenticate(  # type: ignore[override]
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
