"""Contamination statistics: plain numbers in, an estimate and a p-value out (numpy only).

Four signals, each a function of what the worker measured (see `evaluator.reference`) or of the
stored scores; none of them flags anything, they are read by a maintainer:

1. `performance_vs_reference`: after ConStat (Dekoninck et al., NeurIPS 2024). Across a
   population of reference models, a monotone curve maps the score on a reference set (perturbed
   copies of the items, a sibling benchmark) to the expected benchmark score; a contaminated
   model sits above the curve. Inflation delta and a bootstrap p-value (items and models
   resampled).
2. `lineage_differential`: the per-item gain in log-likelihood of question + gold answer from a
   declared parent to the child, on the benchmark items against the same gain on reference
   items. Permutation test (paired sign flips when the reference items are copies of the
   benchmark items, label shuffles otherwise) and a standardised effect size. Against the
   family (`family_findings`): the model's gains over its nearest relatives' per-item medians
   (`nearest_relatives`), tested by its height above the line the relatives' own gains draw
   (`predicted_above`), for the child that barely moved from its parent while its siblings all
   drifted the other way.
3. `min_k_plus_plus`: the Min-K%++ membership score of one text (Zhang et al., ICLR 2025) from
   per-token log-probabilities and the mean and variance of the log-probabilities over the
   vocabulary at each position; child against parent with `lineage_differential`.
4. `parent_jumps` and `bucket_outlier`: anomalies read from stored scores alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluator.graph import reachable

Array = np.ndarray[Any, Any]

# ConStat needs a curve: fewer reference models than this and the test is not run.
MIN_REFERENCE_MODELS = 5
# The family differential compares with the median of this many relatives at least: with two,
# one contaminated sibling would be half the baseline, and a line through two points has no
# residual to read a height against.
MIN_RELATIVES = 3
DEFAULT_BOOTSTRAP = 1000
DEFAULT_PERMUTATIONS = 4000


class NotEnoughData(ValueError):
    """The inputs cannot support the test (too few models or items); the message says which."""


# --- 1. Performance against a reference (ConStat) ---------------------------------------------


@dataclass(frozen=True)
class ReferenceFit:
    """The outcome of `performance_vs_reference` for one model on one task and reference set."""

    observed: float  # the model's benchmark score
    reference: float  # the model's score on the reference set
    expected: float  # the benchmark score the population's curve predicts from `reference`
    delta: float  # mean bootstrap inflation, observed - expected
    delta_low: float  # one-sided 95% lower bound of delta (basic bootstrap)
    p_value: float  # H0: delta <= 0
    n_models: int
    curve: list[tuple[float, float]] = field(default_factory=list)  # the fit on all data


def monotone_curve(
    reference: Sequence[float] | Array,
    benchmark: Sequence[float] | Array,
    chance: tuple[float, float] = (0.0, 0.0),
) -> tuple[Array, Array]:
    """Knots of a non-decreasing piecewise-linear map from reference score to benchmark score.

    As ConStat does, both score lists are sorted on their own (a quantile match: the k-th best
    reference score maps to the k-th best benchmark score), which makes the curve monotone
    without a shape assumption; it is anchored at the chance point and at (1, 1) so a model
    outside the population's range extrapolates towards them instead of flat."""
    xs = np.sort(np.asarray(reference, dtype=float))
    ys = np.sort(np.asarray(benchmark, dtype=float))
    cx, cy = chance
    if xs.size == 0 or xs[0] > cx:
        xs, ys = (
            np.concatenate([[cx], xs]),
            np.concatenate([[min(cy, ys[0] if ys.size else cy)], ys]),
        )
    if xs[-1] < 1.0:
        xs, ys = np.concatenate([xs, [1.0]]), np.concatenate([ys, [1.0]])
    # Equal reference scores: keep the mean benchmark score of the tie, so the map is a function.
    unique, inverse = np.unique(xs, return_inverse=True)
    means = np.bincount(inverse, weights=ys) / np.bincount(inverse)
    return unique, np.maximum.accumulate(means)


def evaluate_curve(knots: tuple[Array, Array], x: float) -> float:
    xs, ys = knots
    return float(np.clip(np.interp(x, xs, ys), 0.0, 1.0))


def performance_vs_reference(
    model_benchmark: Sequence[float] | Array,
    model_reference: Sequence[float] | Array,
    population_benchmark: Sequence[Sequence[float]] | Array,
    population_reference: Sequence[Sequence[float]] | Array,
    chance: tuple[float, float] = (0.0, 0.0),
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> ReferenceFit:
    """ConStat's test for one model.

    `model_benchmark` (n items) and `model_reference` (m items) are the model's per-item scores
    (1/0 correctness, or any score in [0, 1]); `population_*` the same per reference model (one
    row each, the same items in the same order). Each bootstrap round resamples the benchmark
    items, the reference items and the reference models, refits the curve and records
    observed - expected; the p-value is the basic bootstrap's for delta <= 0."""
    bench = np.asarray(model_benchmark, dtype=float)
    ref = np.asarray(model_reference, dtype=float)
    pop_bench = np.asarray(population_benchmark, dtype=float)
    pop_ref = np.asarray(population_reference, dtype=float)
    if pop_bench.ndim != 2 or pop_ref.ndim != 2 or pop_bench.shape[0] != pop_ref.shape[0]:
        raise NotEnoughData(
            "the population needs one row of benchmark and reference items per model"
        )
    n_models = pop_bench.shape[0]
    if n_models < MIN_REFERENCE_MODELS:
        raise NotEnoughData(
            f"{n_models} reference models; the curve needs at least {MIN_REFERENCE_MODELS}"
        )
    if bench.size == 0 or ref.size == 0:
        raise NotEnoughData("the model has no benchmark or no reference items")
    if pop_bench.shape[1] != bench.size or pop_ref.shape[1] != ref.size:
        raise NotEnoughData("the population was scored on other items than the model")

    rng = np.random.default_rng(seed)
    deltas = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        items_b = rng.integers(0, bench.size, bench.size)
        items_r = rng.integers(0, ref.size, ref.size)
        models = rng.integers(0, n_models, n_models)
        curve = monotone_curve(
            pop_ref[models][:, items_r].mean(axis=1),
            pop_bench[models][:, items_b].mean(axis=1),
            chance,
        )
        deltas[i] = bench[items_b].mean() - evaluate_curve(curve, ref[items_r].mean())

    full = monotone_curve(pop_ref.mean(axis=1), pop_bench.mean(axis=1), chance)
    delta = float(deltas.mean())
    observed, reference = float(bench.mean()), float(ref.mean())
    return ReferenceFit(
        observed=observed,
        reference=reference,
        expected=evaluate_curve(full, reference),
        delta=delta,
        delta_low=float(2 * delta - np.quantile(deltas, 0.95)),
        p_value=basic_bootstrap_p(deltas),
        n_models=n_models,
        curve=[(float(x), float(y)) for x, y in zip(*full, strict=True)],
    )


def basic_bootstrap_p(deltas: Array) -> float:
    """The smallest alpha at which the basic bootstrap's one-sided lower bound of the mean,
    2 * mean - quantile(1 - alpha), stays above zero: the share of rounds above twice the mean
    (never below one round's worth, and 1 when the mean is not positive); and never below the
    share of rounds at or below zero (the percentile bootstrap's p-value). The basic bound alone
    misreads a distribution that is almost all zeros: when nearly every round gives delta = 0
    exactly and the mean is a hair above it, few rounds reach twice the mean, so a model with no
    inflation at all came out at p = 0.01 (the demo-model bench at 20 items, where 14 of 16
    models scored the same 0.45)."""
    mean = float(np.mean(deltas))
    if mean <= 0:
        return 1.0
    above = int(np.sum(deltas >= 2 * mean))
    not_positive = int(np.sum(deltas <= 0))
    return max(above, not_positive, 1) / (deltas.size + 1)


# --- 2. Lineage differential --------------------------------------------------------------------


@dataclass(frozen=True)
class Differential:
    """How much more a child gained over its parent on benchmark items than on reference items."""

    benchmark_gain: float  # mean per-item gain on the benchmark items
    reference_gain: float  # mean per-item gain on the reference items
    difference: float  # benchmark_gain - reference_gain
    effect_size: float  # difference over the pooled per-item standard deviation
    p_value: float  # one-sided permutation p-value, H0: no larger gain on the benchmark items
    paired: bool
    n_benchmark: int
    n_reference: int


def lineage_differential(
    benchmark_gain: Sequence[float] | Array,
    reference_gain: Sequence[float] | Array,
    paired: bool = False,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> Differential:
    """Permutation test of mean(benchmark_gain) > mean(reference_gain).

    Paired (reference item i is a copy of benchmark item i): random sign flips of the per-item
    differences. Unpaired: random relabelling of the pooled items. The p-value counts the
    observed arrangement, so it is never 0."""
    bench = np.asarray(benchmark_gain, dtype=float)
    ref = np.asarray(reference_gain, dtype=float)
    if bench.size < 2 or ref.size < 2:
        raise NotEnoughData(
            "the differential test needs at least 2 benchmark and 2 reference items"
        )
    if paired and bench.size != ref.size:
        raise NotEnoughData("paired items need as many reference items as benchmark items")
    rng = np.random.default_rng(seed)
    if paired:
        diffs = bench - ref
        observed = float(diffs.mean())
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, diffs.size))
        null = (signs * diffs).mean(axis=1)
        spread = float(diffs.std(ddof=1))
    else:
        pooled = np.concatenate([bench, ref])
        observed = float(bench.mean() - ref.mean())
        null = np.empty(n_permutations)
        for i in range(n_permutations):
            shuffled = rng.permutation(pooled)
            null[i] = shuffled[: bench.size].mean() - shuffled[bench.size :].mean()
        spread = math.sqrt(
            ((bench.size - 1) * bench.var(ddof=1) + (ref.size - 1) * ref.var(ddof=1))
            / (bench.size + ref.size - 2)
        )
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (n_permutations + 1)
    return Differential(
        benchmark_gain=float(bench.mean()),
        reference_gain=float(ref.mean()),
        difference=observed,
        effect_size=observed / spread if spread > 0 else (math.inf if observed > 0 else 0.0),
        p_value=p_value,
        paired=paired,
        n_benchmark=int(bench.size),
        n_reference=int(ref.size),
    )


def nearest_relatives(
    model: Any,
    parents_of: Mapping[Any, Sequence[Any]],
    candidates: Sequence[Any],
    minimum: int,
    limit: int = 50,
) -> list[Any]:
    """The candidates closest to `model` in its family: the other children of its declared
    parents, and only when they are fewer than `minimum`, the descendants of its grandparents,
    and so on up. Never the model's own ancestors or descendants (they share its training, or
    inherit it). Nearest first, at most `limit`; empty when even the whole family is too small."""
    children_of: dict[Any, list[Any]] = {}
    for child, parents in parents_of.items():
        for parent in parents:
            children_of.setdefault(parent, []).append(child)
    own_descendants = reachable(model, children_of)
    level = set(parents_of.get(model, ()))
    ancestors: set[Any] = set()
    allowed = set(candidates)
    found: list[Any] = []
    seen: set[Any] = set()
    while level:
        ancestors |= level
        excluded = ancestors | own_descendants | {model}
        family: set[Any] = set()
        for ancestor in level:
            family |= reachable(ancestor, children_of)
        new = sorted((family - excluded - seen) & allowed, key=str)
        found += new
        seen.update(new)
        if len(found) >= minimum:
            return found[:limit]
        level = {p for a in level for p in parents_of.get(a, ())} - ancestors
    return []


# --- 3. Min-K%++ ---------------------------------------------------------------------------------


def min_k_plus_plus(
    token_logprobs: Sequence[float] | Array,
    vocab_mean: Sequence[float] | Array,
    vocab_var: Sequence[float] | Array,
    k: float = 0.2,
) -> float:
    """Min-K%++ of one text: at each position t, (log p(x_t) - mu_t) / sigma_t with mu_t and
    sigma_t^2 the mean and variance of log p(z) under p(. | x_<t) over the vocabulary; the score
    is the mean of the lowest k share of positions. Higher means more likely seen in training."""
    logp = np.asarray(token_logprobs, dtype=float)
    mu = np.asarray(vocab_mean, dtype=float)
    var = np.asarray(vocab_var, dtype=float)
    if logp.size == 0 or logp.shape != mu.shape or mu.shape != var.shape:
        raise NotEnoughData("Min-K%++ needs one mean and variance per scored token")
    if not 0 < k <= 1:
        raise ValueError("k is a share of positions in (0, 1]")
    scores = (logp - mu) / np.sqrt(np.maximum(var, 1e-12))
    count = max(1, math.floor(k * scores.size))
    return float(np.sort(scores)[:count].mean())


# --- 4. Anomalies in stored scores ----------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    value: float
    stderr: float | None = None


@dataclass(frozen=True)
class Jump:
    """One task of a child far above every declared parent while its other tasks stay put."""

    task: str
    value: float
    best_parent: float
    jump: float  # value - best_parent
    z: float  # jump over the combined standard error
    others_z: float  # median z of the child's other tasks against the same parents
    p_value: float  # one-sided normal tail of z


# The standard error used when a stored score has none: that of an accuracy near 0.5 on 100 items.
FALLBACK_STDERR = 0.05


def parent_jumps(
    child: Mapping[str, Score],
    parents: Sequence[Mapping[str, Score]],
    min_z: float = 3.0,
    calm_z: float = 1.0,
) -> list[Jump]:
    """Tasks where the child beats its best parent by `min_z` combined standard errors or more
    while the median of its other tasks moved by at most `calm_z`: the shape of a model trained
    on one benchmark's items (a fine-tune that improves everything is not an anomaly)."""
    shared = [task for task in child if parents and all(task in p for p in parents)]
    if len(shared) < 2:
        return []
    zs: dict[str, tuple[float, float, float]] = {}
    for task in shared:
        top = max(parents, key=lambda p: p[task].value)[task]
        own = child[task]
        se = math.hypot(own.stderr or FALLBACK_STDERR, top.stderr or FALLBACK_STDERR)
        zs[task] = ((own.value - top.value) / se, own.value, top.value)
    jumps = []
    for task, (z, value, best) in zs.items():
        others = float(np.median([zs[t][0] for t in shared if t != task]))
        if z >= min_z and others <= calm_z:
            jumps.append(Jump(task, value, best, value - best, z, others, normal_tail(z)))
    return sorted(jumps, key=lambda j: -j.z)


def normal_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def bucket_outlier(value: float, bucket: Sequence[float] | Array) -> float:
    """Robust z-score of `value` within its size bucket (median and scaled MAD of the others);
    0 when the bucket has fewer than 5 scores or no spread."""
    others = np.asarray(bucket, dtype=float)
    if others.size < 5:
        return 0.0
    median = float(np.median(others))
    mad = 1.4826 * float(np.median(np.abs(others - median)))
    if mad == 0:
        return 0.0
    return (value - median) / mad


# --- Combining ------------------------------------------------------------------------------------


def bonferroni(p_values: Sequence[float]) -> float:
    """The smallest p-value times their number (capped at 1): a family-wise combination that
    holds whatever the dependence between the tests."""
    values = [p for p in p_values if p is not None and not math.isnan(p)]
    if not values:
        return 1.0
    return min(1.0, min(values) * len(values))


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos = np.asarray(positives, dtype=float)
    neg = np.asarray(negatives, dtype=float)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


# --- Findings: the signals of one evaluated model, from the numbers the worker sent ----------

KINDS = {
    "performance_vs_reference": "Scores above what its reference-set scores predict (ConStat)",
    "lineage_differential": "Gained more likelihood on the benchmark items than on reference items",
    "family_differential": "Gained more likelihood on the benchmark items than its nearest "
    "relatives' line predicts from its gain on reference items",
    "min_k_pp": "Min-K%++ membership score rose more on the benchmark items than on reference ones",
    "score_jump": "One task jumped above every declared parent while the others did not move",
    "size_outlier": "A score far out of its size bucket",
}


@dataclass(frozen=True)
class Thresholds:
    """When a statistic becomes a signal. The web side fills these from settings."""

    alpha: float = 0.01  # p-value below which a test fires
    min_effect: float = 0.5  # smallest standardised effect for the likelihood tests
    # Smallest benchmark-minus-reference gain (nats per token, or Min-K%++ units): a merge of two
    # clean models moves each item by a few hundredths, so its effect size can look large while
    # nothing was learnt.
    min_difference: float = 0.05
    jump_z: float = 3.0  # a task's jump over its best parent, in standard errors
    calm_z: float = 1.0  # the median jump of the other tasks may not exceed this
    bucket_z: float = 4.0  # robust z-score within the size bucket
    min_population: int = MIN_REFERENCE_MODELS
    min_relatives: int = MIN_RELATIVES  # the family differential's smallest family
    bootstrap: int = DEFAULT_BOOTSTRAP
    permutations: int = DEFAULT_PERMUTATIONS


@dataclass(frozen=True)
class Finding:
    """One statistic of one model on one task, fired or not (`fired` is the threshold test)."""

    kind: str  # a key of KINDS
    task: str
    statistic: float  # delta, effect size or z, by kind (named in `evidence["statistic"]`)
    p_value: float | None
    threshold: float  # alpha, or the z threshold for the score anomalies
    fired: bool
    evidence: dict[str, Any]
    figure: dict[str, Any]


References = Sequence[Mapping[str, Any]]  # suite_references() entries of one model


def _by_task(entries: References) -> dict[str, Mapping[str, Any]]:
    return {str(entry["task"]): entry for entry in entries}


def reference_findings(
    model: References,
    population: Sequence[References],
    chance: Mapping[str, float],
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    """ConStat per task and reference set (perturbed copies, sibling benchmark): the model
    against the curve of `population` (the other models on the same suite version and items)."""
    findings = []
    for task, entry in _by_task(model).items():
        bench = entry["benchmark"].get("correct") or []
        for ref_name in ("perturbed", "sibling"):
            ref = entry.get(ref_name)
            if not bench or not ref or not ref.get("correct"):
                continue
            peers = []
            for other in population:
                match = _by_task(other).get(task)
                if (
                    match
                    and match.get(ref_name)
                    and len(match["benchmark"].get("correct") or []) == len(bench)
                    and len(match[ref_name].get("correct") or []) == len(ref["correct"])
                ):
                    peers.append((match["benchmark"]["correct"], match[ref_name]["correct"]))
            if len(peers) < thresholds.min_population:
                continue
            fit = performance_vs_reference(
                bench,
                ref["correct"],
                [p[0] for p in peers],
                [p[1] for p in peers],
                chance=(chance.get(task, 0.0), chance.get(task, 0.0)),
                n_bootstrap=thresholds.bootstrap,
            )
            findings.append(
                Finding(
                    kind="performance_vs_reference",
                    task=task,
                    statistic=fit.delta,
                    p_value=fit.p_value,
                    threshold=thresholds.alpha,
                    fired=fit.p_value < thresholds.alpha,
                    evidence={
                        "statistic": "inflation delta (benchmark score above the curve)",
                        "reference": ref_name,
                        "reference_name": ref.get("name", ref_name),
                        "observed": fit.observed,
                        "expected": fit.expected,
                        "reference_score": fit.reference,
                        "delta": fit.delta,
                        "delta_low_95": fit.delta_low,
                        "models": fit.n_models,
                        "benchmark_items": len(bench),
                        "reference_items": len(ref["correct"]),
                    },
                    figure=_curve_figure(task, ref_name, peers, fit),
                )
            )
    return findings


def lineage_findings(
    model: References,
    parents: Mapping[str, References],
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    """The likelihood differential and Min-K%++ shift per task against each declared parent
    (its p-value Bonferroni-corrected for the number of parents tested): the sibling benchmark
    as reference where there is one, else the perturbed copies (paired)."""
    findings = []
    tested = {name: _by_task(entries) for name, entries in parents.items() if entries}
    for task, entry in _by_task(model).items():
        for parent_name, parent_tasks in tested.items():
            theirs = parent_tasks.get(task)
            if theirs is None:
                continue
            ref_name = "sibling" if entry.get("sibling") and theirs.get("sibling") else "perturbed"
            for kind, field_name in (
                ("lineage_differential", "text_logprob"),
                ("min_k_pp", "min_k_pp"),
            ):
                mine_b, theirs_b = entry["benchmark"][field_name], theirs["benchmark"][field_name]
                mine_r = (entry.get(ref_name) or {}).get(field_name) or []
                theirs_r = (theirs.get(ref_name) or {}).get(field_name) or []
                if len(mine_b) != len(theirs_b) or len(mine_r) != len(theirs_r) or len(mine_r) < 2:
                    continue
                bench_gain = [a - b for a, b in zip(mine_b, theirs_b, strict=True)]
                ref_gain = [a - b for a, b in zip(mine_r, theirs_r, strict=True)]
                paired = ref_name == "perturbed" and len(ref_gain) == len(bench_gain)
                result = lineage_differential(
                    bench_gain, ref_gain, paired=paired, n_permutations=thresholds.permutations
                )
                p_value = min(1.0, result.p_value * len(tested))
                findings.append(
                    Finding(
                        kind=kind,
                        task=task,
                        statistic=result.effect_size,
                        p_value=p_value,
                        threshold=thresholds.alpha,
                        fired=p_value < thresholds.alpha
                        and result.effect_size >= thresholds.min_effect
                        and result.difference >= thresholds.min_difference,
                        evidence={
                            "statistic": "standardised effect (benchmark gain - reference gain)",
                            "parent": parent_name,
                            "parents_tested": len(tested),
                            "reference": ref_name,
                            "benchmark_gain": result.benchmark_gain,
                            "reference_gain": result.reference_gain,
                            "difference": result.difference,
                            "effect_size": result.effect_size,
                            "min_effect": thresholds.min_effect,
                            "min_difference": thresholds.min_difference,
                            "paired": result.paired,
                            "benchmark_items": result.n_benchmark,
                            "reference_items": result.n_reference,
                            "measure": field_name,
                        },
                        figure=_gain_figure(task, parent_name, bench_gain, ref_gain, field_name),
                    )
                )
    return findings


def student_t_sf(t: float, df: int) -> float:
    """P(T >= t) for Student's t with `df` (a positive integer) degrees of freedom, exactly:
    the finite series for integer df (Abramowitz and Stegun 26.7.3 and 26.7.4)."""
    if df < 1:
        raise ValueError("Student's t needs at least one degree of freedom")
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        term = total = 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = (
            2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0))
        )
    else:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    tail = max(0.0, (1.0 - inside) / 2)
    return tail if t >= 0 else 1.0 - tail


@dataclass(frozen=True)
class LineFit:
    """A point against the line fitted through the others (`predicted_above`)."""

    expected: float  # the line's y at the point's x
    excess: float  # y - expected
    slope: float
    intercept: float
    residual_sd: float
    df: int
    t: float
    p_value: float  # one-sided, H0: the point lies on the others' line


def predicted_above(xs: Sequence[float], ys: Sequence[float], x: float, y: float) -> LineFit:
    """Does (x, y) lie above the least-squares line through (xs, ys)? Student's t of its
    residual with the prediction interval's standard error (k - 2 degrees of freedom); with
    every x equal (no slope to fit) against their mean (k - 1)."""
    px, py = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    k = px.size
    if k < 3:
        raise NotEnoughData("a line through the others needs at least 3 of them")
    sxx = float(((px - px.mean()) ** 2).sum())
    if sxx > 1e-12 * max(1.0, float((px**2).sum())):
        slope = float(((px - px.mean()) * (py - py.mean())).sum() / sxx)
        df = k - 2
        leverage = 1 + 1 / k + (x - px.mean()) ** 2 / sxx
    else:
        slope, df, leverage = 0.0, k - 1, 1 + 1 / k
    intercept = float(py.mean() - slope * px.mean())
    residuals = py - (intercept + slope * px)
    residual_sd = math.sqrt(float((residuals**2).sum()) / df)
    expected = intercept + slope * x
    excess = y - expected
    scale = residual_sd * math.sqrt(leverage)
    t = excess / scale if scale > 0 else (math.inf if excess > 0 else -math.inf)
    return LineFit(expected, excess, slope, intercept, residual_sd, df, t, student_t_sf(t, df))


def _family_medians(others: Sequence[tuple[Array, Array]]) -> tuple[Array, Array]:
    """Per item, the median of `others`' (benchmark, reference) values."""
    return (
        np.median(np.array([o[0] for o in others]), axis=0),
        np.median(np.array([o[1] for o in others]), axis=0),
    )


def family_findings(
    model: References,
    relatives: Mapping[str, References],
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    """The likelihood differential read against the family rather than the parent, after
    ConStat's idea applied to likelihoods: per model, the mean gain in log-likelihood of question
    + gold answer over the per-item median of the nearest relatives (`nearest_relatives`, drawn
    from the same unsuspected population as ConStat's curve), on the reference items (x) and on
    the benchmark items (y). Across the relatives the two lie on a line, because a sibling trained
    harder gains (or loses) more on both; a model that learnt the test items sits above the line
    the relatives draw at its own x, even when it barely moved from its parent, and however hard
    it was trained. `predicted_above` gives the t and p-value of its height over the line."""
    findings = []
    field_name = "text_logprob"
    for task, entry in _by_task(model).items():
        peers = {name: _by_task(refs).get(task) for name, refs in relatives.items()}
        found = {name: theirs for name, theirs in peers.items() if theirs is not None}
        ref_name = (
            "sibling"
            if entry.get("sibling") and all(t.get("sibling") for t in found.values())
            else "perturbed"
        )
        mine = (
            np.asarray(entry["benchmark"].get(field_name) or [], dtype=float),
            np.asarray((entry.get(ref_name) or {}).get(field_name) or [], dtype=float),
        )
        matching = {
            name: (
                np.asarray(theirs["benchmark"][field_name], dtype=float),
                np.asarray(theirs[ref_name][field_name], dtype=float),
            )
            for name, theirs in found.items()
            if len(theirs["benchmark"].get(field_name) or []) == mine[0].size
            and len((theirs.get(ref_name) or {}).get(field_name) or []) == mine[1].size
        }
        if len(matching) < max(3, thresholds.min_relatives) or min(m.size for m in mine) < 2:
            continue
        medians = _family_medians(list(matching.values()))
        bench_gain, ref_gain = mine[0] - medians[0], mine[1] - medians[1]
        paired = ref_name == "perturbed"
        items = lineage_differential(
            bench_gain, ref_gain, paired=paired, n_permutations=thresholds.permutations
        )
        # Each relative's mean gains against the same per-item medians: one point per model.
        points = []
        for b, r in matching.values():
            points.append((float((r - medians[1]).mean()), float((b - medians[0]).mean())))
        fit = predicted_above(
            [p[0] for p in points],
            [p[1] for p in points],
            items.reference_gain,
            items.benchmark_gain,
        )
        findings.append(
            Finding(
                kind="family_differential",
                task=task,
                statistic=fit.t,
                p_value=fit.p_value,
                threshold=thresholds.alpha,
                fired=fit.p_value < thresholds.alpha and fit.excess >= thresholds.min_difference,
                evidence={
                    "statistic": "t of the benchmark gain above the family's line",
                    "relatives": sorted(matching)[:20],
                    "relatives_compared": len(points),
                    "reference": ref_name,
                    "benchmark_gain": items.benchmark_gain,
                    "reference_gain": items.reference_gain,
                    "expected_benchmark_gain": fit.expected,
                    "excess": fit.excess,
                    "slope": fit.slope,
                    "residual_sd": fit.residual_sd,
                    "degrees_of_freedom": fit.df,
                    "t": fit.t,
                    "p_items": items.p_value,
                    "min_difference": thresholds.min_difference,
                    "paired": items.paired,
                    "benchmark_items": items.n_benchmark,
                    "reference_items": items.n_reference,
                    "measure": field_name,
                },
                figure=_family_figure(task, points, fit, items, field_name),
            )
        )
    return findings


def score_findings(
    scores: Mapping[str, Score],
    parents: Mapping[str, Mapping[str, Score]],
    buckets: Mapping[str, Sequence[float]],
    thresholds: Thresholds = Thresholds(),
) -> list[Finding]:
    """Anomalies from stored scores alone: a task jumping above every declared parent while the
    others stay, and a score far out of its size bucket (`buckets[task]`: the bucket's other
    scores)."""
    findings = []
    parent_scores = [p for p in parents.values() if p]
    for jump in parent_jumps(scores, parent_scores, thresholds.jump_z, thresholds.calm_z):
        findings.append(
            Finding(
                kind="score_jump",
                task=jump.task,
                statistic=jump.z,
                p_value=jump.p_value,
                threshold=thresholds.jump_z,
                fired=True,
                evidence={
                    "statistic": "jump over the best parent in standard errors",
                    "value": jump.value,
                    "best_parent": jump.best_parent,
                    "jump": jump.jump,
                    "z": jump.z,
                    "others_median_z": jump.others_z,
                    "parents": sorted(parents),
                },
                figure={},
            )
        )
    for task, score in scores.items():
        bucket = buckets.get(task) or []
        z = bucket_outlier(score.value, bucket)
        if z >= thresholds.bucket_z:
            findings.append(
                Finding(
                    kind="size_outlier",
                    task=task,
                    statistic=z,
                    p_value=None,
                    threshold=thresholds.bucket_z,
                    fired=True,
                    evidence={
                        "statistic": "robust z-score within the size bucket",
                        "value": score.value,
                        "bucket_median": float(np.median(bucket)),
                        "bucket_size": len(bucket),
                        "z": z,
                    },
                    figure={},
                )
            )
    return findings


def _curve_figure(
    task: str,
    ref_name: str,
    peers: Sequence[tuple[Sequence[float], Sequence[float]]],
    fit: ReferenceFit,
) -> dict[str, Any]:
    """The population, the fitted curve and the model."""
    return _against_others_figure(
        f"{task}: benchmark against {ref_name} score",
        (f"{ref_name} accuracy", "benchmark accuracy"),
        (
            "other models",
            [float(np.mean(p[1])) for p in peers],
            [float(np.mean(p[0])) for p in peers],
        ),
        ([x for x, _ in fit.curve], [y for _, y in fit.curve]),
        (fit.reference, fit.observed),
    )


def _family_figure(
    task: str,
    points: Sequence[tuple[float, float]],
    fit: LineFit,
    items: Differential,
    measure: str,
) -> dict[str, Any]:
    """The relatives, the line through them and the model."""
    xs = [p[0] for p in points] + [items.reference_gain]
    ends = [min(xs), max(xs)]
    return _against_others_figure(
        f"{task}: {measure} against the family's median",
        ("gain on the reference items", "gain on the benchmark items"),
        ("relatives", [p[0] for p in points], [p[1] for p in points]),
        (ends, [fit.intercept + fit.slope * v for v in ends]),
        (items.reference_gain, items.benchmark_gain),
    )


def _against_others_figure(
    title: str,
    axes: tuple[str, str],
    others: tuple[str, Sequence[float], Sequence[float]],
    expected: tuple[Sequence[float], Sequence[float]],
    model: tuple[float, float],
) -> dict[str, Any]:
    """A small Plotly figure: the others as points, what they predict as a line, the model in
    red above or on it (ConStat's curve and the family's line)."""
    name, xs, ys = others
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": name,
                "x": [round(v, 4) for v in xs],
                "y": [round(v, 4) for v in ys],
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "expected",
                "x": [round(v, 4) for v in expected[0]],
                "y": [round(v, 4) for v in expected[1]],
            },
            {
                "type": "scatter",
                "mode": "markers",
                "name": "this model",
                "x": [round(model[0], 4)],
                "y": [round(model[1], 4)],
                "marker": {"size": 12, "color": "#c0392b"},
            },
        ],
        "layout": {
            "title": {"text": title},
            "xaxis": {"title": {"text": axes[0]}},
            "yaxis": {"title": {"text": axes[1]}},
            "height": 280,
            "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        },
    }


def _gain_figure(
    task: str, parent: str, bench_gain: Sequence[float], ref_gain: Sequence[float], measure: str
) -> dict[str, Any]:
    return {
        "data": [
            {"type": "box", "name": "benchmark items", "y": [round(v, 3) for v in bench_gain]},
            {"type": "box", "name": "reference items", "y": [round(v, 3) for v in ref_gain]},
        ],
        "layout": {
            "title": {"text": f"{task}: gain in {measure} over {parent}"},
            "height": 280,
            "showlegend": False,
            "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        },
    }
