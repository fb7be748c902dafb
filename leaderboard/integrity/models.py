"""Integrity records: reports on models and datasets (a confirmed report is the flag), the
co-reporters who joined a report, the public moderation audit log, and signals (automatic
findings a maintainer confirms or dismisses).

The derived lineage status lives on catalog.Repository and is written only by
leaderboard.integrity.derived (through leaderboard.integrity.status).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from leaderboard.catalog.models import Repository


class ReportKind(models.TextChoices):
    CONTAMINATION = "contamination", "test-set contamination"
    LINEAGE = "lineage", "undisclosed or false lineage"
    LICENSE = "license", "license problem"
    OTHER = "other", "other"


class ReportStatus(models.TextChoices):
    OPEN = "open", "open"
    CONFIRMED = "confirmed", "confirmed"
    DISMISSED = "dismissed", "dismissed"
    LIFTED = "lifted", "lifted"


class Report(models.Model):
    """An allegation against one node. Confirmed, it is the flag; lifted, the flag is gone but
    the record (and its audit trail) stays."""

    target = models.ForeignKey(Repository, on_delete=models.PROTECT, related_name="reports")
    kind = models.CharField(max_length=16, choices=ReportKind.choices)
    evidence = models.TextField()
    links = models.JSONField(default=list, blank=True)
    # Null for automatic signals filed by the system, and if the account is deleted later.
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="integrity_reports",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status = models.CharField(
        max_length=10, choices=ReportStatus.choices, default=ReportStatus.OPEN, db_index=True
    )
    # The last decision; `confirmed_at` survives a lift so the history can say when it held.
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution_note = models.TextField(blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # "A second open report of the same kind on the same target joins the first":
            # enforced here too, so two concurrent filings cannot both open one.
            models.UniqueConstraint(
                fields=["target", "kind"],
                condition=models.Q(status="open"),
                name="one_open_report_per_target_and_kind",
            ),
        ]
        indexes = [models.Index(fields=["target", "status"])]

    def __str__(self) -> str:
        return f"report {self.pk}: {self.kind} on {self.target} ({self.status})"

    @property
    def is_flag(self) -> bool:
        return self.status == ReportStatus.CONFIRMED

    def to_dict(self) -> dict[str, Any]:
        """The one serialisation used by the API and the pages' JSON."""
        return {
            "id": self.pk,
            "target": {"type": self.target.kind, "repo_id": self.target.repo_id},
            "kind": self.kind,
            "evidence": self.evidence,
            "links": list(self.links),
            "reporter": self.reporter.get_username() if self.reporter else None,
            "supporters": [s.user.get_username() for s in self.supports.all() if s.user],
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "confirmed_at": self.confirmed_at.isoformat() if self.confirmed_at else None,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolved_by": self.resolved_by.get_username() if self.resolved_by else None,
            "resolution_note": self.resolution_note,
        }


class ReportSupport(models.Model):
    """Another user's report of the same kind on the same target, joined to the open one."""

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="supports")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="integrity_supports",
    )
    evidence = models.TextField()
    links = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["report", "user"], name="one_support_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} joins report {self.report_id}"


class AuditAction(models.TextChoices):
    FILED = "filed", "filed a report"
    JOINED = "joined", "joined a report"
    CONFIRMED = "confirmed", "confirmed a flag"
    DISMISSED = "dismissed", "dismissed a report"
    LIFTED = "lifted", "lifted a flag"
    BLOCKED = "blocked", "added to the block list"
    UNBLOCKED = "unblocked", "removed from the block list"
    VERIFIED = "verified", "verified an organisation"
    UNVERIFIED = "unverified", "withdrew a verification"


class AuditEntry(models.Model):
    """One moderation event, shown on the public moderation log (/integrity/log/) and, when it
    concerns a node, on that node's page. Append-only. Block-list and verification changes name
    their `subject` (the pattern, the organisation) and have no node."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="integrity_audit_entries",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=12, choices=AuditAction.choices)
    target = models.ForeignKey(
        Repository, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    report = models.ForeignKey(
        Report, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    block = models.ForeignKey(
        "BlockEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    subject = models.CharField(max_length=200, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d} {self.actor}: {self.action} on {self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.created_at.isoformat(),
            "actor": self.actor.get_username() if self.actor else None,
            "action": self.action,
            "report": self.report_id,
            "note": self.note,
        }


class BlockKind(models.TextChoices):
    ORGANISATION = "organisation", "organisation"
    REPOSITORY = "repository", "repository"


class BlockEntry(models.Model):
    """A moderated refusal: submissions of a matching organisation or repository are refused
    with code `blocked` naming this entry. `pattern` is an exact id or a glob (`*`, `?`, `[…]`,
    matched case-insensitively). Removing an entry keeps the row (and the audit trail)."""

    kind = models.CharField(max_length=12, choices=BlockKind.choices)
    pattern = models.CharField(max_length=200)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    removal_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "pattern"],
                condition=models.Q(removed_at__isnull=True),
                name="one_active_block_per_pattern",
            ),
        ]
        verbose_name_plural = "block entries"

    def __str__(self) -> str:
        return f"block {self.pk}: {self.kind} {self.pattern}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "kind": self.kind,
            "pattern": self.pattern,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "active": self.removed_at is None,
            "removed_at": self.removed_at.isoformat() if self.removed_at else None,
            "removal_note": self.removal_note,
        }


class VerifiedOrganisation(models.Model):
    """An organisation a maintainer verified as the official provider of its models (the
    badge). Withdrawn, the row stays with `revoked_at` set; one verification holds at a time."""

    org = models.CharField(max_length=96)
    note = models.TextField()
    verified_at = models.DateTimeField(auto_now_add=True)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["org"]
        constraints = [
            models.UniqueConstraint(
                fields=["org"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_verification_per_org",
            ),
        ]

    def __str__(self) -> str:
        return f"verified {self.org}"


class SignalState(models.TextChoices):
    OPEN = "open", "open"
    CONFIRMED = "confirmed", "confirmed"
    DISMISSED = "dismissed", "dismissed"


class Signal(models.Model):
    """An automatic finding about a node (a contamination statistic, a weight-provenance
    relation, a score anomaly), shown to maintainers with its evidence. Machines suggest, people
    decide: a signal changes no status; a maintainer confirms it (a confirmed report is made from
    it: the flag, carried down the lineage) or dismisses it. `key` makes recording idempotent:
    the same statistic of the same run is one signal."""

    kind = models.CharField(max_length=40, db_index=True)
    target = models.ForeignKey(Repository, on_delete=models.PROTECT, related_name="signals")
    task = models.CharField(max_length=100, blank=True)
    # The evaluation run it was computed from (an id: integrity sits below evaluations).
    run_id = models.PositiveBigIntegerField(null=True, blank=True)
    key = models.CharField(max_length=300)
    statistic = models.FloatField()
    statistic_name = models.CharField(max_length=120)
    p_value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField()
    evidence = models.JSONField(default=dict, blank=True)
    figure = models.JSONField(default=dict, blank=True)
    state = models.CharField(
        max_length=12, choices=SignalState.choices, default=SignalState.OPEN, db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="integrity_signal_decisions",
    )
    decision_note = models.TextField(blank=True)
    # The confirmed report (the flag) a confirmation made.
    report = models.OneToOneField(
        Report, null=True, blank=True, on_delete=models.PROTECT, related_name="signal"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["target", "key"], name="integrity_signal_target_key")
        ]

    def __str__(self) -> str:
        return f"signal {self.kind} on {self.target} ({self.state})"
