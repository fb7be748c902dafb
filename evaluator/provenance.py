"""Relations between models read from their weight fingerprints (`evaluator.fingerprint`), each
with a score and the evidence behind it, and the index that finds candidates without a scan.

Pure functions over fingerprints; nothing here reads weights, a database or the network.

- `same_weights`: every tensor hash equal (a re-upload), or the sketches equal once both are
  rounded to the coarser of their precisions (a bf16/fp16/fp32 cast of the same weights).
- `merge_of`: the target's layers are, tensor by tensor, a combination of two or more candidates
  with material positive weights (linear and SLERP merges exactly, TIES/DARE approximately);
  a candidate with a negative weight is the merge's base (task arithmetic) and is reported as
  such, not as a parent.
- `derived_from`: one candidate explains the target (a fine-tune: small relative distance on
  most layers); the parent is the older model (callers pass older candidates only).
- `independent`: nothing explains it.

Candidates are chosen greedily (forward selection by residual energy): a candidate joins only
when it removes at least half of what is left unexplained, so a fine-tune's own update is never
"explained" by a sibling and a merge is never mistaken for its closest parent.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluator.fingerprint import iter_sketches

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


def explain(target: Sketch, candidates: Sequence[Sketch]) -> _Fit | None:
    """Forward selection: the smallest set of candidates whose per-tensor least-squares
    combination explains the target, or None when no candidate explains it."""
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
    if len(best.chosen) < 2:
        return best
    while len(best.chosen) < MAX_PARENTS and best.residual > EXACT_RESIDUAL:
        chosen = [by_id[cid] for cid in best.chosen]
        trials = [_fit(target, [*chosen, c], names) for c in pool if c.id not in best.chosen]
        if not trials:
            break
        trial = min(trials, key=lambda fit: fit.residual)
        if trial.residual > best.residual * (1 - NEXT_MIN_GAIN):
            break
        best = trial
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
    fit = explain(target, pool)
    if fit is not None and parents_of:
        fit = prefer_sources(target, fit, pool, parents_of)
    evidence: dict[str, Any] = {"candidates": len(pool)}
    known = [c for c in pool if c.id in set(declared)]
    if known:
        names = _shared_matrices(target, known)
        stated = _fit(target, known, names) if names else None
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
        if supported and stated is not None:
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
    positive = [cid for cid in fit.chosen if fit.weights[cid] >= MIN_MERGE_WEIGHT]
    base = [cid for cid in fit.chosen if fit.weights[cid] <= -MIN_MERGE_WEIGHT]
    explained = 1.0 - fit.residual
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
