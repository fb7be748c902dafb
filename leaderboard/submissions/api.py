"""API routes of this app (mounted under /api/v1/ by leaderboard.api): submitting a model."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from leaderboard import flow
from leaderboard.accounts.auth import api_auth
from leaderboard.problems import error_responses
from leaderboard.submissions.intake import SubmissionRequest
from leaderboard.submissions.serializers import SubmissionOut, submission_to_dict

router = Router(tags=["submissions"])


class SubmissionIn(Schema):
    repo_id: str = Field(description="the model repository, org/name")
    precision: str = Field(description="float16, bfloat16 or float32")
    model_type: str = Field(
        description="pretrained, continued-pretraining, fine-tuned, chat, merge, adapter, quantized"
    )
    revision: str = Field("main", description="branch, tag or commit sha; pinned to a sha")
    weight_type: str = Field("original", description="original, adapter or delta")


@router.post(
    "/submissions",
    auth=api_auth,
    response={201: SubmissionOut, **error_responses(400, 401, 413, 429)},
    summary="Submit a model for evaluation",
    description="Runs the same metadata checks as the submission form. On refusal every problem "
    "is listed at once, each with a stable code (see docs/submission.md).",
)
def create_submission(request: HttpRequest, payload: SubmissionIn) -> Status[Any]:
    submission = flow.submit(SubmissionRequest(**payload.dict()), request.auth)  # type: ignore[attr-defined]
    return Status(201, submission_to_dict(submission))
