"""The ranking row, declared once. Each public field of `RankingRow` carries its meaning, the
read-table column it comes from, how the API writes it and its CSV column(s); the stored row
JSON, the API's row schema, the CSV columns and the pages' rows all derive from it."""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from django.urls import reverse
from ninja import Schema
from pydantic import Field as SchemaField
from pydantic import create_model

from leaderboard.integrity.status import path_text
from leaderboard.public.suites import SuiteView

# Bumped whenever the shape of a serialized row changes: it is part of every ETag.
ROW_SCHEMA_VERSION = "2"
# Scores are percentages to 4 decimals: far below any task's standard error, and it keeps the
# full leaderboard small.
DECIMALS = 4

# How the API writes a field's value.
Encoding = Literal[
    "plain",  # as it is
    "iso",  # a datetime as ISO 8601 (null stays null)
    "round",  # a float rounded to DECIMALS
    "percent_by_task",  # {task: 100 x value} over the suite's tasks, null when not scored
    "round_by_task",  # {task: rounded value} over the suite's tasks, null when not scored
    "empty_is_null",  # "" as null
]


def declared(
    description: str,
    *,
    column: str | None = None,
    encoding: Encoding = "plain",
    live: bool = False,
    per_task: str | None = None,
    schema: Any = None,
) -> dict[str, Any]:
    """A public row field's declaration (its dataclass field's metadata). `column`: the
    read-table column it is read from (None: computed from other fields, or live). `live`: read
    at request time, not stored with the row (lineage status and flags change without runs).
    `per_task`: the CSV column prefix of a {task: value} field. `schema`: the API type when the
    JSON type is not the Python one."""
    return {
        "description": description,
        "column": column,
        "encoding": encoding,
        "live": live,
        "per_task": per_task,
        "schema": schema,
    }


def internal(column: str | None = None) -> dict[str, Any]:
    """A field the pages need that is not part of the public row."""
    return {"internal": True, "column": column}


class RowFlagOut(Schema):
    report: int
    kind: str
    status: str
    created_at: datetime
    confirmed_at: datetime | None


_BY_TASK = dict[str, float | None]


@dataclass(slots=True)
class RankingRow:
    """One ranked submission on one suite version. Values are as stored (scores are fractions
    0..1); the API encodes each field as its declaration says."""

    rank: int = field(
        metadata=declared(
            "Competition rank ('1, 2, 2, 4') by the average among the rows the filters show",
            live=True,
        )
    )
    model: str = field(metadata=declared("The model repository, org/name", column="repo_id"))
    url: str = field(metadata=declared("The model's page"))
    submission_id: int = field(
        metadata=declared("The submission evaluated", column="submission_id")
    )
    revision: str = field(metadata=declared("The pinned commit sha", column="revision"))
    precision: str = field(metadata=declared("float16, bfloat16 or float32", column="precision"))
    model_type: str = field(
        metadata=declared("pretrained, fine-tuned, chat, merge, ...", column="model_type")
    )
    weight_type: str = field(metadata=declared("original, adapter or delta", column="weight_type"))
    parameters: int = field(metadata=declared("Parameter count", column="parameter_count"))
    license: str = field(metadata=declared("The license the model card declares", column="license"))
    license_family: str = field(
        metadata=declared("permissive, restrictive or unknown", column="license_family")
    )
    merge_method: str = field(
        metadata=declared("The mergekit method, for merges", column="merge_method")
    )
    is_merge: bool = field(metadata=declared("A merge of other models", column="is_merge"))
    is_synthetic: bool = field(metadata=declared("Made by seed_synthetic", column="is_synthetic"))
    submitted_at: datetime = field(
        metadata=declared("When it was submitted", column="submitted_at", encoding="iso")
    )
    evaluated_at: datetime | None = field(
        metadata=declared("When its run finished", column="evaluated_at", encoding="iso")
    )
    scores: dict[str, float] = field(
        metadata=declared(
            "Per task: 100 x the metric's value",
            column="scores",
            encoding="percent_by_task",
            per_task="score",
            schema=_BY_TASK,
        )
    )
    normalized_scores: dict[str, float] = field(
        metadata=declared(
            "Per task: 100 x (value - chance) / (1 - chance)",
            encoding="round_by_task",
            per_task="normalized",
            schema=_BY_TASK,
        )
    )
    stderr: dict[str, float | None] = field(
        metadata=declared(
            "Per task: 100 x the standard error",
            column="stderrs",
            encoding="percent_by_task",
            per_task="stderr",
            schema=_BY_TASK,
        )
    )
    average: float | None = field(
        metadata=declared(
            "Mean of the task scores (null when a task has no score)",
            column="average",
            encoding="round",
        )
    )
    average_normalized: float | None = field(
        metadata=declared(
            "Mean of the normalized task scores", column="average_normalized", encoding="round"
        )
    )
    verified: bool = field(
        metadata=declared(
            "The model's organisation is verified as its official provider", column="verified"
        )
    )
    energy_wh: float | None = field(
        metadata=declared(
            "Energy of the evaluation in watt-hours (null when its worker reported none)",
            column="energy_wh",
            encoding="round",
        )
    )
    co2_grams: float | None = field(
        metadata=declared(
            "Grams of CO2e of that energy at this site's TRELLIS_CARBON_INTENSITY",
            column="co2_grams",
            encoding="round",
        )
    )
    energy_method: str = field(
        metadata=declared(
            "nvml, rapl or estimate: how the energy was obtained (docs/evaluation.md)",
            column="energy_method",
            encoding="empty_is_null",
            schema=str | None,
        )
    )
    lineage_status: str = field(
        metadata=declared("clean, under-review, incomplete, tainted or flagged", live=True)
    )
    taint_path: str = field(
        metadata=declared(
            "The path that explains a status other than clean (null when clean)",
            live=True,
            encoding="empty_is_null",
            schema=str | None,
        )
    )
    flags: list[dict[str, Any]] = field(
        default_factory=list,
        metadata=declared(
            "Open reports and confirmed flags on the model itself",
            live=True,
            schema=list[RowFlagOut],
        ),
    )
    entry_id: int = field(default=0, metadata=internal("id"))
    repository_id: int = field(default=0, metadata=internal())
    status_path: list[Any] = field(default_factory=list, metadata=internal())
    row_json: str = field(default="{}", metadata=internal("row_json"))

    @property
    def org(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.model.split("/", 1)[-1]

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
            stderr = self.stderr.get(column.key)
            title = f"raw {100 * raw:.2f}" + (f" ± {100 * stderr:.2f}" if stderr else "")
            if normalized:
                title += f", normalized {self.normalized_scores[column.key]:.2f}"
            cells.append({"key": column.key, "text": f"{value:.2f}", "title": title})
        return cells


# --- what derives from the declaration --------------------------------------------------------

PUBLIC_FIELDS: tuple[Field[Any], ...] = tuple(
    f for f in fields(RankingRow) if not f.metadata.get("internal")
)
# The row's JSON is `{"rank": …, <stored fields…>, <live fields…>}`: the stored part is
# written with the read table and spliced between the live ones (serializers.api_row_json).
STORED_FIELDS = tuple(f for f in PUBLIC_FIELDS if not f.metadata["live"])
LIVE_FIELDS = tuple(f.name for f in PUBLIC_FIELDS if f.metadata["live"])
assert PUBLIC_FIELDS[0].name == "rank" and LIVE_FIELDS[1:] == tuple(
    f.name for f in PUBLIC_FIELDS[-len(LIVE_FIELDS) + 1 :]
), "rank first, the other live fields last"
# The read-table columns a page row is built from, in RankingRow's order.
ENTRY_COLUMNS: tuple[str, ...] = tuple(
    f.metadata["column"] for f in fields(RankingRow) if f.metadata.get("column")
)
_COLUMN_FIELDS = tuple(f.name for f in fields(RankingRow) if f.metadata.get("column"))


def model_url(repo_id: str) -> str:
    """`reverse("public:model", ...)` without resolving the URLconf once per row."""
    org, name = repo_id.split("/", 1)
    return _MODEL_URL().format(org=quote(org, safe=_SAFE), name=quote(name, safe=_SAFE))


_SAFE = "-._~!$&'()*+,;=:@"


@functools.cache
def _MODEL_URL() -> str:
    placeholder = reverse("public:model", kwargs={"org": "ORG", "name": "NAME"})
    return placeholder.replace("ORG", "{org}", 1).replace("NAME", "{name}", 1)


def build_row(
    values: Sequence[Any],
    view: SuiteView,
    *,
    rank: int = 0,
    repository_id: int = 0,
    lineage_status: str = "",
    status_path: list[Any] | None = None,
) -> RankingRow:
    """A row from the read-table `values` (in ENTRY_COLUMNS order) and its live fields."""
    stored = dict(zip(_COLUMN_FIELDS, values, strict=True))
    scores = stored["scores"]
    path = status_path or []
    return RankingRow(
        rank=rank,
        url=model_url(stored["model"]),
        normalized_scores={
            column.key: column.normalize(scores[column.key])
            for column in view.columns
            if scores.get(column.key) is not None
        },
        lineage_status=lineage_status,
        taint_path=path_text(path) if path else "",
        repository_id=repository_id,
        status_path=path,
        **stored,
    )


def _encode(declaration: Field[Any], value: Any, view: SuiteView) -> Any:
    encoding = declaration.metadata["encoding"]
    if encoding == "iso":
        return value.isoformat() if value is not None else None
    if encoding == "round":
        return None if value is None else round(value, DECIMALS)
    if encoding == "percent_by_task":
        return {
            key: None if value.get(key) is None else round(100 * value[key], DECIMALS)
            for key in view.task_keys
        }
    if encoding == "round_by_task":
        return {
            key: None if value.get(key) is None else round(value[key], DECIMALS)
            for key in view.task_keys
        }
    if encoding == "empty_is_null":
        return value or None
    return value


def stored_row_dict(row: RankingRow, view: SuiteView) -> dict[str, Any]:
    """The part of a row's JSON that changes only when its run does (stored as `row_json`)."""
    return {f.name: _encode(f, getattr(row, f.name), view) for f in STORED_FIELDS}


def live_row_dict(status: str, taint_path: str, flags: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The part read at request time, in LIVE_FIELDS order after `rank`."""
    return {"lineage_status": status, "taint_path": taint_path or None, "flags": flags}


assert tuple(live_row_dict("", "", [])) == LIVE_FIELDS[1:]


def row_to_dict(row: RankingRow) -> dict[str, Any]:
    """The API's row: rank, the stored JSON, the live fields."""
    return (
        {"rank": row.rank}
        | json.loads(row.row_json)
        | live_row_dict(row.lineage_status, row.taint_path, row.flags)
    )


def row_schema() -> type[Schema]:
    """The OpenAPI schema of a row, field by field from the declaration."""
    hints = typing.get_type_hints(RankingRow)
    definitions: dict[str, Any] = {
        f.name: (
            f.metadata["schema"] or hints[f.name],
            SchemaField(description=f.metadata["description"]),
        )
        for f in PUBLIC_FIELDS
    }
    model: type[Schema] = create_model("LeaderboardRowOut", __base__=Schema, **definitions)
    return model


# --- CSV: scalar fields one column each, per-task fields one column per task, lists as JSON ----


def csv_header(task_keys: Sequence[str]) -> list[str]:
    scalars = [f.name for f in PUBLIC_FIELDS if _csv_kind(f) == "scalar"]
    per_task = [
        f"{f.metadata['per_task']}:{key}"
        for f in PUBLIC_FIELDS
        if f.metadata["per_task"]
        for key in task_keys
    ]
    as_json = [f.name for f in PUBLIC_FIELDS if _csv_kind(f) == "json"]
    return [*scalars, *per_task, *as_json]


def _csv_kind(declaration: Field[Any]) -> str:
    if declaration.metadata["per_task"]:
        return "per_task"
    schema = declaration.metadata["schema"]
    return "json" if typing.get_origin(schema) is list else "scalar"


def csv_cells(row: Mapping[str, Any], task_keys: Sequence[str]) -> list[Any]:
    """A JSON row's values in `csv_header` order (per-task fields expanded, lists kept)."""
    scalars = [row[f.name] for f in PUBLIC_FIELDS if _csv_kind(f) == "scalar"]
    per_task = [
        row[f.name][key] for f in PUBLIC_FIELDS if f.metadata["per_task"] for key in task_keys
    ]
    as_json = [row[f.name] for f in PUBLIC_FIELDS if _csv_kind(f) == "json"]
    return [*scalars, *per_task, *as_json]


def csv_parsers() -> dict[str, tuple[Any, str | None]]:
    """Field name → (the function reading a CSV cell back into its JSON value, the per-task
    column prefix or None)."""
    hints = typing.get_type_hints(RankingRow)
    parsers: dict[str, tuple[Any, str | None]] = {}
    for f in PUBLIC_FIELDS:
        kind = _csv_kind(f)
        if kind == "per_task":
            parsers[f.name] = (_optional(float), f.metadata["per_task"])
        elif kind == "json":
            parsers[f.name] = (json.loads, None)
        else:
            parsers[f.name] = (_scalar_parser(f.metadata["schema"] or hints[f.name]), None)
    return parsers


def _scalar_parser(annotation: Any) -> Any:
    arguments = typing.get_args(annotation)
    nullable = type(None) in arguments
    base = next((a for a in arguments if a is not type(None)), annotation)
    if base is bool:
        return lambda raw: raw == "true"
    convert = {int: int, float: float}.get(base, str)
    return _optional(convert) if nullable else convert


def _optional(convert: Any) -> Any:
    return lambda raw: convert(raw) if raw != "" else None
