"""The one place where a stage hands on to the next (docs/architecture.md):

    submit            checks (source read once) → submission → lineage record → status
                      recompute → evaluation run (sent on commit) → ancestors resolved after
                      commit (resolve_ancestors, a retried task) → status recompute
    ingest_result     worker report → validated scores → ranking read table
                      → contamination signals (after commit; open signals, no status change)
    (every report)    a run started or ended → the next runs dispatched as its queue has room
    file_report       report → status recompute
    resolve           moderation decision → status recompute
    decide_signal     a maintainer confirms a signal → a confirmed report (flag) → recompute
    verify_organisation / withdraw_verification   verification → the org's ranking rows

Each stage is a plain function of its app that returns what changed; this module decides what
follows and in which transaction. Edges (views, forms, API routes, tasks, commands) call these
functions, or a stage directly where nothing is handed on; no stage imports this module."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from leaderboard.catalog import fingerprints, lineage
from leaderboard.catalog.models import FingerprintSource, Repository, WeightFingerprint
from leaderboard.catalog.sources import get_source
from leaderboard.celery import app
from leaderboard.evaluations import contamination, runs
from leaderboard.evaluations.dispatch import dispatch
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.integrity import derived, provenance, reports, signals, verification
from leaderboard.integrity.models import Report, Signal, SignalState
from leaderboard.problems import Refusal
from leaderboard.public.plots import size_bucket
from leaderboard.public.projection import refresh_entries_for
from leaderboard.submissions import intake
from leaderboard.submissions.models import Submission

logger = logging.getLogger(__name__)

# The web-side task resolving ancestors after a submission commits (leaderboard/catalog/tasks.py),
# sent by name: flow never imports an edge.
RESOLVE_TASK = "catalog.resolve_ancestors"
# The web-side provenance check after a submission commits (leaderboard/integrity/tasks.py).
CHECK_WEIGHTS_TASK = "integrity.check_weights"
# A resolution still pending this long after its submission is presumed lost and sent again.
RESOLVE_GRACE = timedelta(minutes=15)


# --- submission ---------------------------------------------------------------------------------


def submit(request: intake.SubmissionRequest, user: Any) -> Submission:
    """Check `request` and record it, or raise Refusal with every problem.

    Every read of the model source happens before the transaction: the checks read the model
    and each declared parent once, then the declared datasets' cards are read. The transaction
    writes the submission, its lineage as far as those reads go, the derived status and the
    queued run; the ancestors above the declared parents are resolved after commit."""
    outcome = intake.check_submission(request, user)
    if not outcome.ok:
        raise Refusal(outcome.problems)
    return record(outcome, user, weights=read_weights(outcome))


def record(
    outcome: intake.CheckOutcome, user: Any, weights: dict[str, Any] | None = None
) -> Submission:
    """Record an accepted outcome (the second half of `submit`): the declared datasets' cards
    are read, then one transaction writes everything; Refusal when the weekly limit or a
    concurrent duplicate took the slot meanwhile (nothing is saved then)."""
    if not outcome.ok:
        raise Refusal(outcome.problems)
    cards = dict(outcome.cards)
    for repo_id, card in lineage.read_cards(get_source(), outcome.datasets, "dataset").items():
        cards[("dataset", repo_id)] = card
    with intake.refusing_duplicates(outcome), transaction.atomic():
        submission = intake.record_submission(outcome, user)
        recorded = lineage.record_declared(
            submission.repository,
            parents=outcome.parents,
            relation=intake.declared_relation(outcome),
            declared_in=intake.declared_in(outcome),
            datasets=outcome.datasets,
            cards=cards,
            max_depth=settings.TRELLIS_LINEAGE_MAX_DEPTH,
        )
        derived.recompute(recorded.touched)
        # The recompute wrote the node's status through other instances of the row.
        submission.repository.refresh_from_db()
        runs.create_run_for(submission)
        if weights is not None:
            fingerprints.store(
                submission.repository,
                weights,
                source=FingerprintSource.WEB,
                revision=submission.revision,
            )
        check_id = submission.repository_id
        transaction.on_commit(lambda: send_check_weights(check_id), robust=True)
        if recorded.pending:
            repository_id = submission.repository_id
            # robust: a broker outage must not undo what committed; the status says resolving.
            transaction.on_commit(lambda: send_resolve(repository_id), robust=True)
    return submission


def send_resolve(repository_id: int) -> None:
    """Queue the resolution of `repository_id`'s ancestors on the web queue."""
    app.send_task(RESOLVE_TASK, args=[repository_id], queue=settings.CELERY_TASK_DEFAULT_QUEUE)


def resolve_ancestors(repository_id: int) -> set[int]:
    """Read the ancestors above the declared parents of a submitted model from their own cards
    (no transaction open while reading), then clear its `resolving` mark and re-derive the
    status of every node walked, in one transaction. Returns the ids whose status was
    re-derived; an unknown id changes nothing. Safe to run again (the task is retried)."""
    repository = Repository.objects.filter(pk=repository_id).first()
    if repository is None:
        return set()
    walked = lineage.resolve_ancestors(
        repository, source=get_source(), max_depth=settings.TRELLIS_LINEAGE_MAX_DEPTH
    )
    with transaction.atomic():
        lineage.finish_resolving(walked)
        derived.recompute(walked)
    return walked


# --- evaluation: what workers report ------------------------------------------------------------


def mark_started(run_id: int, attempt: int, worker_hostname: str) -> bool:
    """A worker took a run: its queue may take the next one (evaluations.dispatch)."""
    started = runs.mark_started(run_id, attempt, worker_hostname)
    _dispatch_after(run_id)
    return started


def record_progress(run_id: int, attempt: int, done: int, total: int) -> bool:
    return runs.record_progress(run_id, attempt, done, total)


def record_failure(run_id: int, attempt: int, code: str, message: str, log_tail: str) -> bool:
    """A failed attempt ends: its slot on the queue goes to the next run by priority."""
    failed = runs.record_failure(run_id, attempt, code, message, log_tail)
    _dispatch_after(run_id)
    return failed


def _dispatch_after(run_id: int) -> None:
    """Send the next runs of `run_id`'s queue while it has room, once what changed commits."""
    queue = EvaluationRun.objects.filter(pk=run_id).values_list("queue", flat=True).first()
    if queue is not None:
        transaction.on_commit(lambda: dispatch([queue]), robust=True)


def ingest_result(run_id: int, attempt: int, payload: Any) -> str:
    """Store a worker's result; new scores enter the ranking read table in the same commit.
    Returns "ingested", "duplicate", "stale" or "rejected" (evaluations.runs.ingest_result)."""
    with transaction.atomic():
        ingested = runs.ingest_result(run_id, attempt, payload)
        weights = payload.get("fingerprint") if isinstance(payload, dict) else None
        if ingested.outcome == "ingested" and ingested.submission_id is not None and weights:
            submission = Submission.objects.select_related("repository").get(
                pk=ingested.submission_id
            )
            fingerprints.store(
                submission.repository,
                weights,
                source=FingerprintSource.WORKER,
                revision=submission.revision,
            )
        if ingested.submission_id is not None:
            refresh_entries_for([ingested.submission_id])
    _dispatch_after(run_id)
    if ingested.outcome == "ingested":
        try:
            assess_contamination(run_id)
        except Exception:  # the scores are stored; a signal that cannot be computed is logged
            logger.exception("contamination signals of run %s could not be computed", run_id)
    return ingested.outcome


def assess_contamination(run_id: int) -> list[Signal]:
    """The contamination signals of a finished run (docs/contamination.md): the statistics are
    computed outside any transaction (they resample for a few seconds), the fired ones recorded
    as open signals in a short one. Returns the new signals; a signal changes no status."""
    assessment = contamination.assess(run_id, size_bucket)
    if not any(finding.fired for finding in assessment.findings):
        return []
    with transaction.atomic():
        target = Repository.objects.get(pk=assessment.repository_id)
        return signals.record_findings(target, run_id, assessment.findings)


def reconcile() -> runs.ReconcileReport:
    """One reconciler pass: lost or silent evaluation runs, and ancestor resolutions whose task
    was lost (their models would say `resolving` for ever otherwise)."""
    report = runs.reconcile_runs()
    # Then the queued runs their queues have room for, in priority order.
    report.dispatched = dispatch()
    stalled = intake.awaiting_lineage(timezone.now() - RESOLVE_GRACE)
    for repository_id in stalled:
        send_resolve(repository_id)
    if stalled:
        logger.info("reconciler: resolution of %s sent again", stalled)
    return report


def requeue(run: EvaluationRun, user: Any) -> EvaluationRun:
    """Queue a failed run again (Refusal when `user` may not, or cannot now)."""
    return runs.requeue(run, user)


# --- integrity ----------------------------------------------------------------------------------


def file_report(
    *, reporter: Any, target: Repository, kind: str, evidence: str, links: Any = None
) -> reports.Filed:
    """File a report (or join the open one); a new open report puts the target and its
    descendants under review in the same transaction."""
    with transaction.atomic():
        filed = reports.record_report(
            reporter=reporter, target=target, kind=kind, evidence=evidence, links=links
        )
        if not filed.joined:
            derived.recompute([target.pk])
    return filed


def verify_organisation(actor: Any, org: str, note: str) -> Any:
    """A maintainer verifies an organisation; its ranking rows carry the badge (stored in the
    read table, so the filter "verified only" is one indexed column) from the same commit."""
    with transaction.atomic():
        verified = verification.verify(actor, org, note)
        refresh_entries_for(_submissions_of_org(verified.org))
    return verified


def withdraw_verification(actor: Any, org: str, note: str) -> Any:
    """A maintainer withdraws a verification; the badge leaves the ranking in the same commit."""
    with transaction.atomic():
        withdrawn = verification.withdraw(actor, org, note)
        refresh_entries_for(_submissions_of_org(withdrawn.org))
    return withdrawn


def _submissions_of_org(org: str) -> list[int]:
    return list(
        Submission.objects.filter(repository__repo_id__startswith=f"{org}/").values_list(
            "pk", flat=True
        )
    )


def decide_signal(signal_id: int, decision: str, note: str, actor: Any) -> Signal:
    """A maintainer's decision on a signal; confirming a contamination signal makes a confirmed
    report (the flag), confirming an undeclared parent found from the weights adds that lineage
    edge (marked as found, docs/provenance.md) so flags flow through it; either way the status
    of the target and every descendant is re-derived in the same transaction."""
    with transaction.atomic():
        signal = signals.record_signal_decision(signal_id, decision, note, actor)
        if signal.state == SignalState.CONFIRMED:
            found = provenance.found_edge(signal)
            if found is not None and not lineage.add_found_edge(signal.target, *found):
                raise Refusal.one(
                    "would_close_cycle",
                    "decision",
                    f"{found[0].repo_id} descends from {signal.target.repo_id}: adding it as a "
                    "parent would close a cycle. Dismiss the signal instead.",
                    409,
                )
            derived.recompute([signal.target_id])
    return signal


def resolve(report_id: int, decision: str, note: str, actor: Any) -> Report:
    """A maintainer's decision on a report, and the status of the target and every descendant
    re-derived in the same transaction: nobody sees a flag whose descendants are not tainted."""
    with transaction.atomic():
        report = reports.record_decision(report_id, decision, note, actor)
        derived.recompute([report.target_id])
    return report


# --- weight provenance ----------------------------------------------------------------------------


def read_weights(outcome: intake.CheckOutcome) -> dict[str, Any] | None:
    """The submitted model's fingerprint, read with ranged reads before any transaction (None
    when its weights cannot be read: that never blocks a submission). Raises Refusal when its
    tensors hash-match a flagged model (docs/provenance.md)."""
    if outcome.snapshot is None:
        return None
    try:
        data = fingerprints.read_snapshot(outcome.snapshot)
    except fingerprints.Unreadable as exc:
        logger.info("no fingerprint for %s: %s", outcome.request.repo_id, exc)
        return None
    problem = provenance.flagged_copy(data)
    if problem is not None:
        raise Refusal([problem])
    return data


def send_check_weights(repository_id: int) -> None:
    """Queue the provenance check of `repository_id` on the web queue."""
    # By name, like send_resolve: a process that never imported integrity.tasks (a management
    # command, the web server before autodiscovery) still sends it.
    app.send_task(
        CHECK_WEIGHTS_TASK, args=[repository_id], queue=settings.CELERY_TASK_DEFAULT_QUEUE
    )


def check_weights(repository_id: int) -> list[int]:
    """Fingerprint the model and its declared parents that have none yet (ranged reads of
    safetensors only, never model code, no transaction open), then relate the model to older
    models of its architecture and raise signals for what the weights reveal or contradict.
    Returns the ids of the signals raised or refreshed. Safe to run again (the task retries)."""
    repository = Repository.objects.filter(pk=repository_id).first()
    if repository is None:
        return []
    for node in [repository, *provenance.declared_parents(repository)]:
        if WeightFingerprint.objects.filter(repository=node).exists():
            continue
        try:
            data, sha = fingerprints.read(node.repo_id, node.resolved_revision or None)
        except fingerprints.Unreadable as exc:
            logger.info("no fingerprint for %s: %s", node.repo_id, exc)
            continue
        fingerprints.store(node, data, source=FingerprintSource.WEB, revision=sha)
    relation = provenance.relation_of(repository)
    if relation is None:
        return []
    with transaction.atomic():
        return [signal.pk for signal in provenance.signals_for(repository, relation)]
