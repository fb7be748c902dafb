"""Each vocabulary is defined once (evaluator/vocabulary.py) and the web side uses that one: these
tests fail when a side keeps, or grows, its own copy."""

from __future__ import annotations

from typing import get_args

import pytest

from evaluator import vocabulary
from evaluator.messages import EvaluationJob, Failure, TaskResult
from evaluator.run import EvaluationFailure, check_files
from evaluator.suites import SuiteError, list_suites
from leaderboard.catalog.sources.base import RepoSnapshot
from leaderboard.submissions.checks import check_weights
from leaderboard.submissions.models import Precision, Submission


@pytest.mark.parametrize("suffix", vocabulary.PICKLE_SUFFIXES)
def test_the_submission_checks_refuse_every_weight_file_the_worker_refuses(suffix):
    name = f"pytorch_model{suffix}"
    snapshot = RepoSnapshot(repo_id="org/model", kind="model", sha="a" * 40, files=[name])
    [problem] = check_weights(snapshot)
    assert problem.code == "pickle_weights"
    assert name in problem.message
    with pytest.raises(EvaluationFailure) as refused:
        check_files("org/model", [name, "config.json", "tokenizer.json"])
    assert refused.value.reason == "unsafe_weights"
    assert f"It has only {name}." in refused.value.message


def test_a_safetensors_file_passes_both_sides():
    files = ["model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json"]
    snapshot = RepoSnapshot(repo_id="org/model", kind="model", sha="a" * 40, files=files)
    assert [p.code for p in check_weights(snapshot)] == []
    check_files("org/model", files)


def test_the_web_side_precisions_are_the_workers():
    assert Precision.values == list(vocabulary.PRECISIONS) == ["float16", "bfloat16", "float32"]
    field = Submission._meta.get_field("precision")
    assert [value for value, _ in field.choices] == list(vocabulary.PRECISIONS)
    assert get_args(EvaluationJob.model_fields["precision"].annotation) == vocabulary.PRECISIONS


def test_every_failure_code_has_words_and_each_side_reports_only_its_own():
    assert set(vocabulary.FAILURE_REASONS) == {
        *vocabulary.WORKER_FAILURES,
        *vocabulary.WEB_FAILURES,
    }
    assert get_args(Failure.model_fields["code"].annotation) == vocabulary.WORKER_FAILURES
    for code in vocabulary.WORKER_FAILURES:
        assert EvaluationFailure(code, "words").reason == code
    for code in vocabulary.WEB_FAILURES:
        with pytest.raises(ValueError, match=f"unknown failure reason '{code}'"):
            EvaluationFailure(code, "words")
    assert vocabulary.failure_words("gpu_on_fire") == "The evaluation failed (gpu_on_fire)."


def test_metrics_are_the_suites_and_the_payloads():
    assert get_args(TaskResult.model_fields["metric"].annotation) == vocabulary.METRICS
    assert {task.metric for suite in list_suites() for task in suite.tasks} <= set(
        vocabulary.METRICS
    )


def test_shipped_suite_names_versions_and_task_keys_follow_the_name_rule():
    for suite in list_suites():
        names = [suite.name, suite.version, *(task.key for task in suite.tasks)]
        assert [vocabulary.name_error("name", name) for name in names] == [None] * len(names)


def test_a_suite_named_against_the_rule_is_refused(tmp_path, monkeypatch):
    from evaluator import suites

    (tmp_path / "Quick Suite@1.yaml").write_text(
        "name: Quick Suite\nversion: '1'\ndescription: x\ntasks:\n"
        "  - {key: arc_easy, lm_eval_task: arc_easy, num_fewshot: 0, metric: acc,"
        " random_baseline: 0.25, description: x}\n"
    )
    monkeypatch.setattr(suites, "SUITES_DIR", tmp_path)
    with pytest.raises(SuiteError) as refused:
        list_suites()
    assert str(refused.value) == (
        "Quick Suite@1.yaml: name 'Quick Suite' must be 1-64 lower-case letters, digits, '.', "
        "'_' or '-', starting with a letter or digit"
    )
