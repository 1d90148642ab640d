"""The agenda: what will run when (README.md, Agenda).

Every cron slot due in a window, found by the code that fires it: a `Scheduler` (the
daemon's, flowlord/scheduler.py, with the DST policy of flowlord/cron.py) started at
the window's start with no history, asked once what is due by its end. Each slot's
start is the phase's jitter (flowlord/jitter.py `start`), its pause the one the ledger
would record (flowlord/ledger.py `build`: `Pauses.of_phase` at the slot), its tasks
those `build_fire` makes (flowlord/tasks.py: a batch phase's steps and meta rows are
built and counted; a plain phase makes one). The children are the phases whose
dependsOn names the fired phase (flowlord/graph.py, as `Loader.children` finds them),
transitively; a child starts when its parent is expected to end, and is marked paused
when a pause covers it then (flowlord/dispatch.py starts no child of a paused phase).
The expected run time is the phase's run p50 from history (`reads.stats`); unknown
when it never ran, and then its children's start is unknown too.

Per topic, the expected tasks are queued on its concurrency (`[workers.<topic>]`, local
bus) in start order, each taking its p50: where some must wait, a `Backlog` says how
many were due, when the queue empties and how long the worst waited. On a redis bus
the workers' concurrency is not known here: the caller gives it or there is no
backlog warning.

The computation is a flat walk over floats (seconds since the epoch): the fires' and
children's JSON is built only for what is shown (`fire_json`), so the dashboard and the
API page through 100,000 phases' agenda cheaply; `AgendaCache` keeps one computed
agenda per process for the HTTP side (recomputed in the background as it ages, at once
when the workflows or pauses changed).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, NamedTuple

from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.config import Config
from flowlord.graph import edges
from flowlord.jitter import start as jitter_start
from flowlord.model import Phase, split_task
from flowlord.pauses import Pauses
from flowlord.rules import parse_rule
from flowlord.scheduler import Scheduler
from flowlord.store import Store, reads
from flowlord.store.expected import run_p50s
from flowlord.tasks import BuildError, Context, fire_tasks, is_batch, meta_dir, meta_rows

DEFAULT_HOURS = 24
MAX_HOURS = 7 * 24
MAX_DEPTH = 64  # children of children: a deeper chain is cut (a cycle is an error phase)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Kid(NamedTuple):
    """A child phase of a fired phase, with what its walk needs, worked out once."""

    phase: Phase
    topic: str
    run: float | None  # p50 seconds
    per_parent: int  # tasks made per completed parent task (its meta rows, else 1)
    error: str  # why it makes none (a meta-file that cannot be read)


class Planned(NamedTuple):
    """One cron slot due in the window."""

    phase: Phase
    slot: datetime  # UTC
    start: float  # epoch seconds: the slot plus the phase's jitter
    paused: str | None  # the pause the ledger would record (its why), or None
    tasks: int  # tasks its fire makes (0 when paused, or its tasks cannot be built)
    error: str  # why its fire would make no task ('' for none, or when paused)
    run: float | None  # p50 seconds from history; None: unknown


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
        day = _at(self.first_due).date()
        words = (f"{self.topic}: {self.tasks} tasks due {_hhmm(self.first_due)}–"
                 f"{_hhmm(self.last_due, day)}, concurrency {self.concurrency}, {runs}: "
                 f"backlog until {_hhmm(self.clears, day)} (longest wait "
                 f"{_minutes(self.max_wait)})")
        if self.unknown_runs:
            words += f"; {self.unknown_runs} without a known run time counted as 0 s"
        return words

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "kind": "backlog", "tasks": self.tasks,
                "first_due": _text(self.first_due), "last_due": _text(self.last_due),
                "concurrency": self.concurrency, "p50": self.p50, "clears": _text(self.clears),
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
                "first_due": _text(self.first_due), "text": self.text()}


Warning = Backlog | NoWorker


@dataclass
class Agenda:
    """The window (start, end] and what is due in it, fires in start order."""

    start: datetime
    end: datetime
    fires: list[Planned]
    warnings: list[Warning]
    notes: list[str]
    kids: Callable[[Phase], list[Kid]]  # a phase's children (memoized)
    pauses: Pauses
    topics: dict[str, dict[str, int]] = field(default_factory=dict)  # fires, tasks per topic
    computed: float = field(default_factory=time.monotonic)
    _trees: dict[tuple[str, str], list[tuple[Phase, float | None, float | None, int]]] = field(
        default_factory=dict)
    drawn: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # pictures of it, kept

    # --- what is shown -----------------------------------------------------------------

    def within(self, start: datetime, end: datetime) -> list[Planned]:
        """The fires whose slot is in (start, end], in start order."""
        return [f for f in self.fires if start < f.slot <= end]

    def fire_json(self, fire: Planned) -> dict[str, Any]:
        """A fire as `flowlord agenda --json` and /api/agenda show it, children nested."""
        end = fire.start + fire.run if fire.run is not None and not fire.paused else None
        found: dict[str, Any] = {
            "file": fire.phase.file_path, "task": fire.phase.task, "slot": rfc3339(fire.slot),
            "start": _text(fire.start), "paused": fire.paused is not None,
            "pause": fire.paused, "tasks": fire.tasks, "error": fire.error or None,
            "expected_run": fire.run, "expected_end": _text(end), "children": []}
        if fire.tasks and not fire.paused:
            found["children"] = self._children_json(fire.phase, end, fire.tasks, 1)
        return found

    def _children_json(self, phase: Phase, start: float | None, parents: int,
                       depth: int) -> list[dict[str, Any]]:
        if depth > MAX_DEPTH:
            return []
        shown = []
        for kid in self.kids(phase):
            paused = (self.pauses.of_phase(kid.phase.file_path, kid.phase.task, _at(start))
                      if self.pauses.rows and start is not None else None)
            tasks = 0 if paused else parents * kid.per_parent
            end = start + kid.run if start is not None and kid.run is not None else None
            shown.append({"file": kid.phase.file_path, "task": kid.phase.task,
                          "start": _text(start), "paused": paused is not None,
                          "pause": paused.why() if paused else None, "tasks": tasks,
                          "error": kid.error or None, "expected_run": kid.run,
                          "expected_end": _text(end) if not paused else None,
                          "children": (self._children_json(kid.phase, end, tasks, depth + 1)
                                       if tasks else [])})
        return shown

    def runs(self, fires: Iterable[Planned] | None = None
             ) -> Iterable[tuple[Phase, float | None, float | None, int, bool]]:
        """(phase, start, run, tasks, is a fire) of every fire that makes tasks and of
        their children, walked from their parents' expected end: the backlog's and the
        drawing's input."""
        paused = self.pauses.of_phase if self.pauses.rows else None
        for fire in self.fires if fires is None else fires:
            if fire.paused or not fire.tasks:
                continue
            yield fire.phase, fire.start, fire.run, fire.tasks, True
            end = fire.start + fire.run if fire.run is not None else None
            if paused is None:  # nothing can cut a tree: each phase's is worked out once
                key = (fire.phase.file_path, fire.phase.task)
                tree = self._trees.get(key)
                if tree is None:
                    tree = self._trees[key] = self._tree(fire.phase)
                for child, offset, run, times in tree:
                    yield (child, end + offset if end is not None and offset is not None
                           else None, run, fire.tasks * times, False)
                continue
            stack = [(fire.phase, end, fire.tasks, 1)]
            while stack:
                phase, start, parents, depth = stack.pop()
                if depth > MAX_DEPTH:
                    continue
                for kid in self.kids(phase):
                    if start is not None and paused(
                            kid.phase.file_path, kid.phase.task, _at(start)):
                        continue
                    tasks = parents * kid.per_parent
                    if not tasks:
                        continue
                    yield kid.phase, start, kid.run, tasks, False
                    stack.append((kid.phase, start + kid.run if start is not None
                                  and kid.run is not None else None, tasks, depth + 1))

    def _tree(self, phase: Phase) -> list[tuple[Phase, float | None, float | None, int]]:
        """A phase's descendants with no pause in force: (phase, start after the fire's
        expected end or None, run, tasks per task of the fire), as `runs` walks them."""
        tree: list[tuple[Phase, float | None, float | None, int]] = []
        stack: list[tuple[Phase, float | None, int, int]] = [(phase, 0.0, 1, 1)]
        while stack:
            parent, offset, times, depth = stack.pop()
            if depth > MAX_DEPTH:
                continue
            for kid in self.kids(parent):
                if kid.per_parent:
                    tree.append((kid.phase, offset, kid.run, times * kid.per_parent))
                    stack.append((kid.phase, offset + kid.run if offset is not None
                                  and kid.run is not None else None,
                                  times * kid.per_parent, depth + 1))
        return tree

    def shown(self, now: datetime, hours: int, *, file: str | None = None,
              topic: str | None = None) -> list[Planned]:
        """The fires of (now, now + hours], of one file or topic if given."""
        return [f for f in self.within(now, now + timedelta(hours=hours))
                if (file is None or f.phase.file_path == file)
                and (topic is None or f.phase.topic == topic)]

    def as_json(self, fires: Sequence[Planned] | None = None) -> dict[str, Any]:
        shown = self.fires if fires is None else fires
        return {"start": rfc3339(self.start), "end": rfc3339(self.end),
                "total": len(self.fires), "topics": self.topics,
                "fires": [self.fire_json(f) for f in shown],
                "warnings": [w.as_json() for w in self.warnings], "notes": self.notes}


# --- computing ---------------------------------------------------------------------------


def plan(phases: Sequence[Phase], *, now: datetime, hours: float, ctx: Context,
         pauses: Pauses, p50: Mapping[tuple[str, str], float],
         concurrency: Mapping[str, int] | None, notes: Sequence[str] = ()) -> Agenda:
    """The agenda of (now, now + hours] over `phases` (every stored phase, as the daemon
    schedules them). `concurrency`: per topic (a topic missing has no worker); None when
    it is not known (a redis bus): then no backlog is judged."""
    end = now + timedelta(hours=hours)
    fires: list[Planned] = []
    delays: dict[tuple[str, str, timedelta], timedelta] = {}
    for phase, slot in slots(phases, now, end, ctx.zone):
        rule = parse_rule(phase.rule)
        started = slot
        if rule.jitter is not None:  # jitter.start: the slot plus the phase's fixed delay
            key = (phase.file_path, phase.task, rule.jitter)
            if key not in delays:
                delays[key] = jitter_start(phase.file_path, phase.task, rule.jitter,
                                           EPOCH) - EPOCH
            started = slot + delays[key]
        paused = pauses.of_phase(phase.file_path, phase.task, slot) if pauses.rows else None
        tasks, error = 1, ""
        if paused is not None:
            tasks = 0
        elif is_batch(rule):  # the steps and meta rows its fire builds, counted
            try:
                tasks = len(fire_tasks(phase, slot, ctx))
            except BuildError as e:
                tasks, error = 0, str(e)
            except OverflowError:
                tasks, error = 0, "time out of range"
        fires.append(Planned(phase, slot, (started - EPOCH).total_seconds(),
                             paused.why() if paused else None, tasks, error,
                             p50.get((phase.file_path, phase.task))))
    fires.sort(key=lambda f: (f.start, f.slot, f.phase.file_path, f.phase.task))
    agenda = Agenda(now, end, fires, [], list(notes), children_of(phases, p50, ctx), pauses)
    counts: dict[str, dict[str, int]] = {}
    queues: dict[str, list[tuple[float, float | None, int]]] = {}
    for phase, start, run, tasks, is_fire in agenda.runs():
        topic = phase.topic
        seen = counts.setdefault(topic, {"fires": 0, "tasks": 0})
        seen["fires"] += is_fire
        seen["tasks"] += tasks
        if start is not None:
            queues.setdefault(topic, []).append((start, run, tasks))
    agenda.topics = dict(sorted(counts.items()))
    if concurrency is not None:
        agenda.warnings = warnings(queues, concurrency)
    return agenda


def slots(phases: Sequence[Phase], now: datetime, end: datetime, zone: tzinfo
          ) -> list[tuple[Phase, datetime]]:
    """Every (phase, slot) due in (now, end], from the daemon's `Scheduler` started at
    `now` with no history (nothing caught up) and asked once what is due by `end`.
    Phases whose rules parse to the same schedule have the same slots: the scheduler
    is given one of them (it drops the error phases and those without a cron rule as it
    does in the daemon), and its slots go to all of them."""
    groups: dict[tuple[object, bool], list[Phase]] = {}
    for phase in phases:
        if phase.rule:
            key = (parse_rule(phase.rule).cron, phase.severity == "error")
            if key[0] is not None:
                groups.setdefault(key, []).append(phase)
    scheduler = Scheduler(zone)  # the daemon's: its DST policy, its zone
    stand_ins = {(str(n), ""): group for n, group in enumerate(groups.values())}
    scheduler.start([group[0]._replace(file_path=key[0], task=key[1])
                     for key, group in stand_ins.items()], now, {})
    return [(phase, due.slot) for due in scheduler.due(end, 0.0)
            for phase in stand_ins[(due.phase.file_path, due.phase.task)]]


def children_of(phases: Sequence[Phase], p50: Mapping[tuple[str, str], float],
                ctx: Context) -> Callable[[Phase], list[Kid]]:
    """A phase → its children (phases of its file whose dependsOn names it, as
    flowlord/graph.py `edges` pairs them; error phases never run), worked out per file
    on first use and kept."""
    by_file: dict[str, list[Phase]] = {}
    for p in phases:
        if p.depends_on:
            by_file.setdefault(p.file_path, [])
    if by_file:
        for p in phases:
            if p.file_path in by_file:
                by_file[p.file_path].append(p)
    found: dict[str, dict[str, list[Kid]]] = {}

    def kids(phase: Phase) -> list[Kid]:
        of_file = found.get(phase.file_path)
        if of_file is None:
            of_file = found[phase.file_path] = {}
            group = by_file.get(phase.file_path, [])
            named = {p.task: p for p in group}
            for parent, child in edges((p.task, p.depends_on) for p in group):
                kid = named[child]
                if kid.severity != "error":
                    of_file.setdefault(parent, []).append(_kid(kid, p50, ctx))
        return of_file.get(phase.task, [])

    return kids


def _kid(phase: Phase, p50: Mapping[tuple[str, str], float], ctx: Context) -> Kid:
    rule = parse_rule(phase.rule)
    rows, error = 1, ""
    if rule.meta or rule.meta_file:  # one child per meta row, as flowlord/outcomes.py
        try:
            rows = len(meta_rows(rule, ctx.meta_dir))
        except BuildError as e:
            rows, error = 0, str(e)
    return Kid(phase, phase.topic, p50.get((phase.file_path, phase.task)), rows, error)


def warnings(queues: Mapping[str, list[tuple[float, float | None, int]]],
             concurrency: Mapping[str, int]) -> list[Warning]:
    """Each topic's expected tasks queued first come, first served on its concurrency:
    a `Backlog` for every stretch in which some wait; `NoWorker` for a topic without
    one."""
    found: list[Warning] = []
    for topic, items in sorted(queues.items()):
        width = concurrency.get(topic)
        if width is None:
            found.append(NoWorker(topic, sum(n for _, _, n in items), min(s for s, _, _ in items)))
            continue
        found += _backlogs(topic, sorted(items, key=lambda i: i[0]), width)
    found.sort(key=lambda w: (w.first_due, w.topic))
    return found


def _backlogs(topic: str, items: list[tuple[float, float | None, int]], width: int
              ) -> list[Backlog]:
    """First come, first served on `width` workers (`busy`: the (end, due, run) of the
    tasks running). Start times never go backwards, so a task that finds a worker free
    finds the queue empty. A stretch opens with the first task that must wait, counting
    the tasks running then, and closes when a task finds a worker free again."""
    busy: list[tuple[float, float, float | None]] = []
    found: list[Backlog] = []
    stretch: _Stretch | None = None
    for due, run, count in items:
        for _ in range(count):
            while busy and busy[0][0] <= due:
                heapq.heappop(busy)
            if len(busy) < width:
                if stretch is not None:
                    found.append(stretch.close(topic, width))
                    stretch = None
                begin = due
            else:
                if stretch is None:
                    stretch = _Stretch(min(d for _, d, _ in busy), [r for _, _, r in busy])
                begin = heapq.heappop(busy)[0]
                stretch.add(due, begin, run)
            heapq.heappush(busy, (begin + (run or 0.0), due, run))
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
    phases = store.phases()
    pauses = Pauses.read(store, now)
    width, notes = concurrency_of(config, given)
    ctx = Context(config.zone(), meta_dir(config.workflows), now)
    agenda = plan(phases, now=now, hours=hours, ctx=ctx, pauses=pauses,
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


# --- words -----------------------------------------------------------------------------


def _at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def _text(seconds: float | None) -> str | None:
    return None if seconds is None else rfc3339_ms(_at(seconds))


def _hhmm(seconds: float, day: date | None = None) -> str:
    """'00:32' (UTC); with the date when it is not on `day`."""
    when = _at(seconds)
    return when.strftime("%H:%M" if day is None or when.date() == day else "%b %d %H:%M")


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
