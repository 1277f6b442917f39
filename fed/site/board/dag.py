"""The task DAG laid out for drawing: columns by depth, edges as curves (server-side SVG)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NODE_W, NODE_H = 168, 46
GAP_X, GAP_Y, MARGIN = 64, 22, 12
ARC = 34  # how far above its row an edge skipping columns arcs, clear of the boxes between


@dataclass(frozen=True)
class Node:
    name: str
    x: int
    y: int


@dataclass(frozen=True)
class Graph:
    """Everything the template needs: node boxes, edge paths and the drawing's size."""

    nodes: list[Node]
    edges: list[str]  # SVG path data, one per dependency
    width: int
    height: int
    node_w: int = NODE_W
    node_h: int = NODE_H


def depths(deps: Mapping[str, list[str]]) -> dict[str, int]:
    """Each task's column: 0 without dependencies, else one more than its deepest one.
    (The spec was checked for cycles before it was stored.)"""
    out: dict[str, int] = {}

    def depth(task: str) -> int:
        if task not in out:
            out[task] = 1 + max((depth(d) for d in deps.get(task, []) if d in deps), default=-1)
        return out[task]

    for task in deps:
        depth(task)
    return out


def layout(deps: Mapping[str, list[str]]) -> Graph:
    """Place the tasks in columns (spec order within a column) and route every edge."""
    column = depths(deps)
    skips = any(column[t] - column[d] > 1 for t in deps for d in deps[t] if d in column)
    top = MARGIN + (ARC if skips else 0)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for task in deps:
        row = rows.get(column[task], 0)
        rows[column[task]] = row + 1
        nodes[task] = Node(task, MARGIN + column[task] * (NODE_W + GAP_X), top + row * (NODE_H + GAP_Y))
    edges = [_edge(nodes[d], nodes[t], column[t] - column[d]) for t in deps for d in deps[t] if d in nodes]
    width = MARGIN * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = top + MARGIN + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
    return Graph(list(nodes.values()), edges, width, height)


def _edge(src: Node, dst: Node, span: int) -> str:
    """Next column: a curve from the right side to the left side. Further: an arc from
    the top of one box to the top of the other, above the boxes between."""
    if span > 1:
        x1, x2 = src.x + NODE_W * 3 // 4, dst.x + NODE_W // 4
        y1, y2 = src.y, dst.y - 5
        lift = min(y1, y2) - ARC
        return f"M{x1},{y1} C{x1},{lift} {x2},{lift} {x2},{y2}"
    x1, y1 = src.x + NODE_W, src.y + NODE_H // 2
    x2, y2 = dst.x, dst.y + NODE_H // 2
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 6},{y2}"
