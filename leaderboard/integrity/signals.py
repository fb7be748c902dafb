"""Signals: automatic findings in front of maintainers (docs/contamination.md). Recording a
run's findings (idempotent), the maintainers' decision (confirm: a confirmed contamination
report, the flag, made from the signal; dismiss), and the queue's order. A signal changes no
status by itself: leaderboard.flow re-derives statuses after a confirmation, in the same
transaction."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from evaluator.contamination import KINDS, Finding
from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.models import Repository
from leaderboard.integrity import graph
from leaderboard.integrity.decision import checked_decision
from leaderboard.integrity.models import (
    AuditAction,
    AuditEntry,
    Report,
    ReportKind,
    ReportStatus,
    Signal,
    SignalState,
)
from leaderboard.integrity.provenance import KINDS as PROVENANCE_KINDS
from leaderboard.problems import Refusal

SIGNAL_DECISIONS = ("confirm", "dismiss")


def finding_key(finding: Finding, run_id: int | None) -> str:
    """What makes two findings the same signal: run, kind, task and what it was compared to."""
    evidence = finding.evidence
    against = evidence.get("parent") or evidence.get("reference") or ""
    return f"run:{run_id}|{finding.kind}|{finding.task}|{against}"[:300]


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def record_findings(
    target: Repository, run_id: int | None, findings: Iterable[Finding]
) -> list[Signal]:
    """An open signal per fired finding not recorded before; returns the new ones."""
    created = []
    for finding in findings:
        if not finding.fired:
            continue
        signal, new = Signal.objects.get_or_create(
            target=target,
            key=finding_key(finding, run_id),
            defaults={
                "kind": finding.kind,
                "task": finding.task,
                "run_id": run_id,
                "statistic": _number(finding.statistic) or 0.0,
                "statistic_name": str(finding.evidence.get("statistic", ""))[:120],
                "p_value": _number(finding.p_value),
                "threshold": finding.threshold,
                "evidence": _jsonable(finding.evidence),
                "figure": finding.figure,
            },
        )
        if new:
            created.append(signal)
    return created


def _jsonable(evidence: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in evidence.items()
    }


def describe(signal: Signal) -> str:
    """The signal in words, as the evidence of the report a confirmation makes."""
    title = KINDS.get(signal.kind, signal.kind)
    p = f", p = {signal.p_value:.4g}" if signal.p_value is not None else ""
    return (
        f"Automatic signal #{signal.pk}: {title} on {signal.task or 'the scores'} "
        f"({signal.statistic_name} {signal.statistic:.3g}{p}; threshold {signal.threshold:g}). "
        f"Evidence: {signal.evidence}"
    )


def record_signal_decision(signal_id: int, decision: str, note: str, actor: Any) -> Signal:
    """Confirm (a confirmed contamination report on the target is made: the flag) or dismiss an
    open signal; maintainers only, with a note. leaderboard.flow re-derives statuses after a
    confirmation in the same transaction."""
    if not is_maintainer(actor):
        raise Refusal.one(
            "not_a_maintainer",
            "Authorization",
            "Only maintainers can confirm or dismiss signals; sign in with an account in the "
            "maintainers group.",
            403,
        )
    decision, note = checked_decision(decision, note, SIGNAL_DECISIONS)
    with transaction.atomic():
        graph.lock_statuses()
        signal = Signal.objects.select_for_update().filter(pk=signal_id).first()
        if signal is None:
            raise Refusal.one("unknown_signal", "id", f"There is no signal #{signal_id}.", 404)
        if signal.state != SignalState.OPEN:
            raise Refusal.one(
                "invalid_transition",
                "decision",
                f"Signal #{signal.pk} is {signal.state}: only an open signal can be confirmed or "
                "dismissed.",
                409,
            )
        now = timezone.now()
        if decision == "confirm" and signal.kind not in KINDS:
            # Not a contamination finding (weight provenance, docs/provenance.md): no flag;
            # leaderboard.flow hands the confirmation on (a lineage edge found from weights).
            AuditEntry.objects.create(
                actor=actor,
                action=AuditAction.CONFIRMED,
                target=signal.target,
                subject=f"signal #{signal.pk}",
                note=note,
            )
            signal.state = SignalState.CONFIRMED
        elif decision == "confirm":
            report = Report.objects.create(
                target=signal.target,
                kind=ReportKind.CONTAMINATION,
                evidence=describe(signal),
                reporter=None,
                status=ReportStatus.CONFIRMED,
                resolved_at=now,
                resolved_by=actor,
                resolution_note=note,
                confirmed_at=now,
            )
            AuditEntry.objects.create(
                actor=None,
                action=AuditAction.FILED,
                target=signal.target,
                report=report,
                subject=f"signal #{signal.pk}",
                note="filed from an automatic signal",
            )
            AuditEntry.objects.create(
                actor=actor,
                action=AuditAction.CONFIRMED,
                target=signal.target,
                report=report,
                subject=f"signal #{signal.pk}",
                note=note,
            )
            signal.report = report
            signal.state = SignalState.CONFIRMED
        else:
            AuditEntry.objects.create(
                actor=actor,
                action=AuditAction.DISMISSED,
                target=signal.target,
                subject=f"signal #{signal.pk}",
                note=note,
            )
            signal.state = SignalState.DISMISSED
        signal.decided_at = now
        signal.decided_by = actor
        signal.decision_note = note
        signal.save(update_fields=["state", "decided_at", "decided_by", "decision_note", "report"])
    return signal


@dataclass(frozen=True)
class SignalItem:
    signal: Signal
    affected_ranked: int | None  # None where the count is not computed (the model page)

    @property
    def title(self) -> str:
        kind = self.signal.kind
        return KINDS.get(kind) or PROVENANCE_KINDS.get(kind) or kind.replace("_", " ")

    @property
    def evidence_rows(self) -> list[tuple[str, Any]]:
        # Pairs, not the dict: a template reads `evidence.items` as a key named "items".
        return list(self.signal.evidence.items())

    @property
    def figure_id(self) -> str:
        return f"signal-figure-{self.signal.pk}"


def signal_queue(ranked: QuerySet[Any], order: str = "p") -> list[SignalItem]:
    """Open signals, smallest p-value first (order='impact': most ranked models a confirmation
    would taint first), each with that count."""
    signals = list(Signal.objects.filter(state=SignalState.OPEN).select_related("target"))
    counts = graph.count_below((s.target_id for s in signals), ranked)
    items = [SignalItem(s, counts.get(s.target_id, 0)) for s in signals]
    if order == "impact":
        items.sort(key=lambda i: (-(i.affected_ranked or 0), _p(i.signal), -i.signal.pk))
    else:
        items.sort(key=lambda i: (_p(i.signal), -(i.affected_ranked or 0), -i.signal.pk))
    return items


def _p(signal: Signal) -> float:
    return signal.p_value if signal.p_value is not None else 1.0


def signals_of(repository: Repository, ranked: QuerySet[Any] | None = None) -> list[SignalItem]:
    """Every signal on `repository` (open first, then by p-value), for maintainers' eyes; with
    `ranked`, how many ranked models a confirmation would affect."""
    found = list(Signal.objects.filter(target=repository).select_related("target"))
    count = None
    if found and ranked is not None:
        count = graph.count_below([repository.pk], ranked).get(repository.pk, 0)
    found.sort(key=lambda s: (s.state != SignalState.OPEN, _p(s), -s.pk))
    return [SignalItem(s, count) for s in found]
