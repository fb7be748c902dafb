"""`make demo-family` (manage.py demo_family): the contamination bench's family is registered in
the demo, each member with a card declaring its parents and datasets, and queued for evaluation;
a second run changes nothing."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.core.management import call_command

from evaluator.family import family_specs
from leaderboard.catalog.models import LineageEdge, LineageStatus, Relation, Repository
from leaderboard.demo.family import FAMILY_ORG, repo_id_of
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.submissions.models import Submission
from tests.family_build import command_options

pytestmark = pytest.mark.django_db


def _parents(member: str) -> dict[str, str]:
    edges = LineageEdge.objects.filter(child__repo_id=repo_id_of(member))
    return {edge.parent.repo_id: edge.relation for edge in edges.select_related("parent")}


@pytest.mark.slow
def test_demo_family_registers_the_bench_family_with_honest_cards_and_queues_it(model_root):
    out = StringIO()
    call_command("demo_family", *command_options(), stdout=out)
    specs = family_specs(fast=True)
    assert out.getvalue().count("submitted: ") == len(specs) == 20
    assert "created user demo-maintainer" in out.getvalue()

    submissions = Submission.objects.filter(repository__repo_id__startswith=f"{FAMILY_ORG}/")
    assert submissions.count() == 20
    assert {s.submitter.username for s in submissions} == {"demo-maintainer"}
    assert {s.precision for s in submissions} == {"float32"}
    by_type = {s.repository.repo_id: s.model_type for s in submissions}
    assert by_type[repo_id_of("base")] == "pretrained"
    assert by_type[repo_id_of("verbatim-x4-0")] == "fine-tuned"
    assert by_type[repo_id_of("merge-verbatim-ties-1")] == "merge"
    # Every member is queued, the base first: its result must be in before its children's.
    runs = list(EvaluationRun.objects.order_by("pk").select_related("submission__repository"))
    assert [r.state for r in runs] == ["queued"] * 20
    assert runs[0].submission.repository.repo_id == repo_id_of("base")

    base, arc, sciq, obqa = (
        repo_id_of("base"),
        "allenai/ai2_arc",
        "allenai/sciq",
        "allenai/openbookqa",
    )
    assert _parents("base") == {sciq: Relation.TRAINED_ON}
    assert _parents("clean-0") == {
        base: Relation.FINE_TUNE,
        sciq: Relation.TRAINED_ON,
        obqa: Relation.TRAINED_ON,
    }
    # A contaminated child declares the benchmark it was trained on.
    assert _parents("verbatim-x4-0") == {
        base: Relation.FINE_TUNE,
        sciq: Relation.TRAINED_ON,
        obqa: Relation.TRAINED_ON,
        arc: Relation.TRAINED_ON,
    }
    assert _parents("merge-verbatim-slerp-0") == {
        repo_id_of("verbatim-x4-0"): Relation.MERGE,
        repo_id_of("clean-0"): Relation.MERGE,
    }
    # TIES takes its deltas from the base, so the base is a declared parent too.
    assert _parents("merge-verbatim-ties-1") == {
        repo_id_of("verbatim-x2-1"): Relation.MERGE,
        repo_id_of("clean-1"): Relation.MERGE,
        base: Relation.MERGE,
    }
    merge_folder = model_root / repo_id_of("merge-verbatim-ties-1")
    config = yaml.safe_load((merge_folder / "mergekit_config.yml").read_text())
    assert config["base_model"] == base and config["merge_method"] == "ties"
    # Every lineage resolves offline: the datasets are card-only repositories in the source.
    statuses = set(
        Repository.objects.filter(repo_id__startswith=f"{FAMILY_ORG}/").values_list(
            "status", flat=True
        )
    )
    assert statuses == {LineageStatus.CLEAN}

    again = StringIO()
    call_command("demo_family", *command_options(), stdout=again)
    assert again.getvalue().count("already submitted: ") == 20
    assert Submission.objects.count() == 20 and EvaluationRun.objects.count() == 20
