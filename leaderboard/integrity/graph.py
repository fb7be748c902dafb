"""Reading and writing the lineage graph for integrity: the recompute subgraph (a change's
node and all its descendants, found by one recursive CTE and loaded in a handful of queries),
the status writer, and the bounded neighbourhood walk behind the lineage page and API."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.integrity.models import Report, ReportStatus
from leaderboard.integrity.status import Node, Path, Stored, own_signal

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
    # Only with with_stored=True: what the database holds for the nodes themselves, and the
    # nodes never derived yet (status_updated_at is null).
    stored: dict[int, Stored] = field(default_factory=dict)
    underived: set[int] = field(default_factory=set)


# Per-connection scratch tables: the recompute set, and the statuses about to be written.
# Temporary tables are private to a session, so concurrent recomputes never see each other's.
SCOPE = "integrity_scope"
INCOMING = "integrity_status_in"


def _temp_tables(cursor: Any) -> None:
    if connection.vendor == "postgresql":
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {SCOPE} (id bigint PRIMARY KEY) ON COMMIT DELETE ROWS"
        )
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} (id bigint PRIMARY KEY, "
            "status varchar(16) NOT NULL, path jsonb NOT NULL) ON COMMIT DELETE ROWS"
        )
    else:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {SCOPE} (id integer PRIMARY KEY)")
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING} (id integer PRIMARY KEY, "
            "status text NOT NULL, path text NOT NULL)"
        )


def _fill_scope(seeds: list[int]) -> None:
    """The seeds and their descendants into SCOPE, found once by the database (one recursive
    CTE) and joined by the queries that load the subgraph."""
    with connection.cursor() as cursor:
        _temp_tables(cursor)
        cursor.execute(f"DELETE FROM {SCOPE}")
        cursor.execute(
            f"INSERT INTO {SCOPE} SELECT id FROM ({descendants_sql(len(seeds))}) found", seeds
        )
        if connection.vendor == "postgresql":
            # A fresh temporary table has no statistics; the joins below need them.
            cursor.execute(f"ANALYZE {SCOPE}")


def load_subgraph(
    seed_ids: Iterable[int] | None, *, descendants: bool = True, with_stored: bool = False
) -> Subgraph:
    """The seeds and all their descendants (only the seeds with descendants=False; the whole
    graph for None), their parent edges, own signals, and the stored status of parents outside
    that set. A boundary parent that was never derived joins the seeds, so the result never
    rests on a default value. Runs inside the caller's transaction (temporary tables)."""
    seeds = None if seed_ids is None else set(seed_ids)
    fields = ["id", "kind", "repo_id", "lineage_resolved", "resolution_note", "lineage_pending"]
    if with_stored:
        fields += ["status", "status_path", "status_updated_at"]
    while True:
        if seeds is None:
            node_rows: Any = Repository.objects.all()
            edge_rows: Any = LineageEdge.objects.all()
            report_rows: Any = Report.objects.all()
        else:
            if descendants:
                _fill_scope(sorted(seeds))
                scope: Any = RawSQL(f"SELECT id FROM {SCOPE}", [])
            else:
                scope = sorted(seeds)  # a handful of seeds: a plain id list
            node_rows = Repository.objects.filter(id__in=scope)
            edge_rows = LineageEdge.objects.filter(child_id__in=scope)
            report_rows = Report.objects.filter(target_id__in=scope)
        rows = list(node_rows.order_by().values_list(*fields))
        edges = list(edge_rows.order_by().values_list("child_id", "parent_id", "relation"))
        node_ids = {row[0] for row in rows}
        outside = {parent_id for _, parent_id, _ in edges} - node_ids
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

    parents: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for child_id, parent_id, relation in edges:
        parents[child_id].append((parent_id, relation))

    confirmed: dict[int, list[tuple[int, str, Any]]] = defaultdict(list)
    open_reports: dict[int, list[tuple[int, str, Any]]] = defaultdict(list)
    for target_id, rid, kind, status, created_at, confirmed_at in (
        report_rows.filter(status__in=(ReportStatus.OPEN, ReportStatus.CONFIRMED))
        .order_by()
        .values_list("target_id", "id", "kind", "status", "created_at", "confirmed_at")
    ):
        if status == ReportStatus.CONFIRMED:
            confirmed[target_id].append((rid, kind, confirmed_at or created_at))
        else:
            open_reports[target_id].append((rid, kind, created_at))

    graph = Subgraph(parents=dict(parents), boundary=boundary)
    for row in rows:
        rid, kind, repo_id, resolved, note, pending = row[:6]
        level, reason = own_signal(
            confirmed=confirmed.get(rid, ()),
            open_reports=open_reports.get(rid, ()),
            lineage_resolved=resolved,
            resolution_note=note,
            lineage_pending=pending,
        )
        graph.nodes[rid] = Node(rid, kind, repo_id, level, reason)
        if with_stored:
            status, path, updated = row[6:]
            graph.stored[rid] = Stored(status, path or [])
            if updated is None:
                graph.underived.add(rid)
    return graph


def write_statuses(
    derived: dict[int, tuple[str, Path]], now: datetime, texts: dict[int, str] | None = None
) -> int:
    """Write derived statuses; the database compares and rewrites only rows whose status or
    path changed (or that were never derived). Returns how many rows were rewritten.

    The values travel through a temporary table (COPY on PostgreSQL) and one UPDATE ... FROM:
    linear in the number of rows, where bulk_update's CASE WHEN is quadratic per batch."""
    if not derived:
        return 0
    texts = texts or {}
    items = [
        (node_id, status, texts.get(node_id) or json.dumps(path))
        for node_id, (status, path) in sorted(derived.items())
    ]
    with connection.cursor() as cursor:
        _temp_tables(cursor)
        cursor.execute(f"DELETE FROM {INCOMING}")
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {INCOMING} (id, status, path) FROM STDIN") as copy:
                for item in items:
                    copy.write_row(item)
        else:
            cursor.executemany(
                f"INSERT INTO {INCOMING} (id, status, path) VALUES (%s, %s, %s)",
                items,
            )
        cursor.execute(
            f"UPDATE {REPO} AS r SET status = t.status, status_path = t.path, "
            f"status_updated_at = %s FROM {INCOMING} AS t WHERE r.id = t.id AND "
            "(r.status <> t.status OR r.status_path <> t.path OR r.status_updated_at IS NULL)",
            [now],
        )
        return cursor.rowcount


def count_below(target_ids: Iterable[int], ranked: QuerySet[Any]) -> dict[int, int]:
    """For each target: how many of it and its descendants are among `ranked` (a query of
    repository ids the caller defines, e.g. the models with a finished evaluation: how many
    ranked models a confirmation would affect). One query for all targets."""
    ids = sorted(set(target_ids))
    if not ids:
        return {}
    marks = ", ".join(["%s"] * len(ids))
    ranked_sql, ranked_params = ranked.query.sql_with_params()
    sql = (
        f"WITH RECURSIVE reach(root, id) AS ("
        f"SELECT id, id FROM {REPO} WHERE id IN ({marks}) "
        f"UNION SELECT r.root, e.child_id FROM reach r JOIN {EDGE} e ON e.parent_id = r.id"
        f") SELECT reach.root, COUNT(DISTINCT reach.id) FROM reach "
        f"WHERE reach.id IN ({ranked_sql}) GROUP BY reach.root"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*ids, *ranked_params])
        counts = dict(cursor.fetchall())
    return {target: int(counts.get(target, 0)) for target in ids}


@dataclass(frozen=True, slots=True)
class NodeView:
    """The fields of a Repository the lineage views read (a full model row carries its card)."""

    pk: int
    kind: str
    repo_id: str
    status: str
    status_path: list[dict[str, Any]]
    lineage_resolved: bool
    resolution_note: str


_VIEW_FIELDS = (
    "pk",
    "kind",
    "repo_id",
    "status",
    "status_path",
    "lineage_resolved",
    "resolution_note",
)


@dataclass
class Neighbourhood:
    focus: Repository
    # id -> signed generation: negative above the focus, positive below, 0 for the focus.
    depth: dict[int, int]
    edges: list[tuple[int, int, str]]
    nodes: dict[int, NodeView]
    submitted: set[int]
    # Nodes found at the edge of the walk but not taken because of max_nodes.
    left_out: int


def neighbourhood(
    focus: Repository,
    depth: int | None = None,
    max_nodes: int | None = None,
    path: list[dict[str, Any]] | None = None,
) -> Neighbourhood:
    """Ancestors and descendants of `focus` up to `depth` generations each way (None: all),
    one batched query per generation; at most `max_nodes` nodes (closest generations first).
    Every step of `path` (the focus's explaining path, upwards) is included whatever the depth
    or the cap: a graph must always show why its focus has its status."""
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
    steps = [step for step in path or [] if "id" in step]
    for index, step in enumerate(steps):
        seen.setdefault(step["id"], -index)
        left_out.discard(step["id"])
        if index + 1 < len(steps):
            edges.setdefault((step["id"], steps[index + 1]["id"]), step.get("relation") or "")
    nodes: dict[int, NodeView] = {}
    submitted: set[int] = set()
    for batch in chunks(sorted(seen)):
        for row in Repository.objects.filter(pk__in=batch).order_by().values_list(*_VIEW_FIELDS):
            nodes[row[0]] = NodeView(*row)
        # A node someone submitted is one the submissions app points at (Repository.submissions).
        submitted.update(
            Repository.objects.filter(pk__in=batch, submissions__isnull=False)
            .values_list("pk", flat=True)
            .distinct()
        )
    edge_list = [
        (child, parent, relation)
        for (child, parent), relation in sorted(edges.items())
        if child in seen and parent in seen
    ]
    return Neighbourhood(focus, seen, edge_list, nodes, submitted, len(left_out))
