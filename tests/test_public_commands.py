"""Management commands: export_leaderboard round-trips with the API; seed_synthetic builds a
plausible, marked catalog and --purge removes exactly it; refresh_ranking rebuilds."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from django.core.management import CommandError, call_command

from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.evaluations.models import EvaluationRun, TaskScore
from leaderboard.public.export import rows_from_csv
from leaderboard.public.models import RankingEntry
from leaderboard.public.suites import forget_stored_versions
from leaderboard.submissions.models import Submission
from tests.factories import SUITE, edge, flag, ranked

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database


@pytest.fixture
def catalog(maintainer):
    root = ranked("org/root", 0.7, model_type="pretrained").repository
    child = ranked("org/child", 0.6, model_type="merge", merge_method="slerp").repository
    ranked("org/partial", {"arc_challenge": 0.5}, stderr=None, license="")
    ranked("org/plain", 0.45)
    edge(child, root, "merge")
    flag(root, maintainer)


def test_json_export_equals_the_api(tmp_path, anonymous_client, catalog):
    out = tmp_path / "dump.json"
    call_command("export_leaderboard", "--format", "json", "--out", str(out))
    exported = json.loads(out.read_text())
    api = anonymous_client.get("/api/v1/leaderboard?show_flagged=1&show_tainted=1").json()
    assert exported == api
    assert [row["model"] for row in exported["rows"]] == [
        "org/root",
        "org/child",
        "org/plain",
        "org/partial",
    ]


def test_csv_export_reads_back_to_the_api_rows(tmp_path, anonymous_client, catalog):
    out = tmp_path / "dump.csv"
    call_command("export_leaderboard", "--format", "csv", "--out", str(out))
    rows = rows_from_csv(out.read_text())
    api = anonymous_client.get("/api/v1/leaderboard?show_flagged=1&show_tainted=1").json()
    assert rows == api["rows"]
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["rank", "model", "url"]
    assert "score:arc_challenge" in header and header[-1] == "flags"


def test_export_with_filters_and_bad_arguments(tmp_path, catalog):
    out = tmp_path / "chat.json"
    call_command(
        "export_leaderboard", "--format", "json", "--out", str(out), "--filters", "hide_merges=1"
    )
    assert [row["model"] for row in json.loads(out.read_text())["rows"]] == [
        "org/plain",
        "org/partial",
    ]
    with pytest.raises(CommandError, match="version: Suite 'open-llm-v1' has no version '7'"):
        call_command("export_leaderboard", "--format", "csv", "--out", "-", "--suite-version", "7")


def test_seed_builds_a_plausible_marked_catalog_and_purge_removes_only_it(capsys):
    real = ranked("org/real", 0.5)
    call_command("seed_synthetic", "--models", "60", "--flags", "0")
    out = capsys.readouterr().out
    assert out.startswith("Seeded 60 models, 3 datasets, ")

    models = Repository.objects.filter(is_synthetic=True, kind="model")
    assert models.count() == 60
    assert all(
        repo_id.startswith("synthetic-") for repo_id in models.values_list("repo_id", flat=True)
    )
    types = Counter(
        Submission.objects.filter(is_synthetic=True).values_list("model_type", flat=True)
    )
    assert types["pretrained"] == 3
    assert types["merge"] >= 5 and types["fine-tuned"] >= 10
    merges = Submission.objects.filter(is_synthetic=True, model_type="merge")
    assert set(merges.values_list("merge_method", flat=True)) <= {
        "slerp",
        "ties",
        "dare_ties",
        "linear",
        "task_arithmetic",
    }
    # Every derived model declares at least one parent; merges may declare several.
    derived = models.exclude(submissions__model_type="pretrained")
    assert all(repo.parent_edges.exclude(relation="trained-on").exists() for repo in derived)
    assert LineageEdge.objects.filter(relation="trained-on", child__is_synthetic=True).exists()
    # Every shipped suite version is scored, and every model is ranked on each.
    suites = EvaluationRun.objects.filter(is_synthetic=True).values("suite_name", "suite_version")
    per_suite = Counter((s["suite_name"], s["suite_version"]) for s in suites)
    assert set(per_suite.values()) == {60}
    assert RankingEntry.objects.filter(is_synthetic=True).count() == 60 * len(per_suite)
    assert not TaskScore.objects.filter(run__is_synthetic=True, value__gt=1).exists()

    with pytest.raises(CommandError, match="Synthetic rows exist already; run with --purge"):
        call_command("seed_synthetic", "--models", "5")

    call_command("seed_synthetic", "--purge")
    assert capsys.readouterr().out.startswith("Purged 63 repositories, 60 submissions and ")
    assert not Repository.objects.filter(is_synthetic=True).exists()
    assert not EvaluationRun.objects.filter(is_synthetic=True).exists()
    assert list(Submission.objects.values_list("pk", flat=True)) == [real.pk]
    assert RankingEntry.objects.get().submission_id == real.pk


def test_seed_can_flag_and_purge_takes_the_reports_along(maintainer, capsys):
    call_command(
        "seed_synthetic", "--models", "40", "--flags", "2", "--confirm-as", maintainer.username
    )
    assert "Filed 2 contamination reports (confirmed)." in capsys.readouterr().out
    statuses = Counter(
        Repository.objects.filter(is_synthetic=True).values_list("status", flat=True)
    )
    assert statuses["flagged"] == 2
    call_command("seed_synthetic", "--purge")
    from leaderboard.integrity.models import Report

    assert Report.objects.count() == 0


def test_seed_refuses_nonsense(submitter):
    with pytest.raises(CommandError, match="Give --models N to seed"):
        call_command("seed_synthetic")
    with pytest.raises(CommandError, match="is not a maintainer's username"):
        call_command("seed_synthetic", "--models", "5", "--confirm-as", submitter.username)


def test_refresh_ranking_rebuilds_the_read_table(capsys):
    ranked("org/a", 0.5)
    ranked("org/b", 0.4)
    RankingEntry.objects.all().delete()
    call_command("refresh_ranking")
    assert capsys.readouterr().out.startswith("2 ranking rows in ")
    assert RankingEntry.objects.count() == 2
