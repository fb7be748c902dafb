"""One evaluation job, start to finish: check the weights, load the model with lm-eval's stock
Hugging Face class, score the suite with `lm_eval.simple_evaluate`, write the per-sample details
artifact and return the result payload. Failures come out as `EvaluationFailure` with a reason.

Torch, transformers and lm-eval are imported inside the functions that use them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shlex
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from evaluator.artifacts import ArtifactStore, open_store
from evaluator.data import OVERRIDES_DIR_NAME, DataMissing, TaskData, prepare_task_data
from evaluator.energy import EnergyMeter
from evaluator.messages import EvaluationJob
from evaluator.reference import run_references
from evaluator.suites import Suite, SuiteTask, UnknownSuite, load_suite
from evaluator.vocabulary import WORKER_FAILURES, is_safetensors, is_weight_pickle

logger = logging.getLogger(__name__)

# lm-eval's own defaults, written out so the reproduction command states them.
SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
# On CPU, batch 8 beat 1 by 1.2-1.6x while "auto" picked 64 and ran 2.5x slower in 17 GB.
CPU_BATCH_SIZE = 8
# Loglikelihood backends: Trellis's prefix-sharing subclass of HFLM (evaluator/prefix_lm.py) and
# stock HFLM. Both score alike (float32: within 1e-4 per request), so the stock command
# reproduces either; the prefix one forwards each shared token once.
BACKENDS = ("trellis-prefix", "hf")
DEFAULT_BACKEND = "trellis-prefix"
LOG_TAIL_LINES = 40
PROGRESS_INTERVAL = 0.5  # seconds between progress callbacks while scoring
# Logger -> the lowest level the log tail keeps from it. Only the evaluator's own milestones are
# kept at INFO: the others' INFO lines (a line per subtask built, file listings, whole configs)
# would crowd them out of the tail, whatever level the worker logs at.
CAPTURED_LOGGERS: dict[str, int] = {
    "evaluator": logging.INFO,
    "lm_eval": logging.WARNING,
    "transformers": logging.WARNING,
    "datasets": logging.WARNING,
    "huggingface_hub": logging.WARNING,
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)

Progress = Callable[[int, int], None]
# Payload name -> distribution whose version the payload reports.
VERSIONED = {"lm_eval": "lm_eval", "transformers": "transformers", "torch": "torch"}


class EvaluationFailure(Exception):
    """A run that cannot finish. `reason` is one of the worker's failure codes (vocabulary),
    `message` is for the submitter, `log_tail` holds the last lines of the run's log."""

    def __init__(self, reason: str, message: str, log_tail: str = "") -> None:
        if reason not in WORKER_FAILURES:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log_tail = log_tail


class _LoadError(Exception):
    """Raised inside the model class so a failure says whether weights or tokenizer broke."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


@dataclass
class Stage:
    """Suite tasks sharing a few-shot count and limit: one `simple_evaluate` call, which is one
    stock `lm_eval` command line."""

    num_fewshot: int
    limit: int | None
    tasks: list[SuiteTask] = field(default_factory=list)


def plan_stages(suite: Suite, limit: int | None = None) -> list[Stage]:
    stages: dict[tuple[int, int | None], Stage] = {}
    for task in suite.tasks:
        task_limit = limit if limit is not None else task.limit
        key = (task.num_fewshot, task_limit)
        stages.setdefault(key, Stage(task.num_fewshot, task_limit)).tasks.append(task)
    return list(stages.values())


def run_job(job: EvaluationJob, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate `job`; return the result payload (JSON-serializable) after writing the details
    artifact into `job.artifact_store`. `progress(done, total)` follows the loglikelihood
    requests as they are scored."""
    started = time.monotonic()
    with _captured_logs() as tail, tempfile.TemporaryDirectory(prefix="trellis-eval-") as work:
        try:
            return _run(job, progress, Path(work), started)
        except EvaluationFailure as failure:
            failure.log_tail = failure.log_tail or tail.text()
            raise
        except Exception as exc:
            reason, message = classify(exc)
            # One line: a traceback would push the run's own log lines out of the tail (the
            # exception travels on as this failure's cause for whoever logs it in full).
            logger.error(
                "evaluation of run %s failed (%s): %s", job.run_id, reason, _first_line(exc)
            )
            raise EvaluationFailure(reason, message, tail.text()) from exc


def _run(job: EvaluationJob, progress: Progress | None, work: Path, started: float) -> dict:
    try:
        suite = load_suite(job.suite_name, job.suite_version)
    except UnknownSuite as exc:
        raise EvaluationFailure("error", f"This worker does not know the suite: {exc}") from exc
    stages = plan_stages(suite, job.limit)
    try:
        data = prepare_task_data(
            [task.lm_eval_task for task in suite.tasks], job.data_source, job.data_root, work
        )
    except DataMissing as exc:
        raise EvaluationFailure("data_missing", f"Task data is missing: {exc}") from exc
    pretrained = check_repository(job)
    backend = eval_backend(job)
    meter = EnergyMeter().start()
    lm, model_args, device, batch_size = _load_model(job, pretrained, backend)
    manager, loaded = _load_tasks(data, stages)

    counter = _ProgressCounter(progress)
    lm.on_scored = counter.add
    counter.start(
        sum(_count_requests(stage, tasks) for stage, tasks in zip(stages, loaded, strict=True))
    )
    logger.info("%d loglikelihood requests to score", counter.total)

    import lm_eval

    task_results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for stage, tasks in zip(stages, loaded, strict=True):
        top = [_top_level(tasks, task.lm_eval_task) for task in stage.tasks]
        logger.info("scoring %s, %d-shot", ", ".join(t.key for t in stage.tasks), stage.num_fewshot)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=top,
            num_fewshot=stage.num_fewshot,
            limit=stage.limit,
            task_manager=manager,
            log_samples=True,
            **SEEDS,
        )
        if results is None:
            raise RuntimeError("lm-eval returned no results (not the main process)")
        for task in stage.tasks:
            task_rows = _detail_rows(task, tasks, results)
            task_results.append(_task_result(task, stage, results, task_rows))
            rows.extend(task_rows)
    counter.finish()
    # The contamination signals' reference sets, through the same model (docs/contamination.md).
    # They are not the suite's requests: progress stays at its total, re-sent as the heartbeat.
    logger.info("scoring the reference sets")
    lm.on_scored = lambda _: counter.add(0)
    references = run_references(
        lm,
        [(task.key, task.lm_eval_task, task.metric) for task in suite.tasks],
        {
            task.key: _leaves(_top_level(tasks, task.lm_eval_task))
            for stage, tasks in zip(stages, loaded, strict=True)
            for task in stage.tasks
        },
        rows,
        job.data_root,
    )
    order = [task.key for task in suite.tasks]
    task_results.sort(key=lambda result: order.index(result["task"]))
    rows.sort(key=lambda row: order.index(row["task"]))

    artifact = write_artifact(open_store(job.artifact_store), job.run_id, suite, rows)
    return {
        "run_id": job.run_id,
        "repo_id": job.repo_id,
        "revision": job.revision,
        "suite": {"name": suite.name, "version": suite.version},
        "tasks": task_results,
        "versions": {name: metadata.version(dist) for name, dist in VERSIONED.items()},
        "dtype": job.precision,
        "device": device,
        "backend": backend,
        "batch_size": batch_size,
        "batch_sizes_detected": [int(b) for b in getattr(lm, "batch_sizes", {}).values()],
        "duration_seconds": round(time.monotonic() - started, 3),
        "loglikelihood_requests": counter.done,
        "seeds": dict(SEEDS),
        "data": {"source": data.source, "root": job.data_root},
        "reproduce": reproduction(job, model_args, batch_size, device, stages, data, backend),
        "artifact": artifact,
        "references": references,
        "energy": meter.reading(device),
        "fingerprint": weights_fingerprint(job, pretrained),
    }


def weights_fingerprint(job: EvaluationJob, pretrained: str) -> dict[str, Any] | None:
    """The fingerprint of the weights just evaluated, with the exact hash of every tensor (the
    files are on this machine already); None, logged, when they cannot be read: provenance is
    never a reason to fail an evaluation."""
    from evaluator.fingerprint import LocalReader, fingerprint

    try:
        if job.model_source == "local":
            folder = Path(pretrained)
        else:
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    job.repo_id,
                    revision=job.revision,
                    allow_patterns=["*.safetensors", "*.json"],
                    local_files_only=True,
                )
            )
        return fingerprint(LocalReader(folder), exact=True)
    except Exception as exc:
        logger.warning("no weight fingerprint for %s: %s", job.repo_id, _first_line(exc))
        return None


def eval_backend(job: EvaluationJob) -> str:
    """The job's loglikelihood backend, else the worker's TRELLIS_EVAL_BACKEND."""
    backend = job.backend or os.environ.get("TRELLIS_EVAL_BACKEND") or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise EvaluationFailure(
            "error",
            f"TRELLIS_EVAL_BACKEND={backend!r} on this worker is not one of "
            f"{', '.join(BACKENDS)}: set it to one of those (or unset it).",
        )
    return backend


def _load_model(
    job: EvaluationJob, pretrained: str, backend: str
) -> tuple[Any, dict[str, Any], str, int | str]:
    """The model as the stock `--model hf --model_args ...` would build it, in the class of
    `backend` (both take the same arguments)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch_size: int | str = job.batch_size or ("auto" if device == "cuda" else CPU_BATCH_SIZE)
    model_args: dict[str, Any] = {"pretrained": pretrained}
    if job.model_source == "hub":
        model_args["revision"] = job.revision
    model_args |= {"dtype": job.precision, "trust_remote_code": False, "use_safetensors": True}
    logger.info("loading %s@%s in %s on %s", job.repo_id, job.revision, job.precision, device)
    lm = _model_class(backend).create_from_arg_obj(
        model_args, {"batch_size": batch_size, "device": device}
    )
    return lm, model_args, device, batch_size


def _load_tasks(data: TaskData, stages: list[Stage]) -> tuple[Any, list[dict[str, Any]]]:
    """The task manager and, per stage, lm-eval's loaded tasks (datasets read here)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in data.include_path], include_defaults=False)
    try:
        loaded = [manager.load([task.lm_eval_task for task in stage.tasks]) for stage in stages]
    except Exception as exc:
        if classify(exc)[0] != "error":  # a time limit or out of memory while reading data
            raise
        raise EvaluationFailure(
            "data_missing", f"The task data could not be loaded: {_first_line(exc)}"
        ) from exc
    return manager, loaded


# --- The repository ----------------------------------------------------------------------------


def check_repository(job: EvaluationJob) -> str:
    """What to pass as `pretrained`, after refusing repositories without safetensors weights or
    without a tokenizer (before any weights are read)."""
    if job.model_source == "local":
        path = job.local_repo_path()
        if not path.is_dir():
            raise EvaluationFailure(
                "model_load", f"There is no repository folder for {job.repo_id} at {path}."
            )
        files = [
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(path).parts
        ]
        pretrained = str(path)
    else:
        from huggingface_hub import HfApi

        try:
            files = HfApi().list_repo_files(job.repo_id, revision=job.revision)
        except Exception as exc:
            raise EvaluationFailure(
                "model_load",
                f"Could not list the files of {job.repo_id} at revision {job.revision}: "
                f"{_first_line(exc)}",
            ) from exc
        pretrained = job.repo_id
    check_files(job.repo_id, files)
    return pretrained


def check_files(repo_id: str, files: list[str]) -> None:
    if not any(is_safetensors(name) for name in files):
        pickles = sorted(name for name in files if is_weight_pickle(name))
        found = f" It has only {', '.join(pickles)}." if pickles else ""
        raise EvaluationFailure(
            "unsafe_weights",
            f"{repo_id} has no safetensors weights at this revision.{found} Workers load only "
            "safetensors, never pickled weights: save the model with "
            "save_pretrained(..., safe_serialization=True), push model.safetensors and submit "
            "that revision.",
        )
    if "config.json" not in files:
        raise EvaluationFailure(
            "model_load", f"{repo_id} has no config.json at this revision, so it cannot load."
        )
    if not any(name in files for name in TOKENIZER_FILES):
        raise EvaluationFailure(
            "tokenizer_missing",
            f"{repo_id} has no tokenizer at this revision (none of {', '.join(TOKENIZER_FILES)}"
            "): add the tokenizer files the model was trained with (save_pretrained on the "
            "tokenizer writes them) and submit that revision.",
        )


_MODEL_CLASSES: dict[str, Any] = {}


def _model_class(backend: str = DEFAULT_BACKEND) -> Any:
    """The backend's lm-eval class (stock HFLM, or Trellis's prefix-sharing subclass of it),
    counting scored requests for progress; batching and scores are the backend's own."""
    if backend in _MODEL_CLASSES:
        return _MODEL_CLASSES[backend]
    from lm_eval.api.model import CacheHook
    from lm_eval.models.huggingface import HFLM

    from evaluator.prefix_lm import PrefixHFLM

    base = PrefixHFLM if backend == "trellis-prefix" else HFLM

    class _CountingHook(CacheHook):
        # HFLM calls cache_hook.add_partial once per scored request, right after scoring it.
        def __init__(self, inner: CacheHook, on_scored: Callable[[int], None] | None) -> None:
            super().__init__(None)
            self._inner = inner
            self._on_scored = on_scored

        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            self._inner.add_partial(attr, req, res)
            if self._on_scored is not None:
                self._on_scored(1)

    class ProgressHFLM(base):  # type: ignore[misc, valid-type]
        on_scored: Callable[[int], None] | None = None

        def _get_config(self, *args: Any, **kwargs: Any) -> None:
            try:
                super()._get_config(*args, **kwargs)
            except Exception as exc:
                raise _LoadError("model", exc) from exc

        def _create_model(self, *args: Any, **kwargs: Any) -> None:
            try:
                super()._create_model(*args, **kwargs)
            except Exception as exc:
                raise _LoadError("model", exc) from exc

        def _create_tokenizer(self, *args: Any, **kwargs: Any) -> None:
            try:
                super()._create_tokenizer(*args, **kwargs)
            except Exception as exc:
                raise _LoadError("tokenizer", exc) from exc

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):  # type: ignore[no-untyped-def]
            inner = self.cache_hook
            self.cache_hook = _CountingHook(inner, self.on_scored)
            try:
                return super()._loglikelihood_tokens(
                    requests, disable_tqdm=disable_tqdm, override_bs=override_bs
                )
            finally:
                self.cache_hook = inner

    _MODEL_CLASSES[backend] = ProgressHFLM
    return ProgressHFLM


# --- Progress ----------------------------------------------------------------------------------


class _ProgressCounter:
    def __init__(self, callback: Progress | None, interval: float = PROGRESS_INTERVAL) -> None:
        self._callback = callback
        self._interval = interval
        self._last = 0.0
        self.done = 0
        self.total = 0

    def start(self, total: int) -> None:
        self.total = total
        self._emit()

    def add(self, scored: int) -> None:
        before = self.done
        self.done += scored
        # Never report more done than total, should the count ahead of time be short.
        self.total = max(self.total, self.done)
        if 10 * self.done // self.total > 10 * before // self.total:
            logger.info("scored %d of %d loglikelihood requests", self.done, self.total)
        if time.monotonic() - self._last >= self._interval or self.done == self.total:
            self._emit()

    def finish(self) -> None:
        if self.done != self.total:
            logger.warning("counted %d requests ahead, scored %d", self.total, self.done)
            self.total = self.done
            self._emit()

    def _emit(self) -> None:
        self._last = time.monotonic()
        if self._callback is not None:
            self._callback(self.done, self.total)


def _leaves(item: Any) -> list[Any]:
    from lm_eval.api.group import Group

    return list(item.get_all_tasks()) if isinstance(item, Group) else [item]


def _top_level(loaded: dict[str, Any], name: str) -> Any:
    groups = loaded.get("groups") or {}
    return groups[name] if name in groups else loaded["tasks"][name]


def _count_requests(stage: Stage, loaded: dict[str, Any]) -> int:
    """Loglikelihood requests the stage will make: one per choice of each evaluated document."""
    total = 0
    for task in stage.tasks:
        for leaf in _leaves(_top_level(loaded, task.lm_eval_task)):
            if leaf.OUTPUT_TYPE != "multiple_choice":
                raise RuntimeError(f"{leaf.task_name} is not a multiple-choice task")
            docs = leaf.eval_docs
            count = len(docs) if stage.limit is None else min(stage.limit, len(docs))
            # acc_mutual_info adds an unconditional request per choice (none of our suites).
            per_choice = 2 if "acc_mutual_info" in leaf._metric_fn_list else 1
            total += per_choice * sum(len(leaf.doc_to_choice(docs[i])) for i in range(count))
    return total


# --- Results -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def _task_result(
    task: SuiteTask, stage: Stage, results: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    entry = results["results"][task.lm_eval_task]
    value = _number(entry.get(f"{task.metric},none"))
    if value is None:
        raise RuntimeError(f"lm-eval reported no {task.metric} for {task.lm_eval_task}")
    shots = {results["n-shot"][name] for name in {row["lm_eval_task"] for row in rows}}
    if shots != {stage.num_fewshot}:
        raise RuntimeError(f"{task.key} ran with {sorted(shots)} shots, not {stage.num_fewshot}")
    return {
        "task": task.key,
        "lm_eval_task": task.lm_eval_task,
        "metric": task.metric,
        "value": value,
        "stderr": _number(entry.get(f"{task.metric}_stderr,none")),
        "n_samples": len(rows),
        "num_fewshot": stage.num_fewshot,
    }


def _detail_rows(
    task: SuiteTask, loaded: dict[str, Any], results: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per evaluated document: its choices, their loglikelihoods, the prediction under
    the suite's metric, the gold answer and whether lm-eval counted it correct."""
    import numpy as np

    rows = []
    for leaf in _leaves(_top_level(loaded, task.lm_eval_task)):
        for sample in results["samples"][leaf.task_name]:
            doc = sample["doc"]
            choices = [str(choice) for choice in leaf.doc_to_choice(doc)]
            lls = [float(resp[0]) for resp in sample["filtered_resps"][: len(choices)]]
            if task.metric == "acc_norm":
                # lm-eval normalises by the length of the choice in characters.
                scores = np.array(lls) / np.array([float(len(c)) for c in choices])
            else:
                scores = np.array(lls)
            rows.append(
                {
                    "task": task.key,
                    "lm_eval_task": leaf.task_name,
                    "doc_id": int(sample["doc_id"]),
                    "doc_hash": sample.get("doc_hash"),
                    "choices": choices,
                    "loglikelihoods": lls,
                    "prediction": int(np.argmax(scores)),
                    "gold": _gold(leaf, doc, choices),
                    "correct": bool(sample[task.metric]),
                }
            )
    return rows


def _gold(leaf: Any, doc: dict[str, Any], choices: list[str]) -> int:
    # As lm-eval's multiple-choice scoring: tasks whose choices are contexts (Winogrande) keep
    # the answer in doc_to_text; the others in doc_to_target, as an index or a choice's text.
    gold = leaf.doc_to_text(doc) if leaf.multiple_input else leaf.doc_to_target(doc)
    if isinstance(gold, str):
        return choices.index(gold) if gold in choices else -1
    return int(gold)


def write_artifact(
    store: ArtifactStore, run_id: int, suite: Suite, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Gzip JSON lines stored as <run_id>/<suite>@<version>-<time>-<random>.details.jsonl.gz; a
    new name per attempt, so a redelivered run never overwrites the file an earlier payload
    points at. Written here first, then handed to the store whole."""
    name = (
        f"{run_id}/{suite.name}@{suite.version}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
        f"{uuid.uuid4().hex[:8]}.details.jsonl.gz"
    )
    with tempfile.TemporaryDirectory(prefix="trellis-artifact-") as work:
        path = Path(work) / "details.jsonl.gz"
        # No file name and mtime=0 in the gzip header: the bytes are a function of the rows alone.
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
        ):
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        size = path.stat().st_size
        store.put(name, path)
    return {"path": name, "sha256": digest, "size": size, "rows": len(rows)}


def reproduction(
    job: EvaluationJob,
    model_args: dict[str, Any],
    batch_size: int | str,
    device: str,
    stages: list[Stage],
    data: TaskData,
    backend: str = "hf",
) -> dict[str, Any]:
    """The stock `lm_eval` command lines (one per few-shot count and limit) and the task YAML
    overrides that reproduce this run's scores. The commands name stock HFLM (`--model hf`)
    whichever backend scored the run: Trellis's backend computes the same loglikelihoods."""
    # The model as its source names it: the Hub id (its commit sha is `revision`), or for the
    # local source its path relative to the model root; never this worker's own folders.
    args = ",".join(
        f"{key}={job.repo_id if key == 'pretrained' else value}"
        for key, value in model_args.items()
    )
    seeds = ",".join(str(SEEDS[key]) for key in SEEDS)
    commands = []
    for stage in stages:
        parts = ["lm_eval", "--model", "hf", "--model_args", args]
        parts += ["--tasks", ",".join(task.lm_eval_task for task in stage.tasks)]
        parts += ["--num_fewshot", str(stage.num_fewshot)]
        if stage.limit is not None:
            parts += ["--limit", str(stage.limit)]
        parts += ["--batch_size", str(batch_size), "--device", device, "--seed", seeds]
        if data.overrides:
            parts += ["--include_path", OVERRIDES_DIR_NAME]
        commands.append(shlex.join(parts))
    note = (
        "Each command is one lm_eval.simple_evaluate call of this run."
        if not data.overrides
        else f"Write each override into a folder {OVERRIDES_DIR_NAME}/ and run the commands "
        "beside it. The overrides include lm-eval's stock task YAMLs and read the local "
        "mirror's .arrow files by their paths on the worker that ran this evaluation: adjust "
        "those paths to your installation."
    )
    if backend != "hf":
        note += (
            f" This run was scored by Trellis's {backend} backend (evaluator/prefix_lm.py), "
            "which forwards each shared token prefix once and gives stock HFLM's "
            "loglikelihoods up to rounding; the stock commands reproduce its scores."
        )
    if job.model_source == "local":
        note += (
            f" pretrained={job.repo_id} is the model's path relative to the model root "
            f"(revision {job.revision}): run the commands from the model root, or prefix it."
        )
    return {
        "command": "\n".join(commands),
        "commands": commands,
        "include_path": OVERRIDES_DIR_NAME if data.overrides else None,
        "task_overrides": dict(data.overrides),
        "portable_overrides": _portable_overrides(job, data),
        "model": {
            "source": job.model_source,
            "repo_id": job.repo_id,
            "revision": job.revision,
            "precision": job.precision,
        },
        "note": note,
    }


# Placeholders of the reproduction bundle (leaderboard/evaluations/bundle.py): the bundle's
# script replaces them with the folders of the machine it runs on.
TASKS_PLACEHOLDER, DATA_PLACEHOLDER = "@LM_EVAL_TASKS@", "@DATA_ROOT@"


def _portable_overrides(job: EvaluationJob, data: TaskData) -> dict[str, str]:
    """The task overrides with this worker's lm-eval task folder and data mirror replaced by
    placeholders, so they work on another machine."""
    if not data.overrides:
        return {}
    from evaluator.data import default_mirror_root, lm_eval_tasks_dir

    tasks_dir = str(lm_eval_tasks_dir())
    mirror = str(Path(job.data_root) if job.data_root else default_mirror_root())
    return {
        name: text.replace(tasks_dir, TASKS_PLACEHOLDER).replace(mirror, DATA_PLACEHOLDER)
        for name, text in data.overrides.items()
    }


# --- Failures ----------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        if isinstance(current, _LoadError):
            current = current.error
        else:
            current = current.__cause__ or current.__context__
    return seen


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate" in text))
    )


def classify(exc: BaseException) -> tuple[str, str]:
    """The failure reason and a message for the submitter, from an exception and its causes."""
    chain = _chain(exc)
    if any(
        type(e).__name__ == "SoftTimeLimitExceeded" or isinstance(e, TimeoutError) for e in chain
    ):
        return "time_limit", "The evaluation ran past the worker's time limit and was stopped."
    oom = next((e for e in chain if _is_oom(e)), None)
    if oom is not None:
        return (
            "out_of_memory",
            "The model ran out of memory on the worker "
            f"({_first_line(oom)}). It needs a worker with more memory.",
        )
    for e in chain:
        if isinstance(e, _LoadError) and e.stage == "tokenizer":
            return "tokenizer_missing", f"The tokenizer would not load: {_first_line(e.error)}"
        if isinstance(e, _LoadError):
            return "model_load", f"The model would not load: {_first_line(e.error)}"
        if isinstance(e, DataMissing):
            return "data_missing", f"Task data is missing: {e}"
    return "error", f"The evaluation failed: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- The log tail ------------------------------------------------------------------------------


class _Tail(logging.Handler):
    """The last lines logged, with runs of one message template (lm-eval logs one per subtask)
    folded into their first line and a count."""

    def __init__(self, lines: int = LOG_TAIL_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._last: tuple[str, object] | None = None
        self._first = ""
        self._repeats = 0

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= CAPTURED_LOGGERS.get(top, logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name, record.msg)
            if key == self._last and self.lines:
                self._repeats += 1
                self.lines[-1] = f"{self._first} [and {self._repeats} more like it]"
                return
            text = self.format(record).splitlines()
            self._last, self._first, self._repeats = key, text[-1] if text else "", 0
            self.lines.extend(text)
        except Exception:  # a log line that cannot format must not end the run
            self.handleError(record)

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def _captured_logs() -> Iterator[_Tail]:
    """Keep the last lines that lm-eval, transformers and datasets log during the run."""
    tail = _Tail()
    previous: dict[str, int] = {}
    for name in CAPTURED_LOGGERS:
        log = logging.getLogger(name)
        previous[name] = log.level
        log.addHandler(tail)
    # The evaluator's milestones reach the tail even when the worker logs only warnings.
    if logger.getEffectiveLevel() > logging.INFO:
        logging.getLogger("evaluator").setLevel(logging.INFO)
    try:
        yield tail
    finally:
        for name in CAPTURED_LOGGERS:
            log = logging.getLogger(name)
            log.removeHandler(tail)
            log.setLevel(previous[name])
