"""Suites as versioned YAML, the evaluation job, and task data resolution: the light half of the
evaluator, which the web side imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator import suites
from evaluator.data import (
    DataMissing,
    default_mirror_root,
    lm_eval_tasks_dir,
    prepare_task_data,
)
from evaluator.messages import EvaluationJob, InvalidMessage, parse
from evaluator.run import plan_stages
from evaluator.suites import SuiteError, UnknownSuite, list_suites, load_suite

ROOT = Path(__file__).resolve().parent.parent


def task_table(suite: suites.Suite) -> list[tuple]:
    return [
        (t.key, t.lm_eval_task, t.num_fewshot, t.metric, t.limit, t.random_baseline)
        for t in suite.tasks
    ]


@pytest.mark.slow
def test_importing_suites_and_messages_imports_no_torch_lm_eval_or_django():
    code = (
        "import sys, evaluator.suites, evaluator.messages, evaluator.data;"
        "print(sorted(m for m in ('torch', 'lm_eval', 'transformers', 'datasets', 'django')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_open_llm_v1_has_the_leaderboard_tasks_shots_and_metrics():
    suite = load_suite("open-llm-v1", "1")
    assert (suite.name, suite.version) == ("open-llm-v1", "1")
    assert task_table(suite) == [
        ("arc_challenge", "arc_challenge", 25, "acc_norm", None, 0.25),
        ("hellaswag", "hellaswag", 10, "acc_norm", None, 0.25),
        ("mmlu", "mmlu", 5, "acc", None, 0.25),
        ("winogrande", "winogrande", 5, "acc", None, 0.5),
    ]
    for phrase in ("TruthfulQA", "GSM8K", "test split (1,172)", "validation"):
        assert phrase in suite.description
    assert suite.task("arc_challenge").dataset == "allenai/ai2_arc (ARC-Challenge)"
    assert suite.task("arc_challenge").splits_note == (
        "local mirror: the validation split (299 questions), shots drawn from it; stock "
        "lm-eval and the original leaderboard: the test split (1,172), shots from train"
    )


def test_quick_runs_arc_easy_and_the_same_four_with_one_shot_and_small_limits():
    suite = load_suite("quick")
    assert suite.version == "1"
    assert task_table(suite) == [
        ("arc_easy", "arc_easy", 1, "acc", 100, 0.25),
        ("arc_challenge", "arc_challenge", 1, "acc_norm", 100, 0.25),
        ("hellaswag", "hellaswag", 1, "acc_norm", 60, 0.25),
        ("mmlu", "mmlu", 1, "acc", 2, 0.25),
        ("winogrande", "winogrande", 1, "acc", 100, 0.5),
    ]


def test_list_suites_returns_every_version_by_name():
    assert [(s.name, s.version) for s in list_suites()] == [("open-llm-v1", "1"), ("quick", "1")]


def test_unknown_suites_and_versions_are_refused_with_what_exists():
    with pytest.raises(UnknownSuite) as caught:
        load_suite("helm")
    assert str(caught.value) == "no suite named 'helm'; suites: open-llm-v1, quick"
    with pytest.raises(UnknownSuite) as caught:
        load_suite("quick", "7")
    assert str(caught.value) == "suite 'quick' has no version '7'; versions: 1"


GOOD_TASK = """
  - key: arc_easy
    lm_eval_task: arc_easy
    num_fewshot: 0
    metric: acc
    limit: 10
    random_baseline: 0.25
    description: ARC easy.
"""


def write_suite(folder: Path, filename: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / filename).write_text(body)


def test_newest_version_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    for version in ("2", "10", "9"):
        write_suite(
            tmp_path,
            f"mini@{version}.yaml",
            f"name: mini\nversion: '{version}'\ndescription: d\ntasks:{GOOD_TASK}",
        )
    assert load_suite("mini").version == "10"
    assert [s.version for s in list_suites()] == ["2", "9", "10"]


@pytest.mark.parametrize(
    ("filename", "body", "message"),
    [
        (
            "mini@1.yaml",
            "name: mini\nversion: '1'\ndescription: d\ntasks:"
            + GOOD_TASK.replace("metric: acc", "metric: f1"),
            "mini@1.yaml: task arc_easy: metric must be acc or acc_norm, not 'f1'",
        ),
        (
            "mini@1.yaml",
            "name: mini\nversion: '1'\ndescription: d\ntasks:"
            + GOOD_TASK.replace("lm_eval_task: arc_easy", "lm_eval_task: gsm8k"),
            "mini@1.yaml: task arc_easy: lm_eval_task 'gsm8k' is not one of arc_challenge, "
            "arc_easy, hellaswag, mmlu, winogrande",
        ),
        (
            "mini@1.yaml",
            "name: mini\nversion: '1'\ndescription: d\ntasks:" + GOOD_TASK + GOOD_TASK,
            "mini@1.yaml: task keys repeat: arc_easy",
        ),
        (
            "mini@1.yaml",
            "name: mini\nversion: '1'\ndescription: d\ntasks:"
            + GOOD_TASK.replace("limit: 10", "limit: 0"),
            "mini@1.yaml: task arc_easy: limit must be a whole number >= 1 or absent",
        ),
        (
            "mini@1.yaml",
            "name: mini\nversion: '1'\ntasks:" + GOOD_TASK,
            "mini@1.yaml: missing description",
        ),
        (
            "mini.yaml",
            "name: mini\nversion: '1'\ndescription: d\ntasks:" + GOOD_TASK,
            "mini.yaml: a suite file is named <name>@<version>.yaml: mini@1.yaml",
        ),
    ],
)
def test_malformed_suite_files_are_refused_with_the_problem(
    tmp_path, monkeypatch, filename, body, message
):
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    write_suite(tmp_path, filename, body)
    with pytest.raises(SuiteError) as caught:
        list_suites()
    assert str(caught.value) == message


def test_stages_group_tasks_by_shots_and_limit():
    open_llm = load_suite("open-llm-v1")
    assert [(s.num_fewshot, s.limit, [t.key for t in s.tasks]) for s in plan_stages(open_llm)] == [
        (25, None, ["arc_challenge"]),
        (10, None, ["hellaswag"]),
        (5, None, ["mmlu", "winogrande"]),
    ]
    quick = load_suite("quick")
    assert [(s.num_fewshot, s.limit, [t.key for t in s.tasks]) for s in plan_stages(quick)] == [
        (1, 100, ["arc_easy", "arc_challenge", "winogrande"]),
        (1, 60, ["hellaswag"]),
        (1, 2, ["mmlu"]),
    ]
    assert [(s.limit, len(s.tasks)) for s in plan_stages(quick, limit=3)] == [(3, 5)]


# --- The job -----------------------------------------------------------------------------------

JOB = {
    "schema_version": 2,
    "run_id": 3,
    "attempt": 2,
    "repo_id": "org/model",
    "revision": "a" * 40,
    "precision": "bfloat16",
    "suite_name": "quick",
    "suite_version": "1",
    "model_source": "local",
    "model_path": "/srv/models",
    "data_source": "local",
    "data_root": None,
    "artifact_store": "/srv/artifacts",
    "limit": None,
    "batch_size": None,
    "backend": None,
}


def test_a_job_round_trips_through_json():
    job = parse(EvaluationJob, json.loads(json.dumps(JOB)))
    assert job.to_message() == JOB


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "int8"}, "precision: Input should be 'float16', 'bfloat16' or 'float32'"),
        (
            {"model_path": None},
            "message: Value error, model_path is required when model_source is 'local'",
        ),
        ({"data_source": "s3"}, "data_source: Input should be 'local' or 'hub'"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"gpu": 1}, "gpu: Extra inputs are not permitted"),
        ({"schema_version": 1}, "schema_version: Input should be 2"),
        ({"suite_name": "../quick"}, "suite_name: String should match pattern "),
        ({"attempt": "2"}, "attempt: Input should be a valid integer"),
    ],
)
def test_a_malformed_job_is_refused(changes, message):
    with pytest.raises(InvalidMessage) as caught:
        parse(EvaluationJob, {**JOB, **changes})
    assert str(caught.value).startswith(message)


def test_the_local_repository_is_the_model_path_or_its_repo_id_folder(tmp_path):
    job = parse(EvaluationJob, {**JOB, "model_path": str(tmp_path)})
    (tmp_path / "org/model").mkdir(parents=True)
    assert job.local_repo_path() == tmp_path / "org/model"
    repo = tmp_path / "org/model"
    (repo / "config.json").write_text("{}")
    assert parse(EvaluationJob, {**JOB, "model_path": str(repo)}).local_repo_path() == repo


# --- Task data ---------------------------------------------------------------------------------


def test_local_data_overrides_include_the_stock_task_and_change_only_the_data(tmp_path):
    data = prepare_task_data(["arc_challenge", "mmlu"], "local", None, tmp_path)
    assert data.source == "local"
    assert data.include_path == [tmp_path / "trellis-tasks"]
    assert len(data.overrides) == 1 + 57 + 5
    assert sorted(p.name for p in (tmp_path / "trellis-tasks").iterdir()) == sorted(data.overrides)
    mirror, stock = default_mirror_root(), lm_eval_tasks_dir()
    assert data.overrides["arc_challenge.yaml"] == (
        "# arc_challenge: the stock lm-eval task, its data read from the local mirror.\n"
        f"include: {stock}/arc/arc_challenge.yaml\n"
        "task: arc_challenge\n"
        "dataset_path: arrow\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    validation: {mirror}/ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow\n"
        "training_split: null\n"
        "test_split: validation\n"
        "fewshot_split: validation\n"
    )
    assert data.overrides["mmlu_astronomy.yaml"] == (
        "# mmlu_astronomy: the stock lm-eval task, its data read from the local mirror.\n"
        f"include: {stock}/mmlu/default/mmlu_astronomy.yaml\n"
        "task: mmlu_astronomy\n"
        "dataset_path: arrow\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {mirror}/hails/mmlu_no_train/astronomy/test/data-00000-of-00001.arrow\n"
        f"    dev: {mirror}/hails/mmlu_no_train/astronomy/dev/data-00000-of-00001.arrow\n"
    )
    assert data.overrides["_mmlu_stem.yaml"] == f"include: {stock}/mmlu/default/_mmlu_stem.yaml\n"


def test_the_hub_data_source_uses_the_stock_tasks_as_shipped(tmp_path):
    data = prepare_task_data(["arc_challenge", "arc_easy", "mmlu"], "hub", None, tmp_path)
    stock = lm_eval_tasks_dir()
    assert (data.source, data.overrides, data.overrides_dir) == ("hub", {}, None)
    assert data.include_path == [stock / "arc", stock / "mmlu/default"]
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_missing_a_subject_names_the_missing_folder(tmp_path):
    mirror = tmp_path / "mirror"
    source = default_mirror_root() / "hails/mmlu_no_train"
    for subject in sorted(p.name for p in source.iterdir())[1:]:
        for split in ("test", "dev"):
            target = mirror / "hails/mmlu_no_train" / subject / split
            target.mkdir(parents=True)
            (target / "data-00000-of-00001.arrow").symlink_to(
                source / subject / split / "data-00000-of-00001.arrow"
            )
    with pytest.raises(DataMissing) as caught:
        prepare_task_data(["mmlu"], "local", str(mirror), tmp_path / "work")
    assert str(caught.value) == (
        "the local data mirror has no test split for mmlu_abstract_algebra: no .arrow file in "
        f"{mirror}/hails/mmlu_no_train/abstract_algebra/test"
    )


def test_a_missing_mirror_root_is_data_missing(tmp_path):
    with pytest.raises(DataMissing) as caught:
        prepare_task_data(["arc_easy"], "local", str(tmp_path / "nowhere"), tmp_path)
    assert str(caught.value) == f"the local data mirror {tmp_path / 'nowhere'} does not exist"
