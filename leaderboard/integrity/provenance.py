"""What the weights say about a model's declared lineage (docs/provenance.md): the relation
evaluator.provenance finds among older models of its architecture, compared with the parents it
declares, as signals for maintainers (integrity.Signal, shared with the contamination signals);
what a confirmed one adds (a lineage edge found from weights); and the rule refusing a byte copy
of a flagged model."""

from __future__ import annotations

from typing import Any

from evaluator.provenance import (
    DERIVED_FROM,
    FIRST_MAX_RESIDUAL,
    MERGE_OF,
    SAME_WEIGHTS,
    Relation,
    relate,
)
from leaderboard.catalog import fingerprints, lineage
from leaderboard.catalog.models import (
    DeclaredIn,
    LineageEdge,
    LineageStatus,
    Repository,
    RepositoryKind,
    WeightFingerprint,
)
from leaderboard.catalog.models import (
    Relation as EdgeRelation,
)
from leaderboard.integrity.models import Signal, SignalState
from leaderboard.problems import Problem

REUPLOAD = "reupload"
UNDECLARED_PARENT = "undeclared-parent"
CONTRADICTED_PARENT = "contradicted-parent"
KINDS = {
    REUPLOAD: "re-upload of an existing model",
    UNDECLARED_PARENT: "undeclared parent revealed by the weights",
    CONTRADICTED_PARENT: "declared parent contradicted by the weights",
}


def raise_signal(
    *,
    kind: str,
    target: Repository,
    subject: Repository | None,
    evidence: dict[str, Any],
    score: float,
    statistic: str,
    threshold: float,
) -> tuple[Signal, bool]:
    """Open a provenance signal, or refresh the evidence of the open one about the same
    subject; a decided one stays as decided. Returns (signal, created)."""
    about = subject.repo_id if subject is not None else ""
    fields = {
        "kind": kind,
        "statistic": float(score),
        "statistic_name": statistic[:120],
        "threshold": float(threshold),
        "evidence": {**evidence, "subject": about or None},
    }
    signal, created = Signal.objects.get_or_create(
        target=target, key=f"provenance|{kind}|{about}", defaults=fields
    )
    if not created and signal.state == SignalState.OPEN:
        for name, value in fields.items():
            setattr(signal, name, value)
        signal.save(update_fields=list(fields))
    return signal, created


def found_edge(signal: Signal) -> tuple[Repository, str] | None:
    """The lineage edge a confirmed undeclared-parent signal adds: (parent, relation)."""
    if signal.kind != UNDECLARED_PARENT:
        return None
    parent = Repository.objects.filter(
        kind=RepositoryKind.MODEL, repo_id=signal.evidence.get("subject") or ""
    ).first()
    if parent is None:
        return None
    return parent, str(signal.evidence.get("relation") or EdgeRelation.FINE_TUNE)


def flagged_copy(data: dict[str, Any]) -> Problem | None:
    """The refusal of a model whose tensors hash-match a flagged model's, naming the original."""
    for original in fingerprints.copies_of(data):
        if original.status == LineageStatus.FLAGGED:
            return Problem(
                "flagged_copy",
                "repo_id",
                f"The weights are identical, tensor for tensor, to {original.repo_id}, which "
                "maintainers have flagged. A copy of a flagged model cannot be submitted under "
                f"another name; if you think the flag on {original.repo_id} is wrong, report "
                "that on its lineage page.",
            )
    return None


def declared_parents(repository: Repository) -> list[Repository]:
    """The models `repository` declares as parents (not the edges found from weights)."""
    ids = (
        LineageEdge.objects.filter(child=repository, parent__kind=RepositoryKind.MODEL)
        .exclude(declared_in=DeclaredIn.WEIGHTS)
        .values_list("parent_id", flat=True)
    )
    return list(Repository.objects.filter(pk__in=list(ids)).order_by("pk"))


def relation_of(repository: Repository) -> Relation | None:
    """What the weights say `repository` is, against the older models the index proposes and
    its declared parents; None without a fingerprint."""
    row = (
        WeightFingerprint.objects.select_related("repository").filter(repository=repository).first()
    )
    if row is None:
        return None
    declared = declared_parents(repository)
    pool = fingerprints.candidates(row, also=[p.pk for p in declared])
    parents_of: dict[str, list[str]] = {}
    for child_id, parent_id in LineageEdge.objects.filter(
        child_id__in=[c.repository_id for c in pool]
    ).values_list("child__repo_id", "parent__repo_id"):
        parents_of.setdefault(child_id, []).append(parent_id)
    return relate(
        fingerprints.sketch_of(row),
        [fingerprints.sketch_of(c) for c in pool],
        declared=[p.repo_id for p in declared],
        parents_of=parents_of,
    )


def signals_for(repository: Repository, relation: Relation) -> list[Signal]:
    """Signals for what the weights contradict or reveal: a re-upload of an existing model, a
    declared parent the weights do not support, a parent they show that is not declared (nor
    already an ancestor). Raising again refreshes the open signal; decided ones stay decided."""
    declared = {p.repo_id for p in declared_parents(repository)}
    ancestors = lineage.ancestors(repository)
    named = {
        r.repo_id: r
        for r in Repository.objects.filter(
            kind=RepositoryKind.MODEL,
            repo_id__in=[*relation.parents, *declared],
        )
    }
    evidence = relation.to_dict()
    raised: list[Signal] = []
    if relation.kind == SAME_WEIGHTS:
        original = named.get(relation.evidence["original"])
        if original is not None and original.repo_id not in declared:
            signal, _ = raise_signal(
                kind=REUPLOAD,
                target=repository,
                subject=original,
                evidence=evidence,
                score=relation.score,
                statistic="share of sampled values equal after rounding to the coarser dtype",
                threshold=0.98,
            )
            raised.append(signal)
        return raised
    stated = relation.evidence.get("declared")
    if stated and not stated["supported"]:
        # A declared parent the weights name, or an ancestor of one they name, is incomplete
        # lineage (an undeclared parent beside it), not a contradiction.
        found = [named[r] for r in relation.parents if r in named]
        lineage_of_found = set(relation.parents) | set(
            Repository.objects.filter(
                pk__in=set().union(*(lineage.ancestors(r) for r in found))
            ).values_list("repo_id", flat=True)
        )
        for repo_id in stated["parents"]:
            if repo_id in lineage_of_found:
                continue
            signal, _ = raise_signal(
                kind=CONTRADICTED_PARENT,
                target=repository,
                subject=named.get(repo_id),
                evidence=evidence,
                score=float(stated["residual"]),
                statistic="share of the weights the declared parents leave unexplained",
                threshold=FIRST_MAX_RESIDUAL,
            )
            raised.append(signal)
    if relation.kind in (DERIVED_FROM, MERGE_OF):
        edge = EdgeRelation.MERGE if relation.kind == MERGE_OF else EdgeRelation.FINE_TUNE
        for repo_id in relation.parents:
            parent = named.get(repo_id)
            if parent is None or repo_id in declared or parent.pk in ancestors:
                continue
            signal, _ = raise_signal(
                kind=UNDECLARED_PARENT,
                target=repository,
                subject=parent,
                evidence={**evidence, "relation": edge.value},
                score=relation.score,
                statistic="share of the weights explained",
                threshold=1.0 - FIRST_MAX_RESIDUAL,
            )
            raised.append(signal)
    return raised
