"""Plotly figures of the public pages, built server-side from ranking rows and run results and
handed to the browser as JSON (rendered there by the locally served plotly.min.js)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from django.utils.safestring import SafeString, mark_safe

from leaderboard.public.compare import Comparison
from leaderboard.public.detail import RunResult
from leaderboard.public.row import RankingRow
from leaderboard.public.suites import SuiteView

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
_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
    "font": {"family": "system-ui, sans-serif", "size": 12},
}


def figure_json(figure: go.Figure | dict[str, Any]) -> SafeString:
    """JSON for a <script type="application/json"> block, escaped like Django's json_script."""
    text = pio.to_json(figure, validate=False, pretty=False)
    escaped = text.replace("&", "\\u0026").replace("<", "\\u003C").replace(">", "\\u003E")
    return mark_safe(escaped)


def size_bucket(parameters: int) -> str:
    return next(label for bound, label in SIZE_BUCKETS if parameters < bound)


@dataclass(frozen=True)
class Scored:
    row: RankingRow
    score: float
    bucket: str
    z: float | None


def zscores(rows: Sequence[RankingRow], normalized: bool) -> list[Scored]:
    """Each model's average and its z-score within its size bucket."""
    by_bucket: dict[str, list[tuple[RankingRow, float]]] = defaultdict(list)
    for row in rows:
        score = row.shown_average(normalized)
        if score is not None:
            by_bucket[size_bucket(row.parameters)].append((row, score))
    result = []
    for bucket, members in by_bucket.items():
        values = [score for _row, score in members]
        spread = statistics.pstdev(values) if len(values) >= MIN_BUCKET else 0.0
        mean = statistics.fmean(values)
        for row, score in members:
            z = (score - mean) / spread if spread > 0 else None
            result.append(Scored(row, score, bucket, z))
    return result


def score_vs_size(rows: Sequence[RankingRow], normalized: bool, threshold: float) -> go.Figure:
    """Average against parameter count (log), coloured by z-score within the size bucket;
    models at or beyond the threshold are drawn as outliers (the community's "suspicious jump"
    check)."""
    scored = zscores(rows, normalized)
    regular = [s for s in scored if s.z is not None and abs(s.z) < threshold]
    # No z (a bucket under MIN_BUCKET rows): drawn in grey, not as z = 0 (white on white).
    unscored = [s for s in scored if s.z is None]
    outliers = [s for s in scored if s.z is not None and abs(s.z) >= threshold]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            name="rows",
            mode="markers",
            x=[s.row.parameters for s in regular],
            y=[round(s.score, 3) for s in regular],
            text=[_hover(s) for s in regular],
            hoverinfo="text",
            customdata=[s.row.model for s in regular],
            marker={
                "size": 8,
                "color": [s.z for s in regular],
                "colorscale": "RdBu",
                "reversescale": True,
                "cmin": -threshold,
                "cmax": threshold,
                "colorbar": {"title": {"text": "z in bucket"}},
                "line": {"width": 0.5, "color": MARKER_EDGE},
            },
        )
    )
    figure.add_trace(
        go.Scatter(
            name=f"no z (size bucket under {MIN_BUCKET} rows)",
            mode="markers",
            x=[s.row.parameters for s in unscored],
            y=[round(s.score, 3) for s in unscored],
            text=[_hover(s) for s in unscored],
            hoverinfo="text",
            customdata=[s.row.model for s in unscored],
            marker={"size": 8, "color": NO_Z_COLOUR, "line": {"width": 0.5, "color": MARKER_EDGE}},
        )
    )
    figure.add_trace(
        go.Scatter(
            name=f"outliers (|z| ≥ {threshold:g})",
            mode="markers+text",
            x=[s.row.parameters for s in outliers],
            y=[round(s.score, 3) for s in outliers],
            text=[s.row.name for s in outliers],
            hovertext=[_hover(s) for s in outliers],
            hoverinfo="text",
            textposition="top center",
            customdata=[s.row.model for s in outliers],
            marker={
                "size": 12,
                "symbol": "diamond",
                "color": "rgba(0,0,0,0)",
                "line": {"width": 2, "color": "#b3261e"},
            },
        )
    )
    figure.update_layout(
        **_LAYOUT,
        title="Average score against size (z-score within size bucket)",
        xaxis={"title": {"text": "parameters"}, "type": "log"},
        yaxis={"title": {"text": _score_label(normalized)}},
        legend={"orientation": "h", "y": -0.2},
    )
    if not scored:
        _not_enough(figure, "No row with an average matches these filters.")
    return figure


def _not_enough(figure: go.Figure, why: str) -> None:
    """An empty chart says so, in its middle, instead of showing bare axes."""
    figure.add_annotation(
        text=f"Not enough data to draw this chart. {why}",
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 14, "color": "#5b6475"},
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)


def _hover(s: Scored) -> str:
    z = f"{s.z:+.2f}" if s.z is not None else "n/a"
    size = s.row.parameters / 1e9
    return f"{s.row.model}<br>{size:.2f}B · {s.score:.2f}<br>z {z} ({s.bucket})"


def _score_label(normalized: bool) -> str:
    return "average (normalized to chance)" if normalized else "average (%)"


def task_correlation(rows: Sequence[RankingRow], view: SuiteView) -> go.Figure:
    """Pearson correlation of task scores across the shown models."""
    keys = view.task_keys
    matrix: list[list[float | None]] = []
    for a in keys:
        line: list[float | None] = []
        for b in keys:
            pairs = [
                (row.scores[a], row.scores[b])
                for row in rows
                if row.scores.get(a) is not None and row.scores.get(b) is not None
            ]
            line.append(_pearson(pairs))
        matrix.append(line)
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=keys,
            y=keys,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=[[f"{v:.2f}" if v is not None else "" for v in line] for line in matrix],
            texttemplate="%{text}",
            hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    figure.update_layout(**_LAYOUT, title="Correlation between tasks across rows")
    if all(value is None for line in matrix for value in line):
        _not_enough(figure, "A correlation needs at least 3 rows scored on both tasks.")
    return figure


def _pearson(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs, strict=True)
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant column
        return None


def distribution_by_type(rows: Sequence[RankingRow], normalized: bool) -> go.Figure:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        score = row.shown_average(normalized)
        if score is not None:
            groups[row.model_type].append(score)
    return _boxes(groups, "Score distribution by model type", normalized, "No row has an average.")


def merge_method_label(method: str) -> str | None:
    return MERGE_METHODS.get(method.strip().lower()) if method else None


def distribution_by_merge_method(rows: Sequence[RankingRow], normalized: bool) -> go.Figure:
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


def _boxes(groups: dict[str, list[float]], title: str, normalized: bool, empty: str) -> go.Figure:
    figure = go.Figure()
    for label, values in groups.items():
        figure.add_trace(
            go.Box(
                y=[round(v, 3) for v in values],
                name=f"{label} ({len(values)} row{'s' if len(values) != 1 else ''})",
                boxmean=True,
            )
        )
    figure.update_layout(
        **_LAYOUT,
        title=title,
        yaxis={"title": {"text": _score_label(normalized)}},
        showlegend=False,
    )
    if not any(groups.values()):
        _not_enough(figure, empty)
    return figure


def best_over_time(rows: Sequence[RankingRow], normalized: bool) -> go.Figure:
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
    figure = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            line={"shape": "hv"},
            text=names,
            hovertemplate="%{text}<br>%{x}<br>%{y:.2f}<extra></extra>",
            name="best so far",
        )
    )
    figure.update_layout(
        **_LAYOUT,
        title="Best average over time",
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


def task_scores(result: RunResult, normalized: bool) -> go.Figure:
    """One model's per-task scores with ±stderr bars, and chance marked on raw scores."""
    keys = [task.key for task in result.tasks]
    values = [task.shown(normalized)[0] for task in result.tasks]
    errors = [task.shown(normalized)[1] or 0.0 for task in result.tasks]
    figure = go.Figure(
        go.Bar(
            x=keys,
            y=values,
            error_y={"type": "data", "array": errors, "visible": True},
            name="score",
            hovertemplate="%{x}: %{y:.2f} ± %{error_y.array:.2f}<extra></extra>",
        )
    )
    if not normalized:
        figure.add_trace(
            go.Scatter(
                x=keys,
                y=[task.random_baseline for task in result.tasks],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 28, "color": "#b3261e"},
                name="chance",
                hovertemplate="%{x}: chance %{y:.1f}<extra></extra>",
            )
        )
    figure.update_layout(
        **_LAYOUT,
        title="Per-task scores (± 1 stderr)",
        yaxis={"title": {"text": "normalized score" if normalized else "score (%)"}},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def comparison_bars(comparison: Comparison, normalized: bool) -> go.Figure:
    figure = go.Figure()
    for model in comparison.models:
        tasks = model.result.tasks
        figure.add_trace(
            go.Bar(
                name=model.repository.repo_id,
                x=[task.key for task in tasks],
                y=[task.shown(normalized)[0] for task in tasks],
                error_y={
                    "type": "data",
                    "array": [task.shown(normalized)[1] or 0.0 for task in tasks],
                    "visible": True,
                },
            )
        )
    figure.update_layout(
        **_LAYOUT,
        barmode="group",
        title="Scores per task (± 1 stderr)",
        yaxis={"title": {"text": "normalized score" if normalized else "score (%)"}},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure
