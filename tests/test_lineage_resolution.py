"""Upward lineage resolution: ancestors read from their own cards into the graph, bounded by the
depth limit, safe against cycles, idempotent; cycle detection for submissions; traversal."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from leaderboard.catalog.cards import declared_datasets, declared_parents, parse_card
from leaderboard.catalog.lineage import (
    ancestors,
    cycle_paths,
    descendants,
    read_cards,
    record_declared,
    resolve_ancestors,
    upsert_repository,
)
from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.catalog.sources import get_source
from leaderboard.catalog.sources.local import LocalSource
from tests.builders import card_text, default_card, make_dataset_repo, make_model_repo
from tests.factories import DatasetFactory, EdgeFactory, RepositoryFactory

pytestmark = pytest.mark.django_db


def model(root: Path, repo_id: str, **card: object) -> None:
    make_model_repo(root, repo_id, card=default_card(repo_id, **card))


def card_only(root: Path, repo_id: str, **card: object) -> None:
    """An ancestor known only by its card (no weights, no config), like many base models."""
    path = root / repo_id
    path.mkdir(parents=True)
    (path / "README.md").write_text(card_text(default_card(repo_id, **card), name=repo_id))


def submit(repo_id: str, *, relation: str = "fine-tune", max_depth: int = 12) -> Repository:
    """What a submission does with its lineage, in its two steps: the node and what it and its
    declared parents and datasets declare, from cards read before the transaction; then, after
    commit, the ancestors above them."""
    source = get_source()
    snapshot = source.snapshot(repo_id)
    metadata = parse_card(snapshot.card_text or "").metadata
    repository = upsert_repository(repo_id, "model", snapshot=snapshot, metadata=metadata)
    record_steps(repository, metadata, relation=relation, max_depth=max_depth)
    return repository


def record_steps(
    repository: Repository, metadata: dict, *, relation: str, max_depth: int, source=None
) -> None:
    source = source or get_source()
    parents, datasets = declared_parents(metadata), declared_datasets(metadata)
    cards = {("model", r): c for r, c in read_cards(source, parents, "model").items()}
    cards |= {("dataset", r): c for r, c in read_cards(source, datasets, "dataset").items()}
    record_declared(
        repository,
        parents=parents,
        relation=relation,
        declared_in="card",
        datasets=datasets,
        cards=cards,
        max_depth=max_depth,
    )
    resolve_ancestors(repository, source=source, max_depth=max_depth)


def edges() -> set[tuple[str, str, str, str]]:
    return {
        (e.child.repo_id, e.parent.repo_id, e.relation, e.declared_in)
        for e in LineageEdge.objects.select_related("child", "parent")
    }


def node(repo_id: str, kind: str = "model") -> Repository:
    return Repository.objects.get(repo_id=repo_id, kind=kind)


def state(repo_id: str, kind: str = "model") -> tuple[bool, str]:
    repository = node(repo_id, kind)
    return repository.lineage_resolved, repository.resolution_note


def test_chain_is_resolved_upward_to_a_pretrained_root(model_root):
    card_only(model_root, "base/pretrained", license="apache-2.0")
    model(model_root, "mid/instruct", base_model="base/pretrained", datasets=["data/sft"])
    make_dataset_repo(model_root, "data/sft")
    model(model_root, "me/chat", base_model="mid/instruct", datasets=["data/prefs"])
    make_dataset_repo(model_root, "data/prefs")

    submit("me/chat")

    assert edges() == {
        ("me/chat", "mid/instruct", "fine-tune", "card"),
        ("me/chat", "data/prefs", "trained-on", "card"),
        ("mid/instruct", "base/pretrained", "fine-tune", "card"),
        ("mid/instruct", "data/sft", "trained-on", "card"),
    }
    assert state("me/chat") == (True, "")
    assert state("mid/instruct") == (True, "")
    assert state("base/pretrained") == (True, "")
    assert state("data/sft", "dataset") == (True, "")
    assert state("data/prefs", "dataset") == (True, "")
    mid = node("mid/instruct")
    assert mid.license == "apache-2.0"
    assert mid.card_data["base_model"] == "base/pretrained"
    assert mid.resolved_revision == LocalSource(model_root).snapshot("mid/instruct").sha
    assert node("data/sft", "dataset").license == "cc-by-4.0"


def test_relation_of_an_ancestor_comes_from_its_own_card(model_root):
    card_only(model_root, "base/a")
    card_only(model_root, "base/b")
    model(model_root, "merger/ab", base_model=["base/a", "base/b"], tags=["mergekit", "merge"])
    model(model_root, "quant/ab", base_model="merger/ab", base_model_relation="quantized")

    submit("quant/ab", relation="quantized")

    assert edges() == {
        ("quant/ab", "merger/ab", "quantized", "card"),
        ("merger/ab", "base/a", "merge", "card"),
        ("merger/ab", "base/b", "merge", "card"),
    }


def test_diamond_reads_the_shared_ancestor_once(fake_hub):
    root = fake_hub.root
    card_only(root, "base/root")
    model(root, "left/ft", base_model="base/root")
    model(root, "right/ft", base_model="base/root")
    model(root, "me/merge", base_model=["left/ft", "right/ft"], tags=["merge"])

    submit("me/merge", relation="merge")

    assert edges() == {
        ("me/merge", "left/ft", "merge", "card"),
        ("me/merge", "right/ft", "merge", "card"),
        ("left/ft", "base/root", "fine-tune", "card"),
        ("right/ft", "base/root", "fine-tune", "card"),
    }
    root_readme_reads = [
        path for method, path, _ in fake_hub.requests if path.startswith("/base/root/resolve/")
    ]
    assert len(root_readme_reads) == 1
    assert root_readme_reads[0].endswith("/README.md")
    assert {r.repo_id for r in Repository.objects.filter(lineage_resolved=True)} == {
        "me/merge",
        "left/ft",
        "right/ft",
        "base/root",
    }


def test_a_resolved_ancestor_is_not_read_again_by_a_later_submission(fake_hub):
    card_only(fake_hub.root, "base/root")
    model(fake_hub.root, "one/ft", base_model="base/root")
    model(fake_hub.root, "two/ft", base_model="base/root")
    submit("one/ft")
    fake_hub.requests.clear()

    submit("two/ft")

    assert [path for _, path, _ in fake_hub.requests if path.startswith("/api/models/base/")] == []
    assert edges() == {
        ("one/ft", "base/root", "fine-tune", "card"),
        ("two/ft", "base/root", "fine-tune", "card"),
    }


def test_gated_ancestor_on_the_hub_is_resolved_from_its_public_card(fake_hub):
    card_only(fake_hub.root, "meta/gated-base")
    fake_hub.guard("meta/gated-base", gated="manual")
    model(fake_hub.root, "me/ft", base_model="meta/gated-base")

    submit("me/ft")

    assert state("meta/gated-base") == (True, "")
    assert edges() == {("me/ft", "meta/gated-base", "fine-tune", "card")}


def test_cycle_between_ancestor_cards_is_cut_and_noted(model_root):
    model(model_root, "loop/y", base_model="loop/z")
    model(model_root, "loop/z", base_model="loop/y")
    model(model_root, "me/x", base_model="loop/y")

    submit("me/x")

    assert edges() == {
        ("me/x", "loop/y", "fine-tune", "card"),
        ("loop/y", "loop/z", "fine-tune", "card"),
    }
    assert state("loop/z") == (
        False,
        "edge to loop/y not added: it would close a lineage cycle",
    )
    assert state("loop/y") == (True, "")


def test_ancestor_declaring_the_submitted_model_does_not_loop(model_root):
    model(model_root, "up/y", base_model="me/x")
    model(model_root, "me/x", base_model="up/y")

    submit("me/x")

    assert edges() == {("me/x", "up/y", "fine-tune", "card")}
    assert state("up/y") == (False, "edge to me/x not added: it would close a lineage cycle")


def test_self_declaring_ancestor_is_noted(model_root):
    model(model_root, "odd/self", base_model="odd/self")
    model(model_root, "me/x", base_model="odd/self")

    submit("me/x")

    assert edges() == {("me/x", "odd/self", "fine-tune", "card")}
    assert state("odd/self") == (
        False,
        "edge to odd/self not added: it would close a lineage cycle",
    )


def test_unreadable_ancestors_stay_unresolved_with_the_reason(model_root):
    make_model_repo(model_root, "nocard/base", card=None)
    make_model_repo(model_root, "broken/base", card="---\nlicense: [apache\n---\n# body\n")
    model(
        model_root,
        "me/x",
        base_model=["ghost/base", "nocard/base", "broken/base", "not-an-id"],
        datasets=["ghost/data"],
    )

    submit("me/x")

    assert state("me/x") == (True, "")
    ghost_resolved, ghost_note = state("ghost/base")
    assert not ghost_resolved
    assert ghost_note.startswith("not found on the local source: model repository 'ghost/base'")
    assert state("nocard/base") == (False, "no model card (README.md) on the local source")
    assert state("broken/base") == (
        False,
        "card front matter is not parseable: while parsing a flow sequence",
    )
    invalid_resolved, invalid_note = state("not-an-id")
    assert not invalid_resolved
    assert invalid_note.startswith("not found on the local source: 'not-an-id' is not a repository")
    data_resolved, data_note = state("ghost/data", "dataset")
    assert not data_resolved
    assert data_note.startswith("not found on the local source: dataset repository 'ghost/data'")
    # The snapshot still pins what was read, even when the card could not be.
    assert (
        node("nocard/base").resolved_revision == LocalSource(model_root).snapshot("nocard/base").sha
    )


def test_source_down_leaves_ancestors_unresolved(fake_hub):
    model(fake_hub.root, "me/x", base_model="up/base")
    card_only(fake_hub.root, "up/base")
    source = get_source()
    snapshot = source.snapshot("me/x")
    repository = upsert_repository("me/x", "model", snapshot=snapshot)
    fake_hub.fail_status = 503

    record_steps(repository, {"base_model": "up/base"}, relation="fine-tune", max_depth=12)

    resolved, note = state("up/base")
    assert not resolved
    assert note.startswith(
        "source unavailable while reading its card: the Hub at http://127.0.0.1:"
    )

    # When the source is back, the next resolution reads it.
    fake_hub.fail_status = None
    record_steps(repository, {"base_model": "up/base"}, relation="fine-tune", max_depth=12)
    assert state("up/base") == (True, "")


def chain(root: Path, length: int) -> list[str]:
    """me/m0 ← anc/m1 ← … ← anc/m{length}: returns the ids, submitted one first."""
    ids = ["me/m0", *(f"anc/m{i}" for i in range(1, length + 1))]
    for child, parent in itertools.pairwise(ids):
        model(root, child, base_model=parent)
    card_only(root, ids[-1])
    return ids


def test_depth_limit_stops_reading_and_notes_the_frontier(model_root):
    ids = chain(model_root, 5)

    submit("me/m0", max_depth=2)

    assert edges() == {
        ("me/m0", "anc/m1", "fine-tune", "card"),
        ("anc/m1", "anc/m2", "fine-tune", "card"),
        ("anc/m2", "anc/m3", "fine-tune", "card"),
    }
    assert state("anc/m1") == (True, "")
    assert state("anc/m2") == (True, "")
    assert state("anc/m3") == (False, "beyond the lineage depth limit (2 levels)")
    assert not Repository.objects.filter(repo_id__in=ids[4:]).exists()


def test_a_shallower_path_later_resolves_what_the_limit_left(model_root):
    chain(model_root, 5)
    submit("me/m0", max_depth=2)

    submit("anc/m2", max_depth=2)

    assert state("anc/m3") == (True, "")
    assert state("anc/m4") == (True, "")
    assert state("anc/m5") == (False, "beyond the lineage depth limit (2 levels)")


def test_a_deeper_path_keeps_the_reason_an_ancestor_could_not_be_read(model_root):
    model(model_root, "mid/b", base_model="ghost/a")
    model(model_root, "me/c", base_model="mid/b")
    submit("mid/b", max_depth=1)
    first_note = state("ghost/a")[1]
    assert first_note.startswith("not found on the local source")

    submit("me/c", max_depth=1)

    assert state("ghost/a") == (False, first_note)


def test_resolution_is_idempotent(model_root):
    card_only(model_root, "base/a")
    model(model_root, "mid/b", base_model="base/a", datasets=["data/d"])
    make_dataset_repo(model_root, "data/d")
    model(model_root, "me/c", base_model="mid/b", datasets=["data/d"])

    submit("me/c")
    first_edges = sorted(LineageEdge.objects.values_list("id", "child_id", "parent_id"))
    first_nodes = sorted(
        Repository.objects.values_list("id", "repo_id", "lineage_resolved", "resolution_note")
    )
    submit("me/c")

    assert sorted(LineageEdge.objects.values_list("id", "child_id", "parent_id")) == first_edges
    assert (
        sorted(
            Repository.objects.values_list("id", "repo_id", "lineage_resolved", "resolution_note")
        )
        == first_nodes
    )
    assert len(first_edges) == 4
    assert len(first_nodes) == 4


def test_dataset_and_model_with_the_same_id_are_distinct_nodes(model_root):
    make_dataset_repo(model_root, "same/name")
    card_only(model_root, "same/name")
    model(model_root, "me/x", base_model="same/name", datasets=["same/name"])

    submit("me/x")

    assert edges() == {
        ("me/x", "same/name", "fine-tune", "card"),
        ("me/x", "same/name", "trained-on", "card"),
    }
    assert Repository.objects.filter(repo_id="same/name").count() == 2


def test_deep_chain_resolves_within_a_query_budget(model_root, django_assert_max_num_queries):
    chain(model_root, 30)
    # Per ancestor: its node, card upsert, edges, cycle check, mark — bounded, not quadratic.
    with django_assert_max_num_queries(30 * 20):
        submit("me/m0", max_depth=40)
    assert Repository.objects.filter(lineage_resolved=True).count() == 31


# --- cycle_paths --------------------------------------------------------------------------------


def test_cycle_paths_self_parent():
    assert cycle_paths("org/a", ["org/a"]) == [["org/a", "org/a"]]


def test_cycle_paths_through_the_existing_graph():
    a = RepositoryFactory(repo_id="org/a")
    b = RepositoryFactory(repo_id="org/b")
    c = RepositoryFactory(repo_id="org/c")
    d = RepositoryFactory(repo_id="org/d")
    EdgeFactory(child=b, parent=a)  # b derives from a
    EdgeFactory(child=c, parent=b)
    EdgeFactory(child=d, parent=a)

    assert cycle_paths("org/a", ["org/b"]) == [["org/a", "org/b", "org/a"]]
    assert cycle_paths("org/a", ["org/c", "org/d", "org/new"]) == [
        ["org/a", "org/c", "org/b", "org/a"],
        ["org/a", "org/d", "org/a"],
    ]
    assert cycle_paths("org/c", ["org/a"]) == []
    assert cycle_paths("org/unknown", ["org/a"]) == []


def test_cycle_paths_ignores_dataset_edges():
    a = RepositoryFactory(repo_id="org/a")
    data = DatasetFactory(repo_id="org/b")
    EdgeFactory(child=a, parent=data, relation="trained-on")
    assert cycle_paths("org/b", ["org/a"]) == []


def test_cycle_paths_shortest_path_is_reported():
    a, b, c, d = (RepositoryFactory(repo_id=f"org/{n}") for n in "abcd")
    EdgeFactory(child=b, parent=a)
    EdgeFactory(child=d, parent=c)
    EdgeFactory(child=c, parent=b)
    EdgeFactory(child=d, parent=a)
    assert cycle_paths("org/a", ["org/d"]) == [["org/a", "org/d", "org/a"]]


# --- ancestors / descendants --------------------------------------------------------------------


def test_ancestors_and_descendants_include_datasets_and_stop_on_cycles():
    root = RepositoryFactory(repo_id="org/root")
    mid = RepositoryFactory(repo_id="org/mid")
    leaf = RepositoryFactory(repo_id="org/leaf")
    other = RepositoryFactory(repo_id="org/other")
    data = DatasetFactory(repo_id="org/data")
    EdgeFactory(child=mid, parent=root)
    EdgeFactory(child=leaf, parent=mid)
    EdgeFactory(child=mid, parent=data, relation="trained-on")
    # A cycle written straight to the table (resolution never adds one) must not hang traversal.
    EdgeFactory(child=root, parent=leaf)

    assert ancestors(other) == set()
    assert descendants(data) == {mid.pk, leaf.pk, root.pk}
    assert ancestors(mid) == {root.pk, leaf.pk, data.pk}


def test_ancestors_and_descendants_of_a_chain():
    a, b, c = (RepositoryFactory(repo_id=f"org/{n}") for n in "abc")
    EdgeFactory(child=b, parent=a)
    EdgeFactory(child=c, parent=b)
    assert ancestors(c) == {a.pk, b.pk}
    assert ancestors(a) == set()
    assert descendants(a) == {b.pk, c.pk}
    assert descendants(c) == set()


def test_upsert_repository_creates_once_and_records_the_card():
    first = upsert_repository("org/x", "model")
    again = upsert_repository("org/x", "model", metadata={"license": "mit", "base_model": "org/y"})
    assert first.pk == again.pk
    assert Repository.objects.count() == 1
    stored = node("org/x")
    assert (stored.license, stored.card_data) == ("mit", {"license": "mit", "base_model": "org/y"})
    assert stored.lineage_resolved is False
