"""The ranking's selection: which read-table rows a query shows, in which order, with which rank
and live lineage status, and how many the status filters hid. Written once for the pages (one
page of full rows) and the API (every row's stored JSON)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from django.db.models import Count, F, FloatField, QuerySet, Window
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Rank

from leaderboard.catalog.models import LineageStatus, Repository, RepositoryKind
from leaderboard.integrity.models import Report, ReportStatus
from leaderboard.integrity.status import path_text
from leaderboard.problems import Refusal
from leaderboard.public.models import RankingEntry
from leaderboard.public.query import SORT_COLUMNS, RankingQuery
from leaderboard.public.row import ENTRY_COLUMNS, RankingRow, build_row
from leaderboard.public.suites import SuiteView, suite_view

NOT_CLEAN = [status.value for status in LineageStatus if status != LineageStatus.CLEAN]
# Reports that matter to a reader of the ranking: allegations under review, and flags.
LIVE_REPORT_STATUSES = (ReportStatus.OPEN, ReportStatus.CONFIRMED)
# Past this many ids, one pass over every live report beats a huge IN list.
_IN_LIMIT = 500

RowT = TypeVar("RowT")


@dataclass
class Ranking(Generic[RowT]):
    query: RankingQuery
    view: SuiteView
    rows: list[RowT]
    count: int
    hidden_flagged: int
    hidden_tainted: int
    page: int | None
    pages: int

    @property
    def hidden(self) -> int:
        return self.hidden_flagged + self.hidden_tainted

    @property
    def first_index(self) -> int:
        if not self.rows or self.page is None:
            return 1 if self.rows else 0
        return (self.page - 1) * self.query.per_page + 1

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.rows) - 1 if self.rows else 0

    def with_rows(self, rows: list[Any]) -> Ranking[Any]:
        return Ranking(
            self.query,
            self.view,
            rows,
            self.count,
            self.hidden_flagged,
            self.hidden_tainted,
            self.page,
            self.pages,
        )


@dataclass(slots=True)
class Placed:
    """A row's place in a ranking with its live lineage fields; `row_json` is read along when
    every row is selected (the full leaderboard), else afterwards for the page's ids."""

    entry_id: int
    rank: int
    repository_id: int
    lineage_status: str
    status_path: list[Any]
    row_json: str = ""


@dataclass(slots=True)
class ApiRow:
    """A row as the API sends it: the stored JSON and the live fields."""

    rank: int
    repository_id: int
    lineage_status: str
    status_path: list[Any]
    row_json: str
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def taint_path(self) -> str:
        return path_text(self.status_path)


def filtered_entries(query: RankingQuery) -> QuerySet[RankingEntry]:
    """Entries of the query's suite version that pass every filter except lineage status."""
    entries = RankingEntry.objects.filter(suite_name=query.suite, suite_version=query.version)
    if query.model_type:
        entries = entries.filter(model_type__in=[t.value for t in query.model_type])
    if query.precision:
        entries = entries.filter(precision__in=[p.value for p in query.precision])
    if query.license:
        entries = entries.filter(license_family__in=[f.value for f in query.license])
    if query.min_params is not None:
        entries = entries.filter(parameter_count__gte=round(query.min_params * 1e9))
    if query.max_params is not None:
        entries = entries.filter(parameter_count__lte=round(query.max_params * 1e9))
    if query.hide_merges:
        entries = entries.filter(is_merge=False)
    if query.hide_synthetic:
        entries = entries.filter(is_synthetic=False)
    if query.q:
        entries = entries.filter(repo_id__icontains=query.q)
    return entries


def select(query: RankingQuery, *, with_json: bool = False) -> Ranking[Placed]:
    """Count, rank, order and (when `query.page` is set) paginate with narrow rows; wide
    contents are read afterwards for the chosen ids only, so the database never sorts them.

    Lineage status is read for the few ranked repositories that are not clean (status index)
    rather than joined to every row: in a large catalog that join cost more than the rows."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise Refusal.one(
            "unknown_version",
            "version",
            f"Suite '{query.suite}' has no version '{query.version}'.",
        )
    entries = filtered_entries(query)
    lineage = {
        repository_id: (status, path or [])
        for repository_id, status, path in Repository.objects.filter(
            kind=RepositoryKind.MODEL,
            status__in=NOT_CLEAN,
            id__in=entries.values("repository_id"),
        ).values_list("id", "status", "status_path")
    }
    hidden_statuses = set(query.hidden_statuses)
    hidden_ids = [pk for pk, (status, _path) in lineage.items() if status in hidden_statuses]
    hidden: Counter[str] = Counter()
    if hidden_ids:
        for repository_id, n in (
            entries.filter(repository_id__in=hidden_ids)
            .values_list("repository_id")
            .annotate(n=Count("*"))
            .order_by()
        ):
            hidden[lineage[repository_id][0]] += n
    count = entries.aggregate(n=Count("*"))["n"] - sum(hidden.values())
    key = "normalized_key" if query.normalized else "average_key"
    columns = ["id", "rank", "repository_id"]
    if with_json and query.page is None:
        columns.append("row_json")
    ordered = (
        entries.exclude(repository_id__in=hidden_ids)
        .annotate(rank=Window(Rank(), order_by=F(key).desc()))
        .order_by(*_ordering(query, key))
        .values_list(*columns)
    )
    page: int | None = None
    pages = 1
    if query.page is not None:
        pages = max(1, math.ceil(count / query.per_page))
        page = min(query.page, pages)
        start = (page - 1) * query.per_page
        ordered = ordered[start : start + query.per_page]
    clean: tuple[str, list[Any]] = (LineageStatus.CLEAN.value, [])
    placed = [
        Placed(values[0], values[1], values[2], *lineage.get(values[2], clean), *values[3:])
        for values in ordered
    ]
    return Ranking(
        query=query,
        view=view,
        rows=placed,
        count=count,
        hidden_flagged=hidden[LineageStatus.FLAGGED],
        hidden_tainted=hidden[LineageStatus.TAINTED],
        page=page,
        pages=pages,
    )


def _ordering(query: RankingQuery, key: str) -> list[Any]:
    """Sort column, then the average (best first), then name and id for a stable order.
    The default (average, descending) reads the never-null key in index order."""
    if query.sort == "average" and query.direction == "desc":
        primary: Any = F(key).desc()
    else:
        if query.sort == "average":
            expression: Any = F("average_normalized" if query.normalized else "average")
        elif query.sort in SORT_COLUMNS:
            expression = F(SORT_COLUMNS[query.sort])
        else:
            expression = Cast(KeyTextTransform(query.sort, "scores"), FloatField())
        if query.direction == "desc":
            primary = expression.desc(nulls_last=True)
        else:
            primary = expression.asc(nulls_last=True)
    return [primary, F(key).desc(), "repo_id", "id"]


def _contents(placed: Ranking[Placed], columns: tuple[str, ...]) -> dict[int, tuple[Any, ...]]:
    """The columns of the placed rows, by entry id."""
    entries = RankingEntry.objects.all()
    if placed.page is not None:
        entries = entries.filter(pk__in=[p.entry_id for p in placed.rows])
    else:
        entries = filtered_entries(placed.query)
    return {values[0]: values[1:] for values in entries.values_list("id", *columns)}


def ranking(query: RankingQuery) -> Ranking[RankingRow]:
    """One row per evaluated submission of the query's suite version, filtered, sorted and
    (when `query.page` is set) paginated, with how many rows the status filters hid."""
    placed = select(query)
    contents = _contents(placed, ENTRY_COLUMNS)
    rows = [
        build_row(
            contents[p.entry_id],
            placed.view,
            rank=p.rank,
            repository_id=p.repository_id,
            lineage_status=p.lineage_status,
            status_path=p.status_path,
        )
        for p in placed.rows
        if p.entry_id in contents
    ]
    flags = flags_by_repository({row.repository_id for row in rows})
    for row in rows:
        row.flags = flags.get(row.repository_id, [])
    return placed.with_rows(rows)


def ranking_for_api(query: RankingQuery) -> Ranking[ApiRow]:
    """The same rows as `ranking`, as stored JSON plus live fields (see serializers)."""
    placed = select(query, with_json=True)
    if placed.page is not None:
        stored = _contents(placed, ("row_json",))
        for p in placed.rows:
            p.row_json = stored[p.entry_id][0] if p.entry_id in stored else ""
    rows = [
        ApiRow(p.rank, p.repository_id, p.lineage_status, p.status_path, p.row_json)
        for p in placed.rows
        if p.row_json
    ]
    flags = flags_by_repository({row.repository_id for row in rows})
    if flags:
        for row in rows:
            row.flags = flags.get(row.repository_id, [])
    return placed.with_rows(rows)


def flags_by_repository(repository_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Open and confirmed reports of each repository, oldest first, as a row's `flags`."""
    ids = set(repository_ids)
    if not ids:
        return {}
    reports = Report.objects.filter(status__in=LIVE_REPORT_STATUSES)
    if len(ids) <= _IN_LIMIT:
        reports = reports.filter(target_id__in=ids)
    result: dict[int, list[dict[str, Any]]] = {}
    for report in reports.order_by("created_at", "id").values(
        "id", "target_id", "kind", "status", "created_at", "confirmed_at"
    ):
        if report["target_id"] in ids:
            result.setdefault(report["target_id"], []).append(
                {
                    "report": report["id"],
                    "kind": report["kind"],
                    "status": report["status"],
                    "created_at": report["created_at"].isoformat(),
                    "confirmed_at": (
                        report["confirmed_at"].isoformat() if report["confirmed_at"] else None
                    ),
                }
            )
    return result
