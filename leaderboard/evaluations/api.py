"""API routes of this app (mounted under /api/v1/ by leaderboard.api): a submission with its
evaluation runs (public), re-queueing a failed run, the public queue, votes and boosts."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema

from leaderboard import flow
from leaderboard.accounts.auth import api_auth
from leaderboard.evaluations import priority, queue, runs
from leaderboard.evaluations.models import EvaluationRun, Vote
from leaderboard.evaluations.serializers import (
    RunOut,
    SubmissionDetailOut,
    run_to_dict,
    submission_detail_to_dict,
)
from leaderboard.problems import Refusal, error_responses
from leaderboard.submissions.models import Submission

router = Router(tags=["evaluations"])


def _not_found(submission_id: int) -> Refusal:
    return Refusal.one("not_found", "id", f"There is no submission {submission_id}.", 404)


def _submission(submission_id: int) -> Submission | None:
    return (
        Submission.objects.select_related("repository", "submitter")
        .filter(pk=submission_id)
        .first()
    )


@router.get(
    "/submissions/{submission_id}",
    response={200: SubmissionDetailOut, **error_responses(400, 404)},
    summary="A submission with its evaluation runs",
    description="Public. runs[0] is the newest run: its state (queued with its position in "
    "the queue, running with progress and elapsed time, finished with per-task scores, "
    "failed with the reason and log tail), suite version, reproduction command, run "
    "configuration and the details artifact's download URL.",
)
def get_submission(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    if submission is None:
        raise _not_found(submission_id)
    return submission_detail_to_dict(submission)


@router.post(
    "/submissions/{submission_id}/requeue",
    auth=api_auth,
    response={200: SubmissionDetailOut, **error_responses(400, 401, 403, 404, 409)},
    summary="Re-queue the submission's failed evaluation run",
    description="The submitter may re-queue a failed run once; a maintainer any time.",
)
def requeue_submission(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    run = runs.latest_run(submission) if submission is not None else None
    if submission is None or run is None:
        raise _not_found(submission_id)
    flow.requeue(run, request.auth)  # type: ignore[attr-defined]
    return submission_detail_to_dict(submission)


# --- the queue, votes and boosts ----------------------------------------------------------------


class QueueOut(Schema):
    """OpenAPI description of evaluations.queue.queue_to_dict: pending runs in start order
    (position per queue, votes, boost), running ones with progress, and those finished or
    failed in the last 7 days (energy; the failure's code and reason)."""

    pending: list[dict[str, Any]]
    running: list[dict[str, Any]]
    finished: list[dict[str, Any]]
    failed: list[dict[str, Any]]


class VoteOut(Schema):
    submission_id: int
    voted: bool
    votes: int
    votes_left: int


class BoostIn(Schema):
    boost: int


@router.get(
    "/queue",
    response={200: QueueOut},
    url_name="evaluation_queue",
    summary="The evaluation queue",
    description="Public. `pending`: queued runs in the order they start (maintainer boost, "
    "then votes, then age; `position` counts per queue), `running` with progress, `finished` "
    "and `failed` (with the reason) in the last 7 days.",
)
def get_queue(request: HttpRequest) -> Any:
    return queue.queue_to_dict()


def _vote_out(submission: Submission, user: Any) -> dict[str, Any]:
    return {
        "submission_id": submission.pk,
        "voted": Vote.objects.filter(user=user, submission=submission).exists(),
        "votes": Vote.objects.filter(submission=submission).count(),
        "votes_left": priority.vote_budget(user).left,
    }


@router.post(
    "/submissions/{submission_id}/vote",
    auth=api_auth,
    response={200: VoteOut, **error_responses(401, 404, 409, 429)},
    summary="Vote for a submission's pending evaluation",
    description="One vote per user and submission, TRELLIS_WEEKLY_VOTES per rolling 7 days.",
)
def vote(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    if submission is None:
        raise _not_found(submission_id)
    priority.cast_vote(request.auth, submission)  # type: ignore[attr-defined]
    return _vote_out(submission, request.auth)  # type: ignore[attr-defined]


@router.delete(
    "/submissions/{submission_id}/vote",
    auth=api_auth,
    response={200: VoteOut, **error_responses(401, 404)},
    summary="Withdraw a vote",
)
def withdraw_vote(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    if submission is None:
        raise _not_found(submission_id)
    priority.withdraw_vote(request.auth, submission)  # type: ignore[attr-defined]
    return _vote_out(submission, request.auth)  # type: ignore[attr-defined]


@router.post(
    "/runs/{run_id}/boost",
    auth=api_auth,
    response={200: RunOut, **error_responses(400, 401, 403, 404, 409)},
    summary="Raise or lower a queued run (maintainers)",
    description="`boost` from -100 to 100: runs start by boost, then votes, then age.",
)
def boost_run(request: HttpRequest, run_id: int, body: BoostIn) -> Any:
    run = EvaluationRun.objects.filter(pk=run_id).first()
    if run is None:
        raise Refusal.one("not_found", "id", f"There is no run {run_id}.", 404)
    run = priority.set_boost(run, request.auth, body.boost)  # type: ignore[attr-defined]
    return run_to_dict(run)
