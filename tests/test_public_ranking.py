"""The ranking core: query parsing, rows, filters, sorting, normalization, the read table."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.problems import Refusal
from leaderboard.public.etags import ranking_validator
from leaderboard.public.licenses import license_family
from leaderboard.public.models import RankingEntry
from leaderboard.public.projection import refresh_entries_for
from leaderboard.public.query import parse_ranking_query
from leaderboard.public.selection import ranking
from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, VERSION, edge, flag, ranked, report, repository

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database


def shipped_suites() -> str:
    from evaluator.suites import list_suites

    return ", ".join(sorted({suite.name for suite in list_suites()}))


def rank(**params):
    return ranking(parse_ranking_query(params))


def names(result):
    return [row.model for row in result.rows]


# --- parsing ---------------------------------------------------------------------------------


def test_defaults_resolve_the_latest_version_and_first_page():
    query = parse_ranking_query({})
    assert (query.suite, query.version, query.sort, query.direction, query.page) == (
        SUITE,
        VERSION,
        "average",
        "desc",
        1,
    )
    assert query.querystring() == f"suite={SUITE}&version={VERSION}"


def test_every_bad_parameter_is_named_at_once():
    with pytest.raises(Refusal) as refused:
        parse_ranking_query(
            {"min_params": "huge", "model_type": "robot", "page": "0", "colour": "red"}
        )
    fields = sorted(error["field"] for error in refused.value.as_dict()["errors"])
    assert fields == ["colour", "min_params", "model_type", "page"]
    messages = {error["field"]: error["message"] for error in refused.value.as_dict()["errors"]}
    assert messages["colour"].startswith("'colour' is not a ranking parameter; use one of ")
    assert "'robot'" in messages["model_type"]
    assert "'huge'" in messages["min_params"]


def test_unknown_suite_version_and_sort_are_refused_with_the_choices():
    with pytest.raises(Refusal) as refused:
        parse_ranking_query({"suite": "nope"})
    assert refused.value.as_dict()["errors"] == [
        {
            "code": "unknown_suite",
            "field": "suite",
            "message": f"No suite named 'nope'; known suites: {shipped_suites()}.",
        }
    ]
    with pytest.raises(Refusal) as refused:
        parse_ranking_query({"version": "9"})
    assert refused.value.as_dict()["errors"][0]["message"] == (
        f"Suite '{SUITE}' has no version '9'; choose one of {VERSION}."
    )
    with pytest.raises(Refusal) as refused:
        parse_ranking_query({"sort": "vibes"})
    assert refused.value.as_dict()["errors"][0]["field"] == "sort"
    assert "arc_challenge" in refused.value.as_dict()["errors"][0]["message"]


def test_inverted_size_range_is_refused():
    with pytest.raises(Refusal) as refused:
        parse_ranking_query({"min_params": "7", "max_params": "1"})
    assert refused.value.as_dict()["errors"][0]["code"] == "invalid_range"


def test_list_parameters_accept_repeats_and_commas_and_round_trip():
    from django.http import QueryDict

    params = QueryDict("model_type=chat&model_type=merge,pretrained&precision=bfloat16&q=%20x%20")
    query = parse_ranking_query(params)
    assert [t.value for t in query.model_type] == ["chat", "merge", "pretrained"]
    assert query.q == "x"
    assert query.querystring() == (
        f"suite={SUITE}&version={VERSION}&model_type=chat&model_type=merge"
        "&model_type=pretrained&precision=bfloat16&q=x"
    )
    assert parse_ranking_query(QueryDict(query.querystring())) == query


def test_empty_values_count_as_absent():
    query = parse_ranking_query({"min_params": "", "q": "", "version": ""})
    assert (query.min_params, query.q, query.version) == (None, "", VERSION)


# --- rows --------------------------------------------------------------------------------------


def test_one_row_per_evaluated_submission_with_raw_and_normalized_scores():
    ranked("org/strong", {"arc_challenge": 0.7, "hellaswag": 0.8, "mmlu": 0.6, "winogrande": 0.75})
    ranked("org/weak", 0.25)
    result = rank()
    assert names(result) == ["org/strong", "org/weak"]
    strong = result.rows[0]
    assert strong.rank == 1
    assert strong.average == pytest.approx((70 + 80 + 60 + 75) / 4)
    assert strong.normalized_scores == pytest.approx(
        {"arc_challenge": 60.0, "hellaswag": 73.3333333, "mmlu": 46.6666667, "winogrande": 50.0}
    )
    assert strong.average_normalized == pytest.approx((60 + 73.3333333 + 46.6666667 + 50) / 4)
    weak = result.rows[1]
    # Winogrande has two choices: 0.25 is below chance there.
    assert weak.normalized_scores["winogrande"] == pytest.approx(-50.0)


def test_the_normalized_switch_changes_the_order():
    # Below chance on the two-choice task (chance 50): raw 50.0, normalized 20.0.
    ranked("org/lopsided", {"arc_challenge": 0.6, "hellaswag": 0.6, "mmlu": 0.6, "winogrande": 0.2})
    # Raw 47.5, normalized 22.5.
    ranked("org/even", {"arc_challenge": 0.45, "hellaswag": 0.45, "mmlu": 0.45, "winogrande": 0.55})
    assert names(rank()) == ["org/lopsided", "org/even"]
    assert names(rank(normalized="1")) == ["org/even", "org/lopsided"]
    assert [row.average_normalized for row in rank(normalized="1").rows] == pytest.approx(
        [22.5, 20.0]
    )


def test_sorting_by_each_kind_of_column():
    ranked("org/a-small", 0.5, parameter_count=100_000_000, license="mit")
    ranked("org/b-large", 0.4, parameter_count=7_000_000_000, license="llama2")
    ranked("org/c-mid", {"arc_challenge": 0.9, "hellaswag": 0.3, "mmlu": 0.3, "winogrande": 0.3})
    assert names(rank(sort="parameters")) == ["org/b-large", "org/c-mid", "org/a-small"]
    assert names(rank(sort="parameters", dir="asc")) == ["org/a-small", "org/c-mid", "org/b-large"]
    assert names(rank(sort="model")) == ["org/a-small", "org/b-large", "org/c-mid"]
    assert names(rank(sort="arc_challenge")) == ["org/c-mid", "org/a-small", "org/b-large"]
    assert names(rank(sort="license")) == ["org/c-mid", "org/b-large", "org/a-small"]
    # The rank column keeps ranking by average whatever the sort.
    assert [row.rank for row in rank(sort="model").rows] == [1, 3, 2]


def test_filters_narrow_the_rows():
    ranked("org/chat", 0.5, model_type="chat", precision="float16", license="mit")
    ranked("org/merge", 0.6, model_type="merge", merge_method="slerp", license="llama3")
    ranked("org/base", 0.4, model_type="pretrained", parameter_count=8_000_000_000, license="")
    ranked("synthetic-org/fake", 0.45, is_synthetic=True)
    assert names(rank(model_type="chat")) == ["org/chat"]
    assert names(rank(model_type="chat,pretrained")) == ["org/chat", "org/base"]
    assert names(rank(precision="float16")) == ["org/chat"]
    assert names(rank(license="permissive")) == ["org/chat", "synthetic-org/fake"]
    assert names(rank(license="restrictive")) == ["org/merge"]
    assert names(rank(license="unknown")) == ["org/base"]
    assert names(rank(min_params="5")) == ["org/base"]
    assert names(rank(max_params="1")) == ["org/merge", "org/chat", "synthetic-org/fake"]
    assert names(rank(hide_merges="1")) == ["org/chat", "synthetic-org/fake", "org/base"]
    assert names(rank(hide_synthetic="1")) == ["org/merge", "org/chat", "org/base"]
    assert names(rank(q="MER")) == ["org/merge"]


def test_flagged_and_tainted_rows_are_hidden_and_counted(maintainer):
    root = ranked("org/root", 0.7).repository
    child = ranked("org/child", 0.6).repository
    dataset = repository("data/leaky", kind="dataset")
    via_data = ranked("org/via-data", 0.5).repository
    ranked("org/clean", 0.4)
    under_review = ranked("org/reviewed", 0.3).repository
    edge(child, root)
    edge(via_data, dataset, "trained-on")
    flag(root, maintainer)
    flag(dataset, maintainer)
    report(under_review)

    result = rank()
    assert names(result) == ["org/clean", "org/reviewed"]
    assert (result.count, result.hidden_flagged, result.hidden_tainted) == (2, 1, 2)
    assert result.rows[1].lineage_status == "under-review"
    assert result.rows[1].flags[0]["status"] == "open"

    shown = rank(show_flagged="1", show_tainted="1")
    assert names(shown) == ["org/root", "org/child", "org/via-data", "org/clean", "org/reviewed"]
    assert shown.hidden == 0
    statuses = {row.model: row.lineage_status for row in shown.rows}
    assert statuses == {
        "org/root": "flagged",
        "org/child": "tainted",
        "org/via-data": "tainted",
        "org/clean": "clean",
        "org/reviewed": "under-review",
    }
    by_name = {row.model: row for row in shown.rows}
    assert by_name["org/child"].taint_path.startswith("org/child ← org/root (contamination")
    assert by_name["org/via-data"].taint_path.startswith(
        "org/via-data ← trained on data/leaky (contamination"
    )
    assert [f["status"] for f in by_name["org/root"].flags] == ["confirmed"]
    only_flagged = rank(show_flagged="1")
    assert names(only_flagged) == ["org/root", "org/clean", "org/reviewed"]
    assert (only_flagged.hidden_flagged, only_flagged.hidden_tainted) == (0, 2)


def test_pagination_counts_and_refuses_a_page_past_the_last():
    for i in range(7):
        ranked(f"org/m{i}", 0.3 + i / 100)
    first = rank(per_page="3")
    assert (first.count, first.pages, first.page) == (7, 3, 1)
    assert names(first) == ["org/m6", "org/m5", "org/m4"]
    last = rank(per_page="3", page="3")
    assert names(last) == ["org/m0"]
    assert (last.first_index, last.last_index) == (7, 7)
    with pytest.raises(Refusal) as refused:
        rank(per_page="3", page="99")
    assert refused.value.problems[0].code == "page_out_of_range"
    assert len(ranking(parse_ranking_query({}, paginate=False)).rows) == 7


# --- the read table ----------------------------------------------------------------------------


def test_refresh_takes_the_latest_finished_run_and_drops_vanished_rows():
    submission = ranked("org/model", 0.5)
    newer = EvaluationRun.objects.create(
        submission=submission,
        suite_name=SUITE,
        suite_version=VERSION,
        state=RunState.FINISHED,
        finished_at=timezone.now() + timedelta(minutes=5),
    )
    for task in ("arc_challenge", "hellaswag", "mmlu", "winogrande"):
        TaskScore.objects.create(
            run=newer, task=task, metric="acc", value=0.9, stderr=0.01, n_samples=10, num_fewshot=0
        )
    EvaluationRun.objects.create(
        submission=submission, suite_name=SUITE, suite_version=VERSION, state=RunState.RUNNING
    )
    assert refresh_entries_for([submission.pk]) == 1
    entry = RankingEntry.objects.get()
    assert (entry.run_id, entry.average) == (newer.pk, pytest.approx(90.0))

    EvaluationRun.objects.filter(submission=submission).update(state=RunState.FAILED)
    assert refresh_entries_for([submission.pk]) == 0
    assert RankingEntry.objects.count() == 0


def test_a_run_missing_a_task_has_no_average_and_sorts_last():
    ranked("org/partial", {"arc_challenge": 0.99, "hellaswag": 0.99})
    ranked("org/full", 0.3)
    result = rank()
    assert names(result) == ["org/full", "org/partial"]
    assert result.rows[1].average is None


def test_validator_changes_with_data_and_query_but_not_otherwise(maintainer):
    submission = ranked("org/model", 0.5)
    query = parse_ranking_query({})
    first = ranking_validator(query)
    assert ranking_validator(query) == first
    assert ranking_validator(parse_ranking_query({"q": "x"})).etag != first.etag
    ranked("org/other", 0.4)
    second = ranking_validator(query)
    assert second.etag != first.etag
    flag(submission.repository, maintainer)
    assert ranking_validator(query).etag != second.etag


@pytest.mark.parametrize(
    ("license_id", "family"),
    [
        ("apache-2.0", "permissive"),
        ("MIT", "permissive"),
        ("llama3.1", "restrictive"),
        ("cc-by-nc-4.0", "restrictive"),
        ("gpl-3.0", "restrictive"),
        ("other", "unknown"),
        ("", "unknown"),
    ],
)
def test_license_families(license_id, family):
    assert license_family(license_id) == family


def test_incomplete_runs_sort_last_both_ways():
    ranked("org/partial", {"arc_challenge": 0.99})
    ranked("org/low", 0.3)
    ranked("org/high", 0.6)
    assert names(rank()) == ["org/high", "org/low", "org/partial"]
    assert names(rank(dir="asc")) == ["org/low", "org/high", "org/partial"]
    assert [row.rank for row in rank(dir="asc").rows] == [2, 1, 3]


def test_a_version_the_evaluator_no_longer_ships_still_ranks_from_stored_scores():
    ranked("org/old", 0.5, version="0")
    ranked("org/new", 0.6)
    query = parse_ranking_query({"version": "0"})
    result = ranking(query)
    assert names(result) == ["org/old"]
    assert result.view.defined is False
    assert result.view.task_keys == ["arc_challenge", "hellaswag", "mmlu", "winogrande"]
    # Without a chance rate, normalized equals raw.
    assert result.rows[0].normalized_scores["mmlu"] == pytest.approx(50.0)
    with pytest.raises(Refusal) as refused:
        parse_ranking_query({"version": "7"})
    assert refused.value.as_dict()["errors"][0]["message"] == (
        f"Suite '{SUITE}' has no version '7'; choose one of {VERSION}, 0."
    )
