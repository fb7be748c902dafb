"""The queue page, voting and the moderation log in Chromium (Playwright, issue 14): a signed-in
user votes for a pending run and sees it move up; a maintainer raises a run; the moderation log
lists a block-list change and a decision newest first, each linkable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

from leaderboard.evaluations.models import EvaluationRun, Vote
from tests.conftest import PASSWORD, chromium
from tests.factories import RunFactory, SubmissionFactory, flag, repository

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


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


def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{page.base}/accounts/login/?next=/queue/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.stacked button[type=submit]")
    page.wait_for_url(f"{page.base}/queue/")


def pending_order(page: Any) -> list[str]:
    return page.locator("table.pending tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.run)"
    )


def test_voting_on_the_queue_moves_a_run_up_and_a_maintainer_boost_moves_it_again(
    page, django_user_model
):
    voter = django_user_model.objects.create_user("dana", "dana@example.org", PASSWORD)
    # A superuser moderates: transactional tests flush the maintainers group its migration made.
    django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)
    now = timezone.now()
    runs = [
        RunFactory(
            submission=SubmissionFactory(repository=repository(f"acme/model-{i}")),
            queue="gpu-small",
            enqueued_at=now - timedelta(minutes=10 - i),
        )
        for i in range(3)
    ]
    running = RunFactory(
        state="running", queue="gpu-small", started_at=now, progress_done=3, progress_total=4
    )
    ids = [str(run.pk) for run in runs]

    page.goto(f"{page.base}/queue/")
    assert pending_order(page) == ids
    assert "75% (3 of 4 requests)" in page.inner_text(f"#running-{running.pk}")
    assert page.locator("button.vote").count() == 0  # signed out: no vote buttons

    log_in(page, voter.username)
    assert page.inner_text(".votes-left") == "5"
    page.click(f"#pending-{runs[2].pk} button.vote")
    page.wait_for_selector(f"#pending-{runs[2].pk} button.withdraw")
    assert pending_order(page) == [ids[2], ids[0], ids[1]]
    assert page.inner_text(f"#pending-{runs[2].pk} .votes") == "1"
    assert page.inner_text(".votes-left") == "4"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "queue.png"), full_page=True)
    assert Vote.objects.filter(user=voter, submission=runs[2].submission).count() == 1

    page.context.clear_cookies()
    log_in(page, "root")
    page.fill(f"#pending-{runs[1].pk} input[name=boost]", "3")
    page.click(f"#pending-{runs[1].pk} .boost-form button")
    page.wait_for_selector(".messages .success")
    assert pending_order(page) == [ids[1], ids[2], ids[0]]
    assert EvaluationRun.objects.get(pk=runs[1].pk).boost == 3


def test_the_moderation_log_lists_changes_newest_first_with_links(page, django_user_model):
    maintainer = django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)
    flag(repository("acme/base"), maintainer)
    page.goto(f"{page.base}/accounts/login/?next=/integrity/blocklist/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("form.stacked button[type=submit]")
    page.wait_for_url(f"{page.base}/integrity/blocklist/")
    page.select_option("#block-add select[name=kind]", "organisation")
    page.fill("#block-add input[name=pattern]", "spam-*")
    page.fill("#block-add textarea[name=reason]", "Uploads benchmark test sets.")
    page.click("#block-add button")
    page.wait_for_selector("table.blocklist tr.active")
    assert "Uploads benchmark test sets." in page.inner_text("table.blocklist")

    page.goto(f"{page.base}/integrity/log/")
    actions = page.locator("table.moderation-log tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.action)"
    )
    assert actions == ["blocked", "confirmed", "filed"]
    first = page.locator("table.moderation-log tbody tr").first
    assert "organisation spam-*" in first.inner_text()
    link = first.locator("td a").first.get_attribute("href")
    page.goto(f"{page.base}/integrity/log/{link}")
    assert page.evaluate("location.hash") == link
    page.screenshot(path=str(SCREENSHOTS / "moderation-log.png"), full_page=True)
    assert page.locator("link[type='application/atom+xml']").get_attribute("href") == (
        "/integrity/log.atom"
    )
