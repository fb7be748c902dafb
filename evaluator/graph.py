"""Walks over a lineage given as a mapping of node to neighbours, shared by the signals."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

Node = TypeVar("Node", bound=Hashable)


def reachable(start: Node, edges: Mapping[Node, Sequence[Node]]) -> set[Node]:
    """Every node reachable from `start` along `edges`, not `start` itself (unless on a cycle).
    Iterative, so a deep lineage cannot exhaust the stack, and each node is expanded once, so a
    diamond of merges is not walked twice."""
    seen: set[Node] = set()
    stack = list(edges.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(edges.get(node, ()))
    return seen
