"""API routes of this app (mounted under /api/v1/ by leaderboard.api): a submission with its
evaluation runs (public), and re-queueing a failed run."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router

from leaderboard import flow
from leaderboard.accounts.auth import api_auth
from leaderboard.evaluations import runs
from leaderboard.evaluations.serializers import SubmissionDetailOut, submission_detail_to_dict
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
