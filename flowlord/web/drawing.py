"""Where to draw each phase of a workflow file in the dashboard's SVG graph.

Phases go in columns by depth (a phase stands one column right of its deepest
parent), in file order within a column; edges run from a parent's right side to a
child's left side. Pure geometry: the template draws it, escaping every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flowlord import graph

NODE_WIDTH = 210
NODE_HEIGHT = 34
COLUMN_GAP = 70
ROW_GAP = 14
MARGIN = 10
BACK_EDGE_DROP = 36  # how far below the boxes a cycle's back edge runs
LABEL_CHARS = 28  # longer names are cut, with the whole name in the node's <title>


@dataclass(frozen=True)
class Node:
    task: str
    severity: str
    x: int
    y: int

    @property
    def label(self) -> str:
        if len(self.task) <= LABEL_CHARS:
            return self.task
        return self.task[:LABEL_CHARS - 1] + "…"


@dataclass(frozen=True)
class Edge:
    path: str  # the SVG path's `d`
    back: bool  # drawn against the flow, under the boxes: a dependency cycle


@dataclass(frozen=True)
class Drawing:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def depths(phases: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Longest distance from a root, for each (task, depends_on): one pass in
    topological order. Phases on a cycle (an error already) come last in that order;
    an edge back to a phase placed before its parent is a back edge, and ignored."""
    children: dict[str, list[str]] = {}
    for parent, child in graph.edges(phases):
        children.setdefault(parent, []).append(child)
    order = graph.topological_order(phases)
    place = {task: i for i, task in enumerate(order)}
    depth = dict.fromkeys(order, 0)
    for task in order:
        for child in children.get(task, ()):
            if place[child] > place[task]:
                depth[child] = max(depth[child], depth[task] + 1)
    return depth


def lay_out(phases: Sequence[tuple[str, str, str]]) -> Drawing:
    """phases: (task, depends_on, severity) of one file, in file order."""
    links = [(task, depends_on) for task, depends_on, _ in phases]
    depth = depths(links)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for task, _, severity in phases:
        column = depth[task]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes[task] = Node(task, severity, MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
                           MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    lines = [_edge(nodes[parent], nodes[child]) for parent, child in graph.edges(links)]
    columns = max(rows, default=-1) + 1
    height_rows = max(rows.values(), default=0)
    below = BACK_EDGE_DROP if any(e.back for e in lines) else 0
    return Drawing(list(nodes.values()), lines,
                   2 * MARGIN + max(columns * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP, 0),
                   2 * MARGIN + below
                   + max(height_rows * (NODE_HEIGHT + ROW_GAP) - ROW_GAP, 0))


def _edge(parent: Node, child: Node) -> Edge:
    """A curve from the parent's right side to the child's left side; when the child
    stands left of the parent (a cycle), from bottom to bottom, dropping below both."""
    if child.x > parent.x:
        x1, y1 = parent.x + NODE_WIDTH, parent.y + NODE_HEIGHT // 2
        x2, y2 = child.x, child.y + NODE_HEIGHT // 2
        bend = max((x2 - x1) // 2, 30)
        return Edge(f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}", back=False)
    x1, y1 = parent.x + NODE_WIDTH // 2, parent.y + NODE_HEIGHT
    x2, y2 = child.x + NODE_WIDTH // 3, child.y + NODE_HEIGHT
    low = max(y1, y2) + BACK_EDGE_DROP
    return Edge(f"M{x1},{y1} C{x1},{low} {x2},{low} {x2},{y2}", back=True)
