"""Who may do what: the maintainer role in one place."""

from __future__ import annotations

from typing import Any


def is_maintainer(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and (user.is_superuser or user.has_perm("accounts.moderate"))
    )
