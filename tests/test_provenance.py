"""Relations from fingerprints on synthetic weights with known answers, and the LSH index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluator.fingerprint import fingerprint_path
from evaluator.provenance import (
    DERIVED_FROM,
    INDEPENDENT,
    MERGE_OF,
    SAME_WEIGHTS,
    CandidateIndex,
    Sketch,
    band_keys,
    relate,
    same_weights,
)
from tests.test_fingerprint import write_model

SHAPES = {f"layers.{i}.{part}.weight": (96, 64) for i in range(4) for part in ("q", "mlp")}
SHAPES |= {f"layers.{i}.norm.weight": (64,) for i in range(4)}


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (
            torch.randn(shape, generator=generator) * 0.02 if len(shape) == 2 else torch.ones(shape)
        )
        for name, shape in SHAPES.items()
    }


def step(base: dict[str, torch.Tensor], seed: int, size: float) -> dict[str, torch.Tensor]:
    """A fine-tune: every matrix moved by independent noise of `size` times its scale."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: value + size * 0.02 * torch.randn(value.shape, generator=generator)
        if value.dim() == 2
        else value
        for name, value in base.items()
    }


def combine(parts: list[tuple[float, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    return {name: sum(w * p[name] for w, p in parts) for name in parts[0][1]}


def slerp(a: dict, b: dict, t: float) -> dict:
    out = {}
    for name in a:
        x, y = a[name].double(), b[name].double()
        cos = float((x.flatten() @ y.flatten()) / (x.norm() * y.norm()))
        theta = math.acos(max(-1.0, min(1.0, cos)))
        if theta < 1e-6:
            out[name] = ((1 - t) * x + t * y).float()
            continue
        out[name] = (
            (math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta)
        ).float()
    return out


class Family:
    """Writes each synthetic model as safetensors and keeps its fingerprint's sketch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sketches: dict[str, Sketch] = {}

    def add(self, name: str, tensors: dict[str, torch.Tensor], dtype=None) -> Sketch:
        if dtype is not None:
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
        fp = fingerprint_path(write_model(self.root / name, tensors))
        sketch = Sketch.of(name, json.loads(json.dumps(fp)))
        self.sketches[name] = sketch
        return sketch

    def __getitem__(self, name: str) -> Sketch:
        return self.sketches[name]

    def pool(self, *names: str) -> list[Sketch]:
        return [self.sketches[n] for n in names]


@pytest.fixture
def family(tmp_path) -> Family:
    return Family(tmp_path)


def test_a_byte_copy_is_the_same_weights(family):
    base = random_weights(0)
    family.add("base", base)
    family.add("copy", base)
    relation = relate(family["copy"], family.pool("base"))
    assert relation.kind == SAME_WEIGHTS
    assert relation.parents == ("base",)
    assert relation.score == 1.0
    assert relation.evidence["how"] == "identical"
    assert relation.evidence["original"] == "base"


@pytest.mark.parametrize(
    ("first", "second", "precisions"),
    [
        (None, torch.bfloat16, ["f32->bf16"]),
        (None, torch.float16, ["f32->f16"]),
        (torch.bfloat16, torch.float16, ["bf16->f16"]),
    ],
)
def test_casts_are_the_same_weights(family, first, second, precisions):
    base = random_weights(0)
    family.add("a", base, first)
    family.add("b", base, second)
    relation = relate(family["b"], family.pool("a"))
    assert relation.kind == SAME_WEIGHTS
    assert relation.evidence["how"] == "cast"
    assert relation.evidence["precisions"] == sorted(
        "->".join(reversed(p.split("->"))) for p in precisions
    )
    assert relation.score >= 0.98


def test_an_fp32_file_of_upcast_bf16_weights_is_a_cast_of_the_bf16_model(family):
    base = random_weights(0)
    family.add("bf16", base, torch.bfloat16)
    family.add("upcast", {k: v.to(torch.bfloat16).float() for k, v in base.items()})
    evidence = same_weights(family["upcast"], family["bf16"])
    assert evidence is not None
    assert evidence["equal"] == 1.0


def test_a_short_fine_tune_is_not_a_cast(family):
    base = random_weights(0)
    family.add("base", base)
    family.add("tuned", step(base, 1, 0.01), torch.bfloat16)
    assert same_weights(family["tuned"], family["base"]) is None
    relation = relate(family["tuned"], family.pool("base"))
    assert relation.kind == DERIVED_FROM
    assert relation.parents == ("base",)


def test_a_fine_tune_is_derived_from_its_parent_not_from_siblings_or_strangers(family):
    base = random_weights(0)
    family.add("base", base)
    family.add("stranger", random_weights(9))
    family.add("sibling", step(base, 2, 0.3))
    family.add("tuned", step(base, 1, 0.3))
    relation = relate(family["tuned"], family.pool("stranger", "sibling", "base"))
    assert relation.kind == DERIVED_FROM
    assert relation.parents == ("base",)
    assert 0.25 < relation.evidence["median_relative_distance"] < 0.35
    assert relation.evidence["cosine"] > 0.9


def test_a_linear_merge_names_both_parents_and_their_weights(family):
    base = random_weights(0)
    a, b = step(base, 1, 0.3), step(base, 2, 0.3)
    for name, tensors in {"base": base, "a": a, "b": b, "c": step(base, 3, 0.3)}.items():
        family.add(name, tensors)
    family.add("merge", combine([(0.3, a), (0.7, b)]))
    relation = relate(family["merge"], family.pool("base", "a", "b", "c"))
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["a", "b"]
    weights = dict(zip(relation.parents, relation.weights, strict=True))
    assert weights["a"] == pytest.approx(0.3, abs=1e-3)
    assert weights["b"] == pytest.approx(0.7, abs=1e-3)
    assert relation.evidence["residual"] < 1e-9


def test_a_slerp_merge_is_a_merge_of_its_parents(family):
    base = random_weights(0)
    a, b = step(base, 1, 0.5), step(base, 2, 0.5)
    for name, tensors in {"base": base, "a": a, "b": b}.items():
        family.add(name, tensors)
    family.add("merge", slerp(a, b, 0.4))
    relation = relate(family["merge"], family.pool("base", "a", "b"))
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["a", "b"]
    weights = dict(zip(relation.parents, relation.weights, strict=True))
    assert weights["a"] == pytest.approx(0.6, abs=0.05)
    assert weights["b"] == pytest.approx(0.4, abs=0.05)


def test_task_arithmetic_names_the_parents_and_reports_the_base(family):
    base = random_weights(0)
    a, b = step(base, 1, 0.3), step(base, 2, 0.3)
    for name, tensors in {"base": base, "a": a, "b": b}.items():
        family.add(name, tensors)
    # base + 0.8 (a - base) + 0.8 (b - base) = -0.6 base + 0.8 a + 0.8 b
    family.add("merge", combine([(-0.6, base), (0.8, a), (0.8, b)]))
    relation = relate(family["merge"], family.pool("base", "a", "b"))
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["a", "b"]
    assert relation.evidence["base"] == ["base"]


def test_a_merge_of_merges_names_the_merges(family):
    base = random_weights(0)
    parts = {name: step(base, seed, 0.3) for seed, name in enumerate("abcd", start=1)}
    family.add("base", base)
    for name, tensors in parts.items():
        family.add(name, tensors)
    left = combine([(0.5, parts["a"]), (0.5, parts["b"])])
    right = combine([(0.5, parts["c"]), (0.5, parts["d"])])
    family.add("left", left)
    family.add("right", right)
    family.add("top", combine([(0.5, left), (0.5, right)]))
    relation = relate(family["top"], family.pool("base", "a", "b", "c", "d", "left", "right"))
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["left", "right"]


def test_unrelated_models_are_independent(family):
    family.add("one", random_weights(1))
    family.add("two", random_weights(2))
    family.add("three", random_weights(3))
    relation = relate(family["three"], family.pool("one", "two"))
    assert relation.kind == INDEPENDENT
    assert relation.parents == ()
    assert abs(relation.evidence["best_cosine"]) < 0.1
    assert relate(family["three"], []).kind == INDEPENDENT


def test_relations_serialise_to_json(family):
    base = random_weights(0)
    family.add("base", base)
    family.add("tuned", step(base, 1, 0.2))
    relation = relate(family["tuned"], family.pool("base"))
    assert json.loads(json.dumps(relation.to_dict()))["parents"] == ["base"]


def test_the_index_finds_relatives_in_a_small_share_of_the_catalog(family):
    index = CandidateIndex()
    base = random_weights(0)
    index.add(family.add("base", base))
    for seed in range(100, 160):
        index.add(family.add(f"stranger-{seed}", random_weights(seed)))
    tuned = family.add("tuned", step(base, 1, 0.3))
    cast = family.add("cast", base, torch.bfloat16)
    assert "base" in index.candidates(tuned)
    assert "base" in index.candidates(cast)
    found = index.candidates(tuned)
    # Unrelated models collide in one band of 48 with probability ~4.6% each.
    assert len(found) <= 1 + 10
    assert band_keys(tuned)[0].startswith(tuned.architecture[:16] + ":0:")
    assert len(band_keys(tuned)) == 48


def test_models_of_other_architectures_are_never_candidates(family):
    base = random_weights(0)
    family.add("base", base)
    wider = {k: torch.cat([v, v], dim=-1) for k, v in base.items()}
    family.add("wider", wider)
    assert family["wider"].architecture != family["base"].architecture
    index = CandidateIndex()
    index.add(family["base"])
    assert index.candidates(family["wider"]) == set()
    assert relate(family["wider"], family.pool("base")).kind == INDEPENDENT
    assert np.isfinite(relate(family["wider"], family.pool("base")).score)


def aligned_sibling(family: Family) -> None:
    """`tuned` and `sibling` both from `base`, trained the same way: `sibling` explains `tuned`
    better than their common parent (residual energies 1.25 against 1.85 in units of the
    sibling's update)."""
    base = random_weights(0)
    sibling = step(base, 1, 0.3)
    direction = {k: sibling[k] - base[k] for k in base}
    noise = step({k: torch.zeros_like(v) for k, v in base.items()}, 2, 0.3 * 1.1)
    family.add("base", base)
    family.add("stranger", random_weights(9))
    family.add("sibling", sibling)
    family.add("tuned", {k: base[k] + 0.8 * direction[k] + noise[k] for k in base})


def test_from_the_weights_alone_an_aligned_sibling_looks_like_the_parent(family):
    aligned_sibling(family)
    relation = relate(family["tuned"], family.pool("base", "stranger", "sibling"))
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("sibling",))


def test_a_declared_parent_the_weights_support_is_kept(family):
    aligned_sibling(family)
    relation = relate(
        family["tuned"], family.pool("base", "stranger", "sibling"), declared=["base"]
    )
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("base",))
    assert relation.evidence["declared"]["parents"] == ["base"]
    assert relation.evidence["declared"]["supported"] is True


def test_a_declared_parent_the_weights_contradict_is_named_and_overruled(family):
    aligned_sibling(family)
    relation = relate(family["tuned"], family.pool("base", "stranger"), declared=["stranger"])
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("base",))
    assert relation.evidence["declared"]["parents"] == ["stranger"]
    assert relation.evidence["declared"]["supported"] is False
    assert relation.evidence["declared"]["residual"] > 0.9


def test_a_known_parent_of_the_closest_model_is_preferred_when_it_explains_as_well(family):
    aligned_sibling(family)
    relation = relate(
        family["tuned"],
        family.pool("base", "stranger", "sibling"),
        parents_of={"sibling": ["base"]},
    )
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("base",))


def test_a_merge_of_merges_keeps_the_merges_when_their_parents_explain_less(family):
    base = random_weights(0)
    parts = {name: step(base, seed, 0.3) for seed, name in enumerate("abcd", start=1)}
    family.add("base", base)
    for name, tensors in parts.items():
        family.add(name, tensors)
    family.add("left", combine([(0.5, parts["a"]), (0.5, parts["b"])]))
    family.add("right", combine([(0.5, parts["c"]), (0.5, parts["d"])]))
    family.add(
        "top", combine([(0.5, family_tensors(parts, "ab")), (0.5, family_tensors(parts, "cd"))])
    )
    relation = relate(
        family["top"],
        family.pool("base", "a", "b", "c", "d", "left", "right"),
        parents_of={"left": ["a", "b"], "right": ["c", "d"], "a": ["base"], "b": ["base"]},
    )
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["left", "right"]


def family_tensors(parts: dict, names: str) -> dict:
    return combine([(1 / len(names), parts[n]) for n in names])


def ties(
    base: dict, parents: list[dict], density: float, weights: list[float], dare: bool = False
) -> dict:
    """TIES as mergekit computes it: each task vector trimmed to its `density` largest
    magnitudes, the sign elected by the weighted sum, the agreeing kept values averaged with
    their weights. `dare`: DARE-TIES, values dropped at random instead and the kept ones
    rescaled by 1 / density."""
    generator = torch.Generator().manual_seed(5)
    out = {}
    for name, origin in base.items():
        deltas = []
        for parent, weight in zip(parents, weights, strict=True):
            delta = parent[name] - origin
            if dare:
                kept = torch.rand(delta.shape, generator=generator) < density
                deltas.append(weight * torch.where(kept, delta / density, 0.0))
                continue
            keep = max(1, int(density * delta.numel()))
            threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
            deltas.append(weight * torch.where(delta.abs() >= threshold, delta, 0.0))
        stacked = torch.stack(deltas)
        sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
        agree = stacked.sign() == sign
        divisor = (torch.tensor(weights).view(-1, *[1] * origin.dim()) * agree).sum(0)
        mixed = (stacked * agree).sum(0) / torch.where(divisor == 0, 1.0, divisor)
        out[name] = origin + mixed
    return out


def ties_family(family: Family, dtype=None) -> dict[str, torch.Tensor]:
    """`base`, its fine-tunes `a`, `b` and `sibling`, and `merge`, a TIES merge of `a` and `b`
    on `base` (returned) stored in `dtype`."""
    base = random_weights(0)
    a, b, sibling = step(base, 1, 0.3), step(base, 2, 0.3), step(base, 3, 0.3)
    for name, tensors in {"base": base, "a": a, "b": b, "sibling": sibling}.items():
        family.add(name, tensors)
    merged = ties(base, [a, b], density=0.6, weights=[0.5, 0.5])
    family.add("merge", merged, dtype)
    return merged


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_ties_merge_names_both_parents_and_its_base(family, dtype):
    ties_family(family, dtype)
    relation = relate(family["merge"], family.pool("base", "a", "b", "sibling"))
    assert relation.kind == MERGE_OF
    assert sorted(relation.parents) == ["a", "b"]
    assert relation.evidence["base"] == ["base"]
    assert relation.evidence["method"] == "sparse"
    weights = dict(zip(relation.parents, relation.weights, strict=True))
    assert weights == {"a": pytest.approx(0.5, abs=0.01), "b": pytest.approx(0.5, abs=0.01)}


def test_a_ties_merge_declaring_its_base_as_mergekit_does_is_supported(family):
    ties_family(family)
    relation = relate(
        family["merge"], family.pool("base", "a", "b", "sibling"), declared=["base", "a", "b"]
    )
    assert relation.evidence["declared"]["supported"] is True
    assert (relation.kind, sorted(relation.parents)) == (MERGE_OF, ["a", "b"])
    assert relation.evidence["base"] == ["base"]


def test_a_fine_tune_of_a_ties_merge_is_derived_from_the_merge(family):
    merged = ties_family(family)
    family.add("tuned", step(merged, 7, 0.1))
    relation = relate(family["tuned"], family.pool("base", "a", "b", "sibling", "merge"))
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("merge",))


def test_a_fine_tune_of_one_parent_is_no_sparse_merge_with_its_sibling(family):
    ties_family(family)
    family.add("tuned", step(step(random_weights(0), 1, 0.3), 8, 0.1))
    relation = relate(family["tuned"], family.pool("base", "a", "b", "sibling"))
    assert (relation.kind, relation.parents) == (DERIVED_FROM, ("a",))


def test_a_dare_ties_merge_names_both_parents_and_its_base(family):
    base = random_weights(0)
    a, b, sibling = step(base, 1, 0.3), step(base, 2, 0.3), step(base, 3, 0.3)
    for name, tensors in {"base": base, "a": a, "b": b, "sibling": sibling}.items():
        family.add(name, tensors)
    family.add("merge", ties(base, [a, b], density=0.5, weights=[0.7, 0.3], dare=True))
    relation = relate(family["merge"], family.pool("base", "a", "b", "sibling"))
    assert (relation.kind, sorted(relation.parents)) == (MERGE_OF, ["a", "b"])
    assert relation.evidence["base"] == ["base"]
