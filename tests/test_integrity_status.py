"""Derived lineage status: the pure derivation (precedence, shortest paths, diamonds, cycles),
its incremental form checked against a full recompute on random graphs, and the database
recompute (exact affected set, few queries, the management command)."""

from __future__ import annotations

import itertools
import json
from collections import deque
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from leaderboard.catalog.models import Repository
from leaderboard.integrity import derived, reports
from leaderboard.integrity.models import Report, ReportStatus
from leaderboard.integrity.status import (
    CLEAN,
    FLAG,
    INCOMPLETE,
    LEVEL_OF_STATUS,
    REVIEW,
    Node,
    Stored,
    derive,
    path_text,
)
from tests.factories import DatasetFactory, EdgeFactory, RepositoryFactory

FLAG_REASON = {"type": "flag", "report": 1, "kind": "contamination", "confirmed_at": "2024-05-01"}
REVIEW_REASON = {"type": "open-report", "report": 2, "kind": "license", "reported_at": "2024-04-02"}
UNRESOLVED = {"type": "unresolved", "note": "not found on the hub source"}
REASONS = {FLAG: FLAG_REASON, REVIEW: REVIEW_REASON, INCOMPLETE: UNRESOLVED, CLEAN: None}


def node(node_id: int, level: int = CLEAN, kind: str = "model") -> Node:
    return Node(node_id, kind, f"org/m{node_id}", level, REASONS[level])


def graph(levels: dict[int, int], edges: list[tuple[int, int, str]]):
    nodes = {n: node(n, lvl) for n, lvl in levels.items()}
    parents: dict[int, list[tuple[int, str]]] = {}
    for child, parent, relation in edges:
        parents.setdefault(child, []).append((parent, relation))
    return nodes, parents


# --- the pure derivation ------------------------------------------------------------------------


def test_flag_taints_every_descendant_with_the_shortest_path_through_a_diamond():
    # 1 flagged; 2 and 3 derive from 1; 4 merges 2 and 3; 5 fine-tunes 4; 6 unrelated.
    nodes, parents = graph(
        {1: FLAG, 2: CLEAN, 3: CLEAN, 4: CLEAN, 5: CLEAN, 6: CLEAN},
        [
            (2, 1, "fine-tune"),
            (3, 1, "fine-tune"),
            (4, 3, "merge"),
            (4, 2, "merge"),
            (5, 4, "fine-tune"),
        ],
    )
    result = derive(nodes, parents)
    assert {n: s for n, (s, _) in result.items()} == {
        1: "flagged",
        2: "tainted",
        3: "tainted",
        4: "tainted",
        5: "tainted",
        6: "clean",
    }
    # Two equally short ways up from 4: the smaller parent id (2) is taken, every time.
    assert path_text(result[5][1]) == (
        "org/m5 ← org/m4 ← org/m2 ← org/m1 (contamination, confirmed 2024-05-01)"
    )
    assert result[5][1] == [
        {"id": 5, "repo_id": "org/m5", "kind": "model", "relation": "fine-tune"},
        {"id": 4, "repo_id": "org/m4", "kind": "model", "relation": "merge"},
        {"id": 2, "repo_id": "org/m2", "kind": "model", "relation": "fine-tune"},
        {"id": 1, "repo_id": "org/m1", "kind": "model", "reason": FLAG_REASON},
    ]
    assert result[1][1] == [{"id": 1, "repo_id": "org/m1", "kind": "model", "reason": FLAG_REASON}]
    assert result[6] == ("clean", [])


def test_shortest_path_wins_over_a_longer_one_to_the_same_flag():
    # 5 merges 4 (three steps from the flag) and 2 (one step from it).
    nodes, parents = graph(
        {1: FLAG, 2: CLEAN, 3: CLEAN, 4: CLEAN, 5: CLEAN},
        [
            (2, 1, "fine-tune"),
            (3, 2, "fine-tune"),
            (4, 3, "fine-tune"),
            (5, 4, "merge"),
            (5, 2, "merge"),
        ],
    )
    assert path_text(derive(nodes, parents)[5][1]) == (
        "org/m5 ← org/m2 ← org/m1 (contamination, confirmed 2024-05-01)"
    )


def test_precedence_flagged_tainted_review_incomplete_clean():
    # 1 flagged root; 2 has an open report and a flagged parent: tainted beats under review.
    # 3 is unresolved with an open-report parent: under review beats incomplete.
    # 4 has its own open report and an unresolved parent: under review (itself explains).
    nodes, parents = graph(
        {1: FLAG, 2: REVIEW, 3: INCOMPLETE, 10: REVIEW, 4: REVIEW, 11: INCOMPLETE, 12: CLEAN},
        [(2, 1, "fine-tune"), (3, 10, "fine-tune"), (4, 11, "fine-tune"), (12, 11, "merge")],
    )
    result = derive(nodes, parents)
    assert {n: s for n, (s, _) in result.items()} == {
        1: "flagged",
        2: "tainted",
        3: "under-review",
        10: "under-review",
        4: "under-review",
        11: "incomplete",
        12: "incomplete",
    }
    assert path_text(result[3][1]) == "org/m3 ← org/m10 (license report open since 2024-04-02)"
    assert path_text(result[4][1]) == "org/m4 (license report open since 2024-04-02)"
    assert path_text(result[12][1]) == (
        "org/m12 ← org/m11 (lineage unresolved: not found on the hub source)"
    )


def test_a_flagged_dataset_taints_models_that_declare_it_and_their_descendants():
    nodes = {
        1: Node(1, "dataset", "data-org/leaked", FLAG, FLAG_REASON),
        2: node(2),
        3: node(3),
    }
    parents = {2: [(1, "trained-on")], 3: [(2, "fine-tune")]}
    result = derive(nodes, parents)
    assert path_text(result[2][1]) == (
        "org/m2 ← trained on data-org/leaked (contamination, confirmed 2024-05-01)"
    )
    assert path_text(result[3][1]) == (
        "org/m3 ← org/m2 ← trained on data-org/leaked (contamination, confirmed 2024-05-01)"
    )
    assert result[1][0] == "flagged"


def test_cycles_terminate_and_every_member_is_tainted():
    # 2 → 3 → 4 → 2 is a cycle hanging below the flagged 1; 5 is a cycle with no flag.
    nodes, parents = graph(
        {1: FLAG, 2: CLEAN, 3: CLEAN, 4: CLEAN, 5: CLEAN, 6: CLEAN},
        [
            (2, 1, "fine-tune"),
            (3, 2, "merge"),
            (4, 3, "merge"),
            (2, 4, "merge"),
            (5, 6, "merge"),
            (6, 5, "merge"),
        ],
    )
    result = derive(nodes, parents)
    assert [len(result[n][1]) for n in (2, 3, 4)] == [2, 3, 4]
    assert {result[n][0] for n in (2, 3, 4)} == {"tainted"}
    assert result[5] == ("clean", []) and result[6] == ("clean", [])


def test_boundary_parents_seed_the_incremental_derivation():
    # Only node 3 is recomputed; its parent 2 (outside) is stored as tainted two steps deep.
    stored_path = [
        {"id": 2, "repo_id": "org/m2", "kind": "model", "relation": "fine-tune"},
        {"id": 1, "repo_id": "org/m1", "kind": "model", "reason": FLAG_REASON},
    ]
    nodes = {3: node(3)}
    result = derive(nodes, {3: [(2, "merge")]}, {2: Stored("tainted", stored_path)})
    assert result[3] == (
        "tainted",
        [{"id": 3, "repo_id": "org/m3", "kind": "model", "relation": "merge"}, *stored_path],
    )


# --- incremental == full, on random graphs ------------------------------------------------------


@st.composite
def random_graphs(draw):
    size = draw(st.integers(min_value=1, max_value=18))
    levels = draw(
        st.lists(
            st.sampled_from([CLEAN, CLEAN, CLEAN, FLAG, REVIEW, INCOMPLETE]),
            min_size=size,
            max_size=size,
        )
    )
    pairs = draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, size - 1)), max_size=size * 3)
    )
    # Mostly a DAG (parent id < child id), with a few back edges making cycles.
    allow_cycles = draw(st.booleans())
    edges = {(c, p) for c, p in pairs if c != p and (allow_cycles or p < c)}
    changed = draw(st.integers(0, size - 1))
    new_level = draw(st.sampled_from([CLEAN, FLAG, REVIEW, INCOMPLETE]))
    return levels, sorted(edges), changed, new_level


def _descendants(start: int, edges: list[tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for c, p in edges:
        children.setdefault(p, []).append(c)
    seen, queue = {start}, deque([start])
    while queue:
        for c in children.get(queue.popleft(), []):
            if c not in seen:
                seen.add(c)
                queue.append(c)
    return seen


def _naive_level_and_distance(node_id, levels, edges):
    """Per node, BFS upward: the highest level among itself and its ancestors, and the distance
    to the nearest node carrying it."""
    parents: dict[int, list[int]] = {}
    for c, p in edges:
        parents.setdefault(c, []).append(p)
    dist = {node_id: 0}
    queue = deque([node_id])
    while queue:
        current = queue.popleft()
        for p in parents.get(current, []):
            if p not in dist:
                dist[p] = dist[current] + 1
                queue.append(p)
    best = max(levels[n] for n in dist)
    return best, (min(d for n, d in dist.items() if levels[n] == best) if best else None)


@settings(max_examples=300, deadline=None)
@given(random_graphs())
def test_incremental_recompute_equals_full_recompute(case):
    levels, edges, changed, new_level = case
    nodes = {n: node(n, lvl) for n, lvl in enumerate(levels)}
    parents: dict[int, list[tuple[int, str]]] = {}
    for c, p in edges:
        parents.setdefault(c, []).append((p, "merge"))
    before = derive(nodes, parents)

    nodes[changed] = node(changed, new_level)
    full = derive(nodes, parents)
    affected = _descendants(changed, edges)
    boundary = {n: Stored(*before[n]) for n in nodes if n not in affected}
    texts: dict[int, str] = {}
    incremental = derive(
        {n: nodes[n] for n in affected},
        {n: parents.get(n, []) for n in affected},
        boundary,
        json_out=texts,
    )
    assert incremental == {n: full[n] for n in affected}
    # The incrementally built JSON is exactly what json.dumps writes (SQLite compares text).
    assert texts == {n: json.dumps(path) for n, (_, path) in incremental.items()}
    assert {n: full[n] for n in nodes if n not in affected} == {
        n: before[n] for n in nodes if n not in affected
    }

    # And the full derivation agrees with a naive per-node search.
    new_levels = [nodes[n].own_level for n in range(len(levels))]
    for n, (status, path) in full.items():
        level, distance = _naive_level_and_distance(n, new_levels, edges)
        assert LEVEL_OF_STATUS[status] == level
        assert (len(path) - 1 if path else None) == distance
        for step, following in itertools.pairwise(path):
            assert (step["id"], following["id"]) in set(edges)


# --- the database recompute ---------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db


def confirm(
    target: Repository, kind: str = "contamination", when: datetime | None = None
) -> Report:
    when = when or timezone.now()
    return Report.objects.create(
        target=target,
        kind=kind,
        evidence="seen in the test split",
        status=ReportStatus.CONFIRMED,
        confirmed_at=when,
    )


def statuses(*repos: Repository) -> list[str]:
    return [Repository.objects.get(pk=r.pk).status for r in repos]


@pytestmark_db
def test_recompute_touches_exactly_the_target_and_its_descendants():
    root = RepositoryFactory(repo_id="org/root")
    child = RepositoryFactory(repo_id="org/child")
    grandchild = RepositoryFactory(repo_id="org/grandchild")
    bystander = RepositoryFactory(repo_id="else/bystander")
    sibling_root = RepositoryFactory(repo_id="else/other-root")
    EdgeFactory(child=child, parent=root)
    EdgeFactory(child=grandchild, parent=child, relation="merge")
    EdgeFactory(child=grandchild, parent=sibling_root, relation="merge")
    EdgeFactory(child=bystander, parent=sibling_root)
    derived.recompute_all()
    stamps = dict(Repository.objects.values_list("pk", "status_updated_at"))

    confirm(root, when=datetime(2024, 5, 1, tzinfo=UTC))
    result = derived.recompute([root.pk])
    assert (result.computed, result.written) == (3, 3)
    after = dict(Repository.objects.values_list("pk", "status_updated_at"))
    assert {pk for pk in after if after[pk] != stamps[pk]} == {root.pk, child.pk, grandchild.pk}
    assert statuses(root, child, grandchild, bystander, sibling_root) == [
        "flagged",
        "tainted",
        "tainted",
        "clean",
        "clean",
    ]
    assert reports.taint_path_text(Repository.objects.get(pk=grandchild.pk)) == (
        "org/grandchild ← org/child ← org/root (contamination, confirmed 2024-05-01)"
    )


def _flag_fan(width: int) -> tuple[Repository, int]:
    """A root with `width` children, each merged with the next, all below one root."""
    root = RepositoryFactory(repo_id=f"fan{width}/root")
    children = [RepositoryFactory(repo_id=f"fan{width}/child-{i}") for i in range(width)]
    for i, child in enumerate(children):
        EdgeFactory(child=child, parent=root)
        if i:
            EdgeFactory(child=child, parent=children[i - 1], relation="merge")
    derived.recompute_all()
    confirm(root)
    with CaptureQueriesContext(connection) as captured:
        result = derived.recompute([root.pk])
    assert result.written == width + 1
    return root, len(captured)


@pytestmark_db
def test_recompute_query_count_does_not_grow_with_the_graph():
    _, small = _flag_fan(2)
    _, large = _flag_fan(150)
    assert small == large


@pytestmark_db
def test_recompute_of_an_unchanged_seed_writes_nothing():
    root = RepositoryFactory(repo_id="org/root")
    child = RepositoryFactory(repo_id="org/child")
    EdgeFactory(child=child, parent=root)
    derived.recompute_all()
    assert derived.recompute([root.pk]).written == 0


@pytestmark_db
def test_parents_never_derived_are_derived_before_their_children():
    # A parent created after the last recompute (status_updated_at null) whose lineage is
    # unresolved: the child's recompute must not trust its default "clean".
    child = RepositoryFactory(repo_id="org/child")
    derived.recompute_all()
    parent = RepositoryFactory(
        repo_id="ext/unknown", lineage_resolved=False, resolution_note="not found on the hub"
    )
    EdgeFactory(child=child, parent=parent)
    derived.recompute([child.pk])
    assert statuses(parent, child) == ["incomplete", "incomplete"]
    assert reports.taint_path_text(Repository.objects.get(pk=child.pk)) == (
        "org/child ← ext/unknown (lineage unresolved: not found on the hub)"
    )


@pytestmark_db
def test_cycle_in_the_stored_graph_terminates():
    a, b, c = (RepositoryFactory(repo_id=f"org/{n}") for n in "abc")
    EdgeFactory(child=b, parent=a, relation="merge")
    EdgeFactory(child=c, parent=b, relation="merge")
    EdgeFactory(child=a, parent=c, relation="merge")
    confirm(b, when=datetime(2024, 5, 1, tzinfo=UTC))
    derived.recompute([b.pk])
    assert statuses(a, b, c) == ["tainted", "flagged", "tainted"]
    assert reports.taint_path_text(Repository.objects.get(pk=a.pk)) == (
        "org/a ← org/c ← org/b (contamination, confirmed 2024-05-01)"
    )


@pytestmark_db
def test_management_command_recomputes_and_checks():
    data = DatasetFactory(repo_id="data-org/leaked")
    model = RepositoryFactory(repo_id="org/model")
    EdgeFactory(child=model, parent=data, relation="trained-on")
    confirm(data)
    with pytest.raises(CommandError, match="2 of 2 stored statuses differ"):
        call_command("recompute_lineage_status", "--check")
    call_command("recompute_lineage_status")
    call_command("recompute_lineage_status", "--check")
    assert statuses(data, model) == ["flagged", "tainted"]
