"""Relations between models read from their weight fingerprints (`evaluator.fingerprint`), each
with a score and the evidence behind it, and the index that finds candidates without a scan.

Pure functions over fingerprints; nothing here reads weights, a database or the network.

- `same_weights`: every tensor hash equal (a re-upload), or the sketches equal once both are
  rounded to the coarser of their precisions (a bf16/fp16/fp32 cast of the same weights).
- `merge_of`: the target's layers are, tensor by tensor, a combination of two or more candidates
  with material positive weights (linear and SLERP merges exactly); a candidate with a negative
  weight is the merge's base (task arithmetic) and is reported as such, not as a parent. TIES
  and DARE merges are not combinations of their parents (each coordinate keeps some parents'
  task vectors and drops the others): they are found as a sparse fit, below.
- `derived_from`: one candidate explains the target (a fine-tune: small relative distance on
  most layers); the parent is the older model (callers pass older candidates only).
- `independent`: nothing explains it.

Candidates are chosen greedily (forward selection by residual energy): a candidate joins only
when it removes at least `NEXT_MIN_GAIN` of what is left unexplained, so a fine-tune's own update
is never "explained" by a sibling and a merge is never mistaken for its closest parent.

Sparse merges (TIES, DARE, breadcrumbs: trimmed, dropped or sign-elected task vectors) are
tested against a base: every coordinate of the target's delta from the base must be, up to the
rounding of the target's precision, zero or one fixed combination (per tensor) of the deltas of
a subset of the parents. A merge meets that exactly; a fine-tune never does, since its own update
is dense and matches nothing coordinate by coordinate. Choosing per coordinate among a few
options does explain part of anything, so the test asks for the whole delta (all but
`SPARSE_MAX_SHARE`), and each parent must be needed: with its delta shuffled within each tensor
(same magnitudes, no alignment) the fit must fail.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluator.fingerprint import iter_sketches
from evaluator.graph import reachable

SAME_WEIGHTS = "same_weights"
DERIVED_FROM = "derived_from"
MERGE_OF = "merge_of"
INDEPENDENT = "independent"
KINDS = (SAME_WEIGHTS, DERIVED_FROM, MERGE_OF, INDEPENDENT)

# A cast rounds each value once; double rounding (fp32 -> fp16 -> bf16) and fp16 subnormals
# make a few values differ by one unit in the last place.
CAST_MIN_EQUAL = 0.98
CAST_MIN_EQUAL_PER_TENSOR = 0.9
# Residual energy left after the first candidate (1 - cos^2): 0.75 is a cosine of 0.5, far
# above independent models' ~0 and below any fine-tune we measured.
FIRST_MAX_RESIDUAL = 0.75
# A further candidate must remove at least this share of what is still unexplained. TIES and
# DARE merges (trimmed, sign-elected task vectors) gain ~40% from their second parent on the
# tiny bench family; a sibling fine-tune explains ~30% of a fine-tune trained the same way.
NEXT_MIN_GAIN = 0.4
PAIR_LEADERS = 6
# A chosen model gives way to one of its own parents that explains the target nearly as well.
SOURCE_SLACK = 1.5
# For merges the fit is sharper: a parent must explain nearly as well as the merge it replaces.
MERGE_SOURCE_SLACK = 1.2
# Below this residual energy the fit is exact up to float32 and fp16/bf16 rounding.
EXACT_RESIDUAL = 1e-9
MIN_MERGE_WEIGHT = 0.1
# Declared parents are kept when they leave at most this much more unexplained than the best
# set found from the weights alone.
# Fine-tunes of one base made with the same optimiser are aligned (on the tiny bench family a
# sibling explains a fine-tune 2-2.5x better than their common parent), so the slack is wide;
# a parent the weights contradict is unrelated (over FIRST_MAX_RESIDUAL) or much farther.
DECLARED_SLACK = 3.0
MAX_PARENTS = 6

# Sparse merges. The share of the target's delta energy (beyond rounding) a sparse fit may leave:
# a merge leaves rounding noise only (~1e-12 on the bench families), choosing per coordinate
# among a few unrelated options leaves 10-90% of a fine-tune's update.
SPARSE_MAX_SHARE = 0.01
SPARSE_PARENTS = (2, 3)
# Parents are sought among the closest single candidates, bases among the candidates whose
# values the target repeats most often (a sparse merge leaves many coordinates at the base).
SPARSE_LEADERS = 5
SPARSE_BASES = 3
# A hypothesis is screened on two tensors, then eight, before every tensor is fitted.
SPARSE_SCREENS = (2, 8)
SPARSE_ITERATIONS = 6
SHUFFLE_SEED = 0

# LSH of the sketches: 48 bands of 10 random-hyperplane bits. A pair with sketch cosine 0.9
# shares a band with probability ~1.0, 0.7 with ~0.93; unrelated models (cosine ~0) collide in
# some band with probability ~4.6%, so a lookup returns a small share of the catalog.
LSH_BANDS = 48
LSH_ROWS = 10
LSH_TENSORS = 64
LSH_ELEMENTS = 256
LSH_SEED = 7


@dataclass
class Sketch:
    """A fingerprint unpacked for comparison."""

    id: str
    architecture: str
    digest: str
    exact: bool
    dtypes: dict[str, str]
    hashes: dict[str, tuple[str | None, str | None]]
    matrices: dict[str, np.ndarray]  # tensors of two or more dimensions
    vectors: dict[str, np.ndarray]  # one-dimensional (norms, biases)

    @classmethod
    def of(cls, model_id: str, fp: Mapping[str, Any]) -> Sketch:
        matrices: dict[str, np.ndarray] = {}
        vectors: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        for name, dtype, shape, values in iter_sketches(dict(fp)):
            (matrices if len(shape) >= 2 else vectors)[name] = values
            dtypes[name] = dtype
        return cls(
            id=model_id,
            architecture=fp["architecture"],
            digest=fp["weights_digest"],
            exact=bool(fp.get("exact")),
            dtypes=dtypes,
            hashes={t["name"]: (t.get("sha256"), t.get("sample_sha256")) for t in fp["tensors"]},
            matrices=matrices,
            vectors=vectors,
        )


@dataclass(frozen=True)
class Relation:
    kind: str
    target: str
    parents: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    score: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "parents": list(self.parents),
            "weights": [round(w, 4) for w in self.weights],
            "score": round(self.score, 4),
            "evidence": self.evidence,
        }


# --- same weights -----------------------------------------------------------------------------


def _round_bf16(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _round_f16(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return values.astype(np.float16).astype(np.float32)


def precision_of(values: np.ndarray, dtype: str) -> str:
    """The precision the values actually carry: an fp32 file of upcast bf16 weights is bf16."""
    if dtype == "BF16" or not np.any(values.view(np.uint32) & 0xFFFF):
        return "bf16"
    if dtype == "F16" or np.array_equal(_round_f16(values), values):
        return "f16"
    return "f32"


def _coarser(first: str, second: str) -> str:
    order = {"f32": 0, "f16": 1, "bf16": 2}
    return first if order[first] >= order[second] else second


def same_weights(a: Sketch, b: Sketch) -> dict[str, Any] | None:
    """Evidence that `a` and `b` hold the same weights, or None."""
    if a.architecture != b.architecture:
        return None
    if a.digest == b.digest:
        how = "every tensor's sha256" if a.exact and b.exact else "every tensor's sampled bytes"
        return {"how": "identical", "matched": how, "tensors": len(a.hashes), "equal": 1.0}
    if a.exact and b.exact:
        return None  # exact hashes differ: a cast would still match below
    equal = total = 0
    worst = 1.0
    casts: set[tuple[str, str]] = set()
    stored = {
        (a.dtypes[n], b.dtypes.get(n, "")) for n in a.dtypes if a.dtypes[n] != b.dtypes.get(n)
    }
    for name, left in (a.matrices | a.vectors).items():
        right = b.matrices.get(name, b.vectors.get(name))
        if right is None or right.shape != left.shape:
            return None
        p_left, p_right = precision_of(left, a.dtypes[name]), precision_of(right, b.dtypes[name])
        coarse = _coarser(p_left, p_right)
        if p_left == p_right:
            # Same precision: a cast between them would be the identity, so values must match.
            same = left == right
        else:
            rounder = _round_bf16 if coarse == "bf16" else _round_f16
            low, high = rounder(left), rounder(right)
            same = low == high
            if "f32" not in (p_left, p_right):
                # fp16 and bf16 copies of one fp32 model: the fp16 side was rounded twice, which
                # moves values that fell on a bf16 midpoint by one bf16 unit (~6% of them).
                same |= np.abs(low - high) <= np.spacing(np.abs(low)) * 65536
            casts.add((p_left, p_right))
        count = int(np.count_nonzero(same))
        equal, total = equal + count, total + same.size
        worst = min(worst, count / max(1, same.size))
    if total == 0 or not (casts or stored):
        return None
    fraction = equal / total
    if fraction < CAST_MIN_EQUAL or worst < CAST_MIN_EQUAL_PER_TENSOR:
        return None
    return {
        "how": "cast",
        "precisions": sorted({f"{x}->{y}" for x, y in casts}),
        "dtypes": sorted({f"{x}->{y}" for x, y in stored}),
        "equal": round(fraction, 6),
        "worst_tensor_equal": round(worst, 6),
        "compared_values": total,
    }


# --- explaining a model by others ------------------------------------------------------------


@dataclass
class _Fit:
    chosen: list[str]
    residual: float  # mean over tensors of unexplained energy share
    weights: dict[str, float]  # median over tensors of each chosen candidate's weight
    per_tensor_residual: list[float]
    base: str | None = None  # sparse fits: the model the task vectors are taken from
    evidence: dict[str, Any] = field(default_factory=dict)


def _fit(target: Sketch, chosen: Sequence[Sketch], names: Sequence[str]) -> _Fit:
    residuals, weights = [], []
    for name in names:
        x = target.matrices[name].astype(np.float64)
        design = np.stack([c.matrices[name].astype(np.float64) for c in chosen], axis=1)
        solution, *_ = np.linalg.lstsq(design, x, rcond=None)
        rest = x - design @ solution
        energy = float(x @ x) or 1.0
        residuals.append(float(rest @ rest) / energy)
        weights.append(solution)
    stacked = np.array(weights)
    return _Fit(
        chosen=[c.id for c in chosen],
        residual=float(np.mean(residuals)),
        weights={c.id: float(np.median(stacked[:, i])) for i, c in enumerate(chosen)},
        per_tensor_residual=residuals,
    )


def _shared_matrices(target: Sketch, candidates: Iterable[Sketch]) -> list[str]:
    names = set(target.matrices)
    for candidate in candidates:
        names &= {n for n, v in candidate.matrices.items() if v.shape == target.matrices[n].shape}
    return sorted(names)


def relative_distances(target: Sketch, other: Sketch) -> dict[str, float]:
    """Per-matrix ||target - other|| / ||other|| on the sketches."""
    out = {}
    for name in _shared_matrices(target, [other]):
        x, y = target.matrices[name], other.matrices[name]
        out[name] = float(np.linalg.norm(x - y) / (np.linalg.norm(y) or 1.0))
    return out


def cosine(target: Sketch, other: Sketch) -> float:
    """Median over shared matrices of the cosine between sketches."""
    values = []
    for name in _shared_matrices(target, [other]):
        x, y = target.matrices[name], other.matrices[name]
        denominator = float(np.linalg.norm(x) * np.linalg.norm(y)) or 1.0
        values.append(float(x @ y) / denominator)
    return float(np.median(values)) if values else 0.0


# --- sparse merges (TIES, DARE) ----------------------------------------------------------------


def _tolerance(values: np.ndarray, dtype: str) -> np.ndarray:
    """One unit in the last place of each value at the precision it carries: the rounding a
    merge's output went through (and float32 arithmetic within it)."""
    values32 = np.abs(values.astype(np.float32))
    precision = precision_of(values.astype(np.float32), dtype)
    if precision == "bf16":
        return np.spacing(values32).astype(np.float64) * 65536.0
    if precision == "f16":
        return np.spacing(values32.astype(np.float16)).astype(np.float64)
    return np.spacing(values32).astype(np.float64) * 2.0


@functools.cache
def _subsets(k: int) -> tuple[tuple[int, ...], ...]:
    return tuple(s for size in range(1, k + 1) for s in itertools.combinations(range(k), size))


def _solve(design: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least squares through the normal equations (one to three columns: much cheaper than
    `lstsq` in the inner loop), falling back to `lstsq` when they are singular."""
    try:
        return np.linalg.solve(design.T @ design, design.T @ values)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(design, values, rcond=None)[0]


def _sparse_tensor(
    delta: np.ndarray, parents: np.ndarray, tolerance: np.ndarray
) -> tuple[float, dict[tuple[int, ...], np.ndarray], np.ndarray]:
    """Each coordinate of `delta` is zero or, for one subset of the parents, a combination of
    their deltas with coefficients fitted per subset (alternating assignment and least squares).
    Returns the energy left beyond `tolerance`, the coefficients and each coordinate's option
    (0: zero, i: the i-th subset)."""
    subsets = _subsets(parents.shape[1])
    solution = _solve(parents, delta)
    # Two starts: the dense fit's weights, and TIES's normalised mean (a parent alone kept
    # whole, several averaged); alternation from one of them reaches the exact fit of a merge.
    starts = (
        {s: np.full(len(s), 1.0 / len(s)) for s in subsets},
        {s: solution[list(s)] for s in subsets},
    )
    best: tuple[float, dict[tuple[int, ...], np.ndarray], np.ndarray] | None = None
    for coefficients in starts:
        previous = None
        for iteration in range(SPARSE_ITERATIONS + 1):
            predictions = np.stack(
                [np.zeros_like(delta)] + [parents[:, list(s)] @ coefficients[s] for s in subsets],
                axis=1,
            )
            miss = np.maximum(np.abs(delta[:, None] - predictions) - tolerance[:, None], 0.0) ** 2
            assigned = miss.argmin(axis=1)
            if iteration == SPARSE_ITERATIONS or (
                previous is not None and np.array_equal(assigned, previous)
            ):
                break
            previous = assigned
            for option, subset in enumerate(subsets, start=1):
                rows = assigned == option
                if np.count_nonzero(rows) > len(subset):
                    coefficients[subset] = _solve(parents[rows][:, list(subset)], delta[rows])
        left = float(miss[np.arange(delta.size), assigned].sum())
        if best is None or left < best[0]:
            best = (left, coefficients, assigned)
        if left == 0.0:
            break  # every coordinate within rounding: the other start cannot do better
    assert best is not None
    return best


def _sparse_fit(
    target: Sketch,
    parents: Sequence[Sketch],
    base: Sketch,
    names: Sequence[str],
    shuffle: int | None = None,
) -> _Fit | None:
    """The sparse fit of `target` as `base` plus trimmed, sign-elected task vectors of `parents`
    over `names`; `shuffle` permutes that parent's delta within each tensor (the null)."""
    shares, raw, weights = [], [], []
    zero = counted = 0
    for name in names:
        x = target.matrices[name].astype(np.float64)
        origin = base.matrices[name].astype(np.float64)
        delta = x - origin
        energy = float(delta @ delta)
        if energy == 0.0:
            continue  # the tensor is the base's: nothing to explain
        deltas = np.stack([p.matrices[name].astype(np.float64) - origin for p in parents], axis=1)
        if shuffle is not None:
            rng = np.random.default_rng(SHUFFLE_SEED)
            deltas[:, shuffle] = rng.permutation(deltas[:, shuffle])
        left, coefficients, assigned = _sparse_tensor(
            delta, deltas, _tolerance(target.matrices[name], target.dtypes[name])
        )
        shares.append(left / energy)
        raw.append(left / (float(x @ x) or 1.0))
        weights.append(coefficients[tuple(range(len(parents)))])
        zero += int(np.count_nonzero(assigned == 0))
        counted += assigned.size
    if not shares:
        return None
    stacked = np.array(weights)
    return _Fit(
        chosen=[p.id for p in parents],
        residual=float(np.mean(raw)),
        weights={p.id: float(np.median(stacked[:, i])) for i, p in enumerate(parents)},
        per_tensor_residual=raw,
        base=base.id,
        evidence={
            "method": "sparse",
            "delta_share_unexplained": float(np.mean(shares)),
            "share_at_base": round(zero / max(1, counted), 4),
        },
    )


def _screen_names(names: Sequence[str], count: int) -> list[str]:
    """`count` names spread over `names` (a merge is exact on every tensor; a hypothesis that is
    not exact on a few is rejected before the rest are fitted)."""
    if len(names) <= count:
        return list(names)
    step = len(names) / count
    return [names[int((i + 0.5) * step)] for i in range(count)]


def _exact(fit: _Fit | None, closest: float) -> bool:
    """A sparse fit is exact when it leaves at most `SPARSE_MAX_SHARE` of the target's delta from
    the base and of what the closest single candidate leaves (a distant base makes any delta
    large; the closest candidate is the scale of what a merge must explain beyond one model),
    and every parent enters with a material positive weight (TIES and DARE add task vectors; an
    exact fit that subtracts one re-expresses the merge through models that contain its
    parents)."""
    return (
        fit is not None
        and fit.evidence["delta_share_unexplained"] <= SPARSE_MAX_SHARE
        and fit.residual <= SPARSE_MAX_SHARE * closest
        and min(fit.weights.values()) >= MIN_MERGE_WEIGHT
    )


def sparse_merge(
    target: Sketch,
    parents: Sequence[Sketch],
    base: Sketch,
    names: Sequence[str],
    closest: Sketch,
) -> _Fit | None:
    """The sparse fit when it explains the target exactly and needs every parent, else None.
    `closest` is the single candidate that explains the target best."""
    for count in SPARSE_SCREENS:
        screen = _screen_names(names, count)
        reference = _fit(target, [closest], screen).residual
        screened = _sparse_fit(target, parents, base, screen)
        if not _exact(screened, reference):
            return None
    for index in range(len(parents)):
        if _exact(_sparse_fit(target, parents, base, screen, shuffle=index), reference):
            return None  # that parent's alignment adds nothing: it is not a parent
    fit = _sparse_fit(target, parents, base, names) if len(screen) < len(names) else screened
    return fit if _exact(fit, _fit(target, [closest], names).residual) else None


def _repeated_share(target: Sketch, other: Sketch, names: Sequence[str]) -> float:
    """Share of sampled coordinates where `target` holds `other`'s value (up to rounding)."""
    same = total = 0
    for name in names:
        x, y = target.matrices[name], other.matrices[name]
        close = np.abs(x.astype(np.float64) - y) <= _tolerance(x, target.dtypes[name])
        same, total = same + int(np.count_nonzero(close)), total + x.size
    return same / max(1, total)


def _closest_deltas(
    target: Sketch, pool: Sequence[Sketch], base: Sketch, names: Sequence[str]
) -> list[str]:
    """Candidates other than `base` by the cosine of their delta from `base` with the target's:
    a sparse merge's delta keeps a large part of each parent's."""
    scores = []
    for candidate in pool:
        if candidate.id == base.id:
            continue
        cosines = []
        for name in names:
            origin = base.matrices[name].astype(np.float64)
            x = target.matrices[name].astype(np.float64) - origin
            y = candidate.matrices[name].astype(np.float64) - origin
            denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
            cosines.append(float(x @ y) / denominator if denominator else 0.0)
        scores.append((float(np.mean(cosines)), candidate.id))
    return [cid for score, cid in sorted(scores, reverse=True) if score > 0]


def find_sparse_merge(
    target: Sketch,
    pool: Sequence[Sketch],
    singles: Sequence[_Fit],
    names: Sequence[str],
    parents_of: Mapping[str, Sequence[str]] | None = None,
) -> _Fit | None:
    """The best exact sparse fit, or None: bases among the known common ancestors of the closest
    candidates and the candidates whose values the target repeats most; for each base, parents
    among the candidates whose deltas from it are closest to the target's; pairs before
    triples."""
    by_id = {c.id: c for c in pool}
    closest = by_id[singles[0].chosen[0]]
    screen = _screen_names(names, SPARSE_SCREENS[-1])
    shared: dict[str, int] = {}
    for fit in singles[:SPARSE_LEADERS]:
        for ancestor in reachable(fit.chosen[0], parents_of or {}):
            if ancestor in by_id:
                shared[ancestor] = shared.get(ancestor, 0) + 1
    ordered = sorted(shared, key=lambda a: -shared[a])[:SPARSE_BASES]
    repeated = sorted(pool, key=lambda c: -_repeated_share(target, c, screen))
    ordered += [c.id for c in repeated if c.id not in ordered][:SPARSE_BASES]
    leaders = {
        base: _closest_deltas(target, pool, by_id[base], screen)[:SPARSE_LEADERS]
        for base in ordered
    }
    for size in SPARSE_PARENTS:
        found = []
        for base in ordered:
            for group in itertools.combinations(leaders[base], size):
                trial = sparse_merge(target, [by_id[p] for p in group], by_id[base], names, closest)
                if trial is not None:
                    found.append(trial)
        if found:
            return min(found, key=lambda fit: fit.residual)
    return None


def explain(
    target: Sketch,
    candidates: Sequence[Sketch],
    parents_of: Mapping[str, Sequence[str]] | None = None,
) -> _Fit | None:
    """Forward selection: the smallest set of candidates whose per-tensor least-squares
    combination explains the target, or an exact sparse merge when no combination does, or None
    when no candidate explains it. Known ancestors of the candidates (`parents_of`) are tried
    first as a sparse merge's base."""
    pool = [c for c in candidates if c.architecture == target.architecture and c.id != target.id]
    if not pool:
        return None
    names = _shared_matrices(target, pool)
    if not names:
        return None
    singles = sorted((_fit(target, [c], names) for c in pool), key=lambda fit: fit.residual)
    if singles[0].residual > FIRST_MAX_RESIDUAL:
        return None
    by_id = {c.id: c for c in pool}
    best = singles[0]
    # The closest single model of a merge is often another merge of the same parents: pairs
    # among the closest few are tried too, not only pairs that extend the closest one.
    leaders = [by_id[fit.chosen[0]] for fit in singles[:PAIR_LEADERS]]
    pairs = [
        _fit(target, [first, second], names)
        for index, first in enumerate(leaders)
        for second in leaders[index + 1 :]
    ]
    extended = [
        _fit(target, [by_id[best.chosen[0]], c], names) for c in pool if c.id != best.chosen[0]
    ]
    for trial in sorted(pairs + extended, key=lambda fit: fit.residual)[:1]:
        if best.residual > EXACT_RESIDUAL and trial.residual <= best.residual * (1 - NEXT_MIN_GAIN):
            best = trial
    if len(best.chosen) >= 2:
        while len(best.chosen) < MAX_PARENTS and best.residual > EXACT_RESIDUAL:
            chosen = [by_id[cid] for cid in best.chosen]
            trials = [_fit(target, [*chosen, c], names) for c in pool if c.id not in best.chosen]
            if not trials:
                break
            trial = min(trials, key=lambda fit: fit.residual)
            if trial.residual > best.residual * (1 - NEXT_MIN_GAIN):
                break
            best = trial
    if best.residual > EXACT_RESIDUAL:
        # No combination is exact: a TIES or DARE merge is, coordinate by coordinate.
        sparse = find_sparse_merge(target, pool, singles, names, parents_of)
        if sparse is not None:
            return sparse
    return best


def prefer_sources(
    target: Sketch,
    fit: _Fit,
    pool: Sequence[Sketch],
    parents_of: Mapping[str, Sequence[str]],
) -> _Fit:
    """Replace a chosen model by one of its own parents while the fit stays within
    `SOURCE_SLACK`: a merge that contains a parent, or a sibling fine-tuned the same way,
    explains a model almost as well as the parent itself; the simpler story is the parent.
    `parents_of` maps a candidate to its known parents (declared or confirmed edges)."""
    by_id = {c.id: c for c in pool}
    names = _shared_matrices(target, [by_id[cid] for cid in fit.chosen])
    for _ in range(2 * MAX_PARENTS):
        changed = False
        for cid in fit.chosen:
            for parent in parents_of.get(cid, ()):
                if parent not in by_id or parent in fit.chosen:
                    continue
                chosen = [by_id[parent if c == cid else c] for c in fit.chosen]
                trial = _fit(target, chosen, names)
                slack = SOURCE_SLACK if len(fit.chosen) == 1 else MERGE_SOURCE_SLACK
                if trial.residual <= slack * fit.residual + EXACT_RESIDUAL:
                    fit, changed = trial, True
                    break
            if changed:
                break
        if not changed:
            break
    return fit


def _declared_fit(
    target: Sketch,
    known: Sequence[Sketch],
    pool: Sequence[Sketch],
    fit: _Fit | None,
    names: Sequence[str],
) -> _Fit:
    """How well the declared parents explain the target: their least-squares combination, or a
    sparse merge of them (a TIES card declares the base among its parents, mergekit's does; the
    base the weights show is tried too)."""
    stated = _fit(target, known, names)
    if len(known) < 2:
        return stated
    by_id = {c.id: c for c in pool}
    names_all = _shared_matrices(target, pool)
    closest = min(pool, key=lambda c: _fit(target, [c], names_all).residual)
    bases = [c.id for c in known]
    if fit is not None and fit.base is not None and fit.base not in bases:
        bases.append(fit.base)
    for base in bases:
        parents = [c for c in known if c.id != base]
        if len(parents) not in SPARSE_PARENTS:
            continue
        sparse = sparse_merge(target, parents, by_id[base], names_all, closest)
        if sparse is not None and sparse.residual < stated.residual:
            stated = sparse
    return stated


def relate(
    target: Sketch,
    candidates: Sequence[Sketch],
    declared: Sequence[str] = (),
    parents_of: Mapping[str, Sequence[str]] | None = None,
) -> Relation:
    """The relation of `target` to older `candidates` (the caller passes only models that
    precede it: submitted earlier, or declared as its parents).

    `declared` parents (ids among the candidates) are checked against the weights: when they
    explain the target about as well as the best set the search finds (a fine-tune of a
    sibling's parent can look like the sibling's child; only the card or the dates tell them
    apart), they are kept and the evidence says so; when they do not, the evidence names them
    as contradicted and the relation is what the weights show."""
    pool = [c for c in candidates if c.architecture == target.architecture and c.id != target.id]
    copies = [(c, found) for c in pool if (found := same_weights(target, c)) is not None]
    if copies:
        original, found = copies[0]
        return Relation(
            SAME_WEIGHTS,
            target.id,
            parents=tuple(c.id for c, _ in copies),
            weights=tuple(1.0 for _ in copies),
            score=float(found["equal"]),
            evidence={**found, "original": original.id},
        )
    fit = explain(target, pool, parents_of)
    if fit is not None and fit.base is None and parents_of:
        # A sparse fit is exact only with the models actually merged: nothing to simplify.
        fit = prefer_sources(target, fit, pool, parents_of)
    evidence: dict[str, Any] = {"candidates": len(pool)}
    known = [c for c in pool if c.id in set(declared)]
    if known:
        names = _shared_matrices(target, known)
        stated = _declared_fit(target, known, pool, fit, names) if names else None
        supported = (
            stated is not None
            and stated.residual <= FIRST_MAX_RESIDUAL
            and (fit is None or stated.residual <= DECLARED_SLACK * fit.residual + EXACT_RESIDUAL)
        )
        evidence["declared"] = {
            "parents": [c.id for c in known],
            "supported": supported,
            "residual": stated.residual if stated is not None else 1.0,
        }
        if supported and stated is not None and stated.base is not None:
            fit = stated
        elif supported and stated is not None:
            # Keep only the declared parents the fit actually uses.
            used = [c for c in known if abs(stated.weights[c.id]) >= MIN_MERGE_WEIGHT]
            fit = _fit(target, used or known, names)
    if fit is None:
        best = max((cosine(target, c) for c in pool), default=0.0)
        return Relation(
            INDEPENDENT,
            target.id,
            score=1.0 - max(0.0, best),
            evidence={**evidence, "best_cosine": round(best, 4)},
        )
    if fit.base is not None:
        positive, base = list(fit.chosen), [fit.base]
    else:
        positive = [cid for cid in fit.chosen if fit.weights[cid] >= MIN_MERGE_WEIGHT]
        base = [cid for cid in fit.chosen if fit.weights[cid] <= -MIN_MERGE_WEIGHT]
    explained = 1.0 - fit.residual
    evidence |= fit.evidence
    evidence |= {
        "residual": fit.residual,
        "median_tensor_residual": float(np.median(fit.per_tensor_residual)),
        "tensors": len(fit.per_tensor_residual),
        "weights": {cid: round(w, 4) for cid, w in fit.weights.items()},
    }
    if len(positive) >= 2:
        if base:
            evidence["base"] = base
        return Relation(
            MERGE_OF,
            target.id,
            parents=tuple(positive),
            weights=tuple(fit.weights[cid] for cid in positive),
            score=explained,
            evidence=evidence,
        )
    parent = positive[0] if positive else fit.chosen[0]
    other = next(c for c in pool if c.id == parent)
    distances = relative_distances(target, other)
    evidence["median_relative_distance"] = float(np.median(list(distances.values())))
    evidence["cosine"] = cosine(target, other)
    return Relation(
        DERIVED_FROM,
        target.id,
        parents=(parent,),
        weights=(1.0,),
        score=explained,
        evidence=evidence,
    )


# --- candidate index --------------------------------------------------------------------------


def _signature_vector(sketch: Sketch) -> np.ndarray:
    names = sorted(sketch.matrices)
    if len(names) > LSH_TENSORS:
        step = len(names) / LSH_TENSORS
        names = [names[int(i * step)] for i in range(LSH_TENSORS)]
    parts = []
    for name in names:
        values = sketch.matrices[name][:LSH_ELEMENTS].astype(np.float64)
        parts.append(values / (np.linalg.norm(values) or 1.0))
    return np.concatenate(parts) if parts else np.zeros(0)


@functools.lru_cache(maxsize=8)
def _hyperplanes(dimensions: int) -> np.ndarray:
    rng = np.random.default_rng(LSH_SEED + dimensions)
    return rng.standard_normal((dimensions, LSH_BANDS * LSH_ROWS))


def band_keys(sketch: Sketch) -> list[str]:
    """The LSH bucket keys of a model: one per band, prefixed by its architecture so models of
    different architectures never share a bucket. Store them beside the fingerprint; a lookup is
    an equality match on any key."""
    vector = _signature_vector(sketch)
    bits = (vector @ _hyperplanes(vector.size)) > 0 if vector.size else np.zeros(0, bool)
    keys = []
    for band in range(LSH_BANDS):
        chunk = bits[band * LSH_ROWS : (band + 1) * LSH_ROWS]
        value = int("".join("1" if bit else "0" for bit in chunk) or "0", 2)
        keys.append(f"{sketch.architecture[:16]}:{band}:{value:x}")
    return keys


def digest_key(sketch: Sketch) -> str:
    return hashlib.sha256(f"{sketch.architecture}:{sketch.digest}".encode()).hexdigest()[:32]


class CandidateIndex:
    """In-memory LSH buckets (the web side keeps the same keys in a table)."""

    def __init__(self) -> None:
        self.buckets: dict[str, set[str]] = {}
        self.by_digest: dict[str, set[str]] = {}

    def add(self, sketch: Sketch) -> None:
        for key in band_keys(sketch):
            self.buckets.setdefault(key, set()).add(sketch.id)
        self.by_digest.setdefault(digest_key(sketch), set()).add(sketch.id)

    def candidates(self, sketch: Sketch) -> set[str]:
        found = set(self.by_digest.get(digest_key(sketch), set()))
        for key in band_keys(sketch):
            found |= self.buckets.get(key, set())
        found.discard(sketch.id)
        return found
