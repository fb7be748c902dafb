"""The ranking query: the filters, sort and page of the ranking page, the leaderboard API and the
exports, parsed and checked against the known suites."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlencode

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leaderboard.catalog.models import LineageStatus
from leaderboard.problems import Problem, Refusal
from leaderboard.public.models import LicenseFamily
from leaderboard.public.suites import (
    current_version,
    defined_versions,
    latest_version,
    suite_names,
    suite_view,
    versions_of,
)
from leaderboard.submissions.models import ModelType, Precision

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Sizes are in billions; a bound keeps `billions * 1e9` a finite integer (no OverflowError).
MAX_BILLIONS = 1_000_000
SIZE_FIELDS = ("min_params", "max_params")

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


class RankingQuery(BaseModel):
    """The ranking's filters, sort and page, exactly as the query string spells them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field(
        default_factory=lambda: default_suite(), max_length=64, description="suite name"
    )
    version: str | None = Field(
        default=None, max_length=32, description="suite version (default: the latest)"
    )
    sort: str = Field(
        default="average",
        max_length=100,
        description="average, model, model_type, parameters, precision, license, status, "
        "submitted, or a task key",
    )
    dir: Literal["asc", "desc"] | None = Field(
        default=None, description="default: desc (asc for text columns)"
    )
    model_type: tuple[ModelType, ...] = Field(default=(), description="repeat or comma-separate")
    precision: tuple[Precision, ...] = Field(default=(), description="repeat or comma-separate")
    license: tuple[LicenseFamily, ...] = Field(
        default=(), description="license families (see docs/ui.md for the mapping)"
    )
    min_params: float | None = Field(
        default=None, ge=0, le=MAX_BILLIONS, allow_inf_nan=False, description="billions"
    )
    max_params: float | None = Field(
        default=None, ge=0, le=MAX_BILLIONS, allow_inf_nan=False, description="billions"
    )
    hide_merges: bool = False
    hide_synthetic: bool = False
    verified_only: bool = Field(
        default=False, description="only models of verified organisations (official providers)"
    )
    show_flagged: bool = Field(default=False, description="default: flagged rows are hidden")
    show_tainted: bool = Field(default=False, description="default: tainted rows are hidden")
    q: str = Field(default="", max_length=100, description="search in model names")
    normalized: bool = Field(default=False, description="rank by the normalized average")
    page: int | None = Field(default=None, ge=1, description="absent: every row")
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
    suite version is resolved. Raises a Refusal naming every bad field at once.

    `paginate=False` (the API, exports) leaves `page` unset unless given: all rows."""
    getlist = getattr(params, "getlist", None)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    known = set(RankingQuery.model_fields)
    problems.extend(unknown_parameters(params, known, what="a ranking parameter"))
    for name in params:
        if name not in known:
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
        refused = _pydantic_problems(exc)
        problems.extend(refused)
        # Check the rest too, so every problem is reported at once: the fields that parsed,
        # with defaults for the refused ones (whose own checks would then be about defaults).
        bad = {problem.field for problem in refused}
        kept = {name: value for name, value in values.items() if name not in bad}
        try:
            query = RankingQuery.model_validate(kept)
        except ValidationError:  # pragma: no cover - the refused fields were dropped
            query = None
        if query is not None and not bad & {"suite", "version"}:
            _partial, semantic = _resolve(query)
            problems.extend(p for p in semantic if p.field not in bad)
        raise Refusal(problems) from None
    query, semantic = _resolve(query)
    problems.extend(semantic)
    if problems:
        raise Refusal(problems)
    return query


def unknown_parameters(
    params: Iterable[str], known: Iterable[str], *, what: str = "a parameter of this route"
) -> list[Problem]:
    """A problem for each parameter a route does not take: refused, never silently ignored."""
    allowed = sorted(known)
    choice = f"use one of {', '.join(allowed)}" if allowed else "this route takes none"
    return [
        Problem("unknown_parameter", name, f"'{name}' is not {what}; {choice}.")
        for name in params
        if name not in allowed
    ]


def refuse_unknown_parameters(params: Iterable[str], known: Iterable[str] = ()) -> None:
    """Raise a Refusal naming every parameter a route does not take."""
    problems = unknown_parameters(params, known)
    if problems:
        raise Refusal(problems)


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for item in exc.errors():
        field_name = str(item["loc"][0]) if item["loc"] else "query"
        message = item["msg"]
        if field_name in SIZE_FIELDS:
            problems.append(
                Problem(
                    "invalid_size",
                    field_name,
                    f"{field_name} is a size in billions of parameters: give a number from 0 "
                    f"to {MAX_BILLIONS} (e.g. 7 or 0.5); got {str(item['input'])!r}.",
                )
            )
            continue
        if item["type"] == "enum":
            message = f"{message} (got {item['input']!r})"
        elif item["type"] in ("float_parsing", "int_parsing", "bool_parsing"):
            message = f"{message}: got {item['input']!r}"
        problems.append(Problem("invalid_" + item["type"], field_name, message))
    return problems


def _resolve(query: RankingQuery) -> tuple[RankingQuery, list[Problem]]:
    """Check what needs the suite: it exists, the version exists, the sort key is a column.
    A suite and version the evaluator ships resolve without touching the database."""
    problems: list[Problem] = []
    version = query.version or current_version(query.suite) or latest_version(query.suite)
    if version is None:
        known = ", ".join(suite_names()) or "none yet"
        problems.append(
            Problem(
                "unknown_suite",
                "suite",
                f"No suite named '{query.suite}'; known suites: {known}.",
            )
        )
        return query, problems
    if version not in versions_of(query.suite):
        problems.append(
            Problem(
                "unknown_version",
                "version",
                f"Suite '{query.suite}' has no version '{version}'; "
                f"choose one of {', '.join(versions_of(query.suite))}.",
            )
        )
        return query, problems
    view = suite_view(query.suite, version)
    if view is None:  # pragma: no cover - versions_of only lists resolvable versions
        problems.append(Problem("unknown_version", "version", version))
        return query, problems
    if query.sort not in SORT_COLUMNS and query.sort not in view.task_keys:
        choices = ", ".join([*SORT_COLUMNS, *view.task_keys])
        problems.append(
            Problem(
                "unknown_sort",
                "sort",
                f"Cannot sort by '{query.sort}'; sort by one of {choices}.",
            )
        )
    if (
        query.min_params is not None
        and query.max_params is not None
        and query.min_params > query.max_params
    ):
        problems.append(
            Problem(
                "invalid_range",
                "min_params",
                f"The smallest size ({query.min_params:g}B) is above the largest "
                f"({query.max_params:g}B); swap them or clear one.",
            )
        )
    return query.model_copy(update={"version": version}), problems


def default_query() -> RankingQuery:
    """The ranking with no parameters (what the page falls back to after a refused query)."""
    try:
        return parse_ranking_query({})
    except Refusal:
        # No suite is known yet (fresh install): an empty ranking of the default suite.
        return RankingQuery(page=1)
