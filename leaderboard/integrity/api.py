"""Integrity API routes (mounted under /api/v1/ by leaderboard.api): reports and flags, their
moderation, and the lineage of a node with every node's derived status and explaining path."""

from __future__ import annotations

import json
from typing import Any, Literal

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status

from leaderboard import flow
from leaderboard.accounts.auth import api_auth
from leaderboard.integrity import reports
from leaderboard.problems import error_responses

router = Router(tags=["integrity"])


class FlagIn(Schema):
    target_type: Literal["model", "dataset"] = Field(
        "model", description="what `target` names: a model or a dataset repository"
    )
    target: str = Field(description="the repository id, org/name")
    kind: str = Field(description="contamination, lineage, license or other")
    evidence: str = Field(description="what is wrong and how you found out (required)")
    links: list[str] = Field(default_factory=list, description="supporting http(s) links")


class ResolveIn(Schema):
    decision: str = Field(description="confirm or dismiss (an open report), lift (a flag)")
    note: str = Field(description="why; shown publicly in the target's history")


class TargetOut(Schema):
    type: str
    repo_id: str


class ReportOut(Schema):
    id: int
    target: TargetOut
    kind: str
    evidence: str
    links: list[str]
    reporter: str | None
    supporters: list[str]
    status: str
    created_at: str
    confirmed_at: str | None
    resolved_at: str | None
    resolved_by: str | None
    resolution_note: str


class FiledOut(ReportOut):
    joined: bool = Field(
        description="true when an open report of the same kind on the target existed and this "
        "filing joined it"
    )


class FlagsQuery(Schema):
    status: str = Field("", description="open, confirmed, dismissed or lifted")
    target: str = Field("", description="repository id, org/name")
    target_type: str = Field("", description="model or dataset")
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class NodeOut(Schema):
    type: str
    repo_id: str
    depth: int = Field(description="generations from the requested node")
    status: str = Field(
        description="clean, resolving, incomplete, under-review, tainted or flagged"
    )
    taint_path: str = Field(description="the explaining path as text, '' when clean")
    status_path: list[dict[str, Any]] = Field(description="the explaining path as steps")
    lineage_resolved: bool
    resolution_note: str
    submitted: bool = Field(description="false for nodes only referenced, never submitted")


class EdgeOut(Schema):
    child: TargetOut
    parent: TargetOut
    relation: str


class LineageOut(Schema):
    node: NodeOut
    ancestors: list[NodeOut]
    descendants: list[NodeOut]
    edges: list[EdgeOut]


@router.post(
    "/flags",
    auth=api_auth,
    response={201: FiledOut, **error_responses(400, 401, 404, 409, 413, 429)},
    summary="Report a model or dataset",
    description="Files a report (201). A second open report of the same kind on the same target "
    "joins the first: the answer is the joined report with `joined: true`. Rate-limited per "
    "user (TRELLIS_REPORTS_PER_DAY, 429).",
)
def create_flag(request: HttpRequest, payload: FlagIn) -> Any:
    target = reports.find_target(payload.target_type, payload.target)
    filed = flow.file_report(
        reporter=request.auth,  # type: ignore[attr-defined]
        target=target,
        kind=payload.kind,
        evidence=payload.evidence,
        links=payload.links,
    )
    filed.report.refresh_from_db()
    return Status(201, {**filed.report.to_dict(), "joined": filed.joined})


@router.post(
    "/flags/{int:report_id}/resolve",
    auth=api_auth,
    response={200: ReportOut, **error_responses(400, 401, 403, 404, 409, 413)},
    summary="Confirm, dismiss or lift (maintainers)",
    description="Confirm or dismiss an open report, or lift a confirmed flag. The status of the "
    "target and every descendant is recomputed in the same transaction. 403 for anyone not in "
    "the maintainers group.",
)
def resolve_flag(request: HttpRequest, report_id: int, payload: ResolveIn) -> Any:
    report = flow.resolve(report_id, payload.decision, payload.note, request.auth)  # type: ignore[attr-defined]
    report.refresh_from_db()
    return Status(200, report.to_dict())


@router.get(
    "/flags",
    response={200: list[ReportOut], **error_responses(400)},
    summary="List reports and flags",
    description="Newest first. A flag is a report with status `confirmed`.",
)
def list_flags(request: HttpRequest, filters: Query[FlagsQuery]) -> Any:
    found = reports.list_reports(
        status=filters.status,
        target=filters.target,
        target_type=filters.target_type,
        limit=filters.limit,
        offset=filters.offset,
    )
    return Status(200, [report.to_dict() for report in found])


@router.get(
    "/lineage/{org}/{name}",
    response={200: LineageOut, **error_responses(400, 404)},
    summary="Lineage of a model or dataset",
    description="Ancestors, descendants (all generations unless `depth` is given) and the edges "
    "between them with their relations; every node with its derived status and explaining path.",
)
def lineage(
    request: HttpRequest,
    org: str,
    name: str,
    type: Literal["model", "dataset"] = "model",
    depth: int | None = Query(None, ge=1, le=100),  # type: ignore[type-arg]
) -> Any:
    repository = reports.find_target(type, f"{org}/{name}")
    # Ten thousand descendants make megabytes: serialised directly, not re-validated.
    return HttpResponse(
        json.dumps(reports.lineage_dict(repository, depth=depth)),
        content_type="application/json",
    )
