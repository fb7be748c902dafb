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

The family (its members, texts and builders) is `evaluator.family`, which `make demo-family`
registers in the demo. Models and measurements are kept under --work, so an interrupted run
resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from evaluator import contamination as stats
from evaluator.data import default_mirror_root
from evaluator.family import ARC_C, ARC_E, Sizes, Spec, build_member, corpus, family_specs
from evaluator.reference import arc_item, mirror_docs, score_items, score_task_references

# The web side's default thresholds, fixed before any run (fewer resamples, same decisions).
THRESHOLDS = stats.Thresholds(bootstrap=400, permutations=999)
SIGNALS = (
    "constat_sibling",
    "constat_perturbed",
    "differential",
    "family",
    "min_k_pp",
    "jump",
)


# --- Measuring ------------------------------------------------------------------------------------


def measure(path: Path, mirror: Path, args: Any) -> dict[str, Any]:
    """What the worker would send for this model: ARC-Challenge with its reference sets, and
    ARC-Easy's accuracy as a second task."""
    from evaluator.run import _model_class

    lm = _model_class(args.backend).create_from_arg_obj(
        {"pretrained": str(path), "dtype": args.dtype},
        {"batch_size": args.batch_size, "device": "cpu"},
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
    parents_of = {n: s.parents or ([] if s.kind == "base" else ["base"]) for n, s in family.items()}
    parents = parents_of[name]
    relatives = stats.nearest_relatives(
        name, parents_of, [m for m in population if m != name], THRESHOLDS.min_relatives
    )
    findings = stats.reference_findings(
        [data[name]],
        [[data[m]] for m in population if m != name],
        {"arc_challenge": 0.25},
        THRESHOLDS,
    )
    findings += stats.lineage_findings([data[name]], {p: [data[p]] for p in parents}, THRESHOLDS)
    findings += stats.family_findings([data[name]], {r: [data[r]] for r in relatives}, THRESHOLDS)
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
    return {
        "lineage_differential": "differential",
        "family_differential": "family",
        "score_jump": "jump",
    }.get(finding.kind, finding.kind)


def decide(result: dict[str, Any], signal: str) -> bool:
    if signal == "combined":
        return any(result[f"{s}_fired"] for s in SIGNALS)
    return bool(result[f"{signal}_fired"])


def sizes_of(args: Any) -> Sizes:
    return Sizes(
        fast=args.fast,
        items=args.items,
        unrelated=args.unrelated,
        train_layers=args.train_layers,
        pretrain_steps=args.pretrain_steps,
    )


def build_and_measure(args: Any) -> tuple[dict[str, Spec], dict[str, dict[str, Any]]]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mirror = default_mirror_root()
    models = work / "models"
    models.mkdir(exist_ok=True)
    sizes = sizes_of(args)
    texts = corpus(mirror, args.items)
    specs = family_specs(args.fast)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [spec for spec in specs if spec.name in wanted or spec.kind == "base"]
    family = {spec.name: spec for spec in specs}
    data: dict[str, dict[str, Any]] = {}
    for spec in specs:
        started = time.monotonic()
        path = build_member(spec, models, mirror, texts, sizes)
        built = time.monotonic()
        measured = work / f"{spec.name}.json"
        if not measured.is_file():
            measured.write_text(json.dumps(measure(path, mirror, args)))
        data[spec.name] = json.loads(measured.read_text())
        print(
            f"{spec.name:28s} {spec.kind:16s} arc_challenge "
            f"{data[spec.name]['benchmark']['accuracy']:.2f} sibling "
            f"{data[spec.name]['sibling']['accuracy']:.2f} perturbed "
            f"{data[spec.name]['perturbed']['accuracy']:.2f} "
            f"(built in {built - started:.0f} s, measured in {time.monotonic() - built:.0f} s)",
            flush=True,
        )
    return family, data


def export(family: dict[str, Spec], data: dict[str, dict[str, Any]]) -> str:
    """Per member, its kind, its ARC-Challenge `references` entry in the worker payload's shape
    (evaluator.messages.TaskReferences) and its two accuracies. The bench scores zero-shot where
    the quick suite scores one-shot, so these are the bench's numbers, not a suite's."""
    out = {}
    for name, spec in family.items():
        measured = data[name]
        entry = {
            "task": "arc_challenge",
            "lm_eval_task": "arc_challenge",
            "metric": measured["metric"],
            "benchmark": measured["benchmark"],
            "perturbed": measured["perturbed"],
            "sibling": measured["sibling"],
        }
        out[name] = {
            "kind": spec.kind,
            "references": [entry],
            "scores": {
                "arc_challenge": measured["benchmark"]["accuracy"],
                "arc_easy": sum(measured["other"]["correct"]) / len(measured["other"]["correct"]),
            },
        }
    return json.dumps(out, sort_keys=True)


def _share(decisions: list[bool]) -> float:
    return sum(decisions) / len(decisions) if decisions else math.nan


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
            # A partial run (--only) may hold no model of one side: its share is nan.
            summary = {
                "detection": _share([decide(results[n], signal) for n in contaminated]),
                "fpr": _share([decide(results[n], signal) for n in clean]),
                "auc": auc,
            }
            for kind in ("verbatim", "merge-verbatim", "rephrased", "merge-rephrased"):
                names = [n for n, s in family.items() if s.kind == kind]
                if names:
                    summary[kind] = sum(decide(results[n], signal) for n in names) / len(names)
    print()
    print(
        "per model: benchmark accuracy, delta, p-values (constat sibling, constat perturbed, "
        "differential, family, min-k%++, jump), effect size (differential, family)"
    )
    for name, result in results.items():
        print(
            f"  {name:28s} acc {data[name]['benchmark']['accuracy']:.2f} "
            f"delta {result['constat_sibling_statistic']:+.3f} "
            + " ".join(f"{result[s]:.4f}" for s in SIGNALS)
            + f"  effect {result['differential_statistic']:+.2f} {result['family_statistic']:+.2f}"
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
        "--backend",
        default=None,
        help="the worker's scoring backend (TRELLIS_EVAL_BACKEND): hf for --fast, else "
        "trellis-prefix",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="32 for --fast, else 8")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 beats 2 on a shared machine)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated members to build (parents included by you)"
    )
    parser.add_argument(
        "--export",
        default=None,
        help="write each member's measurements as a worker's payload carries them (JSON)",
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
        # As the demo submits it: bfloat16 only where the CPU multiplies it natively (emulated,
        # it is 9x slower than float32 on an AVX2-only CPU).
        from evaluator.demo_model import demo_precision

        args.dtype = "float32" if args.fast else demo_precision()
    # A forward of the 2-layer model is mostly Python overhead, so batching 32 requests (stock
    # HFLM) beats sharing each item's prompt across its choices (trellis-prefix): 4.6 against
    # 6.9 CPU seconds a model, the same predictions and text scores. The demo model is the
    # other way round.
    if args.backend is None:
        args.backend = "hf" if args.fast else "trellis-prefix"
    if args.batch_size is None:
        args.batch_size = 32 if args.fast else 8
    if args.train_layers is None and not args.fast:
        args.train_layers = 4
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    family, data = build_and_measure(args)
    summary = report(family, data)
    if args.export:
        Path(args.export).write_text(export(family, data))
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
