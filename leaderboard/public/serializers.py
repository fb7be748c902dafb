"""One serializer per public resource (suite, leaderboard, model), feeding the JSON API, the
exports and the export command alike. Rows are serialized as `row.py` declares them; a
submission and its runs as their own apps serialize them. Every score is a percentage."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from leaderboard.evaluations.serializers import submission_detail_to_dict
from leaderboard.public.row import (
    RankingRow,
    live_row_dict,
    model_url,
    row_to_dict,
    stored_row_dict,
)
from leaderboard.public.suites import Column, SuiteView

if TYPE_CHECKING:
    from leaderboard.public.detail import ModelDetail
    from leaderboard.public.selection import Placed, Ranking


def to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


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


# --- leaderboard -------------------------------------------------------------------------------


def entry_row_json(row: RankingRow, view: SuiteView) -> str:
    """What the read table stores as a row's `row_json` (see models.RankingEntry)."""
    return to_json(stored_row_dict(row, view))


def api_row_json(row: Placed, _clean: dict[str, str] = {}) -> str:  # noqa: B006 - a memo
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


def leaderboard_json(result: Ranking[Placed]) -> str:
    """The API body: `leaderboard_to_dict` as JSON text, built from the stored row JSON."""
    header = to_json(leaderboard_header(result))
    rows = ",".join(api_row_json(row) for row in result.rows)
    return f'{header[:-1]},"rows":[{rows}]}}'


# --- model resource ----------------------------------------------------------------------------


def model_to_dict(model: ModelDetail) -> dict[str, Any]:
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
            {key: value for key, value in report.items() if key != "target"}
            for report in model.reports
        ],
        "submissions": [submission_detail_to_dict(item.submission) for item in model.submissions],
    }
