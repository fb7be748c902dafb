"""Derived lineage status, written: the incremental recompute after a change of a node's own
signals or parent edges, and the full one. Nothing else writes Repository.status / status_path;
leaderboard.flow calls `recompute` after each stage that changed something (docs/integrity.md)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from leaderboard.integrity import graph
from leaderboard.integrity.status import derive

# Past this many seeds the recursive CTE's IN list stops paying off: recompute everything.
SEEDS_MAX = 5_000


@dataclass(frozen=True)
class Recomputed:
    computed: int  # nodes whose status was derived
    written: int  # rows whose stored status changed (or was never derived)
    seconds: float


def recompute(seed_ids: Iterable[int]) -> Recomputed:
    """Re-derive status after the seeds' own signals or parent edges changed.

    First the seeds alone (their parents' stored status is correct); only seeds whose status
    or path actually changed carry the change down, and then to exactly their descendants."""
    started = time.perf_counter()
    seeds = set(seed_ids)
    if not seeds:
        return Recomputed(0, 0, 0.0)
    if len(seeds) > SEEDS_MAX:
        return recompute_all()
    with transaction.atomic():
        graph.lock_statuses()
        local = graph.load_subgraph(seeds, descendants=False, with_stored=True)
        derived = derive(local.nodes, local.parents, local.boundary)
        changed = {
            node_id
            for node_id, (status, path) in derived.items()
            if node_id in local.underived
            or (status, path) != (local.stored[node_id].status, local.stored[node_id].path)
        }
        if not changed:
            return Recomputed(len(derived), 0, time.perf_counter() - started)
        sub = graph.load_subgraph(changed)
        texts: dict[int, str] = {}
        derived = derive(sub.nodes, sub.parents, sub.boundary, json_out=texts)
        written = graph.write_statuses(derived, timezone.now(), texts)
    return Recomputed(len(derived), written, time.perf_counter() - started)


def recompute_all() -> Recomputed:
    """Re-derive every node from scratch (the management command recompute_lineage_status)."""
    started = time.perf_counter()
    with transaction.atomic():
        graph.lock_statuses()
        sub = graph.load_subgraph(None)
        texts: dict[int, str] = {}
        derived = derive(sub.nodes, sub.parents, json_out=texts)
        written = graph.write_statuses(derived, timezone.now(), texts)
    return Recomputed(len(derived), written, time.perf_counter() - started)
