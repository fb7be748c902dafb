"""The incident Trellis exists for, replayed through the flow: a contaminated root, its DPO
fine-tune, a SLERP merge with another model, merges of merges several levels deep, and elsewhere
a fine-tune on a contaminated dataset. Plus the status a newly recorded lineage derives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from leaderboard import flow
from leaderboard.catalog.cards import declared_datasets, declared_parents, parse_card
from leaderboard.catalog.lineage import read_cards, record_declared, upsert_repository
from leaderboard.catalog.models import Repository
from leaderboard.catalog.sources import get_source
from leaderboard.integrity import derived, reports
from leaderboard.integrity.models import AuditEntry
from tests.builders import default_card, make_dataset_repo, make_model_repo
from tests.factories import DatasetFactory, EdgeFactory, RepositoryFactory

pytestmark = pytest.mark.django_db

CONFIRMED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REPORTED = datetime(2024, 4, 20, 9, 0, tzinfo=UTC)


def frozen(monkeypatch, when: datetime) -> None:
    monkeypatch.setattr(timezone, "now", lambda: when)


@pytest.fixture
def incident():
    """The graph, built in the order a real catalog grows, then derived from scratch."""
    m = {
        name: RepositoryFactory(repo_id=name)
        for name in (
            "org/flagged-root",
            "org/root-dpo",
            "other/base",
            "other/chat",
            "org/slerp-merge",
            "merger/merge-2",
            "merger/merge-3",
            "deep/merge-4",
            "deep/merge-4-sft",
            "elsewhere/sft",
            "elsewhere/sft-merge",
            "clean/finetune",
        )
    }
    m["leaked"] = DatasetFactory(repo_id="data-org/leaked-test")
    m["ultrachat"] = DatasetFactory(repo_id="data-org/ultrachat")
    for child, parent, relation in [
        ("org/root-dpo", "org/flagged-root", "fine-tune"),
        ("org/root-dpo", "ultrachat", "trained-on"),
        ("other/chat", "other/base", "fine-tune"),
        ("org/slerp-merge", "org/root-dpo", "merge"),
        ("org/slerp-merge", "other/base", "merge"),
        ("merger/merge-2", "org/slerp-merge", "merge"),
        ("merger/merge-2", "other/chat", "merge"),
        # A diamond: merge-3 merges merge-2 and, again, the SLERP merge below it.
        ("merger/merge-3", "merger/merge-2", "merge"),
        ("merger/merge-3", "org/slerp-merge", "merge"),
        ("deep/merge-4", "merger/merge-3", "merge"),
        ("deep/merge-4", "other/chat", "merge"),
        ("deep/merge-4-sft", "deep/merge-4", "fine-tune"),
        ("elsewhere/sft", "other/base", "fine-tune"),
        ("elsewhere/sft", "leaked", "trained-on"),
        ("elsewhere/sft-merge", "elsewhere/sft", "merge"),
        ("elsewhere/sft-merge", "other/chat", "merge"),
        ("clean/finetune", "other/base", "fine-tune"),
    ]:
        EdgeFactory(child=m[child], parent=m[parent], relation=relation)
    derived.recompute_all()
    return m


def status_map() -> dict[str, str]:
    return {
        (repo_id if kind == "model" else f"dataset:{repo_id}"): status
        for repo_id, kind, status in Repository.objects.values_list("repo_id", "kind", "status")
    }


def text(repo_id: str, kind: str = "model") -> str:
    return reports.taint_path_text(Repository.objects.get(repo_id=repo_id, kind=kind))


def file_and_confirm(monkeypatch, target, reporter, maintainer, kind="contamination"):
    frozen(monkeypatch, REPORTED)
    filed = flow.file_report(
        reporter=reporter,
        target=target,
        kind=kind,
        evidence="Exact GSM8K test answers are memorised; see the n-gram overlap report.",
        links=["https://example.org/overlap-report"],
    )
    frozen(monkeypatch, CONFIRMED)
    return flow.resolve(filed.report.pk, "confirm", "Overlap reproduced.", maintainer)


ALL_CLEAN = {
    "org/flagged-root": "clean",
    "org/root-dpo": "clean",
    "other/base": "clean",
    "other/chat": "clean",
    "org/slerp-merge": "clean",
    "merger/merge-2": "clean",
    "merger/merge-3": "clean",
    "deep/merge-4": "clean",
    "deep/merge-4-sft": "clean",
    "elsewhere/sft": "clean",
    "elsewhere/sft-merge": "clean",
    "clean/finetune": "clean",
    "dataset:data-org/leaked-test": "clean",
    "dataset:data-org/ultrachat": "clean",
}
ROOT_DESCENDANTS = {
    "org/root-dpo",
    "org/slerp-merge",
    "merger/merge-2",
    "merger/merge-3",
    "deep/merge-4",
    "deep/merge-4-sft",
}


def test_confirming_the_root_flag_taints_exactly_its_descendants(
    incident, monkeypatch, submitter, maintainer
):
    assert status_map() == ALL_CLEAN
    report = file_and_confirm(monkeypatch, incident["org/flagged-root"], submitter, maintainer)

    expected = dict(ALL_CLEAN)
    expected["org/flagged-root"] = "flagged"
    expected.update({name: "tainted" for name in ROOT_DESCENDANTS})
    assert status_map() == expected
    stamp = "(contamination, confirmed 2024-05-01)"
    assert text("org/flagged-root") == f"org/flagged-root {stamp}"
    assert text("org/root-dpo") == f"org/root-dpo ← org/flagged-root {stamp}"
    assert text("org/slerp-merge") == f"org/slerp-merge ← org/root-dpo ← org/flagged-root {stamp}"
    assert text("merger/merge-2") == (
        f"merger/merge-2 ← org/slerp-merge ← org/root-dpo ← org/flagged-root {stamp}"
    )
    # Through the diamond, the shorter way (straight to the SLERP merge) explains.
    assert text("merger/merge-3") == (
        f"merger/merge-3 ← org/slerp-merge ← org/root-dpo ← org/flagged-root {stamp}"
    )
    assert text("deep/merge-4-sft") == (
        "deep/merge-4-sft ← deep/merge-4 ← merger/merge-3 ← org/slerp-merge ← org/root-dpo "
        f"← org/flagged-root {stamp}"
    )
    assert Repository.objects.get(repo_id="org/root-dpo").status_path[-1]["reason"] == {
        "type": "flag",
        "report": report.pk,
        "kind": "contamination",
        "confirmed_at": "2024-05-01",
    }
    call_command("recompute_lineage_status", "--check")


def test_lifting_the_flag_restores_every_descendant(incident, monkeypatch, submitter, maintainer):
    report = file_and_confirm(monkeypatch, incident["org/flagged-root"], submitter, maintainer)
    flow.resolve(report.pk, "lift", "The overlap came from a shared public source.", maintainer)
    assert status_map() == ALL_CLEAN
    assert Repository.objects.get(repo_id="deep/merge-4-sft").status_path == []
    assert list(
        AuditEntry.objects.filter(report=report).order_by("id").values_list("action", "note")
    ) == [
        ("filed", ""),
        ("confirmed", "Overlap reproduced."),
        ("lifted", "The overlap came from a shared public source."),
    ]


def test_an_open_report_puts_descendants_under_review_and_dismissing_restores_them(
    incident, monkeypatch, submitter, maintainer
):
    frozen(monkeypatch, REPORTED)
    filed = flow.file_report(
        reporter=submitter,
        target=incident["other/base"],
        kind="license",
        evidence="The base model's weights are under a non-commercial license.",
    )
    under_review = {
        "other/base",
        "other/chat",
        "org/slerp-merge",
        "merger/merge-2",
        "merger/merge-3",
        "deep/merge-4",
        "deep/merge-4-sft",
        "elsewhere/sft",
        "elsewhere/sft-merge",
        "clean/finetune",
    }
    expected = dict(ALL_CLEAN)
    expected.update({name: "under-review" for name in under_review})
    assert status_map() == expected
    assert (
        text("clean/finetune")
        == "clean/finetune ← other/base (license report open since 2024-04-20)"
    )

    flow.resolve(filed.report.pk, "dismiss", "The license is Apache-2.0.", maintainer)
    assert status_map() == ALL_CLEAN
    call_command("recompute_lineage_status", "--check")


def test_a_flag_outranks_an_open_report_on_shared_descendants(
    incident, monkeypatch, submitter, other_submitter, maintainer
):
    file_and_confirm(monkeypatch, incident["org/flagged-root"], submitter, maintainer)
    flow.file_report(
        reporter=other_submitter,
        target=incident["other/base"],
        kind="license",
        evidence="Non-commercial weights.",
    )
    current = status_map()
    assert current["org/slerp-merge"] == "tainted"  # both apply: flagged > under review
    assert current["clean/finetune"] == "under-review"
    assert current["other/base"] == "under-review"
    call_command("recompute_lineage_status", "--check")


def test_a_dataset_flag_taints_models_declaring_it_and_their_descendants(
    incident, monkeypatch, submitter, maintainer
):
    file_and_confirm(monkeypatch, incident["leaked"], submitter, maintainer)
    expected = dict(ALL_CLEAN)
    expected["dataset:data-org/leaked-test"] = "flagged"
    expected["elsewhere/sft"] = "tainted"
    expected["elsewhere/sft-merge"] = "tainted"
    assert status_map() == expected
    stamp = "(contamination, confirmed 2024-05-01)"
    assert text("elsewhere/sft") == f"elsewhere/sft ← trained on data-org/leaked-test {stamp}"
    assert text("elsewhere/sft-merge") == (
        f"elsewhere/sft-merge ← elsewhere/sft ← trained on data-org/leaked-test {stamp}"
    )
    assert text("data-org/leaked-test", "dataset") == f"data-org/leaked-test {stamp}"


def test_two_flags_each_descendant_explained_by_the_nearest(
    incident, monkeypatch, submitter, maintainer
):
    file_and_confirm(monkeypatch, incident["org/flagged-root"], submitter, maintainer)
    file_and_confirm(monkeypatch, incident["merger/merge-3"], submitter, maintainer, "lineage")
    assert status_map()["merger/merge-3"] == "flagged"
    assert text("deep/merge-4-sft") == (
        "deep/merge-4-sft ← deep/merge-4 ← merger/merge-3 (lineage, confirmed 2024-05-01)"
    )
    assert text("merger/merge-2").endswith(
        "← org/flagged-root (contamination, confirmed 2024-05-01)"
    )
    call_command("recompute_lineage_status", "--check")


def test_unresolved_ancestor_makes_descendants_incomplete(incident):
    base = incident["other/base"]
    Repository.objects.filter(pk=base.pk).update(
        lineage_resolved=False, resolution_note="no model card (README.md) on the hub source"
    )
    derived.recompute([base.pk])
    current = status_map()
    assert current["other/base"] == "incomplete"
    assert current["clean/finetune"] == "incomplete"
    assert current["org/flagged-root"] == "clean"
    assert text("clean/finetune") == (
        "clean/finetune ← other/base (lineage unresolved: no model card (README.md) on the hub "
        "source)"
    )


def test_recorded_lineage_derives_status_of_new_descendants(
    model_root, monkeypatch, submitter, maintainer
):
    """A new model declaring a flagged base is tainted the moment its lineage is recorded."""
    make_model_repo(model_root, "org/flagged-root", card=default_card("org/flagged-root"))
    make_dataset_repo(model_root, "data-org/ultrachat")
    make_model_repo(
        model_root,
        "org/root-dpo",
        card=default_card(
            "org/root-dpo", base_model="org/flagged-root", datasets=["data-org/ultrachat"]
        ),
    )
    make_model_repo(
        model_root,
        "fresh/child",
        card=default_card("fresh/child", base_model=["org/root-dpo", "ghost/missing"]),
    )
    root = upsert_repository("org/flagged-root", "model")
    Repository.objects.filter(pk=root.pk).update(lineage_resolved=True)
    file_and_confirm(monkeypatch, root, submitter, maintainer)

    source = get_source()
    snapshot = source.snapshot("fresh/child")
    metadata = parse_card(snapshot.card_text or "").metadata
    child = upsert_repository("fresh/child", "model", snapshot=snapshot, metadata=metadata)
    # The two steps of a submission: declared parents from cards read before the transaction,
    # then (after commit) the ancestors above them; each hands its nodes on to the recompute.
    parents, datasets = declared_parents(metadata), declared_datasets(metadata)
    cards = {("model", r): c for r, c in read_cards(source, parents, "model").items()}
    cards |= {("dataset", r): c for r, c in read_cards(source, datasets, "dataset").items()}
    recorded = record_declared(
        child,
        parents=parents,
        relation="merge",
        declared_in="card",
        datasets=datasets,
        cards=cards,
        max_depth=12,
    )
    derived.recompute(recorded.touched)
    flow.resolve_ancestors(child.pk)
    current = status_map()
    assert current["fresh/child"] == "tainted"
    assert current["org/root-dpo"] == "tainted"
    assert current["ghost/missing"] == "incomplete"
    assert text("fresh/child") == (
        "fresh/child ← org/root-dpo ← org/flagged-root (contamination, confirmed 2024-05-01)"
    )
    call_command("recompute_lineage_status", "--check")
