"""Template context: the current user's role."""

from django.http import HttpRequest

from leaderboard.accounts.roles import is_maintainer


def roles(request: HttpRequest) -> dict[str, bool]:
    return {"is_maintainer": is_maintainer(getattr(request, "user", None))}
