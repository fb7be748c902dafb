"""Reading and writing the lineage graph for integrity: the recompute subgraph (a change's
node and all its descendants, loaded with recursive CTEs in a handful of queries), the status
writer, and the bounded neighbourhood walk behind the lineage page and API."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models.expressions import RawSQL

from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.integrity.models import Report, ReportStatus
from leaderboard.integrity.status import Node, Path, Stored, own_signal
from leaderboard.submissions.models import Submission

REPO = Repository._meta.db_table
EDGE = LineageEdge._meta.db_table
CHUNK = 2000
# Any constant shared by every Trellis process: recomputes take it for their transaction.
STATUS_LOCK_KEY = 7_310_455_003


def chunks(ids: Iterable[int], size: int = CHUNK) -> Iterator[list[int]]:
    batch: list[int] = []
    for item in ids:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def descendants_sql(seed_count: int) -> str:
    """The seeds and every node below them; UNION (not UNION ALL) makes cycles terminate."""
    marks = ", ".join(["%s"] * seed_count)
    return (
        f"WITH RECURSIVE affected(id) AS ("
        f"SELECT id FROM {REPO} WHERE id IN ({marks}) "
        f"UNION SELECT e.child_id FROM {EDGE} e JOIN affected a ON e.parent_id = a.id"
        f") SELECT id FROM affected"
    )


def ancestors_sql(seed_count: int) -> str:
    marks = ", ".join(["%s"] * seed_count)
    return (
        f"WITH RECURSIVE above(id) AS ("
        f"SELECT id FROM {REPO} WHERE id IN ({marks}) "
        f"UNION SELECT e.parent_id FROM {EDGE} e JOIN above a ON e.child_id = a.id"
        f") SELECT id FROM above"
    )


def lock_statuses() -> None:
    """Serialise recomputes: each reads its boundary's stored status, so two overlapping
    recomputes must not interleave. PostgreSQL: a transaction-scoped advisory lock; SQLite
    already lets one writer at a time."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [STATUS_LOCK_KEY])


@dataclass
class Subgraph:
    nodes: dict[int, Node] = field(default_factory=dict)
    parents: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    boundary: dict[int, Stored] = field(default_factory=dict)
    stored: dict[int, Stored] = field(default_factory=dict)
    # Nodes never derived yet (status_updated_at is null): written even if unchanged.
    underived: set[int] = field(default_factory=set)


_NODE_FIELDS = (
    "id",
    "kind",
    "repo_id",
    "lineage_resolved",
    "resolution_note",
    "status",
    "status_path",
    "status_updated_at",
)


def load_subgraph(seed_ids: Iterable[int] | None, *, descendants: bool = True) -> Subgraph:
    """The seeds and all their descendants (only the seeds with descendants=False; the whole
    graph for None), their parent edges, own signals, and the stored status of parents outside
    that set. A boundary parent that was never derived joins the seeds, so the result never
    rests on a default value."""
    seeds = None if seed_ids is None else set(seed_ids)
    while True:
        if seeds is None:
            node_rows = Repository.objects.values_list(*_NODE_FIELDS)
            edge_rows = LineageEdge.objects.values_list("child_id", "parent_id", "relation")
            report_rows = Report.objects.filter(
                status__in=(ReportStatus.OPEN, ReportStatus.CONFIRMED)
            )
        else:
            seed_list = sorted(seeds)
            scope: Any = (
                RawSQL(descendants_sql(len(seed_list)), seed_list) if descendants else seed_list
            )
            node_rows = Repository.objects.filter(id__in=scope).values_list(*_NODE_FIELDS)
            edge_rows = LineageEdge.objects.filter(child_id__in=scope).values_list(
                "child_id", "parent_id", "relation"
            )
            report_rows = Report.objects.filter(
                target_id__in=scope, status__in=(ReportStatus.OPEN, ReportStatus.CONFIRMED)
            )
        rows = list(node_rows)
        node_ids = {row[0] for row in rows}
        parents: dict[int, list[tuple[int, str]]] = defaultdict(list)
        outside: set[int] = set()
        for child_id, parent_id, relation in edge_rows:
            parents[child_id].append((parent_id, relation))
            if parent_id not in node_ids:
                outside.add(parent_id)
        boundary: dict[int, Stored] = {}
        underived_outside: set[int] = set()
        for batch in chunks(sorted(outside)):
            for pid, status, path, updated in Repository.objects.filter(id__in=batch).values_list(
                "id", "status", "status_path", "status_updated_at"
            ):
                if updated is None or (status != "clean" and not path):
                    underived_outside.add(pid)
                boundary[pid] = Stored(status, path or [])
        if underived_outside and seeds is not None:
            seeds |= underived_outside
            continue
        break

    confirmed: dict[int, list[tuple[int, str, Any]]] = defaultdict(list)
    open_reports: dict[int, list[tuple[int, str, Any]]] = defaultdict(list)
    for target_id, rid, kind, status, created_at, confirmed_at in report_rows.values_list(
        "target_id", "id", "kind", "status", "created_at", "confirmed_at"
    ):
        if status == ReportStatus.CONFIRMED:
            confirmed[target_id].append((rid, kind, confirmed_at or created_at))
        else:
            open_reports[target_id].append((rid, kind, created_at))

    graph = Subgraph(parents=dict(parents), boundary=boundary)
    for rid, kind, repo_id, resolved, note, status, path, updated in rows:
        level, reason = own_signal(
            confirmed=confirmed.get(rid, ()),
            open_reports=open_reports.get(rid, ()),
            lineage_resolved=resolved,
            resolution_note=note,
        )
        graph.nodes[rid] = Node(rid, kind, repo_id, level, reason)
        graph.stored[rid] = Stored(status, path or [])
        if updated is None:
            graph.underived.add(rid)
    return graph


def write_statuses(changes: dict[int, tuple[str, Path]], now: datetime) -> None:
    """Write derived statuses. PostgreSQL gets one UPDATE ... FROM (VALUES ...) per chunk,
    which stays linear where bulk_update's CASE WHEN is quadratic in the batch size."""
    if not changes:
        return
    items = sorted(changes.items())
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for start in range(0, len(items), CHUNK):
                batch = items[start : start + CHUNK]
                values = ", ".join(["(%s::bigint, %s::varchar, %s::jsonb)"] * len(batch))
                params: list[Any] = [now]
                for node_id, (status, path) in batch:
                    params.extend((node_id, status, json.dumps(path)))
                cursor.execute(
                    f"UPDATE {REPO} AS r SET status = v.status, status_path = v.path, "
                    f"status_updated_at = %s FROM (VALUES {values}) AS v(id, status, path) "
                    f"WHERE r.id = v.id",
                    params,
                )
        return
    objs = [
        Repository(id=node_id, status=status, status_path=path, status_updated_at=now)
        for node_id, (status, path) in items
    ]
    Repository.objects.bulk_update(
        objs, ["status", "status_path", "status_updated_at"], batch_size=300
    )


def count_ranked_below(target_ids: Iterable[int]) -> dict[int, int]:
    """For each target: how many of it and its descendants have a finished evaluation, i.e.
    how many ranked models a confirmation would affect. One query for all targets."""
    ids = sorted(set(target_ids))
    if not ids:
        return {}
    marks = ", ".join(["%s"] * len(ids))
    sub = Submission._meta.db_table
    run = EvaluationRun._meta.db_table
    sql = (
        f"WITH RECURSIVE reach(root, id) AS ("
        f"SELECT id, id FROM {REPO} WHERE id IN ({marks}) "
        f"UNION SELECT r.root, e.child_id FROM reach r JOIN {EDGE} e ON e.parent_id = r.id"
        f") SELECT reach.root, COUNT(DISTINCT reach.id) FROM reach "
        f"WHERE EXISTS (SELECT 1 FROM {sub} s JOIN {run} x ON x.submission_id = s.id "
        f"WHERE s.repository_id = reach.id AND x.state = %s) GROUP BY reach.root"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*ids, RunState.FINISHED])
        counts = dict(cursor.fetchall())
    return {target: int(counts.get(target, 0)) for target in ids}


def count_descendants(repo_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) - 1 FROM ({descendants_sql(1)}) d", [repo_id])
        (count,) = cursor.fetchone()
    return int(count)


@dataclass
class Neighbourhood:
    focus: Repository
    # id -> signed generation: negative above the focus, positive below, 0 for the focus.
    depth: dict[int, int]
    edges: list[tuple[int, int, str]]
    nodes: dict[int, Repository]
    submitted: set[int]
    # Nodes found at the edge of the walk but not taken because of max_nodes.
    left_out: int


def neighbourhood(
    focus: Repository, depth: int | None = None, max_nodes: int | None = None
) -> Neighbourhood:
    """Ancestors and descendants of `focus` up to `depth` generations each way (None: all),
    one batched query per generation; at most `max_nodes` nodes (closest generations first)."""
    seen: dict[int, int] = {focus.pk: 0}
    edges: dict[tuple[int, int], str] = {}
    left_out: set[int] = set()
    for sign, near, far in ((-1, "child_id", "parent_id"), (1, "parent_id", "child_id")):
        frontier = [focus.pk]
        generation = 0
        while frontier and (depth is None or generation < depth):
            generation += 1
            found: list[int] = []
            for batch in chunks(frontier):
                rows = LineageEdge.objects.filter(**{f"{near}__in": batch}).values_list(
                    near, far, "relation"
                )
                for near_id, far_id, relation in rows.order_by(far):
                    if far_id not in seen:
                        if max_nodes is not None and len(seen) >= max_nodes:
                            left_out.add(far_id)
                            continue
                        seen[far_id] = sign * generation
                        found.append(far_id)
                    child, parent = (near_id, far_id) if sign < 0 else (far_id, near_id)
                    edges[(child, parent)] = relation
            frontier = found
    nodes: dict[int, Repository] = {}
    submitted: set[int] = set()
    for batch in chunks(sorted(seen)):
        nodes.update(Repository.objects.in_bulk(batch))
        submitted.update(
            Submission.objects.filter(repository_id__in=batch).values_list(
                "repository_id", flat=True
            )
        )
    edge_list = [
        (child, parent, relation)
        for (child, parent), relation in sorted(edges.items())
        if child in seen and parent in seen
    ]
    return Neighbourhood(focus, seen, edge_list, nodes, submitted, len(left_out))
