"""ETag and Last-Modified of the public resources, from a few indexed aggregates: a conditional
request is answered 304 before any row is read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Count, Max, Q

from evaluator.suites import SUITES_DIR
from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.integrity.models import AuditEntry
from leaderboard.public.models import RankingEntry
from leaderboard.public.query import RankingQuery
from leaderboard.public.row import ROW_SCHEMA_VERSION

# Bumped whenever the shape of the model resource changes: it is part of its ETag.
MODEL_SCHEMA_VERSION = "2"


@dataclass(frozen=True)
class Validator:
    etag: str
    last_modified: datetime | None


def _validator(parts: list[str], stamps: list[datetime | None]) -> Validator:
    fingerprint = "|".join([*parts, *(stamp.isoformat() if stamp else "-" for stamp in stamps)])
    last = max((stamp for stamp in stamps if stamp is not None), default=None)
    return Validator(etag=hashlib.sha256(fingerprint.encode()).hexdigest()[:32], last_modified=last)


def ranking_validator(query: RankingQuery, *, extra: str = "") -> Validator:
    """A ranking response's validator: the newest row and row count of its suite version, the
    newest lineage-status change and the newest integrity event (every filing, joining and
    decision writes an audit entry, and the log is append-only)."""
    entries = RankingEntry.objects.filter(
        suite_name=query.suite, suite_version=query.version
    ).aggregate(n=Count("*"), last=Max("updated_at"))
    statuses = Repository.objects.aggregate(last=Max("status_updated_at"))
    integrity = AuditEntry.objects.aggregate(last=Max("created_at"))["last"]
    return _validator(
        [ROW_SCHEMA_VERSION, extra, query.querystring(), str(entries["n"])],
        [entries["last"], statuses["last"], integrity],
    )


def suites_validator(body: str) -> Validator:
    """The suite list's validator: its body's hash, and the newest of the suite files the
    evaluator ships and the ranked rows (a stored version appears with its first row)."""
    shipped = [
        datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) for path in SUITES_DIR.glob("*.yaml")
    ]
    stored = RankingEntry.objects.aggregate(last=Max("updated_at"))["last"]
    last = max([*shipped, *([stored] if stored else [])], default=None)
    return Validator(etag=hashlib.sha256(body.encode()).hexdigest()[:32], last_modified=last)


def model_validator(repository: Repository) -> Validator:
    """A model resource's validator, from its runs, submissions, edges and integrity events."""
    runs = EvaluationRun.objects.filter(submission__repository=repository).aggregate(
        n=Count("id"),
        finished=Count("id", filter=Q(state=RunState.FINISHED)),
        created=Max("created_at"),
        last=Max("finished_at"),
    )
    submissions = repository.submissions.aggregate(n=Count("id"), last=Max("created_at"))
    edges = LineageEdge.objects.filter(Q(child=repository) | Q(parent=repository)).aggregate(
        n=Count("id"), last=Max("created_at")
    )
    integrity = AuditEntry.objects.filter(target_id=repository.pk).aggregate(
        last=Max("created_at")
    )["last"]
    return _validator(
        [
            MODEL_SCHEMA_VERSION,
            repository.status,
            str(runs["n"]),
            str(runs["finished"]),
            str(submissions["n"]),
            str(edges["n"]),
        ],
        [
            repository.updated_at,
            repository.status_updated_at,
            runs["created"],
            runs["last"],
            submissions["last"],
            edges["last"],
            integrity,
        ],
    )
