"""The contamination statistics on synthetic inputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluator.contamination import (
    NotEnoughData,
    Score,
    basic_bootstrap_p,
    bonferroni,
    bucket_outlier,
    evaluate_curve,
    lineage_differential,
    min_k_plus_plus,
    monotone_curve,
    parent_jumps,
    performance_vs_reference,
    roc_auc,
)
from evaluator.graph import reachable


def test_monotone_curve_matches_quantiles_and_anchors_at_chance_and_one():
    xs, ys = monotone_curve([0.5, 0.3, 0.4], [0.6, 0.35, 0.4], chance=(0.25, 0.25))
    assert xs.tolist() == [0.25, 0.3, 0.4, 0.5, 1.0]
    assert ys.tolist() == [0.25, 0.35, 0.4, 0.6, 1.0]
    assert evaluate_curve((xs, ys), 0.45) == pytest.approx(0.5)
    # Beyond the population: towards (1, 1), not flat.
    assert evaluate_curve((xs, ys), 0.75) == pytest.approx(0.8)


def test_monotone_curve_averages_ties_and_never_decreases():
    xs, ys = monotone_curve([0.4, 0.4, 0.6], [0.5, 0.3, 0.2], chance=(0.0, 0.0))
    # Sorted separately: (0.4, 0.2), (0.4, 0.3), (0.6, 0.5); the tie at 0.4 averages to 0.25.
    assert xs.tolist() == [0.0, 0.4, 0.6, 1.0]
    assert ys.tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])


def _population(rng, abilities, n_bench, n_ref, inflation=0.0):
    bench = np.array([rng.random(n_bench) < min(1.0, a + inflation) for a in abilities], float)
    ref = np.array([rng.random(n_ref) < a for a in abilities], float)
    return bench, ref


def test_constat_finds_the_inflation_it_was_given():
    rng = np.random.default_rng(1)
    pop_bench, pop_ref = _population(rng, np.linspace(0.3, 0.8, 10), 1000, 1000)
    bench, ref = _population(rng, [0.5], 1000, 1000, inflation=0.3)
    fit = performance_vs_reference(bench[0], ref[0], pop_bench, pop_ref, (0.25, 0.25), 500)
    assert fit.n_models == 10
    assert fit.delta == pytest.approx(0.3, abs=0.06)
    assert fit.delta_low > 0.15
    assert fit.p_value == pytest.approx(1 / 501)
    assert fit.observed == pytest.approx(bench[0].mean())
    assert fit.expected == pytest.approx(0.5, abs=0.06)


def test_constat_is_calibrated_on_models_that_sit_on_the_curve():
    rng = np.random.default_rng(2)
    pop_bench, pop_ref = _population(rng, np.linspace(0.3, 0.8, 10), 200, 200)
    p_values = []
    for ability in np.linspace(0.35, 0.75, 20):
        bench, ref = _population(rng, [ability], 200, 200)
        fit = performance_vs_reference(bench[0], ref[0], pop_bench, pop_ref, (0.25, 0.25), 200)
        p_values.append(fit.p_value)
    # 20 clean models: at most one below 0.05 (the expected count is 1).
    assert sum(p < 0.05 for p in p_values) <= 1
    assert np.median(p_values) > 0.2


def test_constat_refuses_a_population_too_small_for_a_curve():
    with pytest.raises(NotEnoughData, match="4 reference models; the curve needs at least 5"):
        performance_vs_reference([1, 0], [1, 0], np.ones((4, 2)), np.ones((4, 2)))
    with pytest.raises(NotEnoughData, match="other items"):
        performance_vs_reference([1, 0, 1], [1, 0], np.ones((5, 2)), np.ones((5, 2)))


def test_basic_bootstrap_p():
    assert basic_bootstrap_p(np.array([-1.0, 0.5, 0.5])) == 1.0  # mean 0: no evidence
    # mean 1.0; one of four rounds at or above 2.0.
    assert basic_bootstrap_p(np.array([0.0, 0.5, 1.5, 2.0])) == pytest.approx(1 / 5)
    assert basic_bootstrap_p(np.full(99, 1.0)) == pytest.approx(1 / 100)
    # Almost every round exactly 0 and the mean a hair above it: no evidence, though only one
    # round reaches twice the mean.
    assert basic_bootstrap_p(np.array([0.0] * 98 + [0.05])) == pytest.approx(98 / 100)


def test_paired_differential_detects_a_constant_gain():
    fit = lineage_differential(np.full(12, 2.0), np.full(12, 0.5), paired=True, n_permutations=999)
    assert fit.difference == pytest.approx(1.5)
    assert fit.benchmark_gain == 2.0 and fit.reference_gain == 0.5
    # All signs positive has probability 2**-12: almost no permutation reaches it.
    assert fit.p_value < 0.01
    assert fit.effect_size == math.inf


def test_unpaired_differential_estimates_the_effect_size():
    rng = np.random.default_rng(3)
    fit = lineage_differential(
        rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300), n_permutations=999
    )
    assert fit.effect_size == pytest.approx(1.0, abs=0.15)
    assert fit.p_value == pytest.approx(1 / 1000)
    assert (fit.n_benchmark, fit.n_reference, fit.paired) == (300, 300, False)


def test_differential_is_calibrated_under_the_null():
    rng = np.random.default_rng(4)
    rejections = 0
    for _ in range(100):
        fit = lineage_differential(rng.normal(size=40), rng.normal(size=40), n_permutations=199)
        rejections += fit.p_value < 0.05
    assert rejections <= 10  # expected 5


def test_differential_refuses_too_few_items():
    with pytest.raises(NotEnoughData):
        lineage_differential([1.0], [0.0, 1.0])
    with pytest.raises(NotEnoughData, match="paired"):
        lineage_differential([1.0, 2.0, 3.0], [0.0, 1.0], paired=True)


def test_min_k_plus_plus_takes_the_lowest_share_of_standardised_tokens():
    logp = [-1.0, -2.0, -3.0, -0.5, -4.0]
    mu = [-2.0, -2.0, -2.0, -2.0, -2.0]
    var = [1.0, 4.0, 1.0, 0.25, 4.0]
    # standardised: 1.0, 0.0, -1.0, 3.0, -1.0; the lowest 40% (2 tokens): -1.0, -1.0.
    assert min_k_plus_plus(logp, mu, var, k=0.4) == pytest.approx(-1.0)
    # k below one token still takes the lowest one; k = 1 is the mean.
    assert min_k_plus_plus(logp, mu, var, k=0.01) == pytest.approx(-1.0)
    assert min_k_plus_plus(logp, mu, var, k=1.0) == pytest.approx(0.4)
    with pytest.raises(NotEnoughData):
        min_k_plus_plus([-1.0], [-1.0, -2.0], [1.0, 1.0])


def test_parent_jumps_flags_one_task_jumping_while_others_stay():
    parent = {t: Score(0.40, 0.03) for t in ("arc", "hellaswag", "mmlu", "winogrande")}
    child = dict(parent, arc=Score(0.60, 0.03), mmlu=Score(0.41, 0.03))
    (jump,) = parent_jumps(child, [parent])
    assert jump.task == "arc"
    assert jump.jump == pytest.approx(0.20)
    assert jump.z == pytest.approx(0.20 / math.hypot(0.03, 0.03))
    assert jump.others_z == pytest.approx(0.0)
    assert jump.p_value < 1e-5
    # A fine-tune that lifts everything is not an anomaly.
    better = {t: Score(s.value + 0.2, 0.03) for t, s in parent.items()}
    assert parent_jumps(better, [parent]) == []
    # Against the best of two parents: the second parent already scores 0.58 on arc.
    other = dict(parent, arc=Score(0.58, 0.03))
    assert parent_jumps(child, [parent, other]) == []


def test_bucket_outlier_is_a_robust_z_score():
    bucket = [0.30, 0.32, 0.34, 0.36, 0.38]
    assert bucket_outlier(0.34, bucket) == 0.0
    assert bucket_outlier(0.64, bucket) == pytest.approx(0.30 / (1.4826 * 0.02))
    assert bucket_outlier(0.9, [0.3, 0.3, 0.3]) == 0.0


def test_bonferroni_and_roc_auc():
    assert bonferroni([0.01, 0.5, 0.2]) == pytest.approx(0.03)
    assert bonferroni([0.6, 0.9]) == 1.0
    assert bonferroni([]) == 1.0
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 3], [2, 2]) == 0.5
    assert math.isnan(roc_auc([], [1]))


# --- Findings from what the worker sends -----------------------------------------------------

from evaluator.contamination import (  # noqa: E402
    Thresholds,
    family_findings,
    lineage_findings,
    nearest_relatives,
    predicted_above,
    reference_findings,
    score_findings,
    student_t_sf,
)

FAST = Thresholds(bootstrap=300, permutations=499)


def _entry(rng, ability, inflation=0.0, n=200, gain=0.0, ref_gain=0.0):
    return {
        "task": "arc_challenge",
        "benchmark": {
            "correct": (rng.random(n) < ability + inflation).astype(int).tolist(),
            "text_logprob": (rng.normal(-3.0, 0.5, n) + gain).tolist(),
            "min_k_pp": (rng.normal(-1.0, 0.3, n) + gain / 4).tolist(),
        },
        "perturbed": {"correct": (rng.random(n) < ability).astype(int).tolist()},
        "sibling": {
            "name": "arc_easy",
            "correct": (rng.random(n) < ability).astype(int).tolist(),
            "text_logprob": (rng.normal(-3.0, 0.5, n) + ref_gain).tolist(),
            "min_k_pp": (rng.normal(-1.0, 0.3, n) + ref_gain / 4).tolist(),
        },
    }


def test_reference_findings_fire_on_an_inflated_model_and_not_on_a_clean_one():
    rng = np.random.default_rng(5)
    population = [[_entry(rng, a)] for a in np.linspace(0.3, 0.7, 8)]
    inflated = reference_findings(
        [_entry(rng, 0.45, 0.3)], population, {"arc_challenge": 0.25}, FAST
    )
    assert [(f.kind, f.evidence["reference"], f.fired) for f in inflated] == [
        ("performance_vs_reference", "perturbed", True),
        ("performance_vs_reference", "sibling", True),
    ]
    assert inflated[1].evidence["models"] == 8
    assert inflated[1].statistic == pytest.approx(0.3, abs=0.1)
    assert [t["name"] for t in inflated[1].figure["data"]] == [
        "other models",
        "expected",
        "this model",
    ]
    clean = reference_findings([_entry(rng, 0.5)], population, {"arc_challenge": 0.25}, FAST)
    assert [f.fired for f in clean] == [False, False]
    # Too few other models for a curve: no finding at all, rather than a guess.
    assert reference_findings([_entry(rng, 0.5, 0.3)], population[:4], {}, FAST) == []


def test_lineage_findings_compare_against_each_parent_with_bonferroni():
    rng = np.random.default_rng(6)
    parent = [_entry(rng, 0.4)]
    child = [_entry(rng, 0.4)]
    child[0]["benchmark"]["text_logprob"] = [
        v + 1.0 for v in parent[0]["benchmark"]["text_logprob"]
    ]
    child[0]["sibling"]["text_logprob"] = [v + 0.1 for v in parent[0]["sibling"]["text_logprob"]]
    (diff, mink) = lineage_findings(child, {"org/parent": parent}, FAST)
    assert diff.kind == "lineage_differential" and diff.fired
    assert diff.evidence["difference"] == pytest.approx(0.9)
    assert diff.evidence["reference"] == "sibling" and not diff.evidence["paired"]
    assert diff.p_value == pytest.approx(1 / 500)
    assert mink.kind == "min_k_pp"
    # Two parents: each p-value counts twice.
    two = lineage_findings(child, {"org/parent": parent, "org/other": parent}, FAST)
    differentials = [f for f in two if f.kind == "lineage_differential"]
    assert [f.evidence["parent"] for f in differentials] == ["org/parent", "org/other"]
    assert [f.p_value for f in differentials] == pytest.approx([2 / 500] * 2)
    # A gain everywhere is fine-tuning, not contamination.
    child[0]["sibling"]["text_logprob"] = [v + 1.0 for v in parent[0]["sibling"]["text_logprob"]]
    assert not any(f.fired for f in lineage_findings(child, {"org/parent": parent}, FAST)[:1])


def test_small_but_significant_effects_do_not_fire():
    rng = np.random.default_rng(7)
    parent = [_entry(rng, 0.4, n=2000)]
    child = [_entry(rng, 0.4, n=2000)]
    for part, shift in (("benchmark", 0.2), ("sibling", 0.0)):
        base = np.array(parent[0][part]["text_logprob"])
        child[0][part]["text_logprob"] = (base + shift + rng.normal(0, 1.0, 2000)).tolist()
    diff = lineage_findings(child, {"p": parent}, FAST)[0]
    assert diff.p_value < 0.01
    assert diff.statistic == pytest.approx(0.2, abs=0.06)
    assert not diff.fired


def test_score_findings_report_jumps_and_bucket_outliers():
    parent = {t: Score(0.40, 0.03) for t in ("arc", "mmlu", "winogrande")}
    child = dict(parent, arc=Score(0.60, 0.03))
    buckets = {"arc": [0.3, 0.32, 0.34, 0.36, 0.38], "mmlu": [0.4] * 5}
    findings = score_findings(child, {"org/parent": parent}, buckets, FAST)
    assert [(f.kind, f.task) for f in findings] == [("score_jump", "arc"), ("size_outlier", "arc")]
    assert findings[0].evidence["parents"] == ["org/parent"]
    assert findings[1].statistic == pytest.approx(0.26 / (1.4826 * 0.02))
    assert score_findings(parent, {}, {}, FAST) == []


def test_a_large_effect_of_a_negligible_gain_does_not_fire():
    # A merge of two clean models: every item moves by about 0.01 nats, consistently.
    rng = np.random.default_rng(8)
    parent = [_entry(rng, 0.4)]
    child = [_entry(rng, 0.4)]
    for part, shift in (("benchmark", 0.012), ("sibling", 0.0)):
        base = np.array(parent[0][part]["text_logprob"])
        child[0][part]["text_logprob"] = (base + shift + rng.normal(0, 0.01, 200)).tolist()
    diff = lineage_findings(child, {"p": parent}, FAST)[0]
    assert diff.p_value < 0.01 and diff.statistic > 1.0
    assert diff.evidence["difference"] == pytest.approx(0.012, abs=0.003)
    assert not diff.fired


def _family(rng, strengths=(1.0, 1.0, 1.0, 1.0), n=200):
    """A parent and its children: fine-tuning at strength s costs a child about 0.4 s nats on the
    benchmark items' kind of text and 0.1 s on the reference items', item by item alike, plus
    its own noise."""
    parent = _entry(rng, 0.4, n=n)
    drift_b, drift_r = rng.normal(-0.4, 0.3, n), rng.normal(-0.1, 0.3, n)

    def child(strength):
        entry = _entry(rng, 0.4, n=n)
        for part, drift in (("benchmark", drift_b), ("sibling", drift_r)):
            base = np.array(parent[part]["text_logprob"])
            noise = rng.normal(0, 0.15, n)
            entry[part]["text_logprob"] = (base + strength * drift + noise).tolist()
        return entry

    return parent, [child(s) for s in strengths]


def test_student_t_tail_matches_the_tables():
    # Values of scipy.stats.t.sf, exact to the last digits.
    cases = [(1, 1.0, 0.25), (2, 2.92, 0.0499995777813536), (5, 3.365, 0.00999923625287086)]
    cases += [(7, -1.2, 0.8654140315863967), (4, 10.0, 0.0002810018113579955)]
    cases += [(12, 2.5, 0.01395769978566262), (3, 0.0, 0.5)]
    for df, t, expected in cases:
        assert student_t_sf(t, df) == pytest.approx(expected, rel=1e-9)
    assert student_t_sf(math.inf, 3) == 0.0 and student_t_sf(-math.inf, 3) == 1.0
    with pytest.raises(ValueError):
        student_t_sf(1.0, 0)


def test_a_point_above_the_line_of_the_others():
    # Checked against scipy.stats.linregress and scipy.stats.t.sf.
    fit = predicted_above([0, 1, 2, 3, 4], [1.1, 2.9, 5.0, 7.1, 8.9], 2.5, 8.0)
    assert (fit.slope, fit.intercept, fit.df) == (pytest.approx(1.98), pytest.approx(1.04), 3)
    assert fit.residual_sd == pytest.approx(0.10954451150103299)
    assert fit.expected == pytest.approx(5.99) and fit.excess == pytest.approx(2.01)
    assert fit.t == pytest.approx(16.578200586730716)
    assert fit.p_value == pytest.approx(0.00023887404369404876, rel=1e-9)
    on_the_line = predicted_above([0, 1, 2, 3, 4], [1.1, 2.9, 5.0, 7.1, 8.9], 2.5, 5.99)
    assert on_the_line.p_value == pytest.approx(0.5)
    # Every x the same: no slope to fit, the mean of the others (k - 1 degrees of freedom).
    flat = predicted_above([1, 1, 1], [1.0, 2.0, 3.0], 1, 2.0)
    assert (flat.slope, flat.df, flat.expected, flat.p_value) == (0.0, 2, 2.0, 0.5)
    with pytest.raises(NotEnoughData):
        predicted_above([0, 1], [0, 1], 2, 2)


STRENGTHS = (0.6, 0.9, 1.2, 1.5, 1.8)


def test_family_differential_finds_the_child_that_kept_what_its_siblings_lost():
    rng = np.random.default_rng(9)
    parent, (contaminated, *siblings) = _family(rng, strengths=(1.0, *STRENGTHS))
    # It learnt the items as much as fine-tuning cost it: no gain over its parent.
    contaminated["benchmark"]["text_logprob"] = [
        v + 0.4 for v in contaminated["benchmark"]["text_logprob"]
    ]
    against_parent = lineage_findings([contaminated], {"p": [parent]}, FAST)[0]
    assert not against_parent.fired
    relatives = {f"s{i}": [s] for i, s in enumerate(siblings)}
    (finding,) = family_findings([contaminated], relatives, FAST)
    assert finding.kind == "family_differential" and finding.fired
    assert finding.evidence["excess"] == pytest.approx(0.4, abs=0.1)
    # A sibling trained harder loses 0.4 s on the benchmark's kind of text and 0.1 s elsewhere:
    # the line is steep (noise in the gains flattens it a little).
    assert 2.5 < finding.evidence["slope"] < 4.5
    assert (finding.evidence["relatives_compared"], finding.evidence["degrees_of_freedom"]) == (
        5,
        3,
    )
    assert finding.p_value < 0.001
    assert [t["name"] for t in finding.figure["data"]] == ["relatives", "expected", "this model"]
    # Each clean sibling against the others (and the contaminated one): nothing fires.
    for i, clean in enumerate(siblings):
        others = {k: v for k, v in relatives.items() if k != f"s{i}"}
        others["c"] = [contaminated]
        assert not family_findings([clean], others, FAST)[0].fired
    # Two relatives are too few for a family: no finding, rather than a guess.
    assert family_findings([contaminated], dict(list(relatives.items())[:2]), FAST) == []


def test_family_differential_reads_a_lightly_trained_sibling_on_the_family_line():
    # The lightest sibling lost least on the benchmark items, so over items alone it stands out
    # (p at its floor); on the line the others draw it sits where its light training puts it.
    rng = np.random.default_rng(11)
    _, (light, *others) = _family(rng, strengths=(0.3, *STRENGTHS))
    (finding,) = family_findings([light], {f"s{i}": [c] for i, c in enumerate(others)}, FAST)
    assert finding.evidence["p_items"] == pytest.approx(1 / 500)
    assert finding.p_value > 0.05 and not finding.fired


def test_family_differential_falls_back_to_paired_perturbed_copies():
    rng = np.random.default_rng(10)
    parent, children = _family(rng, strengths=(1.0, *STRENGTHS))
    for entry in (parent, *children):
        entry["perturbed"]["text_logprob"] = [v + 0.05 for v in entry["sibling"]["text_logprob"]]
        del entry["sibling"]
    children[0]["benchmark"]["text_logprob"] = [
        v + 0.5 for v in children[0]["benchmark"]["text_logprob"]
    ]
    (finding,) = family_findings(
        [children[0]], {f"s{i}": [c] for i, c in enumerate(children[1:])}, FAST
    )
    assert finding.evidence["reference"] == "perturbed" and finding.evidence["paired"]
    assert finding.evidence["excess"] == pytest.approx(0.5, abs=0.1)
    assert finding.fired


def test_nearest_relatives_are_siblings_first_then_cousins_never_ancestors_or_descendants():
    parents_of = {
        "a": ["root"],
        "b": ["root"],
        "a1": ["a"],
        "a2": ["a"],
        "a3": ["a"],
        "a1x": ["a1"],
        "b1": ["b"],
        "merge": ["a1", "b1"],
    }
    everyone = sorted({*parents_of, "root"})
    assert nearest_relatives("a1", parents_of, everyone, minimum=2) == ["a2", "a3"]
    # Not enough siblings: the grandparent's other descendants join, siblings still first; the
    # model's own child (a1x) and the merge it went into are never its relatives.
    assert nearest_relatives("a1", parents_of, everyone, minimum=3) == ["a2", "a3", "b", "b1"]
    # A merge's nearest family: its parents' other descendants (the parents themselves excluded).
    assert nearest_relatives("merge", parents_of, everyone, minimum=1) == ["a1x"]
    assert nearest_relatives("merge", parents_of, everyone, minimum=3) == [
        "a1x",
        "a2",
        "a3",
    ]
    # Only candidates count (the unsuspected population), and a family too small gives none.
    assert nearest_relatives("a1", parents_of, ["a2", "b"], minimum=2) == ["a2", "b"]
    assert nearest_relatives("root", parents_of, everyone, minimum=1) == []
    assert nearest_relatives("a1", parents_of, ["a2"], minimum=2) == []


def test_reachable_walks_a_diamond_once_and_stops_on_a_cycle():
    parents_of = {"merge": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}
    assert reachable("merge", parents_of) == {"left", "right", "base"}
    assert reachable("base", parents_of) == set()
    # A declared cycle (a card naming its own descendant) must not loop; the start is reached
    # again through the cycle, so it is in the answer.
    assert reachable("a", {"a": ["b"], "b": ["a"]}) == {"a", "b"}
