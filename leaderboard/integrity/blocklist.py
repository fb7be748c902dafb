"""The block list: organisations and repositories whose submissions are refused, as moderated
data. Maintainers add an entry (an exact id or a glob pattern) with a reason and remove it with
a note; each change is an audit entry on the public moderation log. `matching_entry` is what
the submission checks ask (leaderboard/submissions/intake.py, code `blocked`)."""

from __future__ import annotations

import fnmatch
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.integrity.models import AuditAction, AuditEntry, BlockEntry, BlockKind
from leaderboard.problems import Refusal

_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.*?[]!/")


def _require_maintainer(user: Any, field: str) -> None:
    if user is None or not user.is_authenticated:
        raise Refusal.one("not_authenticated", field, "Sign in as a maintainer.", 401)
    if not is_maintainer(user):
        raise Refusal.one("forbidden", field, "Only maintainers can change the block list.", 403)


def clean_pattern(kind: str, pattern: str) -> str:
    """The pattern as stored (lower case, trimmed), or Refusal naming what is wrong."""
    if kind not in BlockKind.values:
        raise Refusal.one(
            "invalid_kind", "kind", "Choose what to block: 'organisation' or 'repository'.", 400
        )
    cleaned = (pattern or "").strip().lower()
    if not cleaned or len(cleaned) > 200 or not set(cleaned) <= _PATTERN_CHARS:
        raise Refusal.one(
            "invalid_pattern",
            "pattern",
            "Write an id or a glob pattern of letters, digits, '-', '_', '.', and the wildcards "
            "'*', '?', '[...]' (at most 200 characters).",
            400,
        )
    slashes = cleaned.count("/")
    if kind == BlockKind.ORGANISATION and slashes:
        raise Refusal.one(
            "invalid_pattern", "pattern", "An organisation pattern has no '/': e.g. 'spam-*'.", 400
        )
    if kind == BlockKind.REPOSITORY and slashes != 1:
        raise Refusal.one(
            "invalid_pattern",
            "pattern",
            "A repository pattern is 'org/name' (wildcards allowed): e.g. 'acme/*-leak'.",
            400,
        )
    return cleaned


def add_entry(user: Any, kind: str, pattern: str, reason: str) -> BlockEntry:
    _require_maintainer(user, "pattern")
    cleaned = clean_pattern(kind, pattern)
    reason = (reason or "").strip()
    if not reason:
        raise Refusal.one(
            "reason_missing",
            "reason",
            "Write the reason: it is shown on the public block list and to refused submitters.",
            400,
        )
    try:
        with transaction.atomic():
            entry = BlockEntry.objects.create(
                kind=kind, pattern=cleaned, reason=reason, created_by=user
            )
            AuditEntry.objects.create(
                actor=user,
                action=AuditAction.BLOCKED,
                block=entry,
                subject=f"{kind} {cleaned}",
                note=reason,
            )
    except IntegrityError:
        raise Refusal.one(
            "already_blocked", "pattern", f"The {kind} pattern {cleaned!r} is already listed.", 409
        ) from None
    return entry


def remove_entry(user: Any, entry_id: int, note: str) -> BlockEntry:
    _require_maintainer(user, "id")
    note = (note or "").strip()
    if not note:
        raise Refusal.one(
            "note_missing", "note", "Write why the entry is removed: it is shown publicly.", 400
        )
    with transaction.atomic():
        entry = BlockEntry.objects.select_for_update().filter(pk=entry_id).first()
        if entry is None:
            raise Refusal.one("not_found", "id", f"No block-list entry #{entry_id}.", 404)
        if entry.removed_at is not None:
            raise Refusal.one(
                "already_removed", "id", f"Block-list entry #{entry_id} was already removed.", 409
            )
        entry.removed_at = timezone.now()
        entry.removed_by = user
        entry.removal_note = note
        entry.save(update_fields=["removed_at", "removed_by", "removal_note"])
        AuditEntry.objects.create(
            actor=user,
            action=AuditAction.UNBLOCKED,
            block=entry,
            subject=f"{entry.kind} {entry.pattern}",
            note=note,
        )
    return entry


def matches(entry: BlockEntry, repo_id: str) -> bool:
    """Whether `repo_id` ("org/name") falls under `entry` (case-insensitive)."""
    repo_id = repo_id.lower()
    target = repo_id.split("/", 1)[0] if entry.kind == BlockKind.ORGANISATION else repo_id
    return fnmatch.fnmatchcase(target, entry.pattern)


def matching_entry(repo_id: str) -> BlockEntry | None:
    """The oldest active entry that blocks `repo_id`, or None."""
    for entry in BlockEntry.objects.filter(removed_at__isnull=True).order_by("created_at", "pk"):
        if matches(entry, repo_id):
            return entry
    return None


def public_list() -> list[BlockEntry]:
    """Every entry, active first, newest first within each (removed ones keep their record)."""
    entries = list(BlockEntry.objects.order_by("-created_at", "-pk"))
    return sorted(entries, key=lambda e: e.removed_at is not None)
