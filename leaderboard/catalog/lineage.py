"""The lineage graph: nodes for every referenced repository, declared edges, traversal, and the
two steps of recording a submission's lineage (see docs/architecture.md):

1. `read_card` / `read_cards` read the declared parents' and datasets' cards from the model
   source once, before any transaction (the submission checks keep them in their outcome);
2. `record_declared` writes what the submitted model and those cards declare, from the
   snapshots alone, inside the submission's transaction, and marks the model and every ancestor
   left to read `lineage_pending`;
3. `resolve_ancestors` (after commit, in a retried task) reads those ancestors from their own
   cards, bounded, cycle-safe and idempotent; each read happens outside any transaction and only
   the writes it leads to are in one.

Nothing here derives status: the caller hands the ids that changed on to integrity."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from leaderboard.catalog.cards import (
    CardError,
    declared_datasets,
    declared_parents,
    declared_relation,
    parse_card,
)
from leaderboard.catalog.models import (
    DeclaredIn,
    LineageEdge,
    Relation,
    Repository,
    RepositoryKind,
)
from leaderboard.catalog.sources.base import (
    Kind,
    ModelSource,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    SourceError,
    SourceUnavailable,
)

logger = logging.getLogger(__name__)

REPO_ID_MAX = Repository._meta.get_field("repo_id").max_length or 200
NOTE_MAX = Repository._meta.get_field("resolution_note").max_length or 300


def _note(text: str) -> str:
    return text if len(text) <= NOTE_MAX else text[: NOTE_MAX - 1] + "…"


def upsert_repository(
    repo_id: str,
    kind: str,
    snapshot: RepoSnapshot | None = None,
    metadata: dict[str, Any] | None = None,
) -> Repository:
    """The node for `repo_id`, created when first referenced; a snapshot records the revision
    it was read at, and card metadata (parsed from the snapshot's card when not given) its
    license and front matter."""
    repository, _ = Repository.objects.get_or_create(kind=kind, repo_id=repo_id)
    if metadata is None and snapshot is not None and snapshot.card_text:
        try:
            metadata = parse_card(snapshot.card_text).metadata
        except CardError:
            metadata = None
    changed: list[str] = []
    if snapshot is not None and repository.resolved_revision != snapshot.sha:
        repository.resolved_revision = snapshot.sha
        changed.append("resolved_revision")
    if metadata is not None:
        license_value = str(metadata.get("license") or "")[:100]
        if repository.card_data != metadata:
            repository.card_data = metadata
            changed.append("card_data")
        if repository.license != license_value:
            repository.license = license_value
            changed.append("license")
    if changed:
        repository.save(update_fields=[*changed, "updated_at"])
    return repository


# --- traversal ---------------------------------------------------------------------------------


def _distances(start: int, *, upward: bool, max_depth: int | None = None) -> dict[int, int]:
    """Every node reachable from `start` along parent edges (upward) or child edges, with its
    shortest distance in edges; one query per level, and the visited set makes it terminate on
    any graph, cyclic or not. `start` itself is left out."""
    follow, collect = ("child_id", "parent_id") if upward else ("parent_id", "child_id")
    distance: dict[int, int] = {}
    frontier = {start}
    depth = 0
    while frontier and (max_depth is None or depth < max_depth):
        depth += 1
        found = set(
            LineageEdge.objects.filter(**{f"{follow}__in": frontier}).values_list(
                collect, flat=True
            )
        )
        frontier = found - distance.keys() - {start}
        distance.update(dict.fromkeys(frontier, depth))
    return distance


def ancestor_distances(repository: Repository, max_depth: int | None = None) -> dict[int, int]:
    """Primary key → shortest number of edges up, for every node `repository` derives from."""
    return _distances(repository.pk, upward=True, max_depth=max_depth)


def ancestors(repository: Repository) -> set[int]:
    """Primary keys of every node `repository` derives from: parent models, theirs, and the
    datasets any of them declares (all the way up, whatever the depth)."""
    return set(ancestor_distances(repository))


def descendants(repository: Repository) -> set[int]:
    """Primary keys of every node that derives from `repository`, directly or not (for a
    dataset: the models trained on it and everything derived from those)."""
    return set(_distances(repository.pk, upward=False))


def _path_up(start: int, goal: int) -> list[int] | None:
    """The shortest path start → … → goal following parent edges, or None."""
    if start == goal:
        return [start]
    previous: dict[int, int] = {start: start}
    frontier = [start]
    while frontier:
        rows = LineageEdge.objects.filter(child_id__in=frontier).values_list(
            "child_id", "parent_id"
        )
        next_frontier = []
        for child_id, parent_id in rows:
            if parent_id in previous:
                continue
            previous[parent_id] = child_id
            if parent_id == goal:
                path = [goal]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return path[::-1]
            next_frontier.append(parent_id)
        frontier = next_frontier
    return None


def cycle_paths(child_repo_id: str, parent_repo_ids: list[str]) -> list[list[str]]:
    """The cycles that edges child → each parent would close in the existing model graph, each
    as repo ids from the child back to itself: ["org/a", "org/b", "org/a"]. A self-parent is
    the cycle [child, child]."""
    cycles: list[list[str]] = []
    child = Repository.objects.filter(kind=RepositoryKind.MODEL, repo_id=child_repo_id).first()
    parents = {
        repo.repo_id: repo.pk
        for repo in Repository.objects.filter(
            kind=RepositoryKind.MODEL, repo_id__in=parent_repo_ids
        )
    }
    for parent_id in dict.fromkeys(parent_repo_ids):
        if parent_id == child_repo_id:
            cycles.append([child_repo_id, child_repo_id])
            continue
        if child is None or parent_id not in parents:
            continue  # a node the graph does not hold yet has no path back to the child
        path = _path_up(parents[parent_id], child.pk)
        if path is not None:
            names = dict(Repository.objects.filter(pk__in=path).values_list("pk", "repo_id"))
            cycles.append([child_repo_id, *(names[pk] for pk in path)])
    return cycles


# --- writes ------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A node met during upward resolution, with its distance from the submitted repository."""

    repository: Repository
    depth: int


def _add_edge(child: Repository, parent: Repository, relation: str, declared_in: str) -> bool:
    """Add child → parent unless it exists or would close a cycle; returns False on a cycle."""
    if child.pk == parent.pk or _path_up(parent.pk, child.pk) is not None:
        return False
    edge, created = LineageEdge.objects.get_or_create(
        child=child, parent=parent, defaults={"relation": relation, "declared_in": declared_in}
    )
    if not created and (edge.relation, edge.declared_in) != (relation, declared_in):
        # The newest declaration wins: a re-submission may correct how it relates.
        edge.relation, edge.declared_in = relation, declared_in
        edge.save(update_fields=["relation", "declared_in"])
    return True


def _nodes(repo_ids: list[str], kind: str) -> tuple[list[Repository], list[str]]:
    """The nodes for `repo_ids` (created as needed) and the ids refused as impossible."""
    usable = [repo_id for repo_id in repo_ids if 0 < len(repo_id) <= REPO_ID_MAX]
    refused = [repo_id for repo_id in repo_ids if repo_id not in usable]
    existing = {
        repo.repo_id: repo for repo in Repository.objects.filter(kind=kind, repo_id__in=usable)
    }
    nodes = []
    for repo_id in usable:
        if repo_id not in existing:
            existing[repo_id], _ = Repository.objects.get_or_create(kind=kind, repo_id=repo_id)
        nodes.append(existing[repo_id])
    return nodes, refused


def _declare(
    child: Repository,
    *,
    parents: list[str],
    relation: str,
    declared_in: str,
    datasets: list[str],
) -> tuple[list[Repository], list[Repository], list[str]]:
    """Edges child → parents and child → datasets; returns the parent and dataset nodes and the
    problems met (cycles refused, impossible ids)."""
    problems: list[str] = []
    parent_nodes, refused = _nodes(parents, RepositoryKind.MODEL)
    dataset_nodes, refused_datasets = _nodes(datasets, RepositoryKind.DATASET)
    for repo_id in [*refused, *refused_datasets]:
        problems.append(f"declared id {repo_id[:40]!r} is not a repository id")
    for parent in parent_nodes:
        if not _add_edge(child, parent, relation, declared_in):
            problems.append(f"edge to {parent.repo_id} not added: it would close a lineage cycle")
    for dataset in dataset_nodes:
        # Datasets are only ever declared in a card's front matter.
        _add_edge(child, dataset, Relation.TRAINED_ON, DeclaredIn.CARD)
    return parent_nodes, dataset_nodes, problems


def _mark(repository: Repository, resolved: bool, note: str) -> None:
    note = _note(note)
    if (repository.lineage_resolved, repository.resolution_note) != (resolved, note):
        repository.lineage_resolved, repository.resolution_note = resolved, note
        repository.save(update_fields=["lineage_resolved", "resolution_note", "updated_at"])


# --- step 1: reading cards (network; never inside a transaction) -------------------------------


@dataclass(frozen=True)
class CardRead:
    """One repository's card as the source gave it: the snapshot (None when it could not be
    read), its front matter (None when missing or unparseable), and why when either is None."""

    snapshot: RepoSnapshot | None
    metadata: dict[str, Any] | None
    why: str = ""


def read_card(source: ModelSource, repo_id: str, kind: Kind) -> CardRead:
    """The repository's card at its default revision (card only: a gated or private
    repository's public card is still readable). Raises nothing a source raises on purpose."""
    where = f"on the {getattr(source, 'name', 'model')} source"
    try:
        snapshot = source.snapshot(repo_id, kind=kind, card_only=True)
    except RevisionNotFound as exc:
        return CardRead(None, None, f"default revision not readable {where}: {exc}")
    except SourceUnavailable as exc:
        return CardRead(None, None, f"source unavailable while reading its card: {exc}")
    except RepoNotFound as exc:
        return CardRead(None, None, f"not found {where}: {exc}")
    except SourceError as exc:  # any other refusal a source defines
        return CardRead(None, None, f"card not readable {where}: {exc}")
    return card_of(snapshot, where)


def card_of(snapshot: RepoSnapshot, where: str = "") -> CardRead:
    """A snapshot read elsewhere (the submission checks) as a CardRead."""
    where = where or "on the model source"
    if not snapshot.card_text:
        return CardRead(snapshot, None, f"no model card (README.md) {where}")
    try:
        metadata = parse_card(snapshot.card_text).metadata
    except CardError as exc:
        return CardRead(snapshot, None, f"card front matter is not parseable: {exc}")
    return CardRead(snapshot, metadata)


def read_cards(source: ModelSource, repo_ids: Iterable[str], kind: Kind) -> dict[str, CardRead]:
    """The cards of the repositories not resolved yet (a resolved node is never read again)."""
    wanted = unresolved(repo_ids, kind)
    return {repo_id: read_card(source, repo_id, kind) for repo_id in wanted}


def unresolved(repo_ids: Iterable[str], kind: str) -> list[str]:
    """`repo_ids` minus the nodes whose lineage is already resolved, in order."""
    ids = list(dict.fromkeys(repo_ids))
    resolved = set(
        Repository.objects.filter(kind=kind, repo_id__in=ids, lineage_resolved=True).values_list(
            "repo_id", flat=True
        )
    )
    return [repo_id for repo_id in ids if repo_id not in resolved]


# --- step 2: what the submission declares (database only, in the submission's transaction) -----


@dataclass
class Recorded:
    """What a lineage write changed: the nodes whose parents, resolution or pending mark may
    differ now (their status must be re-derived), and whether ancestors are left for
    `resolve_ancestors`."""

    touched: set[int] = field(default_factory=set)
    pending: bool = False


def _record_node(node: Repository, card: CardRead) -> tuple[list[Repository], str]:
    """Write a node from its card: the revision and front matter, its own declared edges, and
    whether they resolved. Returns the nodes it declares and '' or why it stays unresolved."""
    if card.metadata is None or card.snapshot is None:
        if card.snapshot is not None:
            upsert_repository(node.repo_id, node.kind, snapshot=card.snapshot)
            node.refresh_from_db()
        _mark(node, False, card.why)
        return [], card.why
    upsert_repository(node.repo_id, node.kind, snapshot=card.snapshot, metadata=card.metadata)
    node.refresh_from_db()
    if node.kind == RepositoryKind.DATASET:
        _mark(node, True, "")
        return [], ""
    parents, datasets, problems = _declare(
        node,
        parents=declared_parents(card.metadata),
        relation=declared_relation(card.metadata),
        declared_in=DeclaredIn.CARD,
        datasets=declared_datasets(card.metadata),
    )
    # A refused declaration (a cycle, an impossible id) leaves the lineage unresolved.
    why = "; ".join(problems)
    _mark(node, not problems, why)
    return [*parents, *datasets], why


def record_declared(
    repository: Repository,
    *,
    parents: list[str],
    relation: str,
    declared_in: str,
    datasets: list[str],
    cards: Mapping[tuple[str, str], CardRead],
    max_depth: int,
) -> Recorded:
    """Record what `repository` declares and, from `cards` (keyed by (kind, repo_id), read
    before the transaction), what each declared parent and dataset declares in turn. Reads
    nothing from a source. Nodes already resolved are left as they are; a declared node
    without a card in `cards` is left for `resolve_ancestors`."""
    declared_parents_, declared_datasets_, problems = _declare(
        repository,
        parents=parents,
        relation=relation,
        declared_in=declared_in,
        datasets=datasets,
    )
    # The caller read this repository's card: its own declarations are resolved.
    _mark(repository, not problems, "; ".join(problems))
    recorded = Recorded(touched={repository.pk})
    for node in [*declared_parents_, *declared_datasets_]:
        recorded.touched.add(node.pk)
        if node.lineage_resolved:
            continue
        card = cards.get((node.kind, node.repo_id))
        if card is not None:
            _record_node(node, card)
    left = _left_to_read(repository, max_depth)
    if left:
        # Until the task has read them, these and their descendants say `resolving`, not
        # `incomplete`: nothing is known to be missing yet.
        Repository.objects.filter(pk__in=[repository.pk, *left]).update(lineage_pending=True)
        recorded.touched |= left
        recorded.pending = True
    return recorded


def _left_to_read(repository: Repository, max_depth: int) -> set[int]:
    """The nodes `resolve_ancestors` will read or note: unresolved ones above the declared
    parents within the depth limit, and ones without a note just beyond it."""
    frontier = {repository.pk}
    seen = {repository.pk}
    left: set[int] = set()
    depth = 0
    while frontier:
        depth += 1
        rows = list(
            Repository.objects.filter(child_edges__child_id__in=frontier)
            .distinct()
            .values_list("pk", "lineage_resolved", "resolution_note")
        )
        frontier = set()
        for pk, resolved, note in rows:
            if pk in seen:
                continue
            seen.add(pk)
            if depth > 1 and not resolved and (depth <= max_depth or not note):
                left.add(pk)
            if depth <= max_depth:
                frontier.add(pk)
    return left


# --- step 3: ancestors above the declared parents (after commit; reads outside transactions) ---


def resolve_ancestors(repository: Repository, *, source: ModelSource, max_depth: int) -> set[int]:
    """Resolve the ancestors above `repository`'s declared parents upward from their own cards.

    Breadth-first from the nodes the declared parents and datasets declare (depth 2), up to
    `max_depth` levels; the declared nodes themselves (depth 1) were read by the submission and
    are not read again. A node whose card is read gets lineage_resolved=True (a pretrained root
    without base_model included); one that cannot be read (missing, unparseable, unreachable,
    beyond the depth) keeps lineage_resolved=False with a resolution_note saying why. Nodes
    already resolved are not read again, but their recorded parents are still walked, so a
    later, shallower path can resolve what an earlier one left beyond the depth limit. Edges
    that would close a cycle are not added and the declaring node's note says so. Running it
    twice adds nothing. Each card is read with no transaction open; the writes it leads to are
    one short transaction per node. Returns the ids of every node walked (status to re-derive).
    """
    queue: deque[_Pending] = deque(_Pending(p, 1) for p in _recorded_parents(repository))
    visited: set[int] = {repository.pk}
    while queue:
        item = queue.popleft()
        node = item.repository
        if node.pk in visited:
            continue
        visited.add(node.pk)
        if node.lineage_resolved or item.depth == 1:
            # Read before (or by the submission itself): walk what it declared then to reach
            # nodes still unresolved.
            if item.depth <= max_depth:
                queue.extend(_Pending(p, item.depth + 1) for p in _recorded_parents(node))
            continue
        if item.depth > max_depth:
            # A reason found on an earlier attempt (not found, unreadable) stays the better one.
            if not node.resolution_note:
                _mark(node, False, f"beyond the lineage depth limit ({max_depth} levels)")
            continue
        kind: Kind = "dataset" if node.kind == RepositoryKind.DATASET else "model"
        card = read_card(source, node.repo_id, kind)
        with transaction.atomic():
            declared, _why = _record_node(node, card)
        queue.extend(_Pending(n, item.depth + 1) for n in declared)
    return visited


def finish_resolving(walked: Iterable[int]) -> None:
    """The walk is done: the nodes it walked (the submitted model first) no longer wait."""
    Repository.objects.filter(pk__in=list(walked), lineage_pending=True).update(
        lineage_pending=False
    )


def _recorded_parents(repository: Repository) -> list[Repository]:
    return list(
        Repository.objects.filter(child_edges__child=repository).order_by("kind", "repo_id")
    )


def add_found_edge(child: Repository, parent: Repository, relation: str) -> bool:
    """Record an edge found from the weights and confirmed by a maintainer (never declared);
    False when it would close a cycle."""
    return _add_edge(child, parent, relation, DeclaredIn.WEIGHTS)
