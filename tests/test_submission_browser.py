"""A submitter signs in and submits a model through the form, in Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leaderboard.evaluations.models import EvaluationRun
from leaderboard.submissions.models import Submission
from tests.builders import default_card, make_dataset_repo, make_model_repo
from tests.conftest import PASSWORD, chromium

# Playwright's sync API runs an event loop in this thread; Django refuses ORM calls there unless
# told the test knows what it is doing.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


def queued_messages(queue: str, *, clear: bool = False) -> int:
    """Messages waiting on `queue` of the tests' in-process broker (conftest: memory://)."""
    from leaderboard.celery import app

    with app.connection_for_write() as connection, connection.SimpleQueue(queue) as waiting:
        if clear:
            waiting.clear()
        return waiting.qsize()


@pytest.mark.browser
def test_sign_in_and_submit_through_the_form(live_server, browser, model_root, submitter, settings):
    queue = settings.TRELLIS_QUEUE_SMALL
    assert queued_messages(queue, clear=True) == 0
    make_model_repo(model_root, "acme/base")
    make_dataset_repo(model_root, "acme/instructions")
    card = default_card("acme/tiny-chat", base_model="acme/base", datasets=["acme/instructions"])
    make_model_repo(model_root, "acme/tiny-chat", card=card, git=True)

    page = browser.new_page()
    page.goto(f"{live_server.url}/submissions/new/")
    assert page.url == f"{live_server.url}/accounts/login/?next=/submissions/new/"
    page.fill("#id_username", submitter.username)
    page.fill("#id_password", PASSWORD)
    page.click("form.stacked button[type=submit]")
    page.wait_for_url(f"{live_server.url}/submissions/new/")

    # Forgetting the model type: the refusal shows next to that field, the typed values stay.
    page.fill("#id_repo_id", "acme/tiny-chat")
    page.select_option("#id_precision", "float16")
    page.click("form.submission-form button[type=submit]")
    page.wait_for_selector("#problems-model_type")
    assert page.locator("#problems-model_type li").evaluate_all(
        "items => items.map(item => item.dataset.code)"
    ) == ["invalid_model_type"]
    assert page.input_value("#id_repo_id") == "acme/tiny-chat"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "submit-refused.png"), full_page=True)
    assert Submission.objects.count() == 0

    page.select_option("#id_model_type", "fine-tuned")
    page.click("form.submission-form button[type=submit]")
    page.wait_for_url(f"{live_server.url}/submissions/*/")

    submission = Submission.objects.get()
    assert page.url == f"{live_server.url}/submissions/{submission.pk}/"
    assert (submission.repository.repo_id, submission.precision, submission.submitter) == (
        "acme/tiny-chat",
        "float16",
        submitter,
    )
    assert "acme/tiny-chat" in page.inner_text("h1")
    page.screenshot(path=str(SCREENSHOTS / "submit.png"), full_page=True)

    run = EvaluationRun.objects.get(submission=submission)
    assert (run.state, run.queue) == ("queued", queue)
    # The evaluation message left when the transaction committed: one job on the run's queue.
    assert queued_messages(queue) == 1
