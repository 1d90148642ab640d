"""The agenda's backlog warnings (flowlord/agenda.py walks the runs they are judged on).

Per topic, the expected tasks are queued on its concurrency (`[workers.<topic>]`, local
bus) first come, first served, in start order, each taking its p50: where some must
wait, a `Backlog` says how many were due, when the queue empties and how long the worst
waited; a topic with tasks due and no worker gets a `NoWorker`. Times are epoch seconds
(flowlord/agenda_fires.py), said in UTC.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from operator import itemgetter
from typing import Any

from flowlord.agenda_fires import at, text
from flowlord.store import reads

Item = tuple[float, float | None, int]  # (due, run p50 or None, tasks)


@dataclass(frozen=True)
class Backlog:
    """Where a topic's expected tasks exceed its concurrency."""

    topic: str
    tasks: int  # tasks due from `first_due` to `last_due`
    first_due: float
    last_due: float
    concurrency: int
    p50: float | None  # the median expected run time of those tasks
    clears: float  # when the last of them that waited starts: the queue is empty
    max_wait: float  # seconds the longest of them waited
    unknown_runs: int  # of them, tasks with no known run time (counted as 0 s)

    def text(self) -> str:
        """'extract: 14 tasks due 00:00–00:05, concurrency 4, p50 9 min: backlog until
        00:32' (UTC)."""
        runs = f"p50 {_minutes(self.p50)}" if self.p50 is not None else "run time unknown"
        day = at(self.first_due).date()
        words = (f"{self.topic}: {self.tasks} tasks due {_hhmm(self.first_due)}–"
                 f"{_hhmm(self.last_due, day)}, concurrency {self.concurrency}, {runs}: "
                 f"backlog until {_hhmm(self.clears, day)} (longest wait "
                 f"{_minutes(self.max_wait)})")
        if self.unknown_runs:
            words += f"; {self.unknown_runs} without a known run time counted as 0 s"
        return words

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "kind": "backlog", "tasks": self.tasks,
                "first_due": text(self.first_due), "last_due": text(self.last_due),
                "concurrency": self.concurrency, "p50": self.p50, "clears": text(self.clears),
                "max_wait": round(self.max_wait, 3), "unknown_runs": self.unknown_runs,
                "text": self.text()}


@dataclass(frozen=True)
class NoWorker:
    """A topic with tasks due and no `[workers.<topic>]` (local bus): they will wait."""

    topic: str
    tasks: int
    first_due: float

    def text(self) -> str:
        return (f"{self.topic}: {self.tasks} tasks due from {_hhmm(self.first_due)}, no "
                f"[workers.{self.topic}] in the config: they wait")

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "kind": "no_worker", "tasks": self.tasks,
                "first_due": text(self.first_due), "text": self.text()}


Warning = Backlog | NoWorker


def warnings(queues: Mapping[str, list[Item]], concurrency: Mapping[str, int]
             ) -> list[Warning]:
    """Each topic's expected tasks queued first come, first served on its concurrency:
    a `Backlog` for every stretch in which some wait; `NoWorker` for a topic without
    one. A topic's items are in walk order; equal starts keep it (a stable sort)."""
    found: list[Warning] = []
    for topic, items in sorted(queues.items()):
        width = concurrency.get(topic)
        if width is None:
            found.append(NoWorker(topic, sum(n for _, _, n in items), min(s for s, _, _ in items)))
            continue
        found += _backlogs(topic, sorted(items, key=itemgetter(0)), width)
    found.sort(key=lambda w: (w.first_due, w.topic))
    return found


def _backlogs(topic: str, items: list[Item], width: int) -> list[Backlog]:
    """First come, first served on `width` workers (`busy`: the (end, due, run) of the
    tasks running). Start times never go backwards, so a task that finds a worker free
    finds the queue empty. A stretch opens with the first task that must wait, counting
    the tasks running then, and closes when a task finds a worker free again."""
    busy: list[tuple[float, float, float | None]] = []
    found: list[Backlog] = []
    stretch: _Stretch | None = None
    push, pop = heapq.heappush, heapq.heappop
    for due, run, count in items:
        took = run or 0.0
        for _ in range(count):
            while busy and busy[0][0] <= due:
                pop(busy)
            if len(busy) < width:
                if stretch is not None:
                    found.append(stretch.close(topic, width))
                    stretch = None
                push(busy, (due + took, due, run))
                continue
            if stretch is None:
                stretch = _Stretch(min(d for _, d, _ in busy), [r for _, _, r in busy])
            begin = pop(busy)[0]
            stretch.add(due, begin, run)
            push(busy, (begin + took, due, run))
    if stretch is not None:
        found.append(stretch.close(topic, width))
    return found


class _Stretch:
    """A backlog being followed: the tasks due in it and their run times."""

    def __init__(self, first: float, running: list[float | None]) -> None:
        self.first = self.last = self.clears = first
        self.runs = running
        self.wait = 0.0

    def add(self, due: float, begin: float, run: float | None) -> None:
        self.runs.append(run)
        self.last, self.clears = due, begin
        self.wait = max(self.wait, begin - due)

    def close(self, topic: str, width: int) -> Backlog:
        known = sorted(r for r in self.runs if r is not None)
        p50 = reads.nearest_rank(known, 50) if known else None
        return Backlog(topic, len(self.runs), self.first, self.last, width, p50, self.clears,
                       self.wait, len(self.runs) - len(known))


def _hhmm(seconds: float, day: date | None = None) -> str:
    """'00:32' (UTC); with the date when it is not on `day`."""
    when = at(seconds)
    return when.strftime("%H:%M" if day is None or when.date() == day else "%b %d %H:%M")


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
