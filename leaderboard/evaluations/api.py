"""API routes of this app (mounted under /api/v1/ by leaderboard.api): a submission with its
evaluation runs (public), and re-queueing a failed run."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router

from leaderboard.accounts.auth import api_auth
from leaderboard.api import error_response
from leaderboard.evaluations import services
from leaderboard.evaluations.serializers import SubmissionDetailOut, submission_detail_to_dict
from leaderboard.submissions.api import ErrorsOut
from leaderboard.submissions.models import Submission

router = Router(tags=["evaluations"])


def _not_found(request: HttpRequest, submission_id: int) -> HttpResponse:
    return error_response(
        request,
        [
            {
                "code": "not_found",
                "field": "id",
                "message": f"There is no submission {submission_id}.",
            }
        ],
        404,
    )


def _submission(submission_id: int) -> Submission | None:
    return (
        Submission.objects.select_related("repository", "submitter")
        .filter(pk=submission_id)
        .first()
    )


@router.get(
    "/submissions/{submission_id}",
    response={200: SubmissionDetailOut, 404: ErrorsOut},
    summary="A submission with its evaluation runs",
    description="Public. runs[0] is the newest run: its state (queued with its position in "
    "the queue, running with progress and elapsed time, finished with per-task scores, "
    "failed with the reason and log tail), suite version, reproduction command, run "
    "configuration and the details artifact's download URL.",
)
def get_submission(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    if submission is None:
        return _not_found(request, submission_id)
    return submission_detail_to_dict(submission)


@router.post(
    "/submissions/{submission_id}/requeue",
    auth=api_auth,
    response={
        200: SubmissionDetailOut,
        401: ErrorsOut,
        403: ErrorsOut,
        404: ErrorsOut,
        409: ErrorsOut,
    },
    summary="Re-queue the submission's failed evaluation run",
    description="The submitter may re-queue a failed run once; a maintainer any time.",
)
def requeue_submission(request: HttpRequest, submission_id: int) -> Any:
    submission = _submission(submission_id)
    run = services.latest_run(submission) if submission is not None else None
    if submission is None or run is None:
        return _not_found(request, submission_id)
    try:
        services.requeue(run, request.auth)  # type: ignore[attr-defined]
    except services.RequeueRefused as refused:
        return error_response(
            request,
            [{"code": refused.code, "field": "id", "message": refused.message}],
            refused.status,
        )
    return submission_detail_to_dict(submission)
