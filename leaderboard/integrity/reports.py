"""Reports and moderation: filing and joining reports, maintainers' decisions with their audit
entries, and what pages and the API show of them. A report or a decision changes a node's own
signal: leaderboard.flow hands it on to leaderboard.integrity.derived.recompute in the same
transaction (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.models import LineageStatus, Repository, RepositoryKind
from leaderboard.integrity import graph, log, signals
from leaderboard.integrity.decision import checked_decision
from leaderboard.integrity.models import (
    AuditAction,
    AuditEntry,
    Report,
    ReportKind,
    ReportStatus,
    ReportSupport,
)
from leaderboard.integrity.status import path_text
from leaderboard.problems import Problem, Refusal

DAY = timedelta(days=1)
EVIDENCE_MAX = 10_000
LINKS_MAX = 10
LINK_MAX = 500


# --- targets -----------------------------------------------------------------------------------


def find_target(target_type: str, repo_id: str) -> Repository:
    """The catalog node a report or a lineage query names."""
    target_type = (target_type or RepositoryKind.MODEL).strip()
    repo_id = (repo_id or "").strip()
    if target_type not in RepositoryKind.values:
        raise Refusal.one(
            "invalid_target_type",
            "target_type",
            f"target_type {target_type!r} is not one of: {', '.join(RepositoryKind.values)}.",
        )
    if not repo_id:
        raise Refusal.one("missing_target", "target", "Name the repository, as org/name.")
    repository = Repository.objects.filter(kind=target_type, repo_id=repo_id).first()
    if repository is None:
        raise Refusal.one(
            "unknown_target",
            "target",
            f"No {target_type} {repo_id!r} in the catalog: only repositories submitted or "
            "declared as a parent or training dataset can be reported. Check the spelling and "
            "the type (model or dataset).",
            404,
        )
    return repository


# --- reports -----------------------------------------------------------------------------------


def clean_links(links: Iterable[str] | str | None) -> list[str]:
    """Links as a list of http(s) URLs; a string is split on whitespace (the form's textarea)."""
    if links is None:
        return []
    items = links.split() if isinstance(links, str) else [str(item).strip() for item in links]
    items = [item for item in items if item]
    problems = []
    if len(items) > LINKS_MAX:
        problems.append(
            Problem("too_many_links", "links", f"Give at most {LINKS_MAX} links; keep the best.")
        )
    validate = URLValidator(schemes=["http", "https"])
    for item in items:
        try:
            if len(item) > LINK_MAX:
                raise ValidationError("too long")
            validate(item)
        except ValidationError:
            problems.append(
                Problem(
                    "invalid_link",
                    "links",
                    f"{item[:80]!r} is not an http(s) address; give full links starting with "
                    f"https:// (at most {LINK_MAX} characters each).",
                )
            )
    if problems:
        raise Refusal(problems)
    return list(dict.fromkeys(items))


def _check_report(kind: str, evidence: str) -> list[Problem]:
    problems = []
    if kind not in ReportKind.values:
        problems.append(
            Problem(
                "invalid_kind",
                "kind",
                f"kind {kind!r} is not one of: {', '.join(ReportKind.values)}.",
            )
        )
    if not evidence:
        problems.append(
            Problem(
                "missing_evidence",
                "evidence",
                "Describe the evidence in words: what is wrong and how you found out.",
            )
        )
    elif len(evidence) > EVIDENCE_MAX:
        problems.append(
            Problem(
                "evidence_too_long",
                "evidence",
                f"Keep the evidence under {EVIDENCE_MAX} characters; link to longer material.",
            )
        )
    return problems


def _check_rate(user: Any) -> None:
    limit = settings.TRELLIS_REPORTS_PER_DAY
    since = timezone.now() - DAY
    stamps = sorted(
        [
            *Report.objects.filter(reporter=user, created_at__gte=since).values_list(
                "created_at", flat=True
            ),
            *ReportSupport.objects.filter(user=user, created_at__gte=since).values_list(
                "created_at", flat=True
            ),
        ]
    )
    if len(stamps) >= limit:
        again = stamps[len(stamps) - limit] + DAY if limit else None
        when = f" You can report again after {again:%Y-%m-%d %H:%M} UTC." if again else ""
        raise Refusal.one(
            "rate_limited",
            "reporter",
            f"You have filed {len(stamps)} reports in the last 24 hours; the limit is {limit} "
            f"(TRELLIS_REPORTS_PER_DAY).{when}",
            429,
        )


@dataclass(frozen=True)
class Filed:
    report: Report
    joined: bool


def record_report(
    *,
    reporter: Any,
    target: Repository,
    kind: str,
    evidence: str,
    links: Iterable[str] | str | None = None,
) -> Filed:
    """File a report on `target`, or join the open report of the same kind on it.

    `reporter` is a signed-in user, or None for an automatic signal (no rate limit). A new open
    report changes the target's own signal (under review): the caller re-derives the status of
    it and its descendants in the same transaction (leaderboard.flow.file_report)."""
    kind = (kind or "").strip()
    evidence = (evidence or "").strip()
    problems = _check_report(kind, evidence)
    try:
        cleaned_links = clean_links(links)
    except Refusal as refused:
        problems.extend(refused.problems)
    if problems:
        raise Refusal(problems)
    if reporter is not None and not reporter.is_authenticated:
        raise Refusal.one("not_authenticated", "reporter", "Sign in to file a report.", 401)
    if reporter is not None and not is_maintainer(reporter):
        _check_rate(reporter)

    with transaction.atomic():
        graph.lock_statuses()
        existing = _open_report(target, kind)
        if existing is None:
            try:
                with transaction.atomic():
                    report = Report.objects.create(
                        target=target,
                        kind=kind,
                        evidence=evidence,
                        links=cleaned_links,
                        reporter=reporter,
                    )
            except IntegrityError:
                # Someone opened the same report a moment ago: join theirs instead.
                existing = _open_report(target, kind)
                if existing is None:
                    raise
            else:
                AuditEntry.objects.create(
                    actor=reporter, action=AuditAction.FILED, target=target, report=report
                )
                return Filed(report, joined=False)
        return Filed(_join(existing, reporter, evidence, cleaned_links), joined=True)


def _open_report(target: Repository, kind: str) -> Report | None:
    return (
        Report.objects.select_for_update()
        .filter(target=target, kind=kind, status=ReportStatus.OPEN)
        .first()
    )


def _join(report: Report, reporter: Any, evidence: str, links: list[str]) -> Report:
    if reporter is not None and (
        report.reporter_id == reporter.pk or report.supports.filter(user=reporter).exists()
    ):
        raise Refusal.one(
            "already_reported",
            "target",
            f"You already reported {report.target} for {report.kind} (report #{report.pk}); "
            "it is open and waiting for a maintainer.",
            409,
        )
    ReportSupport.objects.create(report=report, user=reporter, evidence=evidence, links=links)
    AuditEntry.objects.create(
        actor=reporter, action=AuditAction.JOINED, target=report.target, report=report
    )
    return report


# --- moderation --------------------------------------------------------------------------------

DECISIONS = {
    # decision: (required current status, new status, audit action)
    "confirm": (ReportStatus.OPEN, ReportStatus.CONFIRMED, AuditAction.CONFIRMED),
    "dismiss": (ReportStatus.OPEN, ReportStatus.DISMISSED, AuditAction.DISMISSED),
    "lift": (ReportStatus.CONFIRMED, ReportStatus.LIFTED, AuditAction.LIFTED),
}


def record_decision(report_id: int, decision: str, note: str, actor: Any) -> Report:
    """Confirm or dismiss an open report, or lift a confirmed flag; maintainers only.

    The decision and its audit entry are written here; leaderboard.flow.resolve re-derives the
    status of the target and its descendants in the same transaction, so nobody ever sees a
    confirmed flag whose descendants are not tainted."""
    if not is_maintainer(actor):
        raise Refusal.one(
            "not_a_maintainer",
            "Authorization",
            "Only maintainers can confirm, dismiss or lift reports; sign in with (or use a "
            "token of) an account in the maintainers group.",
            403,
        )
    decision, note = checked_decision(decision, note, DECISIONS)
    required, new_status, action = DECISIONS[decision]

    with transaction.atomic():
        graph.lock_statuses()
        report = Report.objects.select_for_update().filter(pk=report_id).first()
        if report is None:
            raise Refusal.one("unknown_report", "id", f"There is no report #{report_id}.", 404)
        if report.status != required:
            raise Refusal.one(
                "invalid_transition",
                "decision",
                f"Report #{report.pk} is {report.status}: only an open report can be confirmed "
                "or dismissed, and only a confirmed flag can be lifted.",
                409,
            )
        now = timezone.now()
        report.status = new_status
        report.resolved_at = now
        report.resolved_by = actor
        report.resolution_note = note
        if new_status == ReportStatus.CONFIRMED:
            report.confirmed_at = now
        report.save(
            update_fields=[
                "status",
                "resolved_at",
                "resolved_by",
                "resolution_note",
                "confirmed_at",
            ]
        )
        AuditEntry.objects.create(
            actor=actor, action=action, target_id=report.target_id, report=report, note=note
        )
    return report


# --- reading -----------------------------------------------------------------------------------


def taint_path_text(repository: Repository | graph.NodeView) -> str:
    """The stored explaining path as one line, '' for a clean node."""
    return path_text(repository.status_path)


def report_url(repository: Repository, kind: str = "") -> str:
    query = {"target": repository.repo_id, "type": repository.kind}
    if kind:
        query["kind"] = kind
    return f"{reverse('integrity:report')}?{urlencode(query)}"


def lineage_url(repository: Repository) -> str:
    url = reverse("integrity:lineage", kwargs={"repo_id": repository.repo_id})
    return url if repository.kind == RepositoryKind.MODEL else f"{url}?type={repository.kind}"


def _with_supports(reports: Any) -> Any:
    return reports.select_related("reporter", "resolved_by", "target").prefetch_related(
        Prefetch("supports", queryset=ReportSupport.objects.select_related("user"))
    )


def integrity_context(repository: Repository, *, signals_too: bool = True) -> dict[str, Any]:
    """Everything a page shows about a node's integrity (rendered by integrity/_panel.html).
    `signals_too=False` leaves out the signals, which only maintainers see."""
    reports = list(_with_supports(repository.reports.all()).order_by("-created_at", "-id"))
    return {
        "repository": repository,
        "status": repository.status,
        "status_label": LineageStatus(repository.status).label,
        "path": repository.status_path,
        "path_text": taint_path_text(repository),
        "open_reports": [r for r in reports if r.status == ReportStatus.OPEN],
        "flags": [r for r in reports if r.status == ReportStatus.CONFIRMED],
        "history": list(
            AuditEntry.objects.filter(target=repository)
            .select_related("actor", "report")
            .order_by("-created_at", "-id")
        ),
        "report_url": report_url(repository),
        "lineage_url": lineage_url(repository),
        # Shown to maintainers only (integrity/_panel.html).
        "signal_items": signals.signals_of(repository) if signals_too else [],
        # The decision on the ancestor or dataset that taints it, on the moderation log.
        "taint_decisions": [
            (entry, log.entry_url(entry.pk)) for entry in log.tainting_decisions(repository)
        ],
    }


@dataclass(frozen=True)
class QueueItem:
    report: Report
    affected_ranked: int


def moderation_queue(ranked: QuerySet[Any], order: str = "impact") -> list[QueueItem]:
    """Open reports, most ranked models affected first then newest (order='newest': newest
    first), each with how many ranked models confirming it would affect. `ranked` is a query of
    the ranked repositories' ids (evaluations knows which: integrity sits below it)."""
    reports = list(
        _with_supports(Report.objects.filter(status=ReportStatus.OPEN)).order_by(
            "-created_at", "-id"
        )
    )
    counts = graph.count_below((r.target_id for r in reports), ranked)
    items = [QueueItem(r, counts.get(r.target_id, 0)) for r in reports]
    if order != "newest":
        items.sort(key=lambda item: -item.affected_ranked)  # stable: newest first within ties
    return items


def active_flags() -> list[Report]:
    return list(
        _with_supports(Report.objects.filter(status=ReportStatus.CONFIRMED)).order_by(
            "-confirmed_at", "-id"
        )
    )


def list_reports(
    *, status: str = "", target: str = "", target_type: str = "", limit: int = 100, offset: int = 0
) -> list[Report]:
    """Reports for the public API, newest first, filtered by status and target."""
    reports = _with_supports(Report.objects.all())
    problems = []
    if status:
        if status not in ReportStatus.values:
            problems.append(
                Problem(
                    "invalid_status",
                    "status",
                    f"status {status!r} is not one of: {', '.join(ReportStatus.values)}.",
                )
            )
        reports = reports.filter(status=status)
    if target_type and target_type not in RepositoryKind.values:
        problems.append(
            Problem(
                "invalid_target_type",
                "target_type",
                f"target_type {target_type!r} is not one of: {', '.join(RepositoryKind.values)}.",
            )
        )
    if problems:
        raise Refusal(problems)
    if target:
        reports = reports.filter(target__repo_id=target.strip())
    if target_type:
        reports = reports.filter(target__kind=target_type)
    return list(reports.order_by("-created_at", "-id")[offset : offset + limit])


def node_dict(repository: graph.NodeView, *, depth: int, submitted: bool) -> dict[str, Any]:
    return {
        "type": repository.kind,
        "repo_id": repository.repo_id,
        "depth": depth,
        "status": repository.status,
        "taint_path": taint_path_text(repository),
        "status_path": repository.status_path,
        "lineage_resolved": repository.lineage_resolved,
        "resolution_note": repository.resolution_note,
        "submitted": submitted,
    }


def lineage_dict(repository: Repository, depth: int | None = None) -> dict[str, Any]:
    """The lineage API's answer: the node, its ancestors and descendants, and the edges."""
    hood = graph.neighbourhood(repository, depth=depth)
    dicts = {
        node_id: node_dict(
            hood.nodes[node_id], depth=abs(generation), submitted=node_id in hood.submitted
        )
        for node_id, generation in hood.depth.items()
    }

    def ordered(sign: int) -> list[dict[str, Any]]:
        ids = [n for n, g in hood.depth.items() if (g > 0 if sign > 0 else g < 0)]
        return [
            dicts[n] for n in sorted(ids, key=lambda n: (abs(hood.depth[n]), dicts[n]["repo_id"]))
        ]

    return {
        "node": dicts[repository.pk],
        "ancestors": ordered(-1),
        "descendants": ordered(1),
        "edges": [
            {
                "child": {"type": dicts[c]["type"], "repo_id": dicts[c]["repo_id"]},
                "parent": {"type": dicts[p]["type"], "repo_id": dicts[p]["repo_id"]},
                "relation": relation,
            }
            for c, p, relation in sorted(
                hood.edges, key=lambda e: (dicts[e[0]]["repo_id"], dicts[e[1]]["repo_id"])
            )
        ],
    }
