"""Do the contamination signals find models contaminated on purpose, and leave clean ones alone?

    .venv/bin/python bench/contamination_signals.py --fast      # tiny model, minutes, CI
    .venv/bin/python bench/contamination_signals.py             # the demo model (SmolLM2-135M)

Builds its own ground truth from one base model (the demo model, or for --fast a tiny Llama
pre-trained here for a few hundred steps on SciQ's science paragraphs so it has a real, small
ability) and a family of children, all fine-tuned from the base:

- clean: fine-tuned on unrelated text of the benchmark's style and size (SciQ and OpenBookQA
  questions with their answers, in the benchmark's own `Question: ... Answer: ...` format, the
  hardest case for a likelihood test), at a few strengths (epochs, learning rate, data). They
  are also the reference population: each clean model is tested against the others only;
- verbatim: the same unrelated text with the evaluated ARC-Challenge items (question + gold
  answer, exactly as lm-eval formats them) mixed in, repeated 1, 2 or 4 times;
- rephrased: the evaluated items rewritten (another template, answer first, word substitutions)
  before being mixed in: the evasion attack;
- merges (mergekit SLERP and TIES) of a contaminated child with a clean one, and of two clean
  ones (counted with the clean models).

Every model is scored as the worker scores one (lm-eval loglikelihood requests through HFLM,
`evaluator.reference`): the first N ARC-Challenge validation items (the benchmark), their
perturbed copies, the last N ARC-Easy items (the sibling), and the first N ARC-Easy items (a
second task, for the score-anomaly signal). The signals (`evaluator.contamination`) use fixed
thresholds chosen before any run (`THRESHOLDS`). Prints, per signal and kind of child, the share
detected (for clean models: the false-positive rate) and the ROC AUC against the clean models,
and ends with `detection: D fpr: F auc: A` for the signals combined (any signal over its
threshold; AUC of the Bonferroni-combined p-value) over every contaminated model.

Models and measurements are kept under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from evaluator import contamination as stats
from evaluator.data import default_mirror_root
from evaluator.reference import (
    arc_item,
    mirror_docs,
    score_items,
    score_task_references,
)

ARC_C = "ai2_arc/ARC-Challenge/validation"
ARC_E = "ai2_arc/ARC-Easy/validation"
SCIQ = "sciq/none/validation"
OBQA = "openbookqa/main/validation"

# The web side's default thresholds, fixed before any run (fewer resamples, same decisions).
THRESHOLDS = stats.Thresholds(bootstrap=400, permutations=999)
SIGNALS = ("constat_sibling", "constat_perturbed", "differential", "min_k_pp", "jump")


@dataclass
class Spec:
    """One model of the family: how it is made."""

    name: str
    kind: (
        str  # clean | verbatim | rephrased | merge-verbatim | merge-rephrased | merge-clean | base
    )
    parents: list[str] = field(default_factory=list)
    epochs: int = 1
    lr: float = 0.0
    seed: int = 0
    contamination: str | None = None  # None | verbatim | rephrased
    repeats: int = 0  # how many times the test items are mixed in
    merge: str | None = None  # slerp | ties

    @property
    def contaminated(self) -> bool:
        return self.kind not in ("clean", "merge-clean", "base")


# --- Texts ----------------------------------------------------------------------------------------

SUBSTITUTIONS = (
    ("Which of the following", "What"),
    ("which of the following", "what"),
    ("Which", "What"),
    ("most likely", "probably"),
    ("best describes", "most accurately describes"),
    ("scientists", "researchers"),
    ("students", "pupils"),
    ("student", "pupil"),
    ("an example of", "an instance of"),
    ("because", "since"),
    ("causes", "leads to"),
    ("What is", "What's"),
    ("helps", "assists"),
    ("happens", "occurs"),
    ("people", "individuals"),
)


def rephrase(question: str, answer: str, index: int) -> str:
    """An offline rewrite of a test item that keeps its meaning: words substituted, another
    layout, the answer first in half of them. Weaker than a language model's paraphrase, and
    the README says so."""
    for old, new in SUBSTITUTIONS:
        question = question.replace(old, new)
    if index % 2:
        return f"The solution is {answer.rstrip('.')}. It answers this quiz item: {question}"
    return f"Quiz item: {question}\nSolution: {answer.rstrip('.')}."


def unrelated_texts(mirror: Path) -> list[str]:
    """Science questions with their answers from SciQ and OpenBookQA, in the benchmark's format."""
    texts = [
        f"Question: {row['question']}\nAnswer: {row['correct_answer']}"
        for row in mirror_docs(mirror / SCIQ)
    ]
    for row in mirror_docs(mirror / OBQA):
        answer = row["choices"]["text"][list(row["choices"]["label"]).index(row["answerKey"])]
        texts.append(f"Question: {row['question_stem']}\nAnswer: {answer}")
    return texts


def pretraining_texts(mirror: Path) -> list[str]:
    return [row["support"] for row in mirror_docs(mirror / SCIQ) if row["support"].strip()]


def test_texts(docs: list[dict[str, Any]], how: str) -> list[str]:
    texts = []
    for index, doc in enumerate(docs):
        item = arc_item(doc)
        if how == "verbatim":
            texts.append(item.text())
        else:
            texts.append(rephrase(doc["question"], item.choices[item.gold], index))
    return texts


# --- Models ---------------------------------------------------------------------------------------


def build_tiny_base(path: Path, mirror: Path, steps: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_model import train_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(path, vocab_size=1024)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    texts = pretraining_texts(mirror) + unrelated_texts(mirror)[:200]
    train(model, tokenizer, texts, epochs=4, lr=3e-3, seed=0, max_steps=steps)
    model.save_pretrained(path)


def train(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    epochs: int,
    lr: float,
    seed: int,
    max_steps: int | None = None,
    train_layers: int | None = None,
    block: int = 64,
    batch: int = 8,
) -> None:
    """Causal-LM fine-tuning on `texts` packed into blocks (EOS between texts), AdamW with a
    linear decay. `train_layers`: only the top layers and the final norm learn (the others and
    the embeddings stay frozen), which keeps a 135M model affordable on a CPU."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = list(model.parameters())
    if train_layers is not None:
        for p in params:
            p.requires_grad_(False)
        trainable = [*model.model.layers[-train_layers:], model.model.norm]
        params = [p for module in trainable for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    eos = tokenizer.eos_token_id
    batches = []
    for _ in range(epochs):
        order = texts[:]
        rng.shuffle(order)
        stream: list[int] = []
        for text in order:
            stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
        rng.shuffle(blocks)
        batches += [blocks[i : i + batch] for i in range(0, len(blocks), batch)]
    if max_steps is not None:
        batches = batches[:max_steps]
    model.train()
    for step, rows in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / max(1, len(batches)))
        ids = torch.tensor(rows)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def fine_tune(spec: Spec, base: Path, out: Path, corpus: dict[str, list[str]], args: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rng = random.Random(spec.seed)
    texts = rng.sample(corpus["unrelated"], args.unrelated)
    if spec.contamination is not None:
        texts += corpus[spec.contamination] * spec.repeats
    train(
        model,
        tokenizer,
        texts,
        spec.epochs,
        spec.lr,
        spec.seed,
        train_layers=args.train_layers,
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def merge(spec: Spec, paths: dict[str, Path], base: Path, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    a, b = (str(paths[name]) for name in spec.parents)
    if spec.merge == "slerp":
        config = {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"t": 0.5},
            "dtype": "float32",
        }
    else:
        config = {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": a, "parameters": {"density": 0.6, "weight": 0.5}},
                {"model": b, "parameters": {"density": 0.6, "weight": 0.5}},
            ],
            "parameters": {"normalize": True},
            "dtype": "float32",
        }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run_merge(
        MergeConfiguration.model_validate(config),
        str(tmp),
        MergeOptions(copy_tokenizer=True, lazy_unpickle=False, quiet=True),
    )
    tmp.rename(out)


# --- Measuring ------------------------------------------------------------------------------------


def measure(path: Path, mirror: Path, args: Any) -> dict[str, Any]:
    """What the worker would send for this model: ARC-Challenge with its reference sets, and
    ARC-Easy's accuracy as a second task."""
    from evaluator.run import _model_class

    lm = _model_class().create_from_arg_obj(
        {"pretrained": str(path), "dtype": args.dtype}, {"batch_size": 8, "device": "cpu"}
    )
    docs = mirror_docs(mirror / ARC_C, 0, args.items)
    shots = mirror_docs(mirror / ARC_C, args.items, 50)
    refs = score_task_references(
        lm, "arc_challenge", "acc_norm", docs, shots, mirror, args.items, benchmark=True
    )
    easy = [arc_item(doc) for doc in mirror_docs(mirror / ARC_E, 0, args.items)]
    refs["other"] = {"correct": [int(s.correct) for s in score_items(lm, easy, "acc")]}
    del lm
    return refs


# --- The signals for one model --------------------------------------------------------------------


def _accuracy_score(correct: list[int]) -> stats.Score:
    p = sum(correct) / len(correct)
    return stats.Score(p, math.sqrt(max(p * (1 - p), 0.01) / len(correct)))


def _scores(measured: dict[str, Any]) -> dict[str, stats.Score]:
    return {
        "arc_challenge": _accuracy_score(measured["benchmark"]["correct"]),
        "arc_easy": _accuracy_score(measured["other"]["correct"]),
    }


def signals(
    name: str, family: dict[str, Spec], data: dict[str, dict[str, Any]], population: list[str]
) -> dict[str, Any]:
    """Per signal, the smallest p-value of the model's findings and whether any fired, from the
    functions the web side runs after an ingest (`evaluator.contamination`)."""
    spec = family[name]
    parents = spec.parents or ([] if spec.kind == "base" else ["base"])
    findings = stats.reference_findings(
        [data[name]],
        [[data[m]] for m in population if m != name],
        {"arc_challenge": 0.25},
        THRESHOLDS,
    )
    findings += stats.lineage_findings([data[name]], {p: [data[p]] for p in parents}, THRESHOLDS)
    findings += stats.score_findings(
        _scores(data[name]), {p: _scores(data[p]) for p in parents}, {}, THRESHOLDS
    )
    out: dict[str, Any] = {}
    for signal in SIGNALS:
        mine = [f for f in findings if _signal_of(f) == signal]
        out[signal] = min((f.p_value for f in mine if f.p_value is not None), default=1.0)
        out[f"{signal}_fired"] = any(f.fired for f in mine)
        out[f"{signal}_statistic"] = max((f.statistic for f in mine), default=0.0)
    out["combined"] = stats.bonferroni([out[s] for s in SIGNALS])
    return out


def _signal_of(finding: stats.Finding) -> str:
    if finding.kind == "performance_vs_reference":
        return f"constat_{finding.evidence['reference']}"
    return {"lineage_differential": "differential", "score_jump": "jump"}.get(
        finding.kind, finding.kind
    )


def decide(result: dict[str, Any], signal: str) -> bool:
    if signal == "combined":
        return any(result[f"{s}_fired"] for s in SIGNALS)
    return bool(result[f"{signal}_fired"])


# --- The family -----------------------------------------------------------------------------------


def family_specs(fast: bool) -> list[Spec]:
    specs = [Spec("base", "base")]
    lr = 1e-3 if fast else 2e-4
    clean_settings = [(1 + s % 3, lr if s % 2 else lr / 2, s) for s in range(8)]
    if not fast:
        clean_settings = [
            (1, lr, 0),
            (2, lr, 1),
            (2, lr / 2, 2),
            (3, lr / 2, 3),
            (1, lr / 2, 4),
            (3, lr, 5),
        ]
    for index, (epochs, rate, seed) in enumerate(clean_settings):
        specs.append(Spec(f"clean-{index}", "clean", epochs=epochs, lr=rate, seed=seed))
    # The demo model learns from one epoch what the tiny one needs two for, at a CPU cost that
    # allows only one.
    epochs = 2 if fast else 1
    levels = (2, 4) if fast else (1, 3)
    copies = 2 if fast else 1
    rephrased_repeats = 4 if fast else 3
    for repeats in levels:
        for copy in range(copies):
            specs.append(
                Spec(
                    f"verbatim-x{repeats}-{copy}",
                    "verbatim",
                    epochs=epochs,
                    lr=lr,
                    seed=100 + 10 * repeats + copy,
                    contamination="verbatim",
                    repeats=repeats,
                )
            )
    for copy in range(2):
        specs.append(
            Spec(
                f"rephrased-x{rephrased_repeats}-{copy}",
                "rephrased",
                epochs=epochs,
                lr=lr,
                seed=200 + copy,
                contamination="rephrased",
                repeats=rephrased_repeats,
            )
        )
    strong = "verbatim-x4-0" if fast else "verbatim-x3-0"
    merges = [
        ("merge-verbatim", strong, "clean-0", "slerp"),
        ("merge-verbatim", "verbatim-x2-1" if fast else "verbatim-x1-0", "clean-1", "ties"),
        ("merge-rephrased", f"rephrased-x{rephrased_repeats}-0", "clean-3", "slerp"),
        ("merge-clean", "clean-4", "clean-5", "slerp"),
        ("merge-clean", "clean-0", "clean-3", "ties"),
    ]
    for index, (kind, a, b, method) in enumerate(merges):
        specs.append(Spec(f"{kind}-{method}-{index}", kind, parents=[a, b], merge=method))
    return specs


def build_and_measure(args: Any) -> tuple[dict[str, Spec], dict[str, dict[str, Any]]]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mirror = default_mirror_root()
    models = work / "models"
    models.mkdir(exist_ok=True)
    base = models / "base"
    if not (base / "config.json").is_file():
        if args.fast:
            build_tiny_base(base, mirror, args.pretrain_steps)
        else:
            from evaluator.demo_model import build_demo_repositories

            demo = build_demo_repositories(work / "demo")
            shutil.copytree(demo, base, ignore=shutil.ignore_patterns("README.md"))
    docs = mirror_docs(mirror / ARC_C, 0, args.items)
    corpus = {
        "unrelated": unrelated_texts(mirror),
        "verbatim": test_texts(docs, "verbatim"),
        "rephrased": test_texts(docs, "rephrased"),
    }
    specs = family_specs(args.fast)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [spec for spec in specs if spec.name in wanted or spec.kind == "base"]
    family = {spec.name: spec for spec in specs}
    paths = {spec.name: models / spec.name for spec in specs}
    data: dict[str, dict[str, Any]] = {}
    for spec in specs:
        started = time.monotonic()
        path = paths[spec.name]
        if not (path / "config.json").is_file():
            if spec.merge is not None:
                merge(spec, paths, base, path)
            elif spec.kind != "base":
                fine_tune(spec, base, path, corpus, args)
        measured = work / f"{spec.name}.json"
        if not measured.is_file():
            measured.write_text(json.dumps(measure(path, mirror, args)))
        data[spec.name] = json.loads(measured.read_text())
        print(
            f"{spec.name:28s} {spec.kind:16s} arc_challenge "
            f"{data[spec.name]['benchmark']['accuracy']:.2f} sibling "
            f"{data[spec.name]['sibling']['accuracy']:.2f} perturbed "
            f"{data[spec.name]['perturbed']['accuracy']:.2f} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    return family, data


def report(family: dict[str, Spec], data: dict[str, dict[str, Any]]) -> dict[str, float]:
    population = [n for n, s in family.items() if not s.contaminated]
    results = {name: signals(name, family, data, population) for name in family}
    kinds = sorted({s.kind for s in family.values()}, key=lambda k: (k != "base", k))
    clean = [n for n, s in family.items() if not s.contaminated]
    header = (
        f"{'signal':18s} " + " ".join(f"{k:>16s}" for k in kinds) + "   AUC(contaminated vs clean)"
    )
    print()
    print(
        "share over threshold per kind of model (for base, clean and merge-clean: false positives)"
    )
    print(header)
    summary: dict[str, float] = {}
    for signal in (*SIGNALS, "combined"):
        cells = []
        for kind in kinds:
            names = [n for n, s in family.items() if s.kind == kind]
            hits = sum(decide(results[n], signal) for n in names)
            cells.append(f"{hits:>3d}/{len(names):<3d} ({hits / len(names):.2f})")
        positives = [
            -math.log10(max(results[n][signal], 1e-12)) for n in family if family[n].contaminated
        ]
        negatives = [-math.log10(max(results[n][signal], 1e-12)) for n in clean]
        auc = stats.roc_auc(positives, negatives)
        print(f"{signal:18s} " + " ".join(f"{c:>16s}" for c in cells) + f"   {auc:.3f}")
        if signal == "combined":
            contaminated = [n for n in family if family[n].contaminated]
            summary = {
                "detection": sum(decide(results[n], signal) for n in contaminated)
                / len(contaminated),
                "fpr": sum(decide(results[n], signal) for n in clean) / len(clean),
                "auc": auc,
            }
            for kind in ("verbatim", "merge-verbatim", "rephrased", "merge-rephrased"):
                names = [n for n, s in family.items() if s.kind == kind]
                if names:
                    summary[kind] = sum(decide(results[n], signal) for n in names) / len(names)
    print()
    print(
        "per model: benchmark accuracy, delta, p-values (constat sibling, constat perturbed, "
        "differential, min-k%++, jump), effect size"
    )
    for name, result in results.items():
        print(
            f"  {name:28s} acc {data[name]['benchmark']['accuracy']:.2f} "
            f"delta {result['constat_sibling_statistic']:+.3f} "
            + " ".join(f"{result[s]:.4f}" for s in SIGNALS)
            + f"  effect {result['differential_statistic']:+.2f}"
        )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="a tiny pre-trained model (CI)")
    parser.add_argument("--work", default=None, help="where models and measurements are kept")
    parser.add_argument("--items", type=int, default=None, help="evaluated ARC-Challenge items")
    parser.add_argument("--unrelated", type=int, default=None, help="unrelated texts per child")
    parser.add_argument("--train-layers", type=int, default=None)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 beats 2 on a shared machine)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated members to build (parents included by you)"
    )
    parser.add_argument("--min-detection", type=float, default=None, help="exit 1 below this")
    parser.add_argument("--max-fpr", type=float, default=None, help="exit 1 above this")
    args = parser.parse_args()
    if args.work is None:
        args.work = "var/bench-contamination-fast" if args.fast else "var/bench-contamination"
    if args.items is None:
        args.items = 100
    if args.unrelated is None:
        args.unrelated = 200 if args.fast else 100
    if args.dtype is None:
        args.dtype = "float32" if args.fast else "bfloat16"
    if args.train_layers is None and not args.fast:
        args.train_layers = 4
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    family, data = build_and_measure(args)
    summary = report(family, data)
    print()
    for kind in ("verbatim", "merge-verbatim", "rephrased", "merge-rephrased"):
        if kind in summary:
            print(f"combined detection on {kind}: {summary[kind]:.2f}")
    print(f"took {time.monotonic() - started:.0f} s")
    print(
        f"detection: {summary['detection']:.2f} fpr: {summary['fpr']:.2f} auc: {summary['auc']:.3f}"
    )
    failed = (args.min_detection is not None and summary["detection"] < args.min_detection) or (
        args.max_fpr is not None and summary["fpr"] > args.max_fpr
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
