"""The public moderation log: every report filed or joined, every decision, every block-list
and verification change, with its note, newest first (/integrity/log/, its JSON and Atom
feed). Entries are the append-only AuditEntry rows; this module reads them for the log and
finds, for a tainted node, the decision on the ancestor or dataset that taints it."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse

from leaderboard.catalog.models import LineageStatus, Repository
from leaderboard.integrity.models import AuditAction, AuditEntry

PAGE_SIZE = 100


def entries(before: int | None = None, limit: int = PAGE_SIZE) -> list[AuditEntry]:
    """Up to `limit` entries, newest first; `before`: only entries older than that id (the
    next page)."""
    rows: QuerySet[AuditEntry] = AuditEntry.objects.select_related(
        "actor", "target", "report", "block"
    ).order_by("-created_at", "-id")
    if before is not None:
        rows = rows.filter(id__lt=before)
    return list(rows[:limit])


def entry_url(entry_id: int) -> str:
    return f"{reverse('integrity:log')}#entry-{entry_id}"


def subject_of(entry: AuditEntry) -> str:
    """What the entry is about, in words: the node, or the block-list pattern / organisation."""
    if entry.target is not None:
        kind = "dataset " if entry.target.kind == "dataset" else ""
        return f"{kind}{entry.target.repo_id}"
    return entry.subject


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    """One entry as the JSON log shows it."""
    target = entry.target
    return {
        "id": entry.pk,
        "at": entry.created_at.isoformat(),
        "actor": entry.actor.get_username() if entry.actor else None,
        "action": entry.action,
        "action_text": entry.get_action_display(),
        "subject": subject_of(entry),
        "target": {"type": target.kind, "repo_id": target.repo_id} if target else None,
        "report": (
            {"id": entry.report_id, "kind": entry.report.kind, "status": entry.report.status}
            if entry.report
            else None
        ),
        "block_entry": entry.block_id,
        "note": entry.note,
        "url": entry_url(entry.pk),
    }


def tainting_decisions(repository: Repository) -> list[AuditEntry]:
    """For a tainted or flagged node: the confirmation of the flag its status path ends at (the
    ancestor, dataset or node itself that carries it), newest first; [] otherwise."""
    if repository.status not in (LineageStatus.TAINTED, LineageStatus.FLAGGED):
        return []
    path = repository.status_path or []
    if not path or "id" not in path[-1]:
        return []
    return list(
        AuditEntry.objects.filter(
            target_id=path[-1]["id"],
            action=AuditAction.CONFIRMED,
            report__status="confirmed",
        )
        .select_related("actor", "target", "report")
        .order_by("-created_at", "-id")
    )
