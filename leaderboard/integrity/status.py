"""Derivation of lineage status: a pure function of the graph, the nodes' own signals and,
for an incremental recompute, the stored status of the parents just outside the recomputed set.

Levels, highest first (a node takes the highest level reachable from itself or an ancestor):

    3  flagged / tainted   a confirmed flag on the node (flagged) or on an ancestor (tainted);
                           datasets are nodes and `trained-on` edges are edges, so a flagged
                           dataset taints every model that declares it and their descendants
    3  under-review        an open report on the node or an ancestor
    2  incomplete          the node or an ancestor has lineage_resolved = False
    1  resolving           the node or an ancestor waits for the task that reads the ancestors
                           above a submission's declared parents (lineage_pending = True)
    0  clean

`resolving` sits below `incomplete`: it says only that more may become known, while an ancestor
that could not be read is already known; everything already known above it wins the same way.
A node waiting to be read is `resolving` itself (not `incomplete`): nobody has tried it yet.

The path is the shortest chain of edges from the node up to a node whose own signal explains
the level; among equally short chains, the parent with the smallest id is taken at each step,
so an incremental recompute and a full one always agree.

Why the stored status of a parent outside the recomputed set is enough: every descendant of a
node has at least that node's level, so a node whose level is L has only ancestors of level
<= L, and every shortest level-L chain runs through level-L nodes whose stored paths already
hold their distances. Lower-level passes therefore never need to cross higher-level nodes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from leaderboard.catalog.models import LineageStatus, Relation

FLAG, REVIEW, INCOMPLETE, RESOLVING, CLEAN = 4, 3, 2, 1, 0

LEVEL_OF_STATUS: dict[str, int] = {
    LineageStatus.FLAGGED: FLAG,
    LineageStatus.TAINTED: FLAG,
    LineageStatus.UNDER_REVIEW: REVIEW,
    LineageStatus.INCOMPLETE: INCOMPLETE,
    LineageStatus.RESOLVING: RESOLVING,
    LineageStatus.CLEAN: CLEAN,
}

# Step = one node of a path: {"id", "repo_id", "kind"} plus "relation" (to the next step) on
# every step but the last, and "reason" (why that node carries the level) on the last.
Step = dict[str, Any]
Path = list[Step]
# json.dumps' own string escaper: paths built as text must match json.dumps(path) exactly.
_quote = encode_basestring_ascii


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    kind: str
    repo_id: str
    own_level: int
    # The explanation when own_level > CLEAN, e.g. {"type": "flag", "report": 7, ...}.
    own_reason: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What the database holds for a node outside the recomputed set."""

    status: str
    path: Path


def own_signal(
    *,
    confirmed: Sequence[tuple[int, str, Any]],
    open_reports: Sequence[tuple[int, str, Any]],
    lineage_resolved: bool,
    resolution_note: str,
    lineage_pending: bool = False,
) -> tuple[int, dict[str, Any] | None]:
    """A node's own level and reason. Reports are (id, kind, datetime) tuples: confirmed ones
    with their confirmation time, open ones with their filing time; the earliest explains."""
    if confirmed:
        rid, kind, at = min(confirmed, key=lambda r: (r[2], r[0]))
        return FLAG, {"type": "flag", "report": rid, "kind": kind, "confirmed_at": _day(at)}
    if open_reports:
        rid, kind, at = min(open_reports, key=lambda r: (r[2], r[0]))
        return REVIEW, {"type": "open-report", "report": rid, "kind": kind, "reported_at": _day(at)}
    if lineage_pending:
        return RESOLVING, {"type": "resolving"}
    if not lineage_resolved:
        return INCOMPLETE, {"type": "unresolved", "note": resolution_note}
    return CLEAN, None


def _day(at: Any) -> str:
    return at.date().isoformat() if hasattr(at, "date") else str(at)[:10]


def derive(
    nodes: Mapping[int, Node],
    parents: Mapping[int, Sequence[tuple[int, str]]],
    boundary: Mapping[int, Stored] | None = None,
    json_out: dict[int, str] | None = None,
) -> dict[int, tuple[str, Path]]:
    """Status and path of every node in `nodes`.

    `parents[child]` lists (parent_id, relation) for each child in `nodes`; a parent that is
    not in `nodes` must be in `boundary` (its stored, already correct status). Every node
    whose parents are all in `nodes` or `boundary` is derived exactly; a change's recompute
    set is a node and all its descendants.

    With `json_out`, each path is also written there as json.dumps(path) would spell it, built
    from the parent's text (a path is a step plus its parent's path), so serialising ten
    thousand paths costs one small dumps per node instead of one per step."""
    boundary = boundary or {}
    children: dict[int, list[int]] = defaultdict(list)
    # Where each level starts: a node's own signal (distance 0), or a parent outside the set
    # whose stored status carries that level (its distance plus this edge).
    seeds: dict[int, dict[int, int]] = {FLAG: {}, REVIEW: {}, INCOMPLETE: {}, RESOLVING: {}}
    for node in nodes.values():
        if node.own_level:
            seeds[node.own_level][node.id] = 0
    for child, plist in parents.items():
        for parent_id, _relation in plist:
            if parent_id in nodes:
                children[parent_id].append(child)
                continue
            stored = boundary.get(parent_id)
            if stored is None or not stored.path:
                continue
            stored_level = LEVEL_OF_STATUS[stored.status]
            if stored_level:
                candidate = len(stored.path)
                if candidate < seeds[stored_level].get(child, candidate + 1):
                    seeds[stored_level][child] = candidate

    level: dict[int, int] = {}
    dist: dict[int, int] = {}
    for lvl in (FLAG, REVIEW, INCOMPLETE, RESOLVING):
        start = {n: d for n, d in seeds[lvl].items() if n not in level}
        for node_id, d in _bucket_bfs(start, children, level).items():
            level[node_id] = lvl
            dist[node_id] = d

    result: dict[int, tuple[str, Path]] = {}
    paths: dict[int, Path] = {}
    texts: dict[int, str] = {}
    want_json = json_out is not None
    for node_id in sorted(level, key=dist.__getitem__):
        node = nodes[node_id]
        lvl, d = level[node_id], dist[node_id]
        if d == 0:
            step: Step = {"id": node.id, "repo_id": node.repo_id, "kind": node.kind}
            if node.own_reason is not None:
                step["reason"] = node.own_reason
            path: Path = [step]
            if want_json:
                texts[node_id] = f"[{json.dumps(step)}]"
        else:
            best_id, best_relation, best_path = -1, "", None
            for parent_id, relation in parents.get(node_id, ()):
                if best_path is not None and parent_id > best_id:
                    continue
                if parent_id in level:
                    if level[parent_id] != lvl or dist[parent_id] != d - 1:
                        continue
                    candidate_path = paths[parent_id]
                else:
                    stored = boundary.get(parent_id)
                    if (
                        stored is None
                        or LEVEL_OF_STATUS[stored.status] != lvl
                        or len(stored.path) != d
                    ):
                        continue
                    candidate_path = stored.path
                best_id, best_relation, best_path = parent_id, relation, candidate_path
            assert best_path is not None, "a reached node always has a parent one step closer"
            path = [
                {
                    "id": node.id,
                    "repo_id": node.repo_id,
                    "kind": node.kind,
                    "relation": best_relation,
                },
                *best_path,
            ]
            if want_json:
                parent_text = texts.get(best_id) or json.dumps(best_path)
                texts[node_id] = (
                    f'[{{"id": {node.id}, "repo_id": {_quote(node.repo_id)}, '
                    f'"kind": {_quote(node.kind)}, "relation": {_quote(best_relation)}}}, '
                    f"{parent_text[1:]}"
                )
        paths[node_id] = path
        result[node_id] = (_status_name(lvl, d), path)
    for node_id in nodes:
        if node_id not in result:
            result[node_id] = (LineageStatus.CLEAN.value, [])
            texts[node_id] = "[]"
    if json_out is not None:
        json_out.update((node_id, texts[node_id]) for node_id in nodes)
    return result


def _bucket_bfs(
    start: Mapping[int, int], children: Mapping[int, list[int]], taken: Mapping[int, int]
) -> dict[int, int]:
    """Shortest distances from several sources with different starting distances; nodes
    already taken by a higher level are neither reached nor crossed."""
    dist = dict(start)
    buckets: dict[int, list[int]] = defaultdict(list)
    for node_id, d in start.items():
        buckets[d].append(node_id)
    d = 0
    remaining = len(start)
    while remaining:
        frontier = buckets.pop(d, [])
        remaining -= len(frontier)
        for node_id in frontier:
            if dist[node_id] != d:
                continue
            for child in children.get(node_id, ()):
                if child in taken:
                    continue
                if dist.get(child, d + 2) > d + 1:
                    dist[child] = d + 1
                    buckets[d + 1].append(child)
                    remaining += 1
        d += 1
    return dist


def _status_name(lvl: int, d: int) -> str:
    if lvl == FLAG:
        return LineageStatus.FLAGGED.value if d == 0 else LineageStatus.TAINTED.value
    if lvl == REVIEW:
        return LineageStatus.UNDER_REVIEW.value
    if lvl == RESOLVING:
        return LineageStatus.RESOLVING.value
    return LineageStatus.INCOMPLETE.value


def path_text(path: Iterable[Step]) -> str:
    """`org/child ← org/parent ← org/root (contamination, confirmed 2024-05-01)`; a dataset
    edge reads `org/model ← trained on org/dataset (...)`."""
    parts: list[str] = []
    previous_relation: str | None = None
    reason: dict[str, Any] | None = None
    for step in path:
        name = step["repo_id"]
        if previous_relation is None:
            parts.append(name)
        elif previous_relation == Relation.TRAINED_ON:
            parts.append(f" ← trained on {name}")
        else:
            parts.append(f" ← {name}")
        previous_relation = step.get("relation")
        reason = step.get("reason")
    text = "".join(parts)
    if reason:
        text += f" ({reason_text(reason)})"
    return text


def reason_text(reason: Mapping[str, Any]) -> str:
    kind = reason.get("type")
    if kind == "flag":
        return f"{reason['kind']}, confirmed {reason['confirmed_at']}"
    if kind == "open-report":
        return f"{reason['kind']} report open since {reason['reported_at']}"
    if kind == "resolving":
        return "ancestors being resolved"
    note = reason.get("note") or ""
    return f"lineage unresolved: {note}" if note else "lineage unresolved"
