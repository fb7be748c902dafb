"""The one JSON shape of a submission: the submission API, the submission-with-runs API and the
public model API all answer it (key names shared with the ranking row: `parameters`,
`is_synthetic`, `submitted_at`)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from ninja import Schema

from leaderboard.catalog.cards import declared_datasets, declared_parents
from leaderboard.integrity.verification import is_verified
from leaderboard.submissions.models import Submission


def submission_to_dict(submission: Submission) -> dict[str, Any]:
    metadata = submission.card_metadata or {}
    return {
        "id": submission.pk,
        "url": reverse("submissions:detail", args=[submission.pk]),
        "repo_id": submission.repository.repo_id,
        "requested_revision": submission.requested_revision,
        "revision": submission.revision,
        "precision": submission.precision,
        "weight_type": submission.weight_type,
        "model_type": submission.model_type,
        "parameters": submission.parameter_count,
        "architecture": submission.architecture,
        "license": submission.license,
        "merge_method": submission.merge_method,
        "parents": declared_parents(metadata),
        "datasets": declared_datasets(metadata),
        "submitter": submission.submitter.get_username() if submission.submitter else None,
        "state": submission.state,
        "lineage_status": submission.repository.status,
        # The organisation is a verified (official) provider: integrity/verification.py.
        "verified": is_verified(submission.repository.org),
        "is_synthetic": submission.is_synthetic,
        "submitted_at": submission.created_at.isoformat(),
    }


class SubmissionOut(Schema):
    """OpenAPI description of submission_to_dict's result."""

    id: int
    url: str
    repo_id: str
    requested_revision: str
    revision: str
    precision: str
    weight_type: str
    model_type: str
    parameters: int
    architecture: str
    license: str
    merge_method: str
    parents: list[str]
    datasets: list[str]
    submitter: str | None
    state: str
    lineage_status: str
    verified: bool
    is_synthetic: bool
    submitted_at: str
