"""The words both sides of the trust boundary use, each defined once: precisions, weight-file
suffixes, model and data sources, metrics, failure reasons, and the rule for suite and task names.

The lowest layer that needs a word defines it (docs/architecture.md): the evaluator needs all of
these, so they live here and the web side imports them. Importing this module imports nothing
but the standard library."""

from __future__ import annotations

import re
from typing import Literal, get_args

# Each closed set is a Literal type (for the message schema and mypy) and its tuple of values.

# The dtypes a submission may ask for and a worker loads the weights in.
Precision = Literal["float16", "bfloat16", "float32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# Workers load safetensors only. Pickled weights can run code when loaded: the submission checks
# refuse a repository that has only these, and a worker names them when it refuses one.
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Where a worker reads a model's repository and a task's documents from.
ModelSource = Literal["hub", "local"]
MODEL_SOURCES: tuple[str, ...] = get_args(ModelSource)
DataSource = Literal["local", "hub"]
DATA_SOURCES: tuple[str, ...] = get_args(DataSource)

# The one number per task that counts: lm-eval's accuracy, raw or length-normalised.
Metric = Literal["acc", "acc_norm"]
METRICS: tuple[str, ...] = get_args(Metric)

# Why a run failed: the codes a worker reports, the ones only the web side decides (a silent
# worker, a result that failed validation), and each in words for the submitter.
WorkerFailure = Literal[
    "out_of_memory",
    "model_load",
    "tokenizer_missing",
    "time_limit",
    "unsafe_weights",
    "data_missing",
    "error",
]
WORKER_FAILURES: tuple[str, ...] = get_args(WorkerFailure)
WEB_FAILURES = ("worker_lost", "invalid_result")
FAILURE_REASONS: dict[str, str] = {
    "out_of_memory": "Out of memory: the model did not fit on the worker at this precision.",
    "model_load": "The model would not load.",
    "tokenizer_missing": "The tokenizer is missing or would not load.",
    "time_limit": "The evaluation ran past its time limit.",
    "unsafe_weights": "The repository has no safetensors weights; workers never load pickles.",
    "data_missing": "The task data could not be found.",
    "error": "The evaluation failed with an unexpected error.",
    "worker_lost": "The worker stopped reporting: it was killed or lost its connection.",
    "invalid_result": "The worker's result did not pass validation.",
}
if set(FAILURE_REASONS) != {*WORKER_FAILURES, *WEB_FAILURES}:
    raise RuntimeError("every failure code needs its words in FAILURE_REASONS, and only those")

# Suite names, suite versions and task keys appear in file names, URLs, CSV columns and
# artifact paths: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def failure_words(code: str) -> str:
    """The reason for `code` in words (a code this version does not know is still shown)."""
    return FAILURE_REASONS.get(code, f"The evaluation failed ({code}).")


def is_weight_pickle(filename: str) -> bool:
    return filename.endswith(PICKLE_SUFFIXES)


def is_safetensors(filename: str) -> bool:
    return filename.endswith(SAFETENSORS_SUFFIX)


def name_error(what: str, name: str) -> str | None:
    """Why `name` cannot be a suite name, suite version or task key, or None when it can."""
    if _NAME.fullmatch(name):
        return None
    return (
        f"{what} {name!r} must be 1-64 lower-case letters, digits, '.', '_' or '-', starting "
        "with a letter or digit"
    )
