"""Priority decides the start order with a real worker (issue 14). One GPU worker process
(evaluator.worker, one evaluation at a time) and the web-side worker that takes its reports;
ten runs of the tiny model queued at once, TRELLIS_DISPATCH_IN_FLIGHT=1. Runs r0..r9 are
queued oldest first; r7 has two votes, r3 one, r9 a maintainer's boost of 1, so the planned
order is r9, r7, r3, r0, r1, r2, r4, r5, r6, r8. Once r9 is on its way, three users vote for
r5, which moves it to second. Observed start order (started_at), as asserted below:
r9, r5, r7, r3, r0, r1, r2, r4, r6, r8."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from leaderboard.evaluations import dispatch, priority
from leaderboard.evaluations.models import EvaluationRun, Vote
from tests.factories import RepositoryFactory, RunFactory, SubmissionFactory, UserFactory
from tests.test_evaluation_worker import (  # noqa: F401 (fixtures)
    LIMIT,
    tiny_model_root,
    wait_for,
    workers,
)
from tests.tiny_model import TINY_REPO_ID


@pytest.fixture
def bound_of_one(monkeypatch, settings):
    """Read by the web-side worker process (its environment) and by this process."""
    monkeypatch.setenv("TRELLIS_DISPATCH_IN_FLIGHT", "1")
    monkeypatch.setenv("TRELLIS_EVAL_LIMIT", str(LIMIT))
    # The order is what is measured, not the contamination reference sets: off, to keep the
    # ten evaluations short.
    monkeypatch.setenv("TRELLIS_REFERENCE_ITEMS", "0")
    settings.TRELLIS_DISPATCH_IN_FLIGHT = 1


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_one_worker_starts_ten_runs_in_priority_order_and_a_vote_changes_it(
    bound_of_one,
    workers,  # noqa: F811 (the fixture imported above)
):
    repository = RepositoryFactory(repo_id=TINY_REPO_ID)
    start = timezone.now() - timedelta(hours=1)
    runs = [
        RunFactory(
            submission=SubmissionFactory(repository=repository, precision="float32"),
            queue=workers["queue"],
            enqueued_at=start + timedelta(minutes=i),
        )
        for i in range(10)
    ]
    for _ in range(2):
        Vote.objects.create(user=UserFactory(), submission=runs[7].submission)
    Vote.objects.create(user=UserFactory(), submission=runs[3].submission)
    EvaluationRun.objects.filter(pk=runs[9].pk).update(boost=1)
    name = {run.pk: f"r{i}" for i, run in enumerate(runs)}

    def planned() -> list[str]:
        return [name[run.pk] for run in priority.pending()]

    assert planned() == ["r9", "r7", "r3", "r0", "r1", "r2", "r4", "r5", "r6", "r8"]
    assert dispatch.dispatch() == [runs[9].pk]  # the bound: one in flight
    for _ in range(3):
        Vote.objects.create(user=UserFactory(), submission=runs[5].submission)
    assert planned() == ["r9", "r5", "r7", "r3", "r0", "r1", "r2", "r4", "r6", "r8"]

    def ended() -> bool:
        return not EvaluationRun.objects.filter(state__in=["queued", "running"]).exists()

    # Ten evaluations one after the other: about 2 minutes each on a loaded 2-core machine.
    wait_for(ended, 2700, "the ten runs to finish", workers["logs"])
    finished = EvaluationRun.objects.filter(pk__in=name).order_by("started_at")
    assert [run.state for run in finished] == ["finished"] * 10, [
        (name[run.pk], run.failure_reason) for run in finished
    ]
    observed = [name[run.pk] for run in finished]
    assert observed == ["r9", "r5", "r7", "r3", "r0", "r1", "r2", "r4", "r6", "r8"]
    # Never more than one run was on its way: each started after the previous one finished.
    for before, after in zip(finished, list(finished)[1:], strict=False):
        assert before.finished_at <= after.started_at
