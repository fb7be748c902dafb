"""Priority and the public queue (issue 14): the start order (boost, then votes, then age),
votes and their weekly budget, maintainers' boosts, the dispatcher sending only as queues have
room, and the queue page and API. The same with a real worker: tests/test_priority_worker.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from leaderboard import flow
from leaderboard.evaluations import dispatch, priority
from leaderboard.evaluations.models import EvaluationRun, RunState, Vote
from leaderboard.problems import Refusal
from tests.factories import QUEUES, RunFactory, SubmissionFactory, UserFactory, drain

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def broker():
    for queue in QUEUES:
        drain(queue)
    yield drain
    for queue in QUEUES:
        drain(queue)


def queued(minutes: int, **fields) -> EvaluationRun:
    return RunFactory(
        queue="gpu-small", enqueued_at=timezone.now() - timedelta(minutes=minutes), **fields
    )


def test_start_key_orders_by_boost_then_votes_then_age():
    runs = {
        "old": priority.start_key(0, 0, T0, 1),
        "young": priority.start_key(0, 0, T0 + timedelta(hours=1), 2),
        "voted": priority.start_key(0, 3, T0 + timedelta(hours=2), 3),
        "more-voted": priority.start_key(0, 4, T0 + timedelta(hours=3), 4),
        "boosted": priority.start_key(1, 0, T0 + timedelta(hours=4), 5),
        "lowered": priority.start_key(-1, 9, T0 - timedelta(days=9), 6),
        "tie": priority.start_key(0, 0, T0, 7),
    }
    assert sorted(runs, key=runs.__getitem__) == [
        "boosted",
        "more-voted",
        "voted",
        "old",
        "tie",
        "young",
        "lowered",
    ]


@pytest.mark.django_db
def test_the_database_order_is_the_start_key():
    runs = [queued(60 - i) for i in range(6)]
    for _ in range(3):
        Vote.objects.create(user=UserFactory(), submission=runs[4].submission)
    Vote.objects.create(user=UserFactory(), submission=runs[2].submission)
    EvaluationRun.objects.filter(pk=runs[5].pk).update(boost=2)
    EvaluationRun.objects.filter(pk=runs[0].pk).update(boost=-1)
    order = [run.pk for run in priority.pending()]
    expected = sorted(
        EvaluationRun.objects.all(),
        key=lambda r: priority.start_key(r.boost, r.submission.votes.count(), r.enqueued_at, r.pk),
    )
    assert order == [r.pk for r in expected]
    assert order == [runs[i].pk for i in (5, 4, 2, 1, 3, 0)]


@pytest.mark.django_db
def test_the_dispatcher_sends_only_while_the_queue_has_room_in_priority_order(
    settings, broker, django_capture_on_commit_callbacks
):
    settings.TRELLIS_DISPATCH_IN_FLIGHT = 2
    runs = [queued(30 - i) for i in range(5)]
    Vote.objects.create(user=UserFactory(), submission=runs[3].submission)
    assert dispatch.dispatch() == [runs[3].pk, runs[0].pk]
    assert dispatch.dispatch() == []  # full
    assert [job["run_id"] for _, [job] in broker("gpu-small")] == [runs[3].pk, runs[0].pk]
    # A late run with a boost overtakes every unsent one, but not the two already sent.
    late = queued(0)
    EvaluationRun.objects.filter(pk=late.pk).update(boost=5)
    with django_capture_on_commit_callbacks(execute=True):
        flow.mark_started(runs[3].pk, 1, "gpu@host")  # started: still in flight
    assert broker("gpu-small") == []
    with django_capture_on_commit_callbacks(execute=True):
        flow.record_failure(runs[3].pk, 1, "error", "boom", "")  # ended: a slot frees
    assert [job["run_id"] for _, [job] in broker("gpu-small")] == [late.pk]
    assert EvaluationRun.objects.filter(sent_at__isnull=True).count() == 3


@pytest.mark.django_db
def test_a_publish_that_fails_gives_the_run_back(settings, broker, monkeypatch):
    run = queued(5)

    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(dispatch.app, "send_task", down)
    assert dispatch.dispatch() == []
    assert EvaluationRun.objects.get(pk=run.pk).sent_at is None
    monkeypatch.undo()
    assert dispatch.dispatch() == [run.pk]


@pytest.mark.django_db
def test_votes_one_per_submission_within_a_weekly_budget(settings, submitter):
    settings.TRELLIS_WEEKLY_VOTES = 2
    runs = [queued(10 - i) for i in range(3)]
    priority.cast_vote(submitter, runs[0].submission)
    with pytest.raises(Refusal) as again:
        priority.cast_vote(submitter, runs[0].submission)
    assert (again.value.problems[0].code, again.value.status) == ("already_voted", 409)
    priority.cast_vote(submitter, runs[1].submission)
    with pytest.raises(Refusal) as spent:
        priority.cast_vote(submitter, runs[2].submission)
    assert (spent.value.problems[0].code, spent.value.status) == ("vote_budget_spent", 429)
    # A week later the budget is back.
    Vote.objects.update(created_at=timezone.now() - timedelta(days=7, seconds=1))
    priority.cast_vote(submitter, runs[2].submission)
    assert priority.vote_budget(submitter).used == 1
    finished = RunFactory(state=RunState.FINISHED)
    with pytest.raises(Refusal) as not_pending:
        priority.cast_vote(submitter, finished.submission)
    assert not_pending.value.problems[0].code == "not_pending"


@pytest.mark.django_db
def test_only_maintainers_boost_and_only_queued_runs(submitter, maintainer):
    run = queued(1)
    with pytest.raises(Refusal) as forbidden:
        priority.set_boost(run, submitter, 3)
    assert forbidden.value.status == 403
    assert priority.set_boost(run, maintainer, 3).boost == 3
    with pytest.raises(Refusal) as too_big:
        priority.set_boost(run, maintainer, 101)
    assert too_big.value.problems[0].code == "invalid_boost"
    running = RunFactory(state=RunState.RUNNING)
    with pytest.raises(Refusal) as moving:
        priority.set_boost(running, maintainer, 1)
    assert moving.value.problems[0].code == "not_pending"


# --- the queue page and API --------------------------------------------------------------------


@pytest.mark.django_db
def test_queue_api_lists_pending_in_start_order_running_finished_and_failed(anonymous_client):
    now = timezone.now()
    first, second = queued(20), queued(10)
    Vote.objects.create(user=UserFactory(), submission=second.submission)
    running = RunFactory(
        state=RunState.RUNNING,
        queue="gpu-small",
        started_at=now - timedelta(minutes=3),
        progress_done=25,
        progress_total=100,
        worker="gpu@a",
    )
    done = RunFactory(
        state=RunState.FINISHED, finished_at=now, energy_wh=1.5, co2_grams=0.7125, queue="q"
    )
    failed = RunFactory(
        state=RunState.FAILED,
        finished_at=now,
        failure_code="out_of_memory",
        failure_reason="Out of memory.",
    )
    old = RunFactory(state=RunState.FAILED, finished_at=now - timedelta(days=8))
    body = anonymous_client.get("/api/v1/queue").json()
    assert [(p["run_id"], p["position"], p["votes"]) for p in body["pending"]] == [
        (second.pk, 1, 1),
        (first.pk, 2, 0),
    ]
    assert body["pending"][0]["repo_id"] == second.submission.repository.repo_id
    [run] = body["running"]
    assert (run["run_id"], run["progress"], run["worker"]) == (
        running.pk,
        {"done": 25, "total": 100, "share": 0.25},
        "gpu@a",
    )
    assert [(f["run_id"], f["energy_wh"], f["co2_grams"]) for f in body["finished"]] == [
        (done.pk, 1.5, 0.7125)
    ]
    assert [(f["run_id"], f["failure"]) for f in body["failed"]] == [
        (failed.pk, {"code": "out_of_memory", "reason": "Out of memory."})
    ]
    assert old.pk not in [f["run_id"] for f in body["failed"]]


@pytest.mark.django_db
def test_voting_on_the_queue_page_moves_a_run_up(submitter_client, submitter, anonymous_client):
    first, second = queued(20), queued(10)
    page = anonymous_client.get("/queue/").content.decode()
    assert page.index(f'id="pending-{first.pk}"') < page.index(f'id="pending-{second.pk}"')
    assert "Log in</a> to vote" in page
    response = submitter_client.post(f"/runs/vote/{second.submission_id}/", {"action": "vote"})
    assert response.status_code == 302
    page = submitter_client.get("/queue/").content.decode()
    assert page.index(f'id="pending-{second.pk}"') < page.index(f'id="pending-{first.pk}"')
    assert 'value="withdraw"' in page
    submitter_client.post(f"/runs/vote/{second.submission_id}/", {"action": "withdraw"})
    assert Vote.objects.count() == 0


@pytest.mark.django_db
def test_vote_and_boost_through_the_api(anonymous_client, submitter, maintainer, settings):
    from leaderboard.accounts.models import ApiToken

    settings.TRELLIS_WEEKLY_VOTES = 3
    run = queued(5)
    _, token = ApiToken.issue(submitter)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    url = f"/api/v1/submissions/{run.submission_id}/vote"
    assert anonymous_client.post(url).status_code == 401
    assert anonymous_client.post(url, **auth).json() == {
        "submission_id": run.submission_id,
        "voted": True,
        "votes": 1,
        "votes_left": 2,
    }
    assert anonymous_client.post(url, **auth).json()["errors"][0]["code"] == "already_voted"
    assert anonymous_client.delete(url, **auth).json()["votes"] == 0

    boost = f"/api/v1/runs/{run.pk}/boost"
    denied = anonymous_client.post(boost, {"boost": 2}, content_type="application/json", **auth)
    assert denied.status_code == 403
    _, maintainer_token = ApiToken.issue(maintainer)
    raised = anonymous_client.post(
        boost,
        {"boost": 2},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {maintainer_token}",
    )
    assert raised.status_code == 200
    assert raised.json()["boost"] == 2


@pytest.mark.django_db
def test_the_ranking_points_to_the_queue_while_runs_are_pending(anonymous_client):
    page = anonymous_client.get("/").content.decode()
    assert 'class="queue-pointer"' not in page
    queued(1)
    page = anonymous_client.get("/").content.decode()
    assert 'class="queue-pointer"' in page
    assert '<a href="/queue/">1 evaluation pending</a>' in page


@pytest.mark.django_db
def test_a_new_submission_is_sent_only_when_its_queue_has_room(
    settings, broker, django_capture_on_commit_callbacks
):
    from leaderboard.evaluations.runs import create_run_for

    settings.TRELLIS_DISPATCH_IN_FLIGHT = 1
    with django_capture_on_commit_callbacks(execute=True):
        first = create_run_for(SubmissionFactory(state="failed"))
        second = create_run_for(SubmissionFactory(state="failed"))
    assert [job["run_id"] for _, [job] in broker("gpu-small")] == [first.pk]
    assert EvaluationRun.objects.get(pk=second.pk).sent_at is None
