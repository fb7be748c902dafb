"""What the public views read from the integrity app: the flags of many repositories at once,
and the time of the last integrity event (for validators)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.db.models import Max

from leaderboard.catalog.models import Repository
from leaderboard.integrity.models import AuditEntry, Report, ReportStatus

# Reports that matter to a reader of the ranking: allegations under review, and flags.
LIVE_REPORT_STATUSES = (ReportStatus.OPEN, ReportStatus.CONFIRMED)
# Past this many ids, one pass over every live report beats a huge IN list.
_IN_LIMIT = 500


def flag_to_dict(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report as a ranking row's `flags` item (the full record is on the model page)."""
    return {
        "report": report["id"],
        "kind": report["kind"],
        "status": report["status"],
        "created_at": report["created_at"].isoformat(),
        "confirmed_at": report["confirmed_at"].isoformat() if report["confirmed_at"] else None,
    }


def flags_by_repository(repository_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Open and confirmed reports of each repository, oldest first."""
    ids = set(repository_ids)
    if not ids:
        return {}
    reports = Report.objects.filter(status__in=LIVE_REPORT_STATUSES)
    if len(ids) <= _IN_LIMIT:
        reports = reports.filter(target_id__in=ids)
    result: dict[int, list[dict[str, Any]]] = {}
    for report in reports.order_by("created_at", "id").values(
        "id", "target_id", "kind", "status", "created_at", "confirmed_at"
    ):
        if report["target_id"] in ids:
            result.setdefault(report["target_id"], []).append(flag_to_dict(report))
    return result


def last_change() -> datetime | None:
    """When integrity data last changed: every filing, joining and decision writes an audit
    entry (the log is append-only), so its newest timestamp is enough."""
    return AuditEntry.objects.aggregate(last=Max("created_at"))["last"]


def last_change_for(repository_id: int) -> datetime | None:
    """When integrity data about one repository last changed."""
    return AuditEntry.objects.filter(target_id=repository_id).aggregate(last=Max("created_at"))[
        "last"
    ]


def reports_for(repository: Repository) -> list[dict[str, Any]]:
    """Every report on a repository (all statuses), newest first, fully serialized."""
    reports = (
        Report.objects.filter(target=repository)
        .select_related("target", "reporter", "resolved_by")
        .prefetch_related("supports__user")
    )
    return [report.to_dict() for report in reports]
