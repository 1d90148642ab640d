"""Pure functions on the dependency graph of one workflow file.

A phase's `dependsOn` names its parent: `topic` matches every phase of that
topic (any job), `topic:job` matches that task only. Edges run parent → child.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class TaskIndex:
    """The normalized tasks of one file, for resolving `dependsOn`."""

    def __init__(self, tasks: Iterable[str]) -> None:
        self.by_topic: dict[str, list[str]] = {}
        self.tasks: set[str] = set()
        for t in tasks:
            self.tasks.add(t)
            self.by_topic.setdefault(t.partition(":")[0], []).append(t)

    def parents(self, depends_on: str) -> list[str]:
        if not depends_on:
            return []
        if ":" in depends_on:
            return [depends_on] if depends_on in self.tasks else []
        return self.by_topic.get(depends_on, [])


def edges(phases: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(parent, child) pairs from (task, depends_on) pairs, in child order."""
    items = list(phases)
    index = TaskIndex(t for t, _ in items)
    return [(p, child) for child, dep in items for p in index.parents(dep)]


def cycles(phases: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """For every task on a dependency cycle, one cycle through it: [t, child, …, t]."""
    items = list(phases)
    children: dict[str, list[str]] = {t: [] for t, _ in items}
    for parent, child in edges(items):
        children[parent].append(child)
    # only tasks that topological sorting cannot place can be on a cycle
    placed = set(_kahn(items, children))
    found: dict[str, list[str]] = {}
    for start in children:
        if start not in placed:
            path = _path_back(start, children)
            if path:
                found[start] = path
    return found


def _path_back(start: str, children: dict[str, list[str]]) -> list[str] | None:
    """Shortest path start → … → start (breadth first), or None."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in children[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return None


def topological_order(phases: Iterable[tuple[str, str]]) -> list[str]:
    """Parents before children; tasks on cycles come last, in input order."""
    items = list(phases)
    children: dict[str, list[str]] = {t: [] for t, _ in items}
    for parent, child in edges(items):
        children[parent].append(child)
    order = _kahn(items, children)
    placed = set(order)
    return order + [t for t, _ in items if t not in placed]


def _kahn(items: list[tuple[str, str]], children: dict[str, list[str]]) -> list[str]:
    pending = {t: 0 for t, _ in items}
    for kids in children.values():
        for child in kids:
            pending[child] += 1
    ready = deque(t for t, _ in items if pending[t] == 0)
    order: list[str] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for child in children[node]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return order
