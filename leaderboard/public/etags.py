"""ETag and Last-Modified of the public resources, from a few indexed aggregates: a conditional
request is answered 304 before any row is read."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils.dateparse import parse_datetime

from evaluator.suites import SUITES_DIR
from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.integrity.models import AuditEntry
from leaderboard.public.models import RankingEntry
from leaderboard.public.query import RankingQuery
from leaderboard.public.row import ROW_SCHEMA_VERSION
from leaderboard.submissions.models import Submission

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


def query_key(query: RankingQuery) -> str:
    """The query exactly as parsed, every field spelled out: two queries share a key only when
    every field is equal (the query string rounds sizes to 6 digits, so 7 and 7.0000001 billion
    would share one; a cached body must never be handed to a different query)."""
    return json.dumps(query.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _stamp(value: object) -> datetime | None:
    # Raw SQL hands SQLite's timestamps back as text.
    if isinstance(value, str):
        return parse_datetime(value)
    return value if isinstance(value, datetime) else None


def ranking_stamps(suite: str, version: str | None) -> tuple[int, list[datetime | None]]:
    """One round trip: the row count and newest row of a suite version, the newest
    lineage-status change among its ranked repositories (walked down the status-change index
    until the first ranked one: a submission's new repository changes no ranking) and the
    newest integrity event (every filing, joining and decision writes an audit entry, and the
    log is append-only)."""
    entries = RankingEntry._meta.db_table
    repositories = Repository._meta.db_table
    audit = AuditEntry._meta.db_table
    with connection.cursor() as cursor:
        of_version = f"FROM {entries} WHERE suite_name = %s AND suite_version = %s"
        cursor.execute(
            f"SELECT (SELECT COUNT(*) {of_version}), (SELECT MAX(updated_at) {of_version}),"
            f" (SELECT r.status_updated_at FROM {repositories} r"
            f" WHERE r.status_updated_at IS NOT NULL AND EXISTS (SELECT 1 FROM {entries} e"
            f" WHERE e.repository_id = r.id AND e.suite_name = %s AND e.suite_version = %s)"
            f" ORDER BY r.status_updated_at DESC LIMIT 1),"
            f" (SELECT MAX(created_at) FROM {audit})",
            [suite, version, suite, version, suite, version],
        )
        count, *stamps = cursor.fetchone()
    return int(count), [_stamp(stamp) for stamp in stamps]


def data_version(query: RankingQuery) -> Validator:
    """What every ranking of the query's suite version is built from, whatever the filters:
    `ranking_stamps` as a validator."""
    count, stamps = ranking_stamps(query.suite, query.version)
    return _validator([ROW_SCHEMA_VERSION, str(count)], stamps)


def ranking_validator(
    query: RankingQuery, *, extra: str = "", data: Validator | None = None
) -> Validator:
    """A ranking response's validator: the data version of its suite version (`data`, read
    when not given) and the query."""
    data = data or data_version(query)
    return _validator([data.etag, extra, query_key(query)], [data.last_modified])


@cache
def release() -> str:
    """What the rendered pages are built with: the templates, the project's code and the suite
    files, hashed once per process. Part of every cached page's key, so a deployment never
    serves a body rendered by the previous release (two hosts on the same code share keys)."""
    root = Path(settings.BASE_DIR)
    paths = [
        *sorted((root / "templates").rglob("*.html")),
        *sorted((root / "leaderboard").rglob("*.py")),
        *sorted(SUITES_DIR.glob("*.yaml")),
    ]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def suites_validator(body: str) -> Validator:
    """The suite list's validator: its body's hash, and the newest of the suite files the
    evaluator ships and the ranked rows (a stored version appears with its first row)."""
    shipped = [
        datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) for path in SUITES_DIR.glob("*.yaml")
    ]
    stored = RankingEntry.objects.aggregate(last=Max("updated_at"))["last"]
    last = max([*shipped, *([stored] if stored else [])], default=None)
    return Validator(etag=hashlib.sha256(body.encode()).hexdigest()[:32], last_modified=last)


def model_state(repository: Repository) -> Validator:
    """What the model page and the model resource are built from, in one round trip: the
    repository's row, each of its submissions and runs (state, progress, heartbeat: the
    resource lists them), and the newest status change, lineage edge and integrity event
    anywhere (both draw the neighbours' statuses, count children and list reports)."""
    runs = EvaluationRun._meta.db_table
    submissions = Submission._meta.db_table
    repositories = Repository._meta.db_table
    edges = LineageEdge._meta.db_table
    audit = AuditEntry._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 'run', r.id, r.state, r.progress_done, r.finished_at, r.heartbeat_at"
            f" FROM {runs} r JOIN {submissions} s ON r.submission_id = s.id"
            f" WHERE s.repository_id = %s"
            f" UNION ALL SELECT 'submission', id, state, 0, created_at, NULL"
            f" FROM {submissions} WHERE repository_id = %s"
            f" UNION ALL SELECT 'everywhere', (SELECT MAX(id) FROM {edges}), '', 0,"
            f" (SELECT MAX(status_updated_at) FROM {repositories}),"
            f" (SELECT MAX(created_at) FROM {audit})"
            f" ORDER BY 1, 2",
            [repository.pk, repository.pk],
        )
        rows = cursor.fetchall()
    parts = [MODEL_SCHEMA_VERSION, repository.status, str(repository.status_path)]
    stamps = [repository.updated_at, repository.status_updated_at]
    for kind, identity, state, progress, first, second in rows:
        parts.append(f"{kind}:{identity}:{state}:{progress}")
        stamps += [_stamp(first), _stamp(second)]
    return _validator(parts, stamps)
