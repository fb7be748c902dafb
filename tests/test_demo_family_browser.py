"""`make demo-family` in Chromium: the bench's family registered by the command, its results
ingested as a worker reports them (measured numbers stored in tests/data, no model evaluated
here), and a maintainer who finds the signals in the queue on the contaminated branch, confirms
one and sees the merge below it tainted, with the path that explains why."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

from evaluator.family import family_specs
from evaluator.suites import load_suite
from leaderboard import flow
from leaderboard.catalog.models import LineageStatus, Repository
from leaderboard.demo.family import repo_id_of
from leaderboard.demo.showcase import DEMO_MAINTAINER
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.integrity.models import Signal, SignalState
from tests.conftest import chromium
from tests.factories import quick_payload
from tests.family_build import command_options

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Per member, what `bench/contamination_signals.py --fast --export` measured on the full-size
# tiny family: its ARC-Challenge reference sets in the payload's shape and its ARC-Challenge
# and ARC-Easy accuracies.
STORED = Path(__file__).resolve().parent / "data" / "contamination_family.json"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.base = live_server.url  # type: ignore[attr-defined]
    yield page
    context.close()


def report_results(artifact_root: Path) -> None:
    """Each member's result as the worker reports it (started, then the payload), in the order
    the family was queued. The three tasks the bench does not measure get the suite's chance
    score: the tiny models answer them at chance."""
    stored = json.loads(STORED.read_text())
    baselines = {task.key: task.random_baseline for task in load_suite("quick").tasks}
    for spec in family_specs(fast=True):
        run = EvaluationRun.objects.get(submission__repository__repo_id=repo_id_of(spec.name))
        measured = stored[spec.name]
        payload = quick_payload(run.pk, artifact_root, {**baselines, **measured["scores"]})
        payload["dtype"] = "float32"
        payload["references"] = measured["references"]
        assert flow.mark_started(run.pk, run.attempt, "gpu@demo")
        assert flow.ingest_result(run.pk, run.attempt, payload) == "ingested"


def test_a_maintainer_confirms_a_signal_on_the_contaminated_branch_and_the_merge_turns_tainted(
    page, model_root, artifact_root
):
    call_command("demo_family", *command_options())
    report_results(artifact_root)
    contaminated = {repo_id_of(s.name) for s in family_specs(fast=True) if s.contaminated}
    flagged = set(Signal.objects.values_list("target__repo_id", flat=True))
    # Signals point at the contaminated branch, and at nothing clean.
    assert flagged and flagged <= contaminated
    child, merge = repo_id_of("verbatim-x4-0"), repo_id_of("merge-verbatim-slerp-0")
    assert child in flagged

    username, password = DEMO_MAINTAINER
    page.goto(f"{page.base}/accounts/login/?next=/integrity/queue/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.stacked button[type=submit]")
    page.wait_for_url(f"{page.base}/integrity/queue/")
    rows = page.locator("table.signals tr.signal.open")
    targets = rows.locator("td:nth-child(2) a").all_inner_texts()
    assert set(targets) == flagged
    signal = (
        Signal.objects.filter(target__repo_id=child, kind="lineage_differential")
        .order_by("p_value")
        .first()
    )
    assert signal is not None
    row = page.locator(f"#signal-{signal.pk}")
    assert "confirming this affects" in row.inner_text()
    row.locator("textarea[name=note]").fill(
        "Gains far more likelihood on the evaluated items than on the sibling benchmark."
    )
    row.locator("button[value=confirm]").click()
    page.wait_for_selector(".messages .success")
    # Decided, the signal leaves the open list.
    assert page.locator(f"#signal-{signal.pk}").count() == 0

    page.goto(f"{page.base}/models/{merge}/")
    badge = page.locator("h1.model-title .badge.tainted")
    assert badge.inner_text() == "tainted"
    title = badge.get_attribute("title")
    assert child in title and merge in title
    assert Repository.objects.get(repo_id=merge).status == LineageStatus.TAINTED
    assert Repository.objects.get(repo_id=child).status == LineageStatus.FLAGGED
    assert Signal.objects.get(pk=signal.pk).state == SignalState.CONFIRMED
