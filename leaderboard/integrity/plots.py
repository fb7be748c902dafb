"""The lineage graph as a Plotly figure (a JSON-able dict): generations left to right, nodes
coloured by status, datasets and never-submitted nodes drawn differently, the focus node's
explaining path highlighted, and each edge labelled with its relation."""

from __future__ import annotations

import html
from collections import defaultdict
from functools import cache
from itertools import pairwise
from typing import Any

import plotly.io as pio

from leaderboard.catalog.models import (
    DeclaredIn,
    LineageEdge,
    LineageStatus,
    Relation,
    Repository,
    RepositoryKind,
)
from leaderboard.integrity import graph
from leaderboard.integrity.graph import NodeView
from leaderboard.integrity.status import path_text

# The same colours as the status badges in static/css/trellis.css.
STATUS_COLOURS = {
    LineageStatus.FLAGGED: "#b3261e",
    LineageStatus.TAINTED: "#c25e00",
    LineageStatus.UNDER_REVIEW: "#8a6d00",
    LineageStatus.INCOMPLETE: "#6b6f7a",
    LineageStatus.RESOLVING: "#4a6fa5",
    LineageStatus.CLEAN: "#1e7b43",
}
PATH_COLOUR = "#b3261e"
EDGE_COLOUR = "#a9b1c0"
# Labels beside every node stop being readable past this many nodes; hover still works.
LABELS_UP_TO = 60


@cache
def _template() -> dict[str, Any]:
    """Plotly's default template as JSON, read once per process."""
    return pio.templates[pio.templates.default].to_plotly_json()


def _symbol(repository: NodeView, submitted: bool) -> str:
    base = "square" if repository.kind == RepositoryKind.DATASET else "circle"
    # Open markers: referenced by someone's lineage, never submitted here (external).
    return base if submitted else f"{base}-open"


def _path_edges(repository: Repository) -> set[tuple[int, int]]:
    steps = repository.status_path or []
    return {
        (steps[i]["id"], steps[i + 1]["id"])
        for i in range(len(steps) - 1)
        if "id" in steps[i] and "id" in steps[i + 1]
    }


def lineage_figure(
    repository: Repository, depth: int | None = 2, max_nodes: int | None = 150
) -> dict[str, Any]:
    """A figure of `repository`'s ancestors and descendants up to `depth` generations each way
    and at most `max_nodes` nodes, plus the whole explaining path whatever its length, laid out
    in layers (see `layered_layout`); `layout.meta` says how many were left out."""
    hood = graph.neighbourhood(
        repository, depth=depth, max_nodes=max_nodes, path=repository.status_path or []
    )
    labels = {n: _label(hood.nodes[n].repo_id) for n in hood.depth}
    position, generations, widths = layered_layout(hood, labels)
    highlighted = _path_edges(repository)
    data: list[dict[str, Any]] = []
    # Edges found from the weights (confirmed by a maintainer) are dotted, declared ones solid.
    found = set(
        LineageEdge.objects.filter(
            declared_in=DeclaredIn.WEIGHTS,
            child_id__in=list(hood.depth),
            parent_id__in=list(hood.depth),
        ).values_list("child_id", "parent_id")
    )
    styles = (
        ("declared edge", False, False, {"color": EDGE_COLOUR, "width": 1.5}),
        ("found from weights", False, True, {"color": EDGE_COLOUR, "width": 2, "dash": "dot"}),
        ("explaining path", True, None, {"color": PATH_COLOUR, "width": 4}),
    )
    for name, on_path, from_weights, line in styles:
        xs: list[float | None] = []
        ys: list[float | None] = []
        for child, parent, _relation in hood.edges:
            if ((child, parent) in highlighted) != on_path:
                continue
            if from_weights is not None and ((child, parent) in found) != from_weights:
                continue
            (x0, y0), (x1, y1) = position[parent], position[child]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        if xs:
            data.append(
                {
                    "type": "scatter",
                    "x": xs,
                    "y": ys,
                    "mode": "lines",
                    "line": line,
                    "hoverinfo": "skip",
                    "name": name,
                    "showlegend": name != "declared edge",
                }
            )
    if hood.edges:
        data.append(
            {
                "type": "scatter",
                "x": [(position[c][0] + position[p][0]) / 2 for c, p, _ in hood.edges],
                "y": [(position[c][1] + position[p][1]) / 2 for c, p, _ in hood.edges],
                "mode": "text",
                "text": [
                    Relation(r).value if r in Relation.values else r for _, _, r in hood.edges
                ],
                "textfont": {"size": 10, "color": "#5b6475"},
                "cliponaxis": False,
                "hovertext": [
                    html.escape(f"{hood.nodes[c].repo_id} ← {hood.nodes[p].repo_id} ({r})")
                    for c, p, r in hood.edges
                ],
                "hoverinfo": "text",
                "name": "relation",
                "showlegend": False,
            }
        )
    show_labels = len(hood.depth) <= LABELS_UP_TO
    path_ids = {step["id"] for step in repository.status_path or [] if "id" in step}
    for status in LineageStatus:
        ids = [n for n in hood.depth if hood.nodes[n].status == status]
        if not ids:
            continue
        nodes = [hood.nodes[n] for n in ids]
        data.append(
            {
                "type": "scatter",
                "x": [position[n][0] for n in ids],
                "y": [position[n][1] for n in ids],
                "mode": "markers+text",
                # Past LABELS_UP_TO nodes only the focus and its explaining path are labelled.
                "text": [
                    labels[n] if show_labels or n == repository.pk or n in path_ids else ""
                    for n in ids
                ],
                "textposition": "bottom center",
                "textfont": {"size": LABEL_SIZE},
                "cliponaxis": False,
                "marker": {
                    "color": STATUS_COLOURS[status],
                    "size": [22 if n == repository.pk else 14 for n in ids],
                    "symbol": [_symbol(node, node.pk in hood.submitted) for node in nodes],
                    "line": {"width": 2, "color": STATUS_COLOURS[status]},
                },
                "customdata": [[node.kind, node.repo_id] for node in nodes],
                "hovertext": [_hover(node, node.pk in hood.submitted) for node in nodes],
                "hoverinfo": "text",
                "name": status.label,
            }
        )
    columns = sorted(generations)
    left = min(generations[g] - widths[g] / 2 for g in columns) - 1
    right = max(generations[g] + widths[g] / 2 for g in columns) + 1
    tallest = max((sum(1 for n in hood.depth if hood.depth[n] == g) for g in columns), default=1)
    layout = dict(
        showlegend=True,
        legend={"orientation": "h", "y": -0.08},
        margin={"l": 10, "r": 10, "t": 30, "b": 20},
        xaxis={
            "showgrid": False,
            "zeroline": False,
            "tickmode": "array",
            "tickvals": [generations[g] for g in columns],
            "ticktext": [_generation_label(g) for g in columns],
            # Every label inside the plot: half the widest label of the outer columns beyond them.
            "range": [left, right],
        },
        yaxis={
            "showgrid": False,
            "zeroline": False,
            "showticklabels": False,
            "range": [-(tallest - 1) / 2 * ROW_STEP - 1.2, (tallest - 1) / 2 * ROW_STEP + 0.8],
        },
        plot_bgcolor="#ffffff",
        dragmode="pan",
        height=max(340, 70 * tallest),
        meta={
            "nodes": len(hood.depth),
            "left_out": hood.left_out,
            "focus": repository.repo_id,
            # The width at which labels of neighbouring columns cannot overlap (px).
            "min_width": round((right - left) * CHAR_PX),
        },
    )
    # A plain dict in Plotly's JSON shape: graph objects cost more to build than the page.
    return {"data": data, "layout": {"template": _template(), **layout}}


# Layout units are characters of a label: a column is as wide as its widest label line.
LABEL_SIZE = 11
CHAR_PX = 6.6  # the width of one character at LABEL_SIZE, in pixels (system-ui, average)
COLUMN_GAP = 4.0
ROW_STEP = 1.0
WRAP_AT = 22
SWEEPS = 4


def _label(repo_id: str) -> str:
    """A node's label: `org/name`, broken after the slash when long."""
    if len(repo_id) <= WRAP_AT or "/" not in repo_id:
        return repo_id
    org, name = repo_id.split("/", 1)
    return f"{org}/<br>{name}"


def _label_width(label: str) -> float:
    return float(max(len(line) for line in label.split("<br>")))


def layered_layout(
    hood: graph.Neighbourhood, labels: dict[int, str]
) -> tuple[dict[int, tuple[float, float]], dict[int, float], dict[int, float]]:
    """A layered (Sugiyama-style) layout: one column per generation, ancestors to the left;
    within a column, nodes ordered by the barycenter of their neighbours in the next column,
    swept down and up a few times to remove edge crossings; columns spaced by their widest
    labels so no two labels overlap. Returns positions, each column's x and each width."""
    layers: dict[int, list[int]] = defaultdict(list)
    for node_id, generation in hood.depth.items():
        layers[generation].append(node_id)
    for ids in layers.values():
        ids.sort(key=lambda n: (hood.nodes[n].kind, hood.nodes[n].repo_id))
    neighbours: dict[int, set[int]] = defaultdict(set)
    for child, parent, _relation in hood.edges:
        neighbours[child].add(parent)
        neighbours[parent].add(child)
    columns = sorted(layers)

    def reorder(generation: int, towards: int) -> None:
        index = {n: i for i, n in enumerate(layers.get(towards, []))}
        here = {n: i for i, n in enumerate(layers[generation])}

        def barycenter(node: int) -> tuple[float, int]:
            linked = [index[m] for m in neighbours[node] if m in index]
            centre = sum(linked) / len(linked) if linked else float(here[node])
            return centre, here[node]

        layers[generation].sort(key=barycenter)

    for _sweep in range(SWEEPS):
        for previous, generation in pairwise(columns):
            reorder(generation, previous)
        for following, generation in pairwise(columns[::-1]):
            reorder(generation, following)
    widths = {g: max(_label_width(labels[n]) for n in layers[g]) for g in columns}
    xs: dict[int, float] = {}
    x = 0.0
    for index, generation in enumerate(columns):
        if index:
            x += (widths[columns[index - 1]] + widths[generation]) / 2 + COLUMN_GAP
        xs[generation] = x
    position: dict[int, tuple[float, float]] = {}
    for generation, ids in layers.items():
        middle = (len(ids) - 1) / 2
        for i, node_id in enumerate(ids):
            position[node_id] = (xs[generation], (middle - i) * ROW_STEP)
    return position, xs, widths


def _hover(node: NodeView, submitted: bool) -> str:
    lines = [
        f"<b>{html.escape(node.repo_id)}</b>",
        f"{node.kind}, {'submitted' if submitted else 'never submitted (external)'}",
        f"status: {LineageStatus(node.status).label}",
    ]
    if node.status_path:
        lines.append(html.escape(path_text(node.status_path)))
    return "<br>".join(lines)


def _generation_label(generation: int) -> str:
    if generation == 0:
        return "this"
    return f"{-generation} up" if generation < 0 else f"{generation} down"
