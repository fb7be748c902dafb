"""Exports of a ranking: the API's JSON body, or the same rows flattened to CSV (columns as
`row.py` declares them); `rows_from_csv` reads a CSV export back into the API's rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from leaderboard.public.query import RankingQuery
from leaderboard.public.row import csv_cells, csv_header, csv_parsers
from leaderboard.public.selection import Ranking, ranking_for_api
from leaderboard.public.serializers import api_row_json, leaderboard_json, to_json


def export(query: RankingQuery, fmt: str) -> tuple[str, Ranking[Any]]:
    """Every row the query selects as `fmt` ("json": the API body, "csv"), and the ranking."""
    result = ranking_for_api(query)
    if fmt == "json":
        return leaderboard_json(result) + "\n", result
    rows = [json.loads(api_row_json(row)) for row in result.rows]
    return rows_to_csv(rows, result.view.task_keys), result


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    if isinstance(value, list | dict):
        return to_json(value)
    return str(value)


def rows_to_csv(rows: Iterable[dict[str, Any]], task_keys: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header(task_keys))
    for row in rows:
        writer.writerow([_cell(value) for value in csv_cells(row, task_keys)])
    return out.getvalue()


def rows_from_csv(text: str) -> list[dict[str, Any]]:
    """The row dicts a CSV export was written from (the inverse of `rows_to_csv`)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    prefixes = {name.split(":", 1)[0] for name in header if ":" in name}
    parsers = csv_parsers()
    rows = []
    for record in reader:
        row: dict[str, Any] = {}
        for name, (parse, prefix) in parsers.items():
            if prefix is None:
                row[name] = parse(record[name])
            elif prefix in prefixes:
                row[name] = {
                    column.split(":", 1)[1]: parse(record[column])
                    for column in header
                    if column.startswith(prefix + ":")
                }
        rows.append(row)
    return rows
