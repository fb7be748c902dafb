"""The lineage graph as a Plotly figure (a JSON-able dict): generations left to right, nodes
coloured by status, datasets and never-submitted nodes drawn differently, the focus node's
explaining path highlighted, and each edge labelled with its relation."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any

import plotly.graph_objects as go

from leaderboard.catalog.models import LineageStatus, Relation, Repository, RepositoryKind
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
    and at most `max_nodes` nodes; `layout.meta` says how many were left out."""
    hood = graph.neighbourhood(repository, depth=depth, max_nodes=max_nodes)
    generations: dict[int, list[int]] = defaultdict(list)
    for node_id, generation in hood.depth.items():
        generations[generation].append(node_id)
    position: dict[int, tuple[float, float]] = {}
    for generation, ids in generations.items():
        ids.sort(key=lambda n: (hood.nodes[n].kind, hood.nodes[n].repo_id))
        middle = (len(ids) - 1) / 2
        for index, node_id in enumerate(ids):
            position[node_id] = (float(generation), float(middle - index))

    highlighted = _path_edges(repository)
    figure = go.Figure()
    for on_path in (False, True):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for child, parent, _relation in hood.edges:
            if ((child, parent) in highlighted) != on_path:
                continue
            (x0, y0), (x1, y1) = position[parent], position[child]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        if xs:
            figure.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={
                        "color": PATH_COLOUR if on_path else EDGE_COLOUR,
                        "width": 4 if on_path else 1.5,
                    },
                    hoverinfo="skip",
                    name="explaining path" if on_path else "declared edge",
                    showlegend=on_path,
                )
            )
    if hood.edges:
        figure.add_trace(
            go.Scatter(
                x=[(position[c][0] + position[p][0]) / 2 for c, p, _ in hood.edges],
                y=[(position[c][1] + position[p][1]) / 2 for c, p, _ in hood.edges],
                mode="text",
                text=[Relation(r).value if r in Relation.values else r for _, _, r in hood.edges],
                textfont={"size": 10, "color": "#5b6475"},
                hovertext=[
                    html.escape(f"{hood.nodes[c].repo_id} ← {hood.nodes[p].repo_id} ({r})")
                    for c, p, r in hood.edges
                ],
                hoverinfo="text",
                name="relation",
                showlegend=False,
            )
        )
    show_labels = len(hood.depth) <= LABELS_UP_TO
    for status in LineageStatus:
        ids = [n for n in hood.depth if hood.nodes[n].status == status]
        if not ids:
            continue
        nodes = [hood.nodes[n] for n in ids]
        figure.add_trace(
            go.Scatter(
                x=[position[n][0] for n in ids],
                y=[position[n][1] for n in ids],
                mode="markers+text" if show_labels else "markers",
                text=[node.repo_id for node in nodes],
                textposition="top center",
                marker={
                    "color": STATUS_COLOURS[status],
                    "size": [22 if n == repository.pk else 14 for n in ids],
                    "symbol": [_symbol(node, node.pk in hood.submitted) for node in nodes],
                    "line": {"width": 2, "color": STATUS_COLOURS[status]},
                },
                customdata=[[node.kind, node.repo_id] for node in nodes],
                hovertext=[_hover(node, node.pk in hood.submitted) for node in nodes],
                hoverinfo="text",
                name=status.label,
            )
        )
    figure.update_layout(
        showlegend=True,
        legend={"orientation": "h", "y": -0.08},
        margin={"l": 20, "r": 20, "t": 30, "b": 20},
        xaxis={
            "showgrid": False,
            "zeroline": False,
            "tickmode": "array",
            "tickvals": sorted(generations),
            "ticktext": [_generation_label(g) for g in sorted(generations)],
        },
        yaxis={"showgrid": False, "zeroline": False, "showticklabels": False},
        plot_bgcolor="#ffffff",
        height=max(320, 42 * max((len(ids) for ids in generations.values()), default=1)),
        meta={"nodes": len(hood.depth), "left_out": hood.left_out, "focus": repository.repo_id},
    )
    return json.loads(figure.to_json())


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
