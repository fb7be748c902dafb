"""Command line for operators: run one evaluation job without Celery, build the demo model, or
reproduce a run of any Trellis instance from its reproduction bundle.

    python -m evaluator build-demo --model-root var/models
    python -m evaluator run --model-path var/models/HuggingFaceTB/SmolLM2-135M-Instruct \\
        --suite quick --precision bfloat16 --artifact-store var/artifacts
    python -m evaluator reproduce https://trellis.example.org/runs/42/bundle/ [--model-root DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from evaluator.messages import EvaluationJob
from evaluator.vocabulary import DATA_SOURCES, PRECISIONS


def _progress(done: int, total: int) -> None:
    share = 100 * done / total if total else 100.0
    print(f"\rscored {done}/{total} loglikelihood requests ({share:.0f}%)", end="", file=sys.stderr)
    if done == total:
        print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-demo", help="build the demo model repositories")
    build.add_argument("--model-root", type=Path, required=True)

    run = commands.add_parser("run", help="evaluate one model and print the result payload")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-path", help="a local repository folder")
    where.add_argument("--repo-id", help="a Hub repository (needs --revision)")
    run.add_argument("--revision", default="local", help="the commit to load from the Hub")
    run.add_argument("--precision", choices=PRECISIONS, default="bfloat16")
    run.add_argument("--suite", default="quick")
    run.add_argument("--suite-version", default=None, help="default: the newest")
    run.add_argument("--limit", type=int, default=None, help="documents per task (testing)")
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument(
        "--backend",
        choices=("trellis-prefix", "hf"),
        default=None,
        help="loglikelihood backend (default: TRELLIS_EVAL_BACKEND, else trellis-prefix)",
    )
    run.add_argument("--data-source", choices=DATA_SOURCES, default="local")
    run.add_argument("--data-root", default=None)
    run.add_argument(
        "--artifact-store", default="var/artifacts", help="a folder, or s3://bucket/prefix"
    )
    run.add_argument("--run-id", type=int, default=0)
    again = commands.add_parser(
        "reproduce", help="download a run's reproduction bundle, run it, compare the scores"
    )
    again.add_argument("url", help="the run's bundle URL (…/runs/<id>/bundle/) or …/runs/<id>/")
    again.add_argument("--into", type=Path, default=None, help="default: ./trellis-run-<id>-…")
    again.add_argument("--model-root", default=None)
    again.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return reproduce(args.url, args.into, args.model_root, args.data_root)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "build-demo":
        from evaluator.demo_model import build_demo_repositories

        print(build_demo_repositories(args.model_root))
        return 0

    from evaluator.artifacts import open_store
    from evaluator.run import EvaluationFailure, run_job
    from evaluator.suites import load_suite

    suite = load_suite(args.suite, args.suite_version)
    local = args.model_path is not None
    job = EvaluationJob(
        run_id=args.run_id,
        attempt=1,
        repo_id=Path(args.model_path).name if local else args.repo_id,
        revision=args.revision,
        precision=args.precision,
        suite_name=suite.name,
        suite_version=suite.version,
        model_source="local" if local else "hub",
        model_path=args.model_path,
        data_source=args.data_source,
        data_root=args.data_root,
        artifact_store=open_store(args.artifact_store).location,
        limit=args.limit,
        batch_size=args.batch_size,
        backend=args.backend,
    )
    try:
        payload = run_job(job, progress=_progress)
    except EvaluationFailure as failure:
        print(f"failed ({failure.reason}): {failure.message}", file=sys.stderr)
        print(failure.log_tail, file=sys.stderr)
        return 1
    print(json.dumps(payload, indent=2))
    return 0


def bundle_url(url: str) -> str:
    """The bundle's URL from a run's URL (…/runs/<id>/…), else `url` itself."""
    match = re.search(r"^(.*/runs/\d+)/", url.rstrip("/") + "/")
    return f"{match.group(1)}/bundle/" if match else url


def reproduce(url: str, into: Path | None, model_root: str | None, data_root: str | None) -> int:
    """Download the bundle, unpack it (into `into`, else the current folder) and run its
    reproduce.py with this interpreter; its exit status is the comparison's."""
    import io
    import subprocess
    import urllib.request
    import zipfile

    with urllib.request.urlopen(bundle_url(url), timeout=60) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = archive.namelist()
    top = names[0].split("/", 1)[0]
    if any(not name.startswith(f"{top}/") or ".." in name.split("/") for name in names):
        print(f"refusing a bundle with unexpected paths: {names}", file=sys.stderr)
        return 2
    target = into or Path.cwd()
    archive.extractall(target)
    folder = target / top
    command = [sys.executable, str(folder / "reproduce.py")]
    if model_root:
        command += ["--model-root", model_root]
    if data_root:
        command += ["--data-root", data_root]
    return subprocess.run(command, cwd=folder).returncode


if __name__ == "__main__":
    sys.exit(main())
