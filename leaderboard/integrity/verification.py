"""Verified organisations (official providers): maintainers verify an organisation with a
note, or withdraw it; each change is an audit entry on the public moderation log. Pages and the
API show a badge on the models of a verified organisation and can keep only those
(leaderboard/public/query.py)."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.integrity.models import AuditAction, AuditEntry, VerifiedOrganisation
from leaderboard.problems import Refusal

# The Hub's rule for one part of a repository id (submissions/checks.py applies it to both).
_ORG = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?", re.ASCII)


def _require_maintainer(user: Any) -> None:
    if user is None or not user.is_authenticated:
        raise Refusal.one("not_authenticated", "org", "Sign in as a maintainer.", 401)
    if not is_maintainer(user):
        raise Refusal.one("forbidden", "org", "Only maintainers can verify organisations.", 403)


def _clean_org(org: str) -> str:
    org = (org or "").strip()
    if not _ORG.fullmatch(org) or "--" in org or ".." in org:
        raise Refusal.one(
            "invalid_org", "org", "Write the organisation as in its URL, e.g. 'allenai'.", 400
        )
    return org


def verify(user: Any, org: str, note: str) -> VerifiedOrganisation:
    _require_maintainer(user)
    org = _clean_org(org)
    note = (note or "").strip()
    if not note:
        raise Refusal.one(
            "note_missing", "note", "Write how the organisation was verified: it is public.", 400
        )
    try:
        with transaction.atomic():
            verified = VerifiedOrganisation.objects.create(org=org, note=note, verified_by=user)
            AuditEntry.objects.create(
                actor=user, action=AuditAction.VERIFIED, subject=f"organisation {org}", note=note
            )
    except IntegrityError:
        raise Refusal.one("already_verified", "org", f"{org} is already verified.", 409) from None
    return verified


def withdraw(user: Any, org: str, note: str) -> VerifiedOrganisation:
    _require_maintainer(user)
    note = (note or "").strip()
    if not note:
        raise Refusal.one(
            "note_missing", "note", "Write why the verification is withdrawn: it is public.", 400
        )
    with transaction.atomic():
        verified = (
            VerifiedOrganisation.objects.select_for_update()
            .filter(org=(org or "").strip(), revoked_at__isnull=True)
            .first()
        )
        if verified is None:
            raise Refusal.one("not_verified", "org", f"{org} is not verified.", 404)
        verified.revoked_at = timezone.now()
        verified.save(update_fields=["revoked_at"])
        AuditEntry.objects.create(
            actor=user, action=AuditAction.UNVERIFIED, subject=f"organisation {org}", note=note
        )
    return verified


def verified_orgs() -> QuerySet[Any]:
    """The verified organisations' names, as a subquery or a list."""
    return VerifiedOrganisation.objects.filter(revoked_at__isnull=True).values("org")


def is_verified(org: str) -> bool:
    return VerifiedOrganisation.objects.filter(org=org, revoked_at__isnull=True).exists()
