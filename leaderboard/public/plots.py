"""Plotly figures of the public pages, built server-side from ranking rows and run results and
handed to the browser as JSON (rendered there by the locally served plotly.min.js).

Figures are plain dicts in Plotly's JSON shape rather than `plotly.graph_objects`: building and
validating graph objects cost ~50 ms a figure (a deep copy of the template each time), more
than the rest of a model page. tests/test_public_plots.py checks every figure against Plotly's
schema. What 10,000 rows would make large is summarised here: the size scatter draws at most
SCATTER_POINTS ordinary rows (one per cell of a grid, every outlier kept) and the box plots
send their quartiles, not every score."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import plotly.io as pio
from django.utils.safestring import SafeString, mark_safe
from plotly.colors import get_colorscale

from leaderboard.public.compare import Comparison
from leaderboard.public.detail import RunResult
from leaderboard.public.selection import PlotRow
from leaderboard.public.suites import SuiteView

Figure = dict[str, Any]

# Upper bounds (parameters) of the size buckets the z-scores are computed within.
SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (1e9, "< 1B"),
    (3e9, "1-3B"),
    (7e9, "3-7B"),
    (14e9, "7-14B"),
    (35e9, "14-35B"),
    (75e9, "35-75B"),
    (math.inf, "≥ 75B"),
)
# Fewer models than this in a bucket: no z-score (a spread of two points says nothing).
MIN_BUCKET = 5
MERGE_METHODS = {
    "slerp": "SLERP",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "dare-ties": "DARE-TIES",
    "linear": "linear",
}
NO_Z_COLOUR = "#5b6475"
MARKER_EDGE = "#1d2330"
# Plotly.py's RdBu spelled out, as graph objects send it (plotly.js has its own, other RdBu).
RED_BLUE = [[round(stop, 2), colour] for stop, colour in get_colorscale("RdBu")]
# The size scatter draws at most about this many ordinary rows (a grid of cells over log size
# and score, one row per cell): 10,000 markers say no more than 1,500 and weigh 2 MB.
SCATTER_POINTS = 1500
_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
    "font": {"family": "system-ui, sans-serif", "size": 12},
}


@cache
def _template() -> dict[str, Any]:
    """Plotly's plotly_white template as JSON, read once per process."""
    return pio.templates["plotly_white"].to_plotly_json()


def _figure(data: list[dict[str, Any]], title: str, **layout: Any) -> Figure:
    return {
        "data": data,
        "layout": {"template": _template(), **_LAYOUT, "title": {"text": title}, **layout},
    }


def figure_json(figure: Figure) -> SafeString:
    """JSON for a <script type="application/json"> block, escaped like Django's json_script."""
    text = pio.to_json(figure, validate=False, pretty=False)
    escaped = text.replace("&", "\\u0026").replace("<", "\\u003C").replace(">", "\\u003E")
    return mark_safe(escaped)


def size_bucket(parameters: int) -> str:
    return next(label for bound, label in SIZE_BUCKETS if parameters < bound)


@dataclass(frozen=True)
class Scored:
    row: PlotRow
    score: float
    bucket: str
    z: float | None


def zscores(rows: Sequence[PlotRow], normalized: bool) -> list[Scored]:
    """Each model's average and its z-score within its size bucket."""
    by_bucket: dict[str, list[tuple[PlotRow, float]]] = defaultdict(list)
    for row in rows:
        score = row.shown_average(normalized)
        if score is not None:
            by_bucket[size_bucket(row.parameters)].append((row, score))
    result = []
    for bucket, members in by_bucket.items():
        values = [score for _row, score in members]
        mean = math.fsum(values) / len(values)
        # fsum rather than statistics.pstdev's exact fractions (40 ms over 10,000 rows).
        spread = (
            math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
            if len(values) >= MIN_BUCKET
            else 0.0
        )
        for row, score in members:
            z = (score - mean) / spread if spread > 0 else None
            result.append(Scored(row, score, bucket, z))
    return result


def score_vs_size(scored: Sequence[Scored], normalized: bool, threshold: float) -> Figure:
    """Average against parameter count (log), coloured by z-score within the size bucket;
    models at or beyond the threshold are drawn as outliers (the community's "suspicious jump"
    check). `scored` is `zscores(rows, normalized)`. Past SCATTER_POINTS ordinary rows, one per
    grid cell is drawn (the one furthest from its bucket's mean) and the legend says so."""
    regular = [s for s in scored if s.z is not None and abs(s.z) < threshold]
    # No z (a bucket under MIN_BUCKET rows): drawn in grey, not as z = 0 (white on white).
    unscored = [s for s in scored if s.z is None]
    outliers = [s for s in scored if s.z is not None and abs(s.z) >= threshold]
    drawn = thin(regular, SCATTER_POINTS)
    name = "rows"
    if len(drawn) < len(regular):
        name = f"rows ({len(drawn):,} of {len(regular):,} drawn, one per grid cell)"
    edge = {"width": 0.5, "color": MARKER_EDGE}
    data = [
        _points(
            drawn,
            name,
            {
                "size": 8,
                "color": [round(s.z or 0.0, 2) for s in drawn],
                "colorscale": RED_BLUE,
                "reversescale": True,
                "cmin": -threshold,
                "cmax": threshold,
                "colorbar": {"title": {"text": "z in bucket"}},
                "line": edge,
            },
            "z %{marker.color:+.2f}",
        ),
        _points(
            unscored,
            f"no z (size bucket under {MIN_BUCKET} rows)",
            {"size": 8, "color": NO_Z_COLOUR, "line": edge},
            f"no z (size bucket under {MIN_BUCKET} rows)",
        ),
        _points(
            outliers,
            f"outliers (|z| ≥ {threshold:g})",
            {
                "size": 12,
                "symbol": "diamond",
                "color": "rgba(0,0,0,0)",
                "line": {"width": 2, "color": "#b3261e"},
            },
            "",
        ),
    ]
    # Outliers are few and named beside their marker; their hover adds z and bucket.
    data[2] |= {
        "mode": "markers+text",
        "text": [s.row.name for s in outliers],
        "hovertext": [_hover(s) for s in outliers],
        "hoverinfo": "text",
        "textposition": "top center",
    }
    del data[2]["hovertemplate"]
    figure = _figure(
        data,
        "Average score against size (z-score within size bucket)",
        xaxis={"title": {"text": "parameters"}, "type": "log"},
        yaxis={"title": {"text": _score_label(normalized)}},
        legend={"orientation": "h", "y": -0.2},
    )
    if not scored:
        _not_enough(figure, "No row with an average matches these filters.")
    return figure


def _points(
    scored: Sequence[Scored], name: str, marker: dict[str, Any], detail: str
) -> dict[str, Any]:
    # The hover is a template over the model name (customdata, also what a click opens) rather
    # than a text per point: a third of the bytes.
    line = f"<br>{detail}" if detail else ""
    return {
        "type": "scatter",
        "name": name,
        "mode": "markers",
        "x": [s.row.parameters for s in scored],
        "y": [round(s.score, 2) for s in scored],
        "customdata": [s.row.model for s in scored],
        "hovertemplate": f"%{{customdata}}<br>%{{x:,.0f}} parameters · %{{y:.2f}}{line}"
        "<extra></extra>",
        "marker": marker,
    }


def thin(scored: Sequence[Scored], limit: int) -> list[Scored]:
    """At most about `limit` of `scored`, spread like all of them: a grid of cells over log size
    and score, and in each occupied cell the row with the largest |z| (the interesting one)."""
    if len(scored) <= limit:
        return list(scored)
    side = max(1, math.isqrt(limit))
    logs = [math.log10(max(s.row.parameters, 1)) for s in scored]
    low_x, high_x = min(logs), max(logs)
    low_y, high_y = min(s.score for s in scored), max(s.score for s in scored)
    width_x = (high_x - low_x) / side or 1.0
    width_y = (high_y - low_y) / side or 1.0
    cells: dict[tuple[int, int], Scored] = {}
    for s, log in zip(scored, logs, strict=True):
        # The largest value belongs to the last cell, not to one past it.
        cell = (
            min(side - 1, int((log - low_x) / width_x)),
            min(side - 1, int((s.score - low_y) / width_y)),
        )
        kept = cells.get(cell)
        if kept is None or abs(s.z or 0.0) > abs(kept.z or 0.0):
            cells[cell] = s
    return sorted(cells.values(), key=lambda s: (s.row.parameters, s.score))


def _not_enough(figure: Figure, why: str) -> None:
    """An empty chart says so, in its middle, instead of showing bare axes."""
    layout = figure["layout"]
    layout["annotations"] = [
        {
            "text": f"Not enough data to draw this chart. {why}",
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 0.5,
            "showarrow": False,
            "font": {"size": 14, "color": "#5b6475"},
        }
    ]
    for axis in ("xaxis", "yaxis"):
        layout[axis] = {**layout.get(axis, {}), "visible": False}


def _hover(s: Scored) -> str:
    z = f"{s.z:+.2f}" if s.z is not None else "n/a"
    size = s.row.parameters / 1e9
    return f"{s.row.model}<br>{size:.2f}B · {s.score:.2f}<br>z {z} ({s.bucket})"


def _score_label(normalized: bool) -> str:
    return "average (normalized to chance)" if normalized else "average (%)"


def task_correlation(rows: Sequence[PlotRow], view: SuiteView) -> Figure:
    """Pearson correlation of task scores across the shown models."""
    keys = view.task_keys
    # One array, NaN where a row has no score: 15 pairs of tasks over 10,000 rows in pure
    # Python took 0.4 s of every rebuild of /plots/.
    table = np.array(
        [[row.scores.get(key, math.nan) for key in keys] for row in rows], dtype=float
    ).reshape(len(rows), len(keys))
    scored = ~np.isnan(table)
    matrix: list[list[float | None]] = [[None] * len(keys) for _ in keys]
    for i in range(len(keys)):
        for j in range(i, len(keys)):
            both = scored[:, i] & scored[:, j]
            matrix[i][j] = matrix[j][i] = _pearson(table[both, i], table[both, j])
    heatmap = {
        "type": "heatmap",
        "z": matrix,
        "x": keys,
        "y": keys,
        "zmin": -1,
        "zmax": 1,
        "colorscale": RED_BLUE,
        "reversescale": True,
        "text": [[f"{v:.2f}" if v is not None else "" for v in line] for line in matrix],
        "texttemplate": "%{text}",
        "hovertemplate": "%{y} vs %{x}: %{z:.3f}<extra></extra>",
    }
    figure = _figure([heatmap], "Correlation between tasks across rows")
    if all(value is None for line in matrix for value in line):
        _not_enough(figure, "A correlation needs at least 3 rows scored on both tasks.")
    return figure


def _pearson(xs: np.ndarray, ys: np.ndarray) -> float | None:
    if len(xs) < 3:
        return None
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx <= 0 or syy <= 0:  # a constant column
        return None
    return round(max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))), 4)


def distribution_by_type(rows: Sequence[PlotRow], normalized: bool) -> Figure:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        score = row.shown_average(normalized)
        if score is not None:
            groups[row.model_type].append(score)
    return _boxes(groups, "Score distribution by model type", normalized, "No row has an average.")


def merge_method_label(method: str) -> str | None:
    return MERGE_METHODS.get(method.strip().lower()) if method else None


def distribution_by_merge_method(rows: Sequence[PlotRow], normalized: bool) -> Figure:
    """Merges whose mergekit config names SLERP, TIES, DARE-TIES or linear."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        label = merge_method_label(row.merge_method)
        score = row.shown_average(normalized)
        if label is not None and score is not None:
            groups[label].append(score)
    ordered = {label: groups[label] for label in dict.fromkeys(MERGE_METHODS.values())}
    return _boxes(
        ordered,
        "Score distribution of merges by merge method",
        normalized,
        "No merge with a known merge method (SLERP, TIES, DARE-TIES, linear) is shown.",
    )


def _boxes(groups: dict[str, list[float]], title: str, normalized: bool, empty: str) -> Figure:
    data = [_box(f"{label} ({len(values)} row{'s' if len(values) != 1 else ''})", values)
            for label, values in groups.items()]  # fmt: skip
    figure = _figure(
        data, title, yaxis={"title": {"text": _score_label(normalized)}}, showlegend=False
    )
    if not any(groups.values()):
        _not_enough(figure, empty)
    return figure


def _box(name: str, values: list[float]) -> dict[str, Any]:
    """A box from its statistics (what Plotly would compute from every value: linear quartiles,
    whiskers at the furthest values within 1.5 IQR, the mean), not from the values."""
    if not values:
        return {"type": "box", "name": name, "y": []}
    ordered = sorted(values)
    if len(ordered) > 1:
        q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = median = q3 = ordered[0]
    reach = 1.5 * (q3 - q1)
    lower = next(v for v in ordered if v >= q1 - reach)
    upper = next(v for v in reversed(ordered) if v <= q3 + reach)
    return {
        "type": "box",
        "name": name,
        "x": [name],
        "q1": [round(q1, 3)],
        "median": [round(median, 3)],
        "q3": [round(q3, 3)],
        "lowerfence": [round(lower, 3)],
        "upperfence": [round(upper, 3)],
        "mean": [round(statistics.fmean(ordered), 3)],
        "boxmean": True,
    }


def best_over_time(rows: Sequence[PlotRow], normalized: bool) -> Figure:
    """The best average submitted so far, as a step line, with the models that set it."""
    dated = sorted(
        (row for row in rows if row.shown_average(normalized) is not None),
        key=lambda row: (row.submitted_at, row.entry_id),
    )
    xs: list[str] = []
    ys: list[float] = []
    names: list[str] = []
    best = -math.inf
    for row in dated:
        score = row.shown_average(normalized) or 0.0
        if score > best:
            best = score
            xs.append(row.submitted_at.isoformat())
            ys.append(round(score, 3))
            names.append(row.model)
    if dated and xs:
        # Carry the record to the latest submission so the line reaches today.
        xs.append(dated[-1].submitted_at.isoformat())
        ys.append(ys[-1])
        names.append(names[-1])
    line = {
        "type": "scatter",
        "x": xs,
        "y": ys,
        "mode": "lines+markers",
        "line": {"shape": "hv"},
        "text": names,
        "hovertemplate": "%{text}<br>%{x}<br>%{y:.2f}<extra></extra>",
        "name": "best so far",
    }
    figure = _figure(
        [line],
        "Best average over time",
        xaxis=_date_axis([row.submitted_at for row in dated]),
        yaxis={"title": {"text": _score_label(normalized)}},
    )
    if not dated:
        _not_enough(figure, "No row with an average matches these filters.")
    return figure


def _date_axis(dates: Sequence[datetime]) -> dict[str, Any]:
    """A submission-date axis ticking in days or months, never in milliseconds (one point, or
    points a few seconds apart, would otherwise be ticked by Plotly at sub-second steps)."""
    axis: dict[str, Any] = {"title": {"text": "submitted"}, "type": "date"}
    if not dates:
        return axis
    first, last = min(dates), max(dates)
    days = (last - first).days + 2
    if days <= 120:
        step = max(1, math.ceil(days / 8))
        axis |= {"tickformat": "%Y-%m-%d", "dtick": step * 86_400_000}
    else:
        axis |= {"tickformat": "%b %Y", "dtick": f"M{max(1, math.ceil(days / 30 / 8))}"}
    # A day either side, so a single point sits inside whole days.
    axis["range"] = [
        (first - timedelta(days=1)).date().isoformat(),
        (last + timedelta(days=1)).date().isoformat(),
    ]
    return axis


def task_scores(result: RunResult, normalized: bool) -> Figure:
    """One model's per-task scores with ±stderr bars, and chance marked on raw scores."""
    keys = [task.key for task in result.tasks]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "x": keys,
            "y": [task.shown(normalized)[0] for task in result.tasks],
            "error_y": {
                "type": "data",
                "array": [task.shown(normalized)[1] or 0.0 for task in result.tasks],
                "visible": True,
            },
            "name": "score",
            "hovertemplate": "%{x}: %{y:.2f} ± %{error_y.array:.2f}<extra></extra>",
        }
    ]
    if not normalized:
        data.append(
            {
                "type": "scatter",
                "x": keys,
                "y": [task.random_baseline for task in result.tasks],
                "mode": "markers",
                "marker": {"symbol": "line-ew-open", "size": 28, "color": "#b3261e"},
                "name": "chance",
                "hovertemplate": "%{x}: chance %{y:.1f}<extra></extra>",
            }
        )
    return _figure(
        data,
        "Per-task scores (± 1 stderr)",
        yaxis={"title": {"text": "normalized score" if normalized else "score (%)"}},
        legend={"orientation": "h", "y": -0.25},
    )


def comparison_bars(comparison: Comparison, normalized: bool) -> Figure:
    data = [
        {
            "type": "bar",
            "name": model.repository.repo_id,
            "x": [task.key for task in model.result.tasks],
            "y": [task.shown(normalized)[0] for task in model.result.tasks],
            "error_y": {
                "type": "data",
                "array": [task.shown(normalized)[1] or 0.0 for task in model.result.tasks],
                "visible": True,
            },
        }
        for model in comparison.models
    ]
    return _figure(
        data,
        "Scores per task (± 1 stderr)",
        barmode="group",
        yaxis={"title": {"text": "normalized score" if normalized else "score (%)"}},
        legend={"orientation": "h", "y": -0.25},
    )
