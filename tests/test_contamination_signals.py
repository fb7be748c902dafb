"""Contamination signals on the web side: computed after an ingest from the numbers workers sent,
recorded once, shown to maintainers in p-value order, and turned into a flag (carried down the
lineage) only by a maintainer's confirmation."""

from __future__ import annotations

import numpy as np
import pytest

from leaderboard import flow
from leaderboard.catalog.models import LineageStatus, Relation
from leaderboard.evaluations.runs import evaluated_repositories
from leaderboard.integrity.models import AuditEntry, Report, ReportStatus, Signal, SignalState
from leaderboard.integrity.signals import signal_queue
from leaderboard.problems import Refusal
from tests.factories import edge, flag, ranked

pytestmark = pytest.mark.django_db
N = 100


def _references(rng, ability, parent=None, inflation=0.0, gain=0.0, ref_gain=0.0):
    """One task's reference numbers; with `parent`, its texts shifted from the parent's."""

    def texts(part, shift):
        if parent is None:
            return np.round(rng.normal(-3.0, 0.5, N), 4).tolist()
        base = np.array(parent[0][part]["text_logprob"])
        return np.round(base + shift + rng.normal(0, 0.05, N), 4).tolist()

    def correct(p):
        return (rng.random(N) < p).astype(int).tolist()

    bench_text, sibling_text = texts("benchmark", gain), texts("sibling", ref_gain)
    return [
        {
            "task": "arc_challenge",
            "lm_eval_task": "arc_challenge",
            "metric": "acc_norm",
            "benchmark": {
                "n": N,
                "correct": correct(ability + inflation),
                "text_logprob": bench_text,
                "min_k_pp": [t / 3 for t in bench_text],
            },
            "perturbed": {
                "n": N,
                "correct": correct(ability),
                "text_logprob": texts("benchmark", 0.0),
                "min_k_pp": [0.0] * N,
            },
            "sibling": {
                "name": "arc_easy",
                "n": N,
                "correct": correct(ability),
                "text_logprob": sibling_text,
                "min_k_pp": [t / 3 for t in sibling_text],
            },
        }
    ]


def _run_of(submission):
    return submission.runs.get()


@pytest.fixture
def family():
    """A base, six clean fine-tunes (the population), a child fine-tuned on the test items, and
    a merge of that child with a clean one."""
    rng = np.random.default_rng(11)
    base_refs = _references(rng, 0.35)
    base = ranked("org/base", 0.35, payload={"references": base_refs})
    models = {"base": base}
    for i in range(6):
        refs = _references(rng, 0.3 + 0.03 * i, base_refs, gain=0.1, ref_gain=0.1)
        models[f"clean-{i}"] = ranked(
            f"org/clean-{i}", 0.3 + 0.03 * i, payload={"references": refs}
        )
        edge(models[f"clean-{i}"].repository, base.repository)
    bad_refs = _references(rng, 0.4, base_refs, inflation=0.3, gain=1.0, ref_gain=0.1)
    models["bad"] = ranked("org/contaminated", 0.7, payload={"references": bad_refs})
    edge(models["bad"].repository, base.repository)
    merge_refs = _references(rng, 0.4, bad_refs, inflation=0.0, gain=0.0)
    models["merge"] = ranked("org/merge", 0.55, payload={"references": merge_refs})
    edge(models["merge"].repository, models["bad"].repository, Relation.MERGE)
    edge(models["merge"].repository, models["clean-0"].repository, Relation.MERGE)
    return models


def test_a_contaminated_childs_signals_open_once_and_a_clean_childs_do_not(family):
    created = flow.assess_contamination(_run_of(family["bad"]).pk)
    kinds = sorted((s.kind, s.evidence.get("reference", "")) for s in created)
    assert ("lineage_differential", "sibling") in kinds
    assert ("performance_vs_reference", "sibling") in kinds
    assert all(
        s.state == SignalState.OPEN and s.target == family["bad"].repository for s in created
    )
    # Every test with a p-value fired below alpha (the size outliers have a z-score only).
    assert all(s.p_value < 0.01 for s in created if s.kind != "size_outlier")
    # The same run again: nothing new (the signals are keyed by run, kind, task, comparison).
    assert flow.assess_contamination(_run_of(family["bad"]).pk) == []
    assert flow.assess_contamination(_run_of(family["clean-3"]).pk) == []
    # A signal changes no status by itself.
    family["bad"].repository.refresh_from_db()
    assert family["bad"].repository.status == LineageStatus.CLEAN


def test_confirming_a_signal_flags_the_model_and_taints_the_merge_below(family, maintainer):
    signal = flow.assess_contamination(_run_of(family["bad"]).pk)[0]
    decided = flow.decide_signal(
        signal.pk, "confirm", "The gain is on the test items only.", maintainer
    )
    assert decided.state == SignalState.CONFIRMED
    report = decided.report
    assert (report.status, report.kind, report.target) == (
        ReportStatus.CONFIRMED,
        "contamination",
        family["bad"].repository,
    )
    family["bad"].repository.refresh_from_db()
    family["merge"].repository.refresh_from_db()
    assert family["bad"].repository.status == LineageStatus.FLAGGED
    assert family["merge"].repository.status == LineageStatus.TAINTED
    actions = list(AuditEntry.objects.filter(report=report).values_list("action", flat=True))
    assert sorted(actions) == ["confirmed", "filed"]


def test_dismissing_changes_nothing_but_the_signal(family, maintainer):
    signal = flow.assess_contamination(_run_of(family["bad"]).pk)[0]
    decided = flow.decide_signal(signal.pk, "dismiss", "Explained by the card.", maintainer)
    assert decided.state == SignalState.DISMISSED and decided.report is None
    family["bad"].repository.refresh_from_db()
    assert family["bad"].repository.status == LineageStatus.CLEAN
    assert Report.objects.count() == 0
    assert AuditEntry.objects.get(subject=f"signal #{signal.pk}").action == "dismissed"


def test_decisions_are_refused_to_others_without_a_note_or_twice(family, maintainer, submitter):
    signal = flow.assess_contamination(_run_of(family["bad"]).pk)[0]
    with pytest.raises(Refusal) as refused:
        flow.decide_signal(signal.pk, "confirm", "yes", submitter)
    assert refused.value.status == 403
    with pytest.raises(Refusal) as refused:
        flow.decide_signal(signal.pk, "approve", "", maintainer)
    assert [p.code for p in refused.value.problems] == ["invalid_decision", "missing_note"]
    flow.decide_signal(signal.pk, "dismiss", "No.", maintainer)
    with pytest.raises(Refusal) as refused:
        flow.decide_signal(signal.pk, "confirm", "Yes after all.", maintainer)
    assert refused.value.status == 409


def test_the_queue_orders_signals_by_p_value_and_counts_what_they_would_taint(family):
    flow.assess_contamination(_run_of(family["bad"]).pk)
    items = signal_queue(evaluated_repositories())
    # Signals without a p-value (size outliers) come last.
    p_values = [1.0 if i.signal.p_value is None else i.signal.p_value for i in items]
    assert p_values == sorted(p_values) and p_values[0] < 0.01 and p_values[-1] == 1.0
    # The contaminated model and the merge below it are ranked.
    assert {item.affected_ranked for item in items} == {2}


# --- Through HTTP: the queue, the model page, the decision ----------------------------------------


def test_maintainers_see_signals_in_the_queue_and_on_the_model_page(
    family, maintainer_client, submitter_client, anonymous_client
):
    signal = flow.assess_contamination(_run_of(family["bad"]).pk)[0]
    page = maintainer_client.get("/integrity/queue/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="signal-{signal.pk}"' in html
    assert "confirming this affects 2 ranked models" in html
    assert f'id="signal-figure-{signal.pk}"' in html
    assert submitter_client.get("/integrity/queue/").status_code == 403
    model_page = f"/models/{family['bad'].repository.repo_id}/"
    mine = maintainer_client.get(model_page)
    assert mine.status_code == 200 and f'id="signal-{signal.pk}"' in mine.content.decode()
    theirs = anonymous_client.get(model_page)
    assert theirs.status_code == 200 and f'id="signal-{signal.pk}"' not in theirs.content.decode()


def test_confirming_through_the_queue_taints_the_merge(family, maintainer_client, submitter_client):
    signal = flow.assess_contamination(_run_of(family["bad"]).pk)[0]
    url = f"/integrity/signals/{signal.pk}/decide/"
    refused = submitter_client.post(url, {"decision": "confirm", "note": "x"})
    assert refused.status_code == 403
    answer = maintainer_client.post(
        url,
        {
            "decision": "confirm",
            "note": "Gains on the test items only.",
            "next": "/integrity/queue/",
        },
    )
    assert answer.status_code == 302 and answer["Location"] == "/integrity/queue/"
    family["merge"].repository.refresh_from_db()
    assert family["merge"].repository.status == LineageStatus.TAINTED
    again = maintainer_client.post(url, {"decision": "dismiss", "note": "late"}, follow=True)
    assert f"Signal #{signal.pk} is confirmed: only an open signal" in again.content.decode()


def test_an_ingested_result_with_inflated_references_opens_signals(
    family, artifact_root, maintainer
):
    from django.utils import timezone

    from evaluator.messages import TaskReferences
    from leaderboard.evaluations.models import EvaluationRun
    from tests.factories import RunFactory, quick_payload

    EvaluationRun.objects.update(suite_name="quick", suite_version="1")
    # The flagged model and the merge it taints leave the reference population: a contaminated
    # model left in it would pull the curve up at its own place.
    flag(family["bad"].repository, maintainer)
    child = family["base"].repository  # a new submission of a child of the base
    run = RunFactory(
        submission__repository__repo_id="org/late-child",
        state="running",
        queue="gpu-small",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    from tests.factories import edge as add_edge

    add_edge(run.submission.repository, child)
    rng = np.random.default_rng(12)
    base_refs = family["base"].runs.get().payload["references"]
    payload = quick_payload(run.pk, artifact_root)
    payload["references"] = _references(rng, 0.4, base_refs, inflation=0.3, gain=1.0, ref_gain=0.1)
    # Exactly 0.7 on the benchmark and 0.4 on both reference sets (no luck of the draw).
    entry = payload["references"][0]
    entry["benchmark"]["correct"] = [1] * 70 + [0] * 30
    entry["sibling"]["correct"] = entry["perturbed"]["correct"] = [1] * 40 + [0] * 60
    TaskReferences.model_validate(payload["references"][0])  # what the worker's schema accepts
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    kinds = set(
        Signal.objects.filter(target=run.submission.repository).values_list("kind", flat=True)
    )
    assert {"performance_vs_reference", "lineage_differential"} <= kinds
    assert set(Signal.objects.values_list("run_id", flat=True)) == {run.pk}


def test_a_score_far_out_of_its_size_bucket_is_a_signal(family):
    created = flow.assess_contamination(_run_of(family["bad"]).pk)
    outliers = sorted(s.task for s in created if s.kind == "size_outlier")
    # 0.7 on every task where the other 1B models score 0.30 to 0.55.
    assert outliers == ["arc_challenge", "hellaswag", "mmlu", "winogrande"]
    assert all(
        s.statistic >= 4.0 and s.p_value is None for s in created if s.kind == "size_outlier"
    )
    assert not any(
        s.kind == "size_outlier" for s in flow.assess_contamination(_run_of(family["clean-2"]).pk)
    )


def test_a_child_that_kept_what_its_siblings_lost_opens_a_family_signal(maintainer):
    """Fine-tuning cost every sibling 0.4 nats on the benchmark's items and 0.1 on the reference
    items; the quiet child learnt the items back, so it moved as little on both as its parent:
    the test against the parent sees nothing, the family test does, and names the relatives.
    The flagged sibling is not one of them (relatives come from the unsuspected models)."""
    rng = np.random.default_rng(13)
    base_refs = _references(rng, 0.35)
    base = ranked("org/base", 0.35, payload={"references": base_refs})
    children = {}
    for name, gain, ref_gain in (
        ("sib-0", -0.4, -0.1),
        ("sib-1", -0.4, -0.1),
        ("sib-2", -0.4, -0.1),
        ("sib-flagged", 2.0, -0.1),
        ("quiet", -0.1, -0.1),
    ):
        refs = _references(rng, 0.35, base_refs, gain=gain, ref_gain=ref_gain)
        children[name] = ranked(f"org/{name}", 0.35, payload={"references": refs})
        edge(children[name].repository, base.repository)
    flag(children["sib-flagged"].repository, maintainer)
    created = flow.assess_contamination(_run_of(children["quiet"]).pk)
    family_signals = [s for s in created if s.kind == "family_differential"]
    assert len(family_signals) == 1 and not any(s.kind == "lineage_differential" for s in created)
    evidence = family_signals[0].evidence
    assert evidence["excess"] == pytest.approx(0.3, abs=0.1)
    assert evidence["relatives"] == ["org/sib-0", "org/sib-1", "org/sib-2"]
    for sibling in ("sib-0", "sib-1"):
        assert flow.assess_contamination(_run_of(children[sibling]).pk) == []
