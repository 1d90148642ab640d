"""The agenda: what will run when (README.md, Agenda).

Three steps, a module each:

- the fires due in the window and the children of each phase
  (flowlord/agenda_fires.py: the daemon's `Scheduler`, jitter, pauses, batch counts;
  children as the daemon finds them when a task completes);
- the walk from each fire through its children, here: a child starts when its parent is
  expected to end, and is marked paused when a pause covers it then
  (flowlord/results.py starts no child of a paused phase); the expected run time is the
  phase's run p50 from history (`reads.stats`), unknown when it never ran, and then its
  children's start is unknown too;
- per topic, the queue of the expected tasks on its concurrency
  (flowlord/agenda_backlog.py: `Backlog`, `NoWorker`). On a redis bus the workers'
  concurrency is not known here: the caller gives it or there is no backlog warning.

The computation is a flat walk over floats (seconds since the epoch): the fires' and
children's JSON is built only for what is shown (`fire_json`), so the dashboard and the
API page through 100,000 phases' agenda cheaply; `AgendaCache`
(flowlord/agenda_cache.py) keeps one computed agenda per process for the HTTP side.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, overload

from flowlord import collector
from flowlord.agenda_backlog import Backlog, NoWorker, Warning, warnings
from flowlord.agenda_fires import EPOCH, Children, Kid, Planned, at, fires, text
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.config import Config
from flowlord.model import Phase, split_task
from flowlord.pauses import Pauses
from flowlord.store import Store, reads
from flowlord.store.expected import run_p50s
from flowlord.tasks import Context, meta_dir

__all__ = ["EPOCH", "Agenda", "Backlog", "Kid", "NoWorker", "Planned", "Warning", "plan",
           "read", "warnings"]

DEFAULT_HOURS = 24
MAX_HOURS = 7 * 24
MAX_DEPTH = 64  # children of children: a deeper chain is cut (a cycle is an error phase)

# (phase, topic, start or None, run p50 or None, tasks, is a fire): one expected run
Run = tuple[Phase, str, float | None, float | None, int, bool]
# a phase's descendants with no pause in force: (phase, topic, start after the fire's
# expected end or None, run, tasks per task of the fire)
Tree = list[tuple[Phase, str, float | None, float | None, int]]


@dataclass
class Agenda:
    """The window (start, end] and what is due in it, fires in start order."""

    start: datetime
    end: datetime
    fires: list[Planned]
    warnings: list[Warning]
    notes: list[str]
    children: Children  # a phase's child phases
    pauses: Pauses
    jitter: float = 0.0  # the most seconds a fire starts after its slot (its phase's jitter)
    topics: dict[str, dict[str, int]] = field(default_factory=dict)  # fires, tasks per topic
    computed: float = field(default_factory=time.monotonic)
    _trees: dict[tuple[str, str], Tree] = field(default_factory=dict)
    # what it was computed from: hours, concurrency given, workflows and pauses (set by
    # flowlord/agenda_cache.py); a chart drawn from an agenda of the same inputs may
    # stand for a few minutes (flowlord/web/agenda_chart.py)
    inputs: tuple[Any, ...] = ()

    # --- what is shown -----------------------------------------------------------------

    def kids(self, phase: Phase) -> Sequence[Kid]:
        return self.children.of(phase.file_path, phase.task)

    def within(self, start: datetime, end: datetime) -> Window:
        """The fires whose slot is in (start, end], in start order. A fire starts at its
        slot or up to `jitter` after it, so bisection by start finds them: only those
        starting within `jitter` of either edge are compared one by one (20 phases due
        every second are 1.7 million fires a day; a scan of them took 0.2 s a request)."""
        fires, first, last = self.fires, start.timestamp(), end.timestamp()
        lo = bisect_right(fires, first, key=_start)  # started by then: slotted by then too
        past = bisect_right(fires, last, lo=lo, key=_start)
        sure = min(bisect_right(fires, first + self.jitter, lo=lo, key=_start), past)
        hi = bisect_right(fires, last + self.jitter, lo=past, key=_start)
        return Window([f for f in fires[lo:sure] if start < f.slot <= end], fires, sure, past,
                      [f for f in fires[past:hi] if start < f.slot <= end])

    def fire_json(self, fire: Planned) -> dict[str, Any]:
        """A fire as `flowlord agenda --json` and /api/agenda show it, children nested."""
        end = fire.start + fire.run if fire.run is not None and not fire.paused else None
        found: dict[str, Any] = {
            "file": fire.phase.file_path, "task": fire.phase.task, "slot": rfc3339(fire.slot),
            "start": text(fire.start), "paused": fire.paused is not None,
            "pause": fire.paused, "tasks": fire.tasks, "error": fire.error or None,
            "expected_run": fire.run, "expected_end": text(end), "children": []}
        if fire.tasks and not fire.paused:
            found["children"] = self._children_json(self.kids(fire.phase), end, fire.tasks, 1)
        return found

    def _children_json(self, kids: Sequence[Kid], start: float | None, parents: int,
                       depth: int) -> list[dict[str, Any]]:
        if depth > MAX_DEPTH:
            return []
        shown = []
        for kid in kids:
            paused = (self.pauses.of_phase(kid.phase.file_path, kid.phase.task, at(start))
                      if self.pauses.rows and start is not None else None)
            tasks = 0 if paused else parents * kid.per_parent
            end = start + kid.run if start is not None and kid.run is not None else None
            shown.append({"file": kid.phase.file_path, "task": kid.phase.task,
                          "start": text(start), "paused": paused is not None,
                          "pause": paused.why() if paused else None, "tasks": tasks,
                          "error": kid.error or None, "expected_run": kid.run,
                          "expected_end": text(end) if not paused else None,
                          "children": (self._children_json(kid.kids, end, tasks, depth + 1)
                                       if tasks else [])})
        return shown

    def runs(self, fires: Iterable[Planned] | None = None
             ) -> Iterator[tuple[Phase, float | None, float | None, int, bool]]:
        """(phase, start, run, tasks, is a fire) of every fire that makes tasks and of
        their children, walked from their parents' expected end: the drawing's input."""
        for phase, _, start, run, tasks, is_fire in self.walk(fires):
            yield phase, start, run, tasks, is_fire

    def walk(self, fires: Iterable[Planned] | None = None) -> Iterator[Run]:
        """`runs` with each phase's topic: a fire, then its children in `_tree`'s order,
        each tree worked out once per phase while no pause can cut it."""
        paused = self.pauses.of_phase if self.pauses.rows else None
        trees = self._trees
        for fire in self.fires if fires is None else fires:
            if fire.paused or not fire.tasks:
                continue
            phase, tasks = fire.phase, fire.tasks
            yield phase, phase.topic, fire.start, fire.run, tasks, True
            end = fire.start + fire.run if fire.run is not None else None
            if paused is None:
                key = (phase.file_path, phase.task)
                tree = trees.get(key)
                if tree is None:
                    tree = trees[key] = self._tree(phase)
                for child, topic, offset, run, times in tree:
                    yield (child, topic, end + offset if end is not None and offset is not None
                           else None, run, tasks * times, False)
                continue
            stack = [(self.kids(phase), end, tasks, 1)]
            while stack:
                kids, start, parents, depth = stack.pop()
                if depth > MAX_DEPTH:
                    continue
                for kid in kids:
                    if start is not None and paused(
                            kid.phase.file_path, kid.phase.task, at(start)):
                        continue
                    made = parents * kid.per_parent
                    if not made:
                        continue
                    yield kid.phase, kid.topic, start, kid.run, made, False
                    stack.append((kid.kids, start + kid.run if start is not None
                                  and kid.run is not None else None, made, depth + 1))

    def _tree(self, phase: Phase) -> Tree:
        """A phase's descendants with no pause in force, as `walk` goes through them."""
        tree: Tree = []
        stack: list[tuple[Sequence[Kid], float | None, int, int]] = [
            (self.kids(phase), 0.0, 1, 1)]
        while stack:
            kids, offset, times, depth = stack.pop()
            if depth > MAX_DEPTH:
                continue
            for kid in kids:
                if kid.per_parent:
                    made = times * kid.per_parent
                    tree.append((kid.phase, kid.topic, offset, kid.run, made))
                    stack.append((kid.kids, offset + kid.run if offset is not None
                                  and kid.run is not None else None, made, depth + 1))
        return tree

    def shown(self, now: datetime, hours: int, *, file: str | None = None,
              topic: str | None = None) -> Sequence[Planned]:
        """The fires of (now, now + hours], of one file or topic if given."""
        found = self.within(now, now + timedelta(hours=hours))
        if file is None and topic is None:
            return found
        return [f for f in found if (file is None or f.phase.file_path == file)
                and (topic is None or f.phase.topic == topic)]

    def as_json(self, fires: Sequence[Planned] | None = None) -> dict[str, Any]:
        shown = self.fires if fires is None else fires
        return {"start": rfc3339(self.start), "end": rfc3339(self.end),
                "total": len(self.fires), "topics": self.topics,
                "fires": [self.fire_json(f) for f in shown],
                "warnings": [w.as_json() for w in self.warnings], "notes": self.notes}


def _start(fire: Planned) -> float:
    return fire.start


class Window(Sequence[Planned]):
    """The fires of a window in start order, the agenda's list not copied: those near its
    edges that qualify, and a range of the list between them (copying 1.7 million fires
    cost a request 0.1 s, bench/http_api.py)."""

    def __init__(self, head: list[Planned], fires: list[Planned], lo: int, hi: int,
                 tail: list[Planned]) -> None:
        self._head, self._fires, self._lo, self._hi, self._tail = head, fires, lo, hi, tail

    def __len__(self) -> int:
        return len(self._head) + self._hi - self._lo + len(self._tail)

    @overload
    def __getitem__(self, index: int) -> Planned: ...

    @overload
    def __getitem__(self, index: slice) -> list[Planned]: ...

    def __getitem__(self, index: int | slice) -> Planned | list[Planned]:
        if isinstance(index, slice):  # a page of them
            return [self[n] for n in range(len(self))[index]]
        n = range(len(self))[index]  # a negative index counts from the end; IndexError
        if n < len(self._head):
            return self._head[n]
        n -= len(self._head)
        if n < self._hi - self._lo:
            return self._fires[self._lo + n]
        return self._tail[n - (self._hi - self._lo)]

    def __iter__(self) -> Iterator[Planned]:
        yield from self._head
        yield from map(self._fires.__getitem__, range(self._lo, self._hi))
        yield from self._tail


# --- computing ---------------------------------------------------------------------------


def plan(phases: Sequence[Phase], *, now: datetime, hours: float, ctx: Context,
         pauses: Pauses, p50: Mapping[tuple[str, str], float],
         concurrency: Mapping[str, int] | None, notes: Sequence[str] = ()) -> Agenda:
    """The agenda of (now, now + hours] over `phases` (every stored phase, as the daemon
    schedules them). `concurrency`: per topic (a topic missing has no worker); None when
    it is not known (a redis bus): then no backlog is judged."""
    end = now + timedelta(hours=hours)
    planned, jitter = fires(phases, now, end, ctx, pauses, p50)
    agenda = Agenda(now, end, planned, [], list(notes), Children(phases, p50, ctx), pauses,
                    jitter)
    counts: dict[str, list[int]] = {}  # topic → [fires, tasks]
    queues: dict[str, list[tuple[float, float | None, int]]] = {}
    for _, topic, start, run, tasks, is_fire in agenda.walk():
        seen = counts.get(topic)
        if seen is None:
            seen = counts[topic] = [0, 0]
        seen[0] += is_fire
        seen[1] += tasks
        if start is not None:
            queue = queues.get(topic)
            if queue is None:
                queue = queues[topic] = []
            queue.append((start, run, tasks))
    agenda.topics = {t: {"fires": n, "tasks": k} for t, (n, k) in sorted(counts.items())}
    if concurrency is not None:
        agenda.warnings = warnings(queues, concurrency)
    return agenda


# --- reading --------------------------------------------------------------------------


def concurrency_of(config: Config, given: Mapping[str, int] | None = None
                   ) -> tuple[dict[str, int] | None, list[str]]:
    """Per topic, how many of its tasks run at once, and notes saying where that came
    from: the config's `[workers.<topic>]` on the local bus, overridden by `given`; on a
    redis bus only `given` (the workers' `--concurrency` is not known here)."""
    given = dict(given or {})
    if config.bus_url == "local":
        return {**{t: w.concurrency for t, w in config.workers.items()}, **given}, []
    if given:
        return given, ["redis bus: the workers' concurrency is not known here; backlogs "
                       "judged on the concurrency given, for those topics only"]
    return None, ["redis bus: the workers' concurrency is not known here, so no backlog "
                  "is judged; give it with --concurrency TOPIC=N (?concurrency=TOPIC=N)"]


def p50s(store: Store, now: datetime) -> dict[tuple[str, str], float]:
    """(file, task) → run p50 seconds over the statistics' window: `run_p50` of
    `reads.stats`, read in one statement (flowlord/store/expected.py)."""
    return run_p50s(store, rfc3339_ms(now - timedelta(days=reads.STATS_DAYS)))


def read(store: Store, config: Config, now: datetime, hours: float,
         given: Mapping[str, int] | None = None,
         runs: Mapping[tuple[str, str], float] | None = None) -> Agenda:
    """The agenda of (now, now + hours] from the database: its phases, pauses and
    history (`runs`: the p50s when already read), and the config's zone and workers."""
    width, notes = concurrency_of(config, given)
    ctx = Context(config.zone(), meta_dir(config.workflows), now)
    with collector.paused():  # flowlord/collector.py
        agenda = plan(store.phases(), now=now, hours=hours, ctx=ctx,
                      pauses=Pauses.read(store, now),
                      p50=p50s(store, now) if runs is None else runs,
                      concurrency=width, notes=notes)
    if width is not None and config.bus_url != "local":  # only the topics given are judged
        agenda.warnings = [w for w in agenda.warnings if not isinstance(w, NoWorker)]
    return agenda


def parse_concurrency(items: Iterable[str]) -> dict[str, int]:
    """`TOPIC=N` texts → {topic: N}; ValueError saying which is wrong."""
    found: dict[str, int] = {}
    for item in items:
        topic, sep, number = item.rpartition("=")
        if not sep or not topic or not number.isascii() or not number.isdigit() \
                or not 1 <= int(number) <= 100_000:
            raise ValueError(f"concurrency is TOPIC=N with N from 1 to 100000: {item}")
        found[split_task(topic)[0]] = int(number)
    return found
