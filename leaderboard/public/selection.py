"""The ranking's selection: which read-table rows a query shows, in which order, with which rank
and live lineage status, and how many the status filters hid. Written once for the pages (one
page of full rows) and the API (every row's stored JSON)."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from django.db.models import Count, F, FloatField, QuerySet, TextField, Window
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Rank

from leaderboard.catalog.models import LineageStatus, Repository, RepositoryKind
from leaderboard.integrity.models import Report, ReportStatus
from leaderboard.integrity.status import path_text
from leaderboard.problems import Refusal
from leaderboard.public.cache import cached_bytes
from leaderboard.public.etags import query_key, ranking_stamps, release
from leaderboard.public.models import RankingEntry
from leaderboard.public.process import kept_per_process
from leaderboard.public.query import SORT_COLUMNS, RankingQuery
from leaderboard.public.row import ENTRY_COLUMNS, RankingRow, build_row
from leaderboard.public.suites import SuiteView, suite_view

HIDDEN_BY_DEFAULT = (LineageStatus.FLAGGED, LineageStatus.TAINTED)
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
    """A row's place in a ranking with its live fields, and its stored JSON: the API sends it
    as it is (serializers.api_row_json), the pages build a RankingRow from it. `row_json` is
    read along when every row is selected (the full leaderboard), else for the page's ids."""

    entry_id: int
    rank: int
    repository_id: int
    lineage_status: str
    status_path: list[Any]
    row_json: str = ""
    flags: Sequence[dict[str, Any]] = ()

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
    if query.verified_only:
        entries = entries.filter(verified=True)
    if query.q:
        entries = entries.filter(repo_id__icontains=query.q)
    return entries


def select(
    query: RankingQuery, *, with_json: bool = False, data_version: str | None = None
) -> Ranking[Placed]:
    """Count, rank, order and (when `query.page` is set) paginate with narrow rows; wide
    contents are read afterwards for the chosen ids only, so the database never sorts them.
    `with_json` reads every row's stored JSON along when there is no page (the full API).

    With a `data_version` (etags.data_version), a page after the first is cut from the
    placement of every row of the query, computed once per data version and query and shared
    through the cache (`placement`): paging through 10,000 rows costs one ranking per version,
    not a window over thousands of rows per page.

    A page is ranked and filtered by lineage status in SQL (a window over the ordering index,
    stopped after the page). Every row at once is ranked here instead, with the status of the
    few ranked repositories that are not clean read apart: a join and a window over every row
    cost more than the rows themselves."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise Refusal.one(
            "unknown_version",
            "version",
            f"Suite '{query.suite}' has no version '{query.version}'.",
        )
    # The first page is an index walk that stops after it: cheaper than placing every row.
    if query.page is not None and query.page > 1 and data_version is not None:
        return _page_of_placement(query, view, data_version)
    entries = filtered_entries(query)
    # The few rows whose repository is flagged or tainted (status index), rather than a join
    # over every row; with a page, the total is one more index-only count.
    by_status = dict(
        entries.filter(repository__status__in=HIDDEN_BY_DEFAULT)
        .values_list("repository__status")
        .annotate(n=Count("*"))
        .order_by()
    )
    hidden_flagged = 0 if query.show_flagged else by_status.get(LineageStatus.FLAGGED, 0)
    hidden_tainted = 0 if query.show_tainted else by_status.get(LineageStatus.TAINTED, 0)
    key = "normalized_key" if query.normalized else "average_key"
    ordered = entries.order_by(*_ordering(query, key))
    page: int | None = None
    pages = 1
    if query.page is not None:
        count = entries.aggregate(n=Count("*"))["n"] - hidden_flagged - hidden_tainted
        pages = max(1, math.ceil(count / query.per_page))
        if query.page > pages:
            raise Refusal.one(
                "page_out_of_range",
                "page",
                f"Page {query.page} is past the last page: {count} rows make {pages} "
                f"page(s) of {query.per_page}; ask for a page from 1 to {pages}.",
            )
        page = query.page
        start = (page - 1) * query.per_page
        placed = [
            Placed(entry_id, rank, repository_id, status, _path(path))
            for entry_id, rank, repository_id, status, path in ordered.exclude(
                repository__status__in=query.hidden_statuses
            )
            .annotate(rank=Window(Rank(), order_by=F(key).desc()))
            .values_list(
                "id",
                "rank",
                "repository_id",
                "repository__status",
                Cast("repository__status_path", TextField()),
            )[start : start + query.per_page]
        ]
    else:
        placed = _place_all(query, entries, ordered, key, with_json)
        count = len(placed)
    return Ranking(query, view, placed, count, hidden_flagged, hidden_tainted, page, pages)


def _page_of_placement(query: RankingQuery, view: SuiteView, data_version: str) -> Ranking[Placed]:
    assert query.page is not None
    every = query.model_copy(update={"page": None})
    # The release is in the key as in every cached page's: a new release may encode it anew.
    key = f"{release()}:{data_version}:{hashlib.sha256(query_key(every).encode()).hexdigest()[:32]}"
    encoded = cached_bytes("placement", key, lambda: _encode_placement(select(every)))
    placement = Placement(encoded)
    pages = max(1, math.ceil(placement.count / query.per_page))
    if query.page > pages:
        raise Refusal.one(
            "page_out_of_range",
            "page",
            f"Page {query.page} is past the last page: {placement.count} rows make {pages} "
            f"page(s) of {query.per_page}; ask for a page from 1 to {pages}.",
        )
    start = (query.page - 1) * query.per_page
    rows = placement.rows(start, start + query.per_page)
    # The explaining paths of the page's few rows that are not clean, read for them alone:
    # kept in the placement they made every page decode the paths of thousands of rows.
    not_clean = [row.repository_id for row in rows if row.lineage_status != LineageStatus.CLEAN]
    if not_clean:
        paths = {pk: path for pk, (_status, path) in _not_clean(not_clean).items()}
        for row in rows:
            if row.repository_id in paths:
                row.status_path = _path(paths[row.repository_id])
    return Ranking(
        query,
        view,
        rows,
        placement.count,
        placement.hidden_flagged,
        placement.hidden_tainted,
        query.page,
        pages,
    )


# The placement's arrays: entry id, rank, repository id and lineage status (an index into
# _STATUSES) of each row, in ranking order.
_ARRAYS = 4
_ITEM = array("q").itemsize
_STATUSES = [status.value for status in LineageStatus]


def _encode_placement(ranked: Ranking[Placed]) -> bytes:
    """Every placed row of a ranking as bytes: a JSON header (the counts) and four arrays of
    64-bit integers. Nothing per row is JSON: a page decodes only its own slice."""
    rows = ranked.rows
    header = {
        "count": len(rows),
        "hidden_flagged": ranked.hidden_flagged,
        "hidden_tainted": ranked.hidden_tainted,
    }
    head = json.dumps(header).encode()
    status_code = {status: code for code, status in enumerate(_STATUSES)}
    columns = [
        array("q", [row.entry_id for row in rows]),
        array("q", [row.rank for row in rows]),
        array("q", [row.repository_id for row in rows]),
        array("q", [status_code[row.lineage_status] for row in rows]),
    ]
    return len(head).to_bytes(4, "big") + head + b"".join(c.tobytes() for c in columns)


class Placement:
    """A decoded placement; `rows` reads only the slice it is asked for, with empty paths (the
    caller reads the paths of the rows that are not clean)."""

    def __init__(self, encoded: bytes) -> None:
        size = int.from_bytes(encoded[:4], "big")
        header = json.loads(encoded[4 : 4 + size])
        self.count: int = header["count"]
        self.hidden_flagged: int = header["hidden_flagged"]
        self.hidden_tainted: int = header["hidden_tainted"]
        self.data = memoryview(encoded)[4 + size :]

    def _column(self, index: int, start: int, stop: int) -> array[int]:
        offset = index * self.count * _ITEM
        column = array("q")
        column.frombytes(self.data[offset + start * _ITEM : offset + stop * _ITEM])
        return column

    def rows(self, start: int, stop: int) -> list[Placed]:
        stop = min(stop, self.count)
        if start >= stop:
            return []
        ids, ranks, repositories, statuses = (self._column(i, start, stop) for i in range(_ARRAYS))
        return [
            Placed(entry_id, rank, repository_id, _STATUSES[status], [])
            for entry_id, rank, repository_id, status in zip(
                ids, ranks, repositories, statuses, strict=True
            )
        ]


def _not_clean(repository_ids: Any) -> dict[int, tuple[str, str | None]]:
    """Repository id -> (status, its explaining path as JSON text, parsed only where shown) of
    the models among `repository_ids` (ids, or a subquery of them) that are not clean. Read per
    request: statuses change without the rows changing."""
    return {
        repository_id: (status, path)
        for repository_id, status, path in Repository.objects.filter(
            kind=RepositoryKind.MODEL, status__in=NOT_CLEAN, id__in=repository_ids
        ).values_list("id", "status", Cast("status_path", TextField()))
    }


def _place_all(
    query: RankingQuery,
    entries: QuerySet[RankingEntry],
    ordered: QuerySet[RankingEntry],
    key: str,
    with_json: bool,
) -> list[Placed]:
    """Every row of `ordered` that the status filters show, with its competition rank ("1, 2,
    2, 4") by `key` among them, as SQL RANK() gives a page."""
    lineage = _not_clean(entries.values("repository_id"))
    clean = (LineageStatus.CLEAN.value, None)
    hidden = set(query.hidden_statuses)
    columns = ["id", "repository_id", key, *(["row_json"] if with_json else [])]
    visible: list[Placed] = []
    sort_keys: list[float] = []
    for values in ordered.values_list(*columns):
        status, path = lineage.get(values[1], clean)
        if status in hidden:
            continue
        sort_keys.append(values[2])
        visible.append(
            Placed(
                values[0],
                0,
                values[1],
                status,
                _path(path) if path else _CLEAN_PATH,
                values[3] if with_json else "",
            )
        )
    rank_of: dict[float, int] = {}
    for position, sort_key in enumerate(sorted(sort_keys, reverse=True), 1):
        rank_of.setdefault(sort_key, position)
    for row, sort_key in zip(visible, sort_keys, strict=True):
        row.rank = rank_of[sort_key]
    return visible


# Shared by every clean row (nearly all): never mutated.
_CLEAN_PATH: list[Any] = []


def _path(text: str | None) -> list[Any]:
    # Clean rows (nearly all) carry "[]": skip the parse.
    return json.loads(text) if text and text != "[]" else []


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


def ranking(query: RankingQuery, *, data_version: str | None = None) -> Ranking[RankingRow]:
    """One row per evaluated submission of the query's suite version, filtered, sorted and
    (when `query.page` is set) paginated, with how many rows the status filters hid. See
    `select` for `data_version`."""
    placed = select(query, data_version=data_version)
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


def ranking_for_api(query: RankingQuery, *, data_version: str | None = None) -> Ranking[Placed]:
    """The same rows as `ranking`, as stored JSON plus live fields (see serializers)."""
    placed = select(query, with_json=True, data_version=data_version)
    if placed.page is not None:
        stored = _contents(placed, ("row_json",))
        for p in placed.rows:
            p.row_json = stored[p.entry_id][0] if p.entry_id in stored else ""
        placed.rows = [p for p in placed.rows if p.row_json]
    flags = flags_by_repository({p.repository_id for p in placed.rows})
    if flags:
        for p in placed.rows:
            p.flags = flags.get(p.repository_id, [])
    return placed


@dataclass(slots=True)
class PlotRow:
    """What the plots draw of one ranking row: a narrow read of every row the query shows
    (the plots need neither ranks, nor order, nor the wide columns)."""

    entry_id: int
    repository_id: int
    model: str
    parameters: int
    average: float | None
    average_normalized: float | None
    model_type: str
    merge_method: str
    is_merge: bool
    is_synthetic: bool
    verified: bool
    submitted_at: Any
    scores: dict[str, float]
    lineage_status: str
    # Parsed when read: only the outliers listed under the plots show a path.
    status_path_text: str | None
    flags: Sequence[dict[str, Any]] = ()

    @property
    def status_path(self) -> list[Any]:
        return _path(self.status_path_text)

    @property
    def org(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.model.split("/", 1)[-1]

    @property
    def taint_path(self) -> str:
        return path_text(self.status_path)

    def shown_average(self, normalized: bool) -> float | None:
        return self.average_normalized if normalized else self.average


_PLOT_COLUMNS = (
    "id",
    "repository_id",
    "repo_id",
    "parameter_count",
    "average",
    "average_normalized",
    "model_type",
    "merge_method",
    "is_merge",
    "is_synthetic",
    "verified",
    "submitted_at",
)
# PlotRow's fields read from _PLOT_COLUMNS, in that order.
_PLOT_FIELDS = ("entry_id", "repository_id", "model", "parameters", *_PLOT_COLUMNS[4:])


def plotted(query: RankingQuery) -> Ranking[PlotRow]:
    """Every row `query` shows (its page ignored), narrow and unordered, with how many the
    status filters hid: the rows as read once per version of the suite version's rows (see
    `_plot_rows`), and the few repositories that are not clean, read now."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise Refusal.one(
            "unknown_version", "version", f"Suite '{query.suite}' has no version '{query.version}'."
        )
    entries = filtered_entries(query)
    lineage = _not_clean(entries.values("repository_id"))
    hidden = set(query.hidden_statuses)
    hidden_counts = {LineageStatus.FLAGGED.value: 0, LineageStatus.TAINTED.value: 0}
    rows: list[PlotRow] = []
    for row in _plot_rows(query, entries):
        if row.repository_id not in lineage:
            rows.append(row)
            continue
        status, path = lineage[row.repository_id]
        if status in hidden:
            hidden_counts[status] += 1
        else:
            rows.append(replace(row, lineage_status=status, status_path_text=path))
    return Ranking(
        query,
        view,
        rows,
        len(rows),
        hidden_counts[LineageStatus.FLAGGED.value],
        hidden_counts[LineageStatus.TAINTED.value],
        None,
        1,
    )


# The plotted rows of recent (rows version, filters), clean and without flags, per process:
# a filed report or a decision changes statuses, not rows, and re-reading 10,000 rows was
# half of rebuilding /plots/ after each. Never mutated: `plotted` replaces the rows it
# changes, and so does whoever sets their flags.
_PLOT_ROWS: OrderedDict[str, tuple[PlotRow, ...]] = OrderedDict()
_PLOT_ROWS_KEPT = 8
_PLOT_ROWS_LOCK = threading.Lock()


@kept_per_process
def forget_plot_rows() -> None:
    """Drop this process's plotted rows (tests: each has its own database)."""
    with _PLOT_ROWS_LOCK:
        _PLOT_ROWS.clear()


def _plot_rows(query: RankingQuery, entries: QuerySet[RankingEntry]) -> tuple[PlotRow, ...]:
    # Rows are only ever written by deleting and re-creating them with a new `updated_at`
    # (public/projection.py), so the count and the newest stamp say whether any changed.
    count, stamps = ranking_stamps(query.suite, query.version)
    # Each row carries both averages, so raw and normalized plots share one copy.
    filters = query.model_copy(
        update={
            "page": None,
            "sort": "average",
            "normalized": False,
            "show_flagged": True,
            "show_tainted": True,
        }
    )
    key = f"{release()}:{count}:{stamps[0]}:{query_key(filters)}"
    with _PLOT_ROWS_LOCK:
        found = _PLOT_ROWS.get(key)
        if found is not None:
            _PLOT_ROWS.move_to_end(key)
            return found
    read = entries.values_list(*_PLOT_COLUMNS, Cast("scores", TextField()))
    values = list(read)
    # The scores as text, parsed here in one document: the JSON field's own conversion costs
    # ten times more, and 10,000 small parses three times more.
    scores = json.loads(f"[{','.join(row[-1] for row in values)}]")
    clean = LineageStatus.CLEAN.value
    rows = tuple(
        PlotRow(
            **dict(zip(_PLOT_FIELDS, row[:-1], strict=True)),
            scores=row_scores,
            lineage_status=clean,
            status_path_text=None,
        )
        for row, row_scores in zip(values, scores, strict=True)
    )
    with _PLOT_ROWS_LOCK:
        _PLOT_ROWS[key] = rows
        while len(_PLOT_ROWS) > _PLOT_ROWS_KEPT:
            _PLOT_ROWS.popitem(last=False)
    return rows


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
