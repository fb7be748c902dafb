"""One serializer per public resource (suite, ranking row, leaderboard, model), feeding the JSON
API, the CSV export and the export command alike. Every score is a percentage."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from django.urls import reverse

from leaderboard.public.suites import Column, SuiteView

if TYPE_CHECKING:
    from leaderboard.public.detail import ModelDetail, RunResult, SubmissionResults
    from leaderboard.public.models import RankingEntry
    from leaderboard.public.services import ApiRow, Ranking, RankingRow


def model_url(repo_id: str) -> str:
    """`reverse("public:model", ...)` without resolving the URLconf once per row."""
    org, name = repo_id.split("/", 1)
    return _MODEL_URL().format(org=quote(org, safe=_SAFE), name=quote(name, safe=_SAFE))


_SAFE = "-._~!$&'()*+,;=:@"


@functools.cache
def _MODEL_URL() -> str:
    placeholder = reverse("public:model", kwargs={"org": "ORG", "name": "NAME"})
    return placeholder.replace("ORG", "{org}", 1).replace("NAME", "{name}", 1)


def column_to_dict(column: Column) -> dict[str, Any]:
    return {
        "key": column.key,
        "lm_eval_task": column.lm_eval_task,
        "metric": column.metric,
        "num_fewshot": column.num_fewshot,
        "random_baseline": column.random_baseline,
        "description": column.description,
    }


def suite_to_dict(view: SuiteView) -> dict[str, Any]:
    return {
        "name": view.name,
        "version": view.version,
        "description": view.description,
        "defined": view.defined,
        "tasks": [column_to_dict(column) for column in view.columns],
    }


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, DECIMALS)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DECIMALS)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# Scores are percentages to 4 decimals: far below any task's standard error, and it keeps the
# full leaderboard small.
DECIMALS = 4


def static_row_dict(entry: RankingEntry, view: SuiteView) -> dict[str, Any]:
    """The part of a leaderboard row that changes only when its run does: stored with the
    entry (as `row_json`) when the read table is refreshed."""
    scores = entry.scores
    return {
        "model": entry.repo_id,
        "url": model_url(entry.repo_id),
        "submission_id": entry.submission_id,
        "revision": entry.revision,
        "precision": entry.precision,
        "model_type": entry.model_type,
        "weight_type": entry.weight_type,
        "parameters": entry.parameter_count,
        "license": entry.license,
        "license_family": entry.license_family,
        "merge_method": entry.merge_method,
        "is_merge": entry.is_merge,
        "is_synthetic": entry.is_synthetic,
        "submitted_at": _iso(entry.submitted_at),
        "evaluated_at": _iso(entry.evaluated_at),
        "scores": {key: _pct(scores.get(key)) for key in view.task_keys},
        "normalized_scores": {
            column.key: _round(column.normalize(scores[column.key]))
            if scores.get(column.key) is not None
            else None
            for column in view.columns
        },
        "stderr": {key: _pct(entry.stderrs.get(key)) for key in view.task_keys},
        "average": _round(entry.average),
        "average_normalized": _round(entry.average_normalized),
    }


def live_row_dict(status: str, taint_path: str, flags: list[dict[str, Any]]) -> dict[str, Any]:
    """The part of a row read at request time: lineage status and flags change without runs."""
    return {"lineage_status": status, "taint_path": taint_path or None, "flags": flags}


def row_to_dict(row: RankingRow) -> dict[str, Any]:
    return (
        {"rank": row.rank}
        | json.loads(row.row_json)
        | live_row_dict(row.lineage_status, row.taint_path, row.flags)
    )


def api_row_json(row: ApiRow, _clean: dict[str, str] = {}) -> str:  # noqa: B006 - a memo
    """The JSON text of `row_to_dict` for a row, spliced from the stored part and the live
    part (the same keys in the same order) without parsing the stored part."""
    if not row.flags and not row.status_path:
        live = _clean.get(row.lineage_status)
        if live is None:
            live = _clean[row.lineage_status] = to_json(live_row_dict(row.lineage_status, "", []))[
                1:-1
            ]
    else:
        live = to_json(live_row_dict(row.lineage_status, row.taint_path, row.flags))[1:-1]
    return f'{{"rank":{row.rank},{row.row_json[1:-1]},{live}}}'


def leaderboard_header(result: Ranking[Any]) -> dict[str, Any]:
    return {
        "suite": suite_to_dict(result.view),
        "normalized": result.query.normalized,
        "sort": result.query.sort,
        "dir": result.query.direction,
        "count": result.count,
        "hidden": result.hidden,
        "hidden_flagged": result.hidden_flagged,
        "hidden_tainted": result.hidden_tainted,
        "page": result.page,
        "pages": result.pages,
        "per_page": result.query.per_page if result.page is not None else None,
    }


def leaderboard_to_dict(result: Ranking[RankingRow]) -> dict[str, Any]:
    return leaderboard_header(result) | {"rows": [row_to_dict(row) for row in result.rows]}


def leaderboard_json(result: Ranking[ApiRow]) -> str:
    """The API body: `leaderboard_to_dict` as JSON text, built from the stored row JSON."""
    header = to_json(leaderboard_header(result))
    rows = ",".join(api_row_json(row) for row in result.rows)
    return f'{header[:-1]},"rows":[{rows}]}}'


def to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- CSV: the same rows, flattened; `rows_from_csv` reads them back -----------------------------

SCALAR_FIELDS = (
    "rank",
    "model",
    "url",
    "submission_id",
    "revision",
    "precision",
    "model_type",
    "weight_type",
    "parameters",
    "license",
    "license_family",
    "merge_method",
    "is_merge",
    "is_synthetic",
    "submitted_at",
    "evaluated_at",
    "average",
    "average_normalized",
    "lineage_status",
    "taint_path",
)
PER_TASK = (("scores", "score"), ("normalized_scores", "normalized"), ("stderr", "stderr"))
_INTS = {"rank", "submission_id", "parameters"}
_FLOATS = {"average", "average_normalized"}
_BOOLS = {"is_merge", "is_synthetic"}
_NULLABLE = {"evaluated_at", "taint_path"}


def csv_header(task_keys: Iterable[str]) -> list[str]:
    keys = list(task_keys)
    per_task = [f"{prefix}:{key}" for _, prefix in PER_TASK for key in keys]
    return [*SCALAR_FIELDS, *per_task, "flags"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def rows_to_csv(rows: Iterable[dict[str, Any]], task_keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header(task_keys))
    for row in rows:
        cells = [_cell(row[name]) for name in SCALAR_FIELDS]
        for source, _prefix in PER_TASK:
            cells.extend(_cell(row[source][key]) for key in task_keys)
        cells.append(to_json(row["flags"]))
        writer.writerow(cells)
    return out.getvalue()


def rows_from_csv(text: str) -> list[dict[str, Any]]:
    """The row dicts a CSV export was written from (the inverse of `rows_to_csv`)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    task_keys = [name.split(":", 1)[1] for name in header if name.startswith("score:")]
    rows = []
    for record in reader:
        row: dict[str, Any] = {}
        for name in SCALAR_FIELDS:
            raw = record[name]
            if name in _INTS:
                row[name] = int(raw)
            elif name in _FLOATS:
                row[name] = float(raw) if raw != "" else None
            elif name in _BOOLS:
                row[name] = raw == "true"
            elif name in _NULLABLE:
                row[name] = raw or None
            else:
                row[name] = raw
        for source, prefix in PER_TASK:
            row[source] = {
                key: float(record[f"{prefix}:{key}"]) if record[f"{prefix}:{key}"] else None
                for key in task_keys
            }
        row["flags"] = json.loads(record["flags"])
        rows.append(row)
    return rows


# --- model resource ----------------------------------------------------------------------------


def evaluation_to_dict(result: RunResult) -> dict[str, Any]:
    run = result.run
    return {
        "run_id": run.pk,
        "suite": run.suite_name,
        "version": run.suite_version,
        "finished_at": _iso(run.finished_at),
        "average": _round(result.average),
        "average_normalized": _round(result.average_normalized),
        "reproduce": result.reproduce_command,
        "configuration": dict(result.configuration),
        "tasks": [
            {
                "key": task.key,
                "metric": task.metric,
                "num_fewshot": task.num_fewshot,
                "n_samples": task.n_samples,
                "random_baseline": _round(task.random_baseline),
                "score": _round(task.value),
                "stderr": _round(task.stderr),
                "normalized": _round(task.normalized),
            }
            for task in result.tasks
        ],
    }


def submission_to_dict(item: SubmissionResults) -> dict[str, Any]:
    submission = item.submission
    return {
        "id": submission.pk,
        "url": reverse("submissions:detail", kwargs={"pk": submission.pk}),
        "revision": submission.revision,
        "precision": submission.precision,
        "model_type": submission.model_type,
        "weight_type": submission.weight_type,
        "parameters": submission.parameter_count,
        "license": submission.license,
        "merge_method": submission.merge_method,
        "submitted_at": _iso(submission.created_at),
        "state": submission.state,
        "is_synthetic": submission.is_synthetic,
        "evaluations": [evaluation_to_dict(result) for result in item.results],
    }


def model_to_dict(model: ModelDetail, reports: list[dict[str, Any]]) -> dict[str, Any]:
    repository = model.repository
    return {
        "model": repository.repo_id,
        "url": model_url(repository.repo_id),
        "license": repository.license,
        "is_synthetic": repository.is_synthetic,
        "lineage_status": repository.status,
        "taint_path": model.taint_path or None,
        "status_path": list(repository.status_path or []),
        "parents": [
            {"repo_id": parent.repo_id, "kind": parent.kind, "relation": relation}
            for parent, relation in model.parents
        ],
        "children": model.children,
        "reports": [
            {key: value for key, value in report.items() if key != "target"} for report in reports
        ],
        "submissions": [submission_to_dict(item) for item in model.submissions],
    }
