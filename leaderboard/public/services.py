"""The ranking core: parse a ranking query, select its rows from the read table, keep the read
table in step with runs, and compute the cheap validator behind ETag/Last-Modified."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, F, FloatField, Max, QuerySet, TextField, Window
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Rank
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leaderboard.catalog.models import LineageStatus, Repository, RepositoryKind
from leaderboard.integrity.status import path_text
from leaderboard.public import serializers
from leaderboard.public.models import LicenseFamily, RankingEntry
from leaderboard.public.suites import (
    SuiteView,
    current_version,
    defined_versions,
    latest_version,
    suite_names,
    suite_view,
    versions_of,
)
from leaderboard.submissions.models import ModelType, Precision

# Bumped whenever the shape of a serialized row changes: it is part of every ETag.
ROW_SCHEMA_VERSION = "1"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# Sort keys besides the suite's task keys, and the entry column each orders by.
SORT_COLUMNS: dict[str, str] = {
    "average": "average",
    "model": "repo_id",
    "model_type": "model_type",
    "parameters": "parameter_count",
    "precision": "precision",
    "license": "license",
    "status": "repository__status",
    "submitted": "submitted_at",
}
TEXT_SORTS = {"model", "model_type", "precision", "license", "status"}
HIDDEN_BY_DEFAULT = (LineageStatus.FLAGGED, LineageStatus.TAINTED)
NOT_CLEAN = [status.value for status in LineageStatus if status != LineageStatus.CLEAN]


class RankingQueryError(ValueError):
    """A query the ranking refuses; `errors` use the API's {code, field, message} shape."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


class RankingQuery(BaseModel):
    """The ranking's filters, sort and page, exactly as the query string spells them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field(default_factory=lambda: default_suite(), max_length=64)
    version: str | None = Field(default=None, max_length=32)
    sort: str = Field(default="average", max_length=100)
    dir: Literal["asc", "desc"] | None = None
    model_type: tuple[ModelType, ...] = ()
    precision: tuple[Precision, ...] = ()
    license: tuple[LicenseFamily, ...] = ()
    min_params: float | None = Field(default=None, ge=0, description="billions")
    max_params: float | None = Field(default=None, ge=0, description="billions")
    hide_merges: bool = False
    hide_synthetic: bool = False
    show_flagged: bool = False
    show_tainted: bool = False
    q: str = Field(default="", max_length=100)
    normalized: bool = False
    page: int | None = Field(default=None, ge=1)
    per_page: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)

    @field_validator("q")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @property
    def direction(self) -> str:
        if self.dir is not None:
            return self.dir
        return "asc" if self.sort in TEXT_SORTS else "desc"

    @property
    def hidden_statuses(self) -> list[str]:
        shown = {LineageStatus.FLAGGED: self.show_flagged, LineageStatus.TAINTED: self.show_tainted}
        return [status.value for status, visible in shown.items() if not visible]

    def to_params(self, **changes: Any) -> dict[str, Any]:
        """Parameters for links and ETags: suite and version always (a permalink must not
        drift when a new suite version ships), everything else only when not the default."""
        values = self.model_dump() | changes
        defaults = {name: info.default for name, info in RankingQuery.model_fields.items()}
        params: dict[str, Any] = {"suite": values["suite"]}
        if values["version"] is not None:
            params["version"] = values["version"]
        for name in RankingQuery.model_fields:
            value = values[name]
            if name in ("suite", "version") or value == defaults[name] or value is None:
                continue
            if name == "page" and value == 1:
                continue
            if isinstance(value, tuple | list):
                params[name] = [str(getattr(item, "value", item)) for item in value]
            elif isinstance(value, bool):
                params[name] = "1"
            elif isinstance(value, float):
                params[name] = _format_billions(value)
            else:
                params[name] = str(value)
        return params

    def querystring(self, **changes: Any) -> str:
        return urlencode(self.to_params(**changes), doseq=True)

    def sort_link(self, key: str) -> str:
        """The query string that sorts by `key`, flipping the direction when already sorted."""
        if self.sort == key:
            flipped = "asc" if self.direction == "desc" else "desc"
            return self.querystring(sort=key, dir=flipped, page=None)
        return self.querystring(sort=key, dir=None, page=None)


LIST_FIELDS = ("model_type", "precision", "license")


def default_suite() -> str:
    """TRELLIS_DEFAULT_SUITE when it is known, else the first known suite (a fresh install
    whose default suite has not shipped yet still ranks what it has)."""
    if defined_versions(settings.TRELLIS_DEFAULT_SUITE):
        return settings.TRELLIS_DEFAULT_SUITE
    names = suite_names()
    if settings.TRELLIS_DEFAULT_SUITE in names or not names:
        return settings.TRELLIS_DEFAULT_SUITE
    return names[0]


def _format_billions(value: float) -> str:
    return f"{value:g}"


def parse_ranking_query(params: Mapping[str, Any], *, paginate: bool = True) -> RankingQuery:
    """Validate query parameters (a QueryDict or a plain mapping) into a RankingQuery whose
    suite version is resolved. Raises RankingQueryError naming every bad field at once.

    `paginate=False` (the API, exports) leaves `page` unset unless given: all rows."""
    getlist = getattr(params, "getlist", None)
    values: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    known = set(RankingQuery.model_fields)
    for name in params:
        if name not in known:
            errors.append(
                {
                    "code": "unknown_parameter",
                    "field": name,
                    "message": f"'{name}' is not a ranking parameter; use one of "
                    f"{', '.join(sorted(known))}.",
                }
            )
            continue
        raw = getlist(name) if getlist else params[name]
        items = [str(v) for v in (raw if isinstance(raw, list | tuple) else [raw])]
        if name in LIST_FIELDS:
            values[name] = [p.strip() for v in items for p in v.split(",") if p.strip()]
        elif items and items[-1].strip() != "":
            values[name] = items[-1].strip()
    if paginate and "page" not in values:
        values["page"] = 1
    query: RankingQuery | None = None
    try:
        query = RankingQuery.model_validate(values)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc))
    if query is not None and not errors:
        query, semantic = _resolve(query)
        errors.extend(semantic)
    if errors or query is None:
        raise RankingQueryError(errors)
    return query


def _pydantic_errors(exc: ValidationError) -> list[dict[str, str]]:
    errors = []
    for item in exc.errors():
        field_name = str(item["loc"][0]) if item["loc"] else "query"
        message = item["msg"]
        if item["type"] == "enum":
            message = f"{message} (got {item['input']!r})"
        elif item["type"] in ("float_parsing", "int_parsing", "bool_parsing"):
            message = f"{message}: got {item['input']!r}"
        errors.append({"code": "invalid_" + item["type"], "field": field_name, "message": message})
    return errors


def _resolve(query: RankingQuery) -> tuple[RankingQuery, list[dict[str, str]]]:
    """Check what needs the suite: it exists, the version exists, the sort key is a column.
    A suite and version the evaluator ships resolve without touching the database."""
    errors: list[dict[str, str]] = []
    version = query.version or current_version(query.suite) or latest_version(query.suite)
    if version is None:
        known = ", ".join(suite_names()) or "none yet"
        errors.append(
            {
                "code": "unknown_suite",
                "field": "suite",
                "message": f"No suite named '{query.suite}'; known suites: {known}.",
            }
        )
        return query, errors
    if version not in versions_of(query.suite):
        errors.append(
            {
                "code": "unknown_version",
                "field": "version",
                "message": f"Suite '{query.suite}' has no version '{version}'; "
                f"choose one of {', '.join(versions_of(query.suite))}.",
            }
        )
        return query, errors
    view = suite_view(query.suite, version)
    if view is None:  # pragma: no cover - versions_of only lists resolvable versions
        errors.append({"code": "unknown_version", "field": "version", "message": version})
        return query, errors
    if query.sort not in SORT_COLUMNS and query.sort not in view.task_keys:
        choices = ", ".join([*SORT_COLUMNS, *view.task_keys])
        errors.append(
            {
                "code": "unknown_sort",
                "field": "sort",
                "message": f"Cannot sort by '{query.sort}'; sort by one of {choices}.",
            }
        )
    if (
        query.min_params is not None
        and query.max_params is not None
        and query.min_params > query.max_params
    ):
        errors.append(
            {
                "code": "invalid_range",
                "field": "min_params",
                "message": f"The smallest size ({query.min_params:g}B) is above the largest "
                f"({query.max_params:g}B); swap them or clear one.",
            }
        )
    return query.model_copy(update={"version": version}), errors


def default_query() -> RankingQuery:
    """The ranking with no parameters (what the page falls back to after a refused query)."""
    try:
        return parse_ranking_query({})
    except RankingQueryError:
        # No suite is known yet (fresh install): an empty ranking of the default suite.
        return RankingQuery(page=1)


# --- rows --------------------------------------------------------------------------------------


@dataclass
class RankingRow:
    rank: int
    entry_id: int
    submission_id: int
    repository_id: int
    repo_id: str
    revision: str
    precision: str
    model_type: str
    weight_type: str
    parameter_count: int
    license: str
    license_family: str
    merge_method: str
    is_merge: bool
    is_synthetic: bool
    submitted_at: datetime
    evaluated_at: datetime | None
    scores: dict[str, float]
    stderrs: dict[str, float | None]
    average: float | None
    average_normalized: float | None
    lineage_status: str
    status_path: list[Any]
    flags: list[dict[str, Any]] = field(default_factory=list)
    normalized_scores: dict[str, float] = field(default_factory=dict)
    row_json: str = "{}"

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[-1]

    @property
    def taint_path(self) -> str:
        return path_text(self.status_path)

    @property
    def url(self) -> str:
        return serializers.model_url(self.repo_id)

    def shown_average(self, normalized: bool) -> float | None:
        return self.average_normalized if normalized else self.average

    def cells(self, view: SuiteView, normalized: bool) -> list[dict[str, Any]]:
        """One cell per suite task for the table: the shown value and its tooltip."""
        cells = []
        for column in view.columns:
            raw = self.scores.get(column.key)
            if raw is None:
                cells.append({"key": column.key, "text": "—", "title": "not scored"})
                continue
            value = self.normalized_scores[column.key] if normalized else 100 * raw
            stderr = self.stderrs.get(column.key)
            title = f"raw {100 * raw:.2f}" + (f" ± {100 * stderr:.2f}" if stderr else "")
            if normalized:
                title += f", normalized {self.normalized_scores[column.key]:.2f}"
            cells.append({"key": column.key, "text": f"{value:.2f}", "title": title})
        return cells


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


@dataclass(slots=True)
class Placed:
    """A row's place in a ranking, with its live lineage fields, before its contents are read."""

    entry_id: int
    rank: int
    repository_id: int
    lineage_status: str
    status_path: list[Any]


@dataclass(slots=True)
class ApiRow:
    """A row as the full-leaderboard API sends it: live fields plus the stored JSON."""

    rank: int
    repository_id: int
    lineage_status: str
    status_path: list[Any]
    row_json: str
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def taint_path(self) -> str:
        return path_text(self.status_path)


_ENTRY_FIELDS = (
    "id",
    "submission_id",
    "repo_id",
    "revision",
    "precision",
    "model_type",
    "weight_type",
    "parameter_count",
    "license",
    "license_family",
    "merge_method",
    "is_merge",
    "is_synthetic",
    "submitted_at",
    "evaluated_at",
    "scores",
    "stderrs",
    "average",
    "average_normalized",
    "row_json",
)


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


def _select(
    query: RankingQuery,
) -> tuple[Ranking[Placed], QuerySet[RankingEntry]]:
    """Count, order and paginate with narrow rows (ids, ranks, live status); the wide
    contents are read afterwards for the chosen ids only, so the database never sorts them.
    Returns the placed rows and the filtered entries they come from."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise RankingQueryError(
            [{"code": "unknown_version", "field": "version", "message": str(query.version)}]
        )
    entries = filtered_entries(query)
    # Two cheap counts rather than one join over every row: the total (index-only with the
    # default filters) and the few rows whose repository is flagged or tainted (status index).
    total = entries.aggregate(n=Count("*"))["n"]
    by_status = dict(
        entries.filter(repository__status__in=HIDDEN_BY_DEFAULT)
        .values_list("repository__status")
        .annotate(n=Count("*"))
        .order_by()
    )
    hidden_flagged = 0 if query.show_flagged else by_status.get(LineageStatus.FLAGGED, 0)
    hidden_tainted = 0 if query.show_tainted else by_status.get(LineageStatus.TAINTED, 0)
    count = total - hidden_flagged - hidden_tainted
    key = "normalized_key" if query.normalized else "average_key"
    ordered = (
        entries.exclude(repository__status__in=query.hidden_statuses)
        .annotate(rank=Window(Rank(), order_by=F(key).desc()))
        .order_by(*_ordering(query, key))
        .values_list(
            "id",
            "rank",
            "repository_id",
            "repository__status",
            Cast("repository__status_path", TextField()),
        )
    )
    page: int | None = None
    pages = 1
    if query.page is not None:
        pages = max(1, math.ceil(count / query.per_page))
        page = min(query.page, pages)
        start = (page - 1) * query.per_page
        ordered = ordered[start : start + query.per_page]
    placed = [
        Placed(entry_id, rank, repository_id, status, _path(path))
        for entry_id, rank, repository_id, status, path in ordered
    ]
    ranking = Ranking(
        query=query,
        view=view,
        rows=placed,
        count=count,
        hidden_flagged=hidden_flagged,
        hidden_tainted=hidden_tainted,
        page=page,
        pages=pages,
    )
    return ranking, entries


def _path(text: str | None) -> list[Any]:
    # Clean rows (nearly all) carry "[]": skip the parse.
    return json.loads(text) if text and text != "[]" else []


def _contents(
    placed: Ranking[Placed], entries: QuerySet[RankingEntry], fields: tuple[str, ...]
) -> dict[int, tuple[Any, ...]]:
    if placed.page is not None:
        entries = RankingEntry.objects.filter(pk__in=[p.entry_id for p in placed.rows])
    return {values[0]: values for values in entries.values_list(*fields)}


def ranking(query: RankingQuery) -> Ranking[RankingRow]:
    """One row per evaluated submission of the query's suite version, filtered, sorted and
    (when `query.page` is set) paginated, with how many rows the status filters hid."""
    placed, entries = _select(query)
    contents = _contents(placed, entries, _ENTRY_FIELDS)
    rows = [
        _row(p, contents[p.entry_id], placed.view) for p in placed.rows if p.entry_id in contents
    ]
    attach_flags(rows)
    return _with_rows(placed, rows)


def ranking_for_api(query: RankingQuery) -> Ranking[ApiRow]:
    """The same rows as `ranking`, as stored JSON plus live fields (see serializers)."""
    if query.page is None:
        result = _select_all(query)
    else:
        placed, entries = _select(query)
        contents = dict(_contents(placed, entries, ("id", "row_json")).values())
        rows = [
            ApiRow(p.rank, p.repository_id, p.lineage_status, p.status_path, contents[p.entry_id])
            for p in placed.rows
            if p.entry_id in contents
        ]
        result = _with_rows(placed, rows)
    flags = _flags({row.repository_id for row in result.rows})
    if flags:
        for row in result.rows:
            row.flags = flags.get(row.repository_id, [])
    return result


def _select_all(query: RankingQuery) -> Ranking[ApiRow]:
    """`_select` for every row at once (the full leaderboard): the lineage filter and the
    rank are applied here rather than in SQL, so the database only walks the ordering index
    (reading each row's stored JSON) and the few repositories that are not clean (by the
    status index); a join and a window over every row cost more than the rows themselves."""
    view = suite_view(query.suite, query.version or "")
    if view is None:
        raise RankingQueryError(
            [{"code": "unknown_version", "field": "version", "message": str(query.version)}]
        )
    key = "normalized_key" if query.normalized else "average_key"
    # Only the non-clean repositories that have a row here: in a large catalog most non-clean
    # nodes are never ranked, and decoding their paths cost more than the ranked rows did.
    lineage = {
        repository_id: (status, path or [])
        for repository_id, status, path in Repository.objects.filter(
            kind=RepositoryKind.MODEL,
            status__in=NOT_CLEAN,
            id__in=filtered_entries(query).values("repository_id"),
        ).values_list("id", "status", "status_path")
    }
    clean: tuple[str, list[Any]] = (LineageStatus.CLEAN.value, [])
    hidden = set(query.hidden_statuses)
    ordered = (
        filtered_entries(query)
        .order_by(*_ordering(query, key))
        .values_list("repository_id", key, "row_json")
    )
    visible = []
    hidden_flagged = hidden_tainted = total = 0
    for repository_id, sort_key, row_json in ordered:
        total += 1
        status, path = lineage.get(repository_id, clean)
        if status in hidden:
            hidden_flagged += status == LineageStatus.FLAGGED
            hidden_tainted += status == LineageStatus.TAINTED
            continue
        visible.append((repository_id, sort_key, status, path, row_json))
    # Competition ranking ("1, 2, 2, 4") by the average among the shown rows, as SQL RANK().
    rank_of: dict[float, int] = {}
    for position, sort_key in enumerate(sorted((v[1] for v in visible), reverse=True), 1):
        rank_of.setdefault(sort_key, position)
    rows = [
        ApiRow(rank_of[sort_key], repository_id, status, path, row_json)
        for repository_id, sort_key, status, path, row_json in visible
    ]
    return Ranking(
        query=query,
        view=view,
        rows=rows,
        count=total - hidden_flagged - hidden_tainted,
        hidden_flagged=hidden_flagged,
        hidden_tainted=hidden_tainted,
        page=None,
        pages=1,
    )


def _with_rows(placed: Ranking[Placed], rows: list[RowT]) -> Ranking[RowT]:
    return Ranking(
        query=placed.query,
        view=placed.view,
        rows=rows,
        count=placed.count,
        hidden_flagged=placed.hidden_flagged,
        hidden_tainted=placed.hidden_tainted,
        page=placed.page,
        pages=placed.pages,
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


def _row(placed: Placed, values: tuple[Any, ...], view: SuiteView) -> RankingRow:
    (entry_id, submission_id, repo_id, revision, precision, model_type, weight_type,
     parameter_count, license_id, family, merge_method, is_merge, is_synthetic, submitted_at,
     evaluated_at, scores, stderrs, average, average_normalized, row_json) = values  # fmt: skip
    normalized = {
        column.key: column.normalize(scores[column.key])
        for column in view.columns
        if scores.get(column.key) is not None
    }
    return RankingRow(
        rank=placed.rank,
        entry_id=entry_id,
        submission_id=submission_id,
        repository_id=placed.repository_id,
        repo_id=repo_id,
        revision=revision,
        precision=precision,
        model_type=model_type,
        weight_type=weight_type,
        parameter_count=parameter_count,
        license=license_id,
        license_family=family,
        merge_method=merge_method,
        is_merge=is_merge,
        is_synthetic=is_synthetic,
        submitted_at=submitted_at,
        evaluated_at=evaluated_at,
        scores=scores,
        stderrs=stderrs,
        average=average,
        average_normalized=average_normalized,
        lineage_status=placed.lineage_status,
        status_path=placed.status_path,
        normalized_scores=normalized,
        row_json=row_json,
    )


# --- lineage status and flags, read live from catalog and integrity ----------------------------


def attach_flags(rows: list[RankingRow]) -> None:
    """Fill each row's `flags` (reports and confirmed flags on its own repository)."""
    flags = _flags({row.repository_id for row in rows})
    for row in rows:
        row.flags = flags.get(row.repository_id, [])


def _flags(repository_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    from leaderboard.public import integrity_bridge

    return integrity_bridge.flags_by_repository(repository_ids)


# --- conditional requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class Validator:
    etag: str
    last_modified: datetime | None


def ranking_validator(query: RankingQuery, *, extra: str = "") -> Validator:
    """ETag and Last-Modified of a ranking response, from aggregates that hit indexes only:
    no row is built before a conditional request can be answered with 304."""
    from leaderboard.public import integrity_bridge

    entries = RankingEntry.objects.filter(
        suite_name=query.suite, suite_version=query.version
    ).aggregate(n=Count("*"), last=Max("updated_at"))
    statuses = Repository.objects.aggregate(last=Max("status_updated_at"))
    flags_last = integrity_bridge.last_change()
    stamps = [entries["last"], statuses["last"], flags_last]
    last = max((stamp for stamp in stamps if stamp is not None), default=None)
    fingerprint = "|".join(
        [
            ROW_SCHEMA_VERSION,
            extra,
            query.querystring(),
            str(entries["n"]),
            *(stamp.isoformat() if stamp else "-" for stamp in stamps),
        ]
    )
    return Validator(etag=hashlib.sha256(fingerprint.encode()).hexdigest()[:32], last_modified=last)


# Still imported here by evaluations.services and tests/factories.py until leaderboard/flow.py
# takes over the hand-off; this module is being split and goes away with it.
from leaderboard.public.projection import refresh_entries_for as refresh_entries_for  # noqa: E402
