"""Helpers for the evaluation tests: result payloads shaped like the evaluator's, with a real
details artifact on disk, and reading the messages the in-memory broker holds."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from evaluator.suites import load_suite
from leaderboard.celery import app

QUEUES = ("trellis", "gpu-small", "gpu-large")


def write_artifact(root: Path, run_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    relative = Path(str(run_id)) / "quick@1-details.jsonl.gz"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as out:
        for row in rows:
            out.write(json.dumps(row).encode() + b"\n")
    data = path.read_bytes()
    return {
        "path": relative.as_posix(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "rows": len(rows),
    }


def quick_payload(run_id: int, artifact_root: Path, values: dict[str, float] | None = None) -> dict:
    """A payload for the quick suite as the evaluator returns it, artifact written."""
    suite = load_suite("quick")
    values = values or {}
    tasks = [
        {
            "task": task.key,
            "lm_eval_task": task.lm_eval_task,
            "metric": task.metric,
            "value": values.get(task.key, 0.5),
            "stderr": 0.05,
            "n_samples": 4,
            "num_fewshot": task.num_fewshot,
        }
        for task in suite.tasks
    ]
    rows = [
        {
            "task": "arc_easy",
            "lm_eval_task": "arc_easy",
            "doc_id": 0,
            "choices": ["a", "b"],
            "loglikelihoods": [-1.5, -2.5],
            "prediction": 0,
            "gold": 0,
            "correct": True,
        }
    ]
    return {
        "run_id": run_id,
        "suite": {"name": suite.name, "version": suite.version},
        "tasks": tasks,
        "versions": {"lm_eval": "0.4.13", "transformers": "5.23.0", "torch": "2.13.0"},
        "dtype": "bfloat16",
        "device": "cpu",
        "batch_size": 8,
        "duration_seconds": 12.5,
        "loglikelihood_requests": 1234,
        "reproduce": {
            "command": "lm_eval --model hf --model_args pretrained=x --tasks arc_easy",
            "task_overrides": {"arc_easy.yaml": "include: arc_easy"},
        },
        "artifact": write_artifact(artifact_root, run_id, rows),
    }


DELETE = object()


def changed(payload: dict, path: str, value: Any) -> dict:
    """A deep copy of `payload` with the dotted `path` (list indexes as numbers) set to `value`,
    or removed when `value` is DELETE."""
    result = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return result


def drain(queue: str) -> list[tuple[str, list[Any]]]:
    """Take every message off `queue` of the test broker: (task name, args) in order."""
    found = []
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    break
                found.append((message.headers["task"], message.payload[0]))
                message.ack()
        finally:
            simple.close()
    return found
