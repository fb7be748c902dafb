"""run_job end to end on the `quick` suite with a tiny random-weight Llama and a real (small,
trained offline) BPE tokenizer: the payload, the details artifact, progress, the reproduction
command against stock lm-eval, and every failure reason."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shlex
import shutil
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluator.artifacts import FolderStore
from evaluator.data import default_mirror_root
from evaluator.messages import EvaluationJob
from evaluator.run import EvaluationFailure, classify, run_job, write_artifact
from evaluator.suites import load_suite
from tests.tiny_model import build_tiny_repo

REPO_ID = "trellis-tests/tiny-llama"
LIMIT = 2


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("evaluator-models"), REPO_ID)


def make_job(model_root: Path, artifact_root: Path, **overrides: Any) -> EvaluationJob:
    fields: dict[str, Any] = {
        "run_id": 7,
        "attempt": 1,
        "repo_id": REPO_ID,
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "precision": "float32",
        "suite_name": "quick",
        "suite_version": "1",
        "model_source": "local",
        "model_path": str(model_root),
        "data_source": "local",
        "data_root": None,
        "artifact_store": str(artifact_root),
        "limit": LIMIT,
    }
    fields.update(overrides)
    return EvaluationJob.model_validate(fields)


def copy_repo(source: Path, root: Path, drop: tuple[str, ...] = ()) -> Path:
    path = root / REPO_ID
    shutil.copytree(source, path)
    for name in drop:
        (path / name).unlink()
    return path


@pytest.fixture(scope="session")
def quick_run(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    artifact_root = tmp_path_factory.mktemp("artifacts")
    calls: list[tuple[int, int]] = []
    # The model root layout, as the local model source passes it: <root>/<org>/<name>/.
    job = make_job(tiny_repo.parent.parent, artifact_root)
    started = time.monotonic()
    payload = run_job(job, progress=lambda done, total: calls.append((done, total)))
    return {
        "payload": payload,
        "progress": calls,
        "artifact_root": artifact_root,
        "job": job,
        "wall_seconds": time.monotonic() - started,
    }


def read_rows(artifact_root: Path, payload: dict[str, Any]) -> list[dict[str, Any]]:
    with gzip.open(artifact_root / payload["artifact"]["path"], "rt") as handle:
        return [json.loads(line) for line in handle]


# --- A finished run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_payload_reports_every_suite_task_as_the_suite_defines_it(quick_run):
    payload = quick_run["payload"]
    suite = load_suite("quick", "1")
    assert payload["suite"] == {"name": "quick", "version": "1"}
    assert [t["task"] for t in payload["tasks"]] == [
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "mmlu",
        "winogrande",
    ]
    for result, task in zip(payload["tasks"], suite.tasks, strict=True):
        assert result["lm_eval_task"] == task.lm_eval_task
        assert result["metric"] == task.metric
        assert result["num_fewshot"] == task.num_fewshot
        assert 0.0 <= result["value"] <= 1.0
    # lm-eval's standard error of a mean: the sample standard deviation over the square root of
    # n, from the per-document outcomes in the details artifact.
    rows = read_rows(quick_run["artifact_root"], payload)
    for result in payload["tasks"]:
        if result["task"] == "mmlu":
            continue  # a group: lm-eval pools its subjects' errors (its own arithmetic)
        correct = [float(row["correct"]) for row in rows if row["task"] == result["task"]]
        expected = statistics.stdev(correct) / math.sqrt(len(correct))
        assert result["stderr"] == pytest.approx(expected, abs=1e-12), result["task"]
    # The limit caps each lm-eval task; MMLU is a group of 57 subjects, each capped.
    assert {t["task"]: t["n_samples"] for t in payload["tasks"]} == {
        "arc_easy": 2,
        "arc_challenge": 2,
        "hellaswag": 2,
        "mmlu": 114,
        "winogrande": 2,
    }
    assert payload["versions"] == {
        "lm_eval": metadata.version("lm_eval"),
        "transformers": metadata.version("transformers"),
        "torch": metadata.version("torch"),
    }
    assert (payload["dtype"], payload["device"], payload["batch_size"]) == ("float32", "cpu", 8)
    assert payload["batch_sizes_detected"] == []
    assert payload["run_id"] == 7
    assert payload["repo_id"] == REPO_ID
    assert payload["data"] == {"source": "local", "root": None}
    assert 0 < payload["duration_seconds"] <= quick_run["wall_seconds"]
    json.dumps(payload)  # the payload travels as JSON


@pytest.mark.slow
def test_details_artifact_holds_one_row_per_document_and_reproduces_each_score(quick_run):
    payload, artifact_root = quick_run["payload"], quick_run["artifact_root"]
    artifact = payload["artifact"]
    path = artifact_root / artifact["path"]
    assert artifact["path"].startswith("7/quick@1-")
    assert artifact["path"].endswith(".details.jsonl.gz")
    assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert artifact["size"] == path.stat().st_size
    rows = read_rows(artifact_root, payload)
    assert len(rows) == artifact["rows"] == sum(t["n_samples"] for t in payload["tasks"]) == 122
    assert payload["loglikelihood_requests"] == sum(len(row["choices"]) for row in rows)
    metric_of = {t["task"]: t["metric"] for t in payload["tasks"]}
    for row in rows:
        lls = np.array(row["loglikelihoods"])
        assert len(lls) == len(row["choices"]) >= 2
        if metric_of[row["task"]] == "acc_norm":
            expected = int(np.argmax(lls / np.array([len(c) for c in row["choices"]])))
        else:
            expected = int(np.argmax(lls))
        assert row["prediction"] == expected
        assert 0 <= row["gold"] < len(row["choices"])
        assert row["correct"] == (row["prediction"] == row["gold"])
    for result in payload["tasks"]:
        correct = [row["correct"] for row in rows if row["task"] == result["task"]]
        assert result["value"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    mmlu_subjects = {row["lm_eval_task"] for row in rows if row["task"] == "mmlu"}
    assert len(mmlu_subjects) == 57
    assert {row["doc_id"] for row in rows if row["task"] == "arc_easy"} == {0, 1}


@pytest.mark.slow
def test_the_artifact_bytes_depend_on_the_rows_alone(quick_run, tmp_path):
    payload = quick_run["payload"]
    rows = read_rows(quick_run["artifact_root"], payload)
    again = write_artifact(FolderStore(tmp_path), 7, load_suite("quick", "1"), rows)
    assert again["path"] != payload["artifact"]["path"]
    assert (again["sha256"], again["size"], again["rows"]) == (
        payload["artifact"]["sha256"],
        payload["artifact"]["size"],
        122,
    )


@pytest.mark.slow
def test_progress_counts_every_loglikelihood_request_once_in_order(quick_run):
    calls, payload = quick_run["progress"], quick_run["payload"]
    total = payload["loglikelihood_requests"]
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert all(call[1] == total for call in calls)
    done = [call[0] for call in calls]
    assert done == sorted(done)
    assert len(calls) >= 3


@pytest.mark.slow
def test_reproduction_commands_give_the_same_scores_and_loglikelihoods_with_stock_lm_eval(
    quick_run, tmp_path
):
    """The stock HFLM, through simple_evaluate, given the first command line and the task
    overrides from the payload, scores what the worker stored, sample for sample: the scores to
    1e-6, each log-likelihood to a few float32 steps (one step at 32 nats is 3.8e-6)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    payload = quick_run["payload"]
    reproduce = payload["reproduce"]
    assert reproduce["command"] == "\n".join(reproduce["commands"])
    # Every quick task is 1-shot, so with one limit for all the run is one lm-eval call.
    assert len(reproduce["commands"]) == 1
    command = reproduce["commands"][0]
    model_path = quick_run["job"].local_repo_path()
    repo_id = quick_run["job"].repo_id
    # The model as the local source names it: its path relative to the model root.
    assert command == (
        f"lm_eval --model hf --model_args pretrained={repo_id},dtype=float32,"
        "trust_remote_code=False,use_safetensors=True "
        "--tasks arc_easy,arc_challenge,hellaswag,mmlu,winogrande "
        "--num_fewshot 1 --limit 2 --batch_size 8 --device cpu --seed 0,1234,1234,1234 "
        "--include_path trellis-tasks"
    )
    include = tmp_path / reproduce["include_path"]
    include.mkdir()
    for name, text in reproduce["task_overrides"].items():
        (include / name).write_text(text)
    args = shlex.split(command)
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    seeds = [int(s) for s in flag["--seed"].split(",")]
    stock = lm_eval.simple_evaluate(
        model=flag["--model"],
        model_args=flag["--model_args"].replace(
            f"pretrained={repo_id},", f"pretrained={model_path},"
        ),
        tasks=flag["--tasks"].split(","),
        num_fewshot=int(flag["--num_fewshot"]),
        limit=int(flag["--limit"]),
        batch_size=int(flag["--batch_size"]),
        device=flag["--device"],
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
        log_samples=True,
        random_seed=seeds[0],
        numpy_random_seed=seeds[1],
        torch_random_seed=seeds[2],
        fewshot_random_seed=seeds[3],
    )
    rows = read_rows(quick_run["artifact_root"], payload)
    for result in payload["tasks"]:
        name = result["lm_eval_task"]
        assert result["value"] == pytest.approx(
            stock["results"][name][f"{result['metric']},none"], abs=1e-6
        )
    compared = 0
    for leaf, samples in stock["samples"].items():
        stored = {row["doc_id"]: row for row in rows if row["lm_eval_task"] == leaf}
        assert sorted(stored) == sorted(sample["doc_id"] for sample in samples)
        for sample in samples:
            lls = [resp[0] for resp in sample["filtered_resps"]]
            # Summation order can differ with the thread count: one float32 rounding at -34.79
            # (3.8e-6) failed an absolute 1e-6 once. Relative 1e-6 is about 8 steps.
            assert stored[sample["doc_id"]]["loglikelihoods"] == pytest.approx(
                lls, rel=1e-6, abs=1e-6
            )
            compared += 1
    assert compared == len(rows) == 122


@pytest.mark.slow
def test_task_overrides_change_only_where_the_data_comes_from(quick_run):
    overrides = quick_run["payload"]["reproduce"]["task_overrides"]
    # 4 tasks, 57 MMLU subjects, and the 5 MMLU group files included unchanged.
    assert len(overrides) == 66
    assert overrides["_mmlu.yaml"].startswith("include: ")
    assert overrides["_mmlu.yaml"].endswith("lm_eval/tasks/mmlu/default/_mmlu.yaml\n")
    mirror = default_mirror_root()
    assert f"{mirror}/hails/mmlu_no_train/anatomy/test/" in overrides["mmlu_anatomy.yaml"]
    assert "test_split" not in overrides["mmlu_anatomy.yaml"]


# --- Failures -----------------------------------------------------------------------------------


def test_a_repository_with_only_pickled_weights_is_refused_before_loading(tiny_repo, tmp_path):
    import torch
    from safetensors.torch import load_file

    repo = copy_repo(tiny_repo, tmp_path / "models", drop=("model.safetensors",))
    torch.save(load_file(tiny_repo / "model.safetensors"), repo / "pytorch_model.bin")
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(repo, tmp_path / "artifacts"))
    assert caught.value.reason == "unsafe_weights"
    assert caught.value.message == (
        f"{REPO_ID} has no safetensors weights at this revision. It has only pytorch_model.bin. "
        "Workers load only safetensors, never pickled weights: save the model with "
        "save_pretrained(..., safe_serialization=True), push model.safetensors and submit that "
        "revision."
    )
    assert not (tmp_path / "artifacts").exists()


def test_a_repository_without_tokenizer_fails_as_tokenizer_missing(tiny_repo, tmp_path):
    repo = copy_repo(
        tiny_repo, tmp_path / "models", drop=("tokenizer.json", "tokenizer_config.json")
    )
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(repo, tmp_path / "artifacts"))
    assert caught.value.reason == "tokenizer_missing"
    assert caught.value.message == (
        f"{REPO_ID} has no tokenizer at this revision (none of tokenizer.json, tokenizer.model, "
        "vocab.json, vocab.txt, spiece.model, sentencepiece.bpe.model): add the tokenizer files "
        "the model was trained with (save_pretrained on the tokenizer writes them) and submit "
        "that revision."
    )


@pytest.mark.slow
def test_a_tokenizer_that_will_not_load_fails_as_tokenizer_missing(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path / "models")
    (repo / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(repo, tmp_path / "artifacts"))
    assert caught.value.reason == "tokenizer_missing"
    assert caught.value.message.startswith("The tokenizer would not load: ")
    assert "loading" in caught.value.log_tail


@pytest.mark.slow
def test_corrupt_weights_fail_as_model_load(tiny_repo, tmp_path):
    repo = copy_repo(tiny_repo, tmp_path / "models")
    weights = repo / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(repo, tmp_path / "artifacts"))
    assert caught.value.reason == "model_load"
    assert caught.value.message.startswith("The model would not load: ")
    assert f"loading {REPO_ID}@0123456789abcdef0123456789abcdef01234567" in caught.value.log_tail


def test_a_missing_repository_folder_fails_as_model_load(tmp_path):
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(tmp_path / "models", tmp_path / "artifacts"))
    assert caught.value.reason == "model_load"
    assert caught.value.message == (
        f"There is no repository folder for {REPO_ID} at {tmp_path / 'models'}."
    )


def test_a_hub_repository_that_cannot_be_listed_fails_as_model_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = make_job(tmp_path, tmp_path / "artifacts", model_source="hub", model_path=None)
    with pytest.raises(EvaluationFailure) as caught:
        run_job(job)
    assert caught.value.reason == "model_load"
    assert caught.value.message.startswith(
        f"Could not list the files of {REPO_ID} at revision "
        "0123456789abcdef0123456789abcdef01234567: "
    )


def test_a_mirror_without_the_task_data_fails_as_data_missing(tiny_repo, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(default_mirror_root() / "ai2_arc", mirror / "ai2_arc")
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(tiny_repo, tmp_path / "artifacts", data_root=str(mirror)))
    assert caught.value.reason == "data_missing"
    assert caught.value.message == (
        "Task data is missing: the local data mirror has no validation split for hellaswag: "
        f"no .arrow file in {mirror / 'hellaswag/none/validation'}"
    )


@pytest.mark.slow
def test_hub_task_data_out_of_reach_fails_as_data_missing(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(tiny_repo, tmp_path / "artifacts", data_source="hub"))
    assert caught.value.reason == "data_missing"
    assert caught.value.message.startswith("The task data could not be loaded: ")
    assert "allenai/ai2_arc" in caught.value.message


@pytest.mark.slow
def test_a_time_limit_during_scoring_fails_as_time_limit_with_the_log_tail(tiny_repo, tmp_path):
    from celery.exceptions import SoftTimeLimitExceeded

    def progress(done: int, total: int) -> None:
        if done > 0:
            raise SoftTimeLimitExceeded()

    with pytest.raises(EvaluationFailure) as caught:
        run_job(make_job(tiny_repo, tmp_path / "artifacts"), progress=progress)
    assert caught.value.reason == "time_limit"
    assert (
        caught.value.message == "The evaluation ran past the worker's time limit and was stopped."
    )
    assert isinstance(caught.value.__cause__, SoftTimeLimitExceeded)
    tail = [line.split(" ", 2)[2] for line in caught.value.log_tail.splitlines()]
    assert tail == [
        f"INFO evaluator.run: loading {REPO_ID}@0123456789abcdef0123456789abcdef01234567 in "
        "float32 on cpu",
        "INFO evaluator.run: 484 loglikelihood requests to score",
        "INFO evaluator.run: scoring arc_easy, arc_challenge, hellaswag, mmlu, winogrande, 1-shot",
        "WARNING lm_eval.evaluator: Overwriting default num_fewshot of arc_easy from None to 1 "
        "[and 60 more like it]",
        "ERROR evaluator.run: evaluation of run 7 failed (time_limit): SoftTimeLimitExceeded()",
    ]
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("error", "reason", "message"),
    [
        (
            TimeoutError(),
            "time_limit",
            "The evaluation ran past the worker's time limit and was stopped.",
        ),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8 GB"),
            "out_of_memory",
            "The model ran out of memory on the worker (DefaultCPUAllocator: can't allocate "
            "memory: you tried 8 GB). It needs a worker with more memory.",
        ),
        (
            MemoryError(),
            "out_of_memory",
            "The model ran out of memory on the worker (MemoryError). It needs a worker with "
            "more memory.",
        ),
        (ValueError("boom"), "error", "The evaluation failed: ValueError: boom"),
    ],
)
def test_classify_names_the_reason(error, reason, message):
    assert classify(error) == (reason, message)


def test_a_cuda_out_of_memory_error_is_out_of_memory():
    import torch

    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    wrapped = RuntimeError("batch failed")
    wrapped.__cause__ = error
    assert classify(wrapped) == (
        "out_of_memory",
        "The model ran out of memory on the worker (CUDA out of memory. Tried to allocate "
        "2.00 GiB). It needs a worker with more memory.",
    )
