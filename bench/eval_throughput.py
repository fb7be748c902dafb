"""Benchmark, not a test: stock lm-eval HFLM against Trellis's prefix-sharing backend
(`evaluator.prefix_lm`, `trellis-prefix`) on the same model, tasks, data and limits.

Each (task, backend) runs in its own child process, so peak memory is that backend's alone;
the two backends alternate which goes first from task to task. Per task and for the suite:
loglikelihood requests, token positions each backend forwarded (padding included), the
unique-token lower bound (tokens in the radix tree of every request's input), scoring wall time
of each (the `loglikelihood` call: tokenization and forwards; building the task prompts is the
same for both and not timed), speed-up, peak resident memory of each process, the largest
per-request |delta loglikelihood|, and whether every prediction and metric is identical.

    python bench/eval_throughput.py --quick      # demo model: ARC-C 25-shot, HellaSwag 10-shot
    python bench/eval_throughput.py --model demo --limit 10 --mmlu-limit 3   # open-llm-v1
    python bench/eval_throughput.py --model tiny # a tiny random model

The last line is always `suite speedup: N.NN\u00d7 identical: yes|no max_abs_diff: X`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKENDS = ("hf", "trellis-prefix")
QUICK_TASKS = ("arc_challenge", "hellaswag")
# Documents per task in --quick: both backends on both tasks in 3 min 32 s on two idle
# cores (float32, ~500 tokens/s for stock HFLM), model loads included.
QUICK_LIMIT = 4
TIMES = "\u00d7"  # the multiplication sign of "3.10x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model, ARC-C and HellaSwag")
    parser.add_argument("--model", default="demo", help="demo | tiny | a model folder")
    parser.add_argument("--model-root", default=str(ROOT / "var" / "models"))
    parser.add_argument("--suite", default="open-llm-v1")
    parser.add_argument("--tasks", default="", help="comma-separated suite task keys (all)")
    parser.add_argument("--limit", type=int, default=10, help="documents per task")
    parser.add_argument("--mmlu-limit", type=int, default=3, help="documents per MMLU subject")
    parser.add_argument(
        "--mmlu-subjects",
        type=int,
        default=0,
        help="only the first N MMLU subjects (alphabetical), to afford more documents per "
        "subject, where MMLU's sharing is (0: all 57)",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process (0: torch's default). On a CPU shared with other work, "
        "1: OpenMP's barriers stall whenever one of a process's threads is descheduled",
    )
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return
    if args.quick:
        args.model, args.tasks, args.limit = "demo", ",".join(QUICK_TASKS), QUICK_LIMIT

    from evaluator.suites import load_suite

    suite = load_suite(args.suite)
    wanted = [key for key in args.tasks.split(",") if key] or [t.key for t in suite.tasks]
    tasks = [suite.task(key) for key in wanted]
    model_path = resolve_model(args.model, Path(args.model_root))
    print(
        f"model {model_path.name} ({args.dtype}, batch {args.batch_size}, {os.cpu_count()} "
        f"cores, {args.threads or 'default'} torch threads), suite {suite.name}@{suite.version}, "
        f"limits: {args.limit} per task, "
        f"{args.mmlu_limit} per MMLU subject"
        + (f" (first {args.mmlu_subjects} subjects)" if args.mmlu_subjects else ""),
        flush=True,
    )
    rows = []
    for i, task in enumerate(tasks):
        limit = args.mmlu_limit if task.lm_eval_task == "mmlu" else args.limit
        order = BACKENDS if i % 2 == 0 else BACKENDS[::-1]
        measured = {}
        for backend in order:
            spec = {
                "backend": backend,
                "model": str(model_path),
                "dtype": args.dtype,
                "batch_size": args.batch_size,
                "task": task.lm_eval_task,
                "mmlu_subjects": args.mmlu_subjects if task.lm_eval_task == "mmlu" else 0,
                "num_fewshot": task.num_fewshot,
                "limit": limit,
                "threads": args.threads,
            }
            measured[backend] = run_in_child(spec)
            print(
                f"  {task.key} {backend}: {measured[backend]['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        rows.append(compare(task.key, task.num_fewshot, limit, measured))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def resolve_model(name: str, model_root: Path) -> Path:
    if name == "demo":
        from evaluator.demo_model import build_demo_repositories

        return build_demo_repositories(model_root)
    if name == "tiny":
        from tests.tiny_model import TINY_REPO_ID, build_tiny_repo

        path = model_root / TINY_REPO_ID
        return path if (path / "model.safetensors").is_file() else build_tiny_repo(model_root)
    return Path(name)


def run_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        spec = spec | {"out": out.name}
        subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            check=True,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        return json.loads(Path(out.name).read_text())


# --- One backend on one task, in its own process ------------------------------------------------


def run_child(spec: dict[str, Any]) -> None:
    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evaluator.data import prepare_task_data
    from evaluator.prefix_lm import PrefixHFLM, _insert, _Node
    from evaluator.run import SEEDS

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    base = HFLM if spec["backend"] == "hf" else PrefixHFLM

    class Measured(base):  # type: ignore[misc, valid-type]
        positions = 0
        seconds = 0.0
        cpu_seconds = 0.0
        answers: list[tuple[float, bool]] = []
        sequences: list[list[int]] = []

        def loglikelihood(self, requests, disable_tqdm=False):  # type: ignore[no-untyped-def]
            started, cpu = time.perf_counter(), time.process_time()
            answers = super().loglikelihood(requests, disable_tqdm=True)
            Measured.seconds += time.perf_counter() - started
            Measured.cpu_seconds += time.process_time() - cpu
            Measured.answers += answers
            return answers

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):  # type: ignore[no-untyped-def]
            for _, context, continuation in requests:
                Measured.sequences.append((context + continuation)[-(self.max_length + 1) :][:-1])
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)

        def _model_call(self, inps, attn_mask=None, labels=None):  # type: ignore[no-untyped-def]
            Measured.positions += inps.numel()
            return super()._model_call(inps, attn_mask, labels)

    lm = Measured(
        pretrained=spec["model"],
        dtype=spec["dtype"],
        batch_size=spec["batch_size"],
        device="cpu",
        trust_remote_code=False,
        use_safetensors=True,
    )
    with tempfile.TemporaryDirectory() as work:
        data = prepare_task_data([spec["task"]], "local", None, Path(work))
        manager = TaskManager(
            include_path=[str(p) for p in data.include_path], include_defaults=False
        )
        names = [spec["task"]]
        if spec["mmlu_subjects"]:
            subjects = manager.load(["mmlu"])["tasks"]
            names = sorted(subjects)[: spec["mmlu_subjects"]]
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=spec["num_fewshot"],
            limit=spec["limit"],
            task_manager=manager,
            log_samples=True,
            **SEEDS,
        )
    assert results is not None
    root = _Node([])
    for sequence in Measured.sequences:
        _insert(root, sequence)
    positions = (
        Measured.positions if spec["backend"] == "hf" else lm.forward_stats.positions  # type: ignore[attr-defined]
    )
    metrics = {
        name: {key: value for key, value in entry.items() if key.split(",")[0] in METRIC_KEYS}
        for name, entry in results["results"].items()
    }
    predictions = {
        name: [
            [
                int(sample["doc_id"]),
                max(
                    range(len(sample["filtered_resps"])),
                    key=lambda i: sample["filtered_resps"][i][0],
                ),
                sample.get("acc"),
                sample.get("acc_norm"),
            ]
            for sample in samples
        ]
        for name, samples in results["samples"].items()
    }
    out = {
        "seconds": Measured.seconds,
        "cpu_seconds": Measured.cpu_seconds,
        "requests": len(Measured.answers),
        "answers": Measured.answers,
        "positions": positions,
        "unique": _tree_tokens(root),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": metrics,
        "predictions": predictions,
    }
    Path(spec["out"]).write_text(json.dumps(out))


METRIC_KEYS = ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")


def _tree_tokens(root: Any) -> int:
    total, stack = 0, [root]
    while stack:
        node = stack.pop()
        total += len(node.tokens)
        stack.extend(node.children.values())
    return total


# --- The comparison ------------------------------------------------------------------------------


def compare(key: str, shots: int, limit: int, measured: dict[str, Any]) -> dict[str, Any]:
    stock, trellis = measured["hf"], measured["trellis-prefix"]
    if stock["requests"] != trellis["requests"]:
        raise SystemExit(f"{key}: {stock['requests']} requests vs {trellis['requests']}")
    diff = max(
        (abs(a[0] - b[0]) for a, b in zip(stock["answers"], trellis["answers"], strict=True)),
        default=0.0,
    )
    greedy_same = all(
        a[1] == b[1] for a, b in zip(stock["answers"], trellis["answers"], strict=True)
    )
    identical = (
        greedy_same
        and stock["metrics"] == trellis["metrics"]
        and stock["predictions"] == trellis["predictions"]
    )
    return {
        "task": key,
        "shots": shots,
        "limit": limit,
        "requests": stock["requests"],
        "tokens_stock": stock["positions"],
        "tokens_trellis": trellis["positions"],
        "unique": stock["unique"],
        "seconds_stock": stock["seconds"],
        "seconds_trellis": trellis["seconds"],
        "cpu_stock": stock["cpu_seconds"],
        "cpu_trellis": trellis["cpu_seconds"],
        "peak_mb_stock": stock["peak_rss_mb"],
        "peak_mb_trellis": trellis["peak_rss_mb"],
        "max_abs_diff": diff,
        "identical": identical,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    suite = {
        "task": "suite",
        "shots": "",
        "limit": "",
        **{
            key: sum(row[key] for row in rows)
            for key in (
                "requests",
                "tokens_stock",
                "tokens_trellis",
                "unique",
                "seconds_stock",
                "seconds_trellis",
                "cpu_stock",
                "cpu_trellis",
            )
        },
        "peak_mb_stock": max(row["peak_mb_stock"] for row in rows),
        "peak_mb_trellis": max(row["peak_mb_trellis"] for row in rows),
        "max_abs_diff": max(row["max_abs_diff"] for row in rows),
        "identical": all(row["identical"] for row in rows),
    }
    header = (
        "| task | shots | docs | requests | tokens stock | tokens trellis | unique bound | "
        "trellis/bound | stock s | trellis s | speed-up | peak MB stock | peak MB trellis | "
        "cpu speed-up | max abs Δll | identical |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for row in [*rows, suite]:
        print(
            f"| {row['task']} | {row['shots']} | {row['limit']} | {row['requests']:,} | "
            f"{row['tokens_stock']:,} | {row['tokens_trellis']:,} | {row['unique']:,} | "
            f"{row['tokens_trellis'] / row['unique']:.2f} | {row['seconds_stock']:.1f} | "
            f"{row['seconds_trellis']:.1f} | {speedup(row):.2f}{TIMES} | "
            f"{row['peak_mb_stock']:,.0f} | {row['peak_mb_trellis']:,.0f} | "
            f"{row['cpu_stock'] / row['cpu_trellis']:.2f}{TIMES} | "
            f"{row['max_abs_diff']:.1e} | {'yes' if row['identical'] else 'no'} |"
        )
    identical = "yes" if suite["identical"] else "no"
    print(
        f"suite speedup: {speedup(suite):.2f}{TIMES} identical: {identical} "
        f"max_abs_diff: {suite['max_abs_diff']:.1e}"
    )


def speedup(row: dict[str, Any]) -> float:
    return row["seconds_stock"] / row["seconds_trellis"] if row["seconds_trellis"] else math.inf


if __name__ == "__main__":
    main()
