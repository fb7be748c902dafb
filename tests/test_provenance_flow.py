"""Weight provenance in the catalog: fingerprints stored with the repository, signals for what
the weights reveal or contradict, a maintainer's confirmation adding a found edge that flags flow
through, and a copy of a flagged model refused at submission."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.utils import timezone

from leaderboard import flow
from leaderboard.catalog.models import (
    DeclaredIn,
    LineageEdge,
    Relation,
    Repository,
    WeightFingerprint,
)
from leaderboard.integrity.models import AuditEntry, Signal, SignalState
from leaderboard.integrity.provenance import CONTRADICTED_PARENT, REUPLOAD, UNDECLARED_PARENT
from leaderboard.integrity.tasks import check_weights
from leaderboard.problems import Refusal
from tests.builders import default_card, make_model_repo
from tests.factories import edge, flag, repository
from tests.test_fingerprint import write_model
from tests.test_provenance import combine, random_weights, step

pytestmark = pytest.mark.django_db


def publish(model_root: Path, repo_id: str, tensors: dict[str, torch.Tensor], **card) -> Path:
    """A repository that passes the submission checks, holding `tensors` as its weights."""
    folder = make_model_repo(model_root, repo_id, card=default_card(repo_id, **card))
    write_model(folder, tensors)
    return folder


def node(repo_id: str, minutes_ago: int) -> Repository:
    made = repository(repo_id)
    Repository.objects.filter(pk=made.pk).update(
        created_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    made.refresh_from_db()
    return made


@pytest.fixture
def incident(model_root):
    """The seed incident: `bad/contaminated` is flagged; `team/child` fine-tuned it; `team/merge`
    merged `team/child` with the clean `team/tuned` but declares only `team/tuned`."""
    base = random_weights(0)
    contaminated = step(base, 1, 0.4)
    child = step(contaminated, 2, 0.2)
    tuned = step(base, 3, 0.4)
    merged = combine([(0.5, child), (0.5, tuned)])
    models = {
        "org/base": base,
        "bad/contaminated": contaminated,
        "team/tuned": tuned,
        "team/child": child,
        "team/merge": merged,
    }
    nodes = {}
    for age, (repo_id, tensors) in zip(range(50, 0, -10), models.items(), strict=True):
        publish(model_root, repo_id, tensors)
        nodes[repo_id] = node(repo_id, age)
    edge(nodes["bad/contaminated"], nodes["org/base"])
    edge(nodes["team/tuned"], nodes["org/base"])
    edge(nodes["team/child"], nodes["bad/contaminated"])
    edge(nodes["team/merge"], nodes["team/tuned"], Relation.MERGE)
    for repo_id in models:
        check_weights.apply(args=[nodes[repo_id].pk]).get()
    return nodes


def test_every_model_gets_its_fingerprint_read_through_ranges(incident):
    rows = WeightFingerprint.objects.order_by("repository__repo_id")
    assert [row.repository.repo_id for row in rows] == [
        "bad/contaminated",
        "org/base",
        "team/child",
        "team/merge",
        "team/tuned",
    ]
    assert {row.source for row in rows} == {"web"}
    size = (Path(rows[0].data["tensors"][0]["name"]) and 0) or 0
    assert all(0 < row.bytes_read < 64 * 1024 for row in rows), size
    assert rows[0].bands.count() == 48


def test_the_seed_incident_is_found_and_confirming_it_taints_the_merge(incident, maintainer):
    merge, child = incident["team/merge"], incident["team/child"]
    flag(incident["bad/contaminated"], maintainer)
    merge.refresh_from_db()
    assert merge.status == "clean"  # it declares only team/tuned

    signals = list(Signal.objects.filter(target=merge))
    assert [(s.kind, s.evidence["subject"], s.state) for s in signals] == [
        (UNDECLARED_PARENT, "team/child", SignalState.OPEN)
    ]
    signal = signals[0]
    assert signal.evidence["kind"] == "merge_of"
    assert sorted(signal.evidence["parents"]) == ["team/child", "team/tuned"]
    assert signal.evidence["relation"] == "merge"
    assert signal.statistic > 0.99
    # Nothing else raised: the fine-tunes declare their parents and the weights agree.
    assert Signal.objects.count() == 1

    flow.decide_signal(signal.pk, "confirm", "The weights are half team/child.", maintainer)

    found = LineageEdge.objects.get(child=merge, parent=child)
    assert (found.relation, found.declared_in) == (Relation.MERGE, DeclaredIn.WEIGHTS)
    merge.refresh_from_db()
    assert merge.status == "tainted"
    assert [step["repo_id"] for step in merge.status_path] == [
        "team/merge",
        "team/child",
        "bad/contaminated",
    ]
    assert [
        (a.action, a.subject, a.report_id) for a in AuditEntry.objects.filter(target=merge)
    ] == [("confirmed", f"signal #{signal.pk}", None)]
    assert not merge.reports.exists()  # a found edge, not a flag on the merge itself


def test_a_dismissed_signal_adds_no_edge_and_is_not_raised_again(incident, maintainer):
    merge = incident["team/merge"]
    signal = Signal.objects.get(target=merge)
    flow.decide_signal(signal.pk, "dismiss", "A different team/child, same name.", maintainer)
    assert not LineageEdge.objects.filter(child=merge, declared_in=DeclaredIn.WEIGHTS).exists()
    check_weights.apply(args=[merge.pk]).get()
    assert list(Signal.objects.filter(target=merge).values_list("state", flat=True)) == [
        SignalState.DISMISSED
    ]
    with pytest.raises(Refusal) as refused:
        flow.decide_signal(signal.pk, "confirm", "Changed my mind.", maintainer)
    assert refused.value.problems[0].code == "invalid_transition"


def test_only_maintainers_decide_signals(incident, submitter):
    signal = Signal.objects.get(target=incident["team/merge"])
    with pytest.raises(Refusal) as refused:
        flow.decide_signal(signal.pk, "confirm", "I think so.", submitter)
    assert (refused.value.problems[0].code, refused.value.status) == ("not_a_maintainer", 403)


def test_a_declared_parent_the_weights_contradict_is_a_signal(model_root):
    base, stranger = random_weights(0), random_weights(7)
    publish(model_root, "org/base", base)
    publish(model_root, "org/stranger", stranger)
    publish(model_root, "team/liar", step(base, 1, 0.3))
    nodes = {
        r: node(r, age) for r, age in (("org/base", 30), ("org/stranger", 20), ("team/liar", 10))
    }
    edge(nodes["team/liar"], nodes["org/stranger"])  # the card names the wrong parent
    for repo_id in ("org/base", "org/stranger", "team/liar"):
        check_weights.apply(args=[nodes[repo_id].pk]).get()
    found = sorted(
        (s.kind, s.evidence["subject"]) for s in Signal.objects.filter(target=nodes["team/liar"])
    )
    assert found == [
        (CONTRADICTED_PARENT, "org/stranger"),
        (UNDECLARED_PARENT, "org/base"),
    ]
    contradicted = Signal.objects.get(kind=CONTRADICTED_PARENT)
    assert contradicted.statistic > contradicted.threshold == 0.75


def submit_request(repo_id: str):
    from leaderboard.submissions.intake import SubmissionRequest

    return SubmissionRequest(
        repo_id=repo_id, revision="main", precision="bfloat16", model_type="pretrained"
    )


def test_a_copy_of_a_flagged_model_is_refused_at_submission_naming_the_original(
    model_root, submitter, maintainer, django_capture_on_commit_callbacks
):
    weights = random_weights(5)
    publish(model_root, "bad/original", weights)
    with django_capture_on_commit_callbacks(execute=False):
        original = flow.submit(submit_request("bad/original"), submitter)
    assert WeightFingerprint.objects.get(repository=original.repository).source == "web"
    flag(original.repository, maintainer)
    publish(model_root, "acme/copycat", weights, license="mit")
    with pytest.raises(Refusal) as refused:
        flow.submit(submit_request("acme/copycat"), submitter)
    [problem] = refused.value.problems
    assert (problem.code, problem.field) == ("flagged_copy", "repo_id")
    assert "identical, tensor for tensor, to bad/original, which maintainers have flagged" in (
        problem.message
    )
    assert not Repository.objects.filter(repo_id="acme/copycat").exists()


def test_a_copy_of_a_clean_model_is_accepted_and_signalled_as_a_reupload(
    model_root, submitter, django_capture_on_commit_callbacks
):
    weights = random_weights(5)
    publish(model_root, "org/original", weights)
    with django_capture_on_commit_callbacks(execute=False):
        flow.submit(submit_request("org/original"), submitter)
    publish(model_root, "acme/copycat", {k: v.to(torch.bfloat16) for k, v in weights.items()})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        copy = flow.submit(submit_request("acme/copycat"), submitter)
    # The evaluation run's message and the provenance check, both on commit.
    assert len(callbacks) == 2
    check_weights.apply(args=[copy.repository_id]).get()
    signal = Signal.objects.get(target=copy.repository)
    assert (signal.kind, signal.evidence["subject"], signal.state) == (
        REUPLOAD,
        "org/original",
        SignalState.OPEN,
    )
    assert signal.evidence["evidence"]["how"] == "cast"
    assert signal.statistic == 1.0


def test_the_lineage_page_draws_found_edges_dotted(incident, maintainer):
    from leaderboard.integrity.plots import lineage_figure

    signal = Signal.objects.get(target=incident["team/merge"])
    flow.decide_signal(signal.pk, "confirm", "The weights are half team/child.", maintainer)
    figure = lineage_figure(incident["team/merge"], depth=2)
    lines = {t["name"]: t for t in figure["data"] if t.get("mode") == "lines"}
    assert lines["found from weights"]["line"]["dash"] == "dot"
    # One edge (its two ends and the break), from team/child to team/merge.
    assert len(lines["found from weights"]["x"]) == 3
    ends = {
        (x, y): name
        for trace in figure["data"]
        if trace.get("mode", "").startswith("markers")
        for x, y, name in zip(trace["x"], trace["y"], trace["text"], strict=True)
    }
    found = lines["found from weights"]
    assert [ends[(found["x"][i], found["y"][i])] for i in (0, 1)] == ["team/child", "team/merge"]
    assert "dash" not in lines["declared edge"]["line"]


def test_a_worker_fingerprint_arrives_with_the_result_and_is_stored(tmp_path, artifact_root):
    from evaluator.fingerprint import fingerprint_path
    from leaderboard.evaluations.models import RunState
    from tests.factories import RunFactory, quick_payload

    run = RunFactory(
        state=RunState.RUNNING,
        queue="gpu-small",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    weights = fingerprint_path(write_model(tmp_path / "m", random_weights(4)), exact=True)
    payload = quick_payload(run.pk, artifact_root) | {"fingerprint": weights}
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    row = WeightFingerprint.objects.get(repository=run.submission.repository)
    assert (row.source, row.weights_digest, row.data["exact"]) == (
        "worker",
        weights["weights_digest"],
        True,
    )


def test_a_result_with_a_malformed_fingerprint_is_rejected(tmp_path, artifact_root):
    from evaluator.fingerprint import fingerprint_path
    from leaderboard.evaluations.models import RunState
    from tests.factories import RunFactory, quick_payload

    run = RunFactory(
        state=RunState.RUNNING,
        queue="gpu-small",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    weights = fingerprint_path(write_model(tmp_path / "m", random_weights(4)))
    weights["version"] = 99
    payload = quick_payload(run.pk, artifact_root) | {"fingerprint": weights}
    assert flow.ingest_result(run.pk, 1, payload) == "rejected"
    run.refresh_from_db()
    assert run.failure_code == "invalid_result"
    assert "unsupported fingerprint version 99" in run.failure_reason
    assert not WeightFingerprint.objects.exists()


def test_the_queue_shows_provenance_signals_and_confirming_one_adds_the_found_edge(
    incident, maintainer_client
):
    merge = incident["team/merge"]
    signal = Signal.objects.get(target=merge)
    page = maintainer_client.get("/integrity/queue/")
    assert page.status_code == 200
    assert "undeclared parent revealed by the weights" in page.content.decode()
    answer = maintainer_client.post(
        f"/integrity/signals/{signal.pk}/decide/",
        {"decision": "confirm", "note": "Half of it is team/child."},
    )
    assert answer.status_code == 302
    assert LineageEdge.objects.filter(child=merge, declared_in=DeclaredIn.WEIGHTS).count() == 1
    signal.refresh_from_db()
    assert (signal.state, signal.report_id) == (SignalState.CONFIRMED, None)
