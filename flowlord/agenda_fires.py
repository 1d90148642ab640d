"""The agenda's fires and children (flowlord/agenda.py shapes and queues them).

Every cron slot due in a window is found by the code that fires it: a `Scheduler` (the
daemon's, flowlord/scheduler.py, with the DST policy of flowlord/cron.py) started at the
window's start with no history, asked once what is due by its end. Phases whose rules
parse to the same schedule have the same slots, so the scheduler is given one phase per
schedule and each slot goes to every phase of it; each rule is parsed once, not once a
fire. A fire's start is its slot plus the phase's jitter (flowlord/jitter.py `delay`,
computed once a phase), its pause the one the ledger would record (flowlord/ledger.py
`build`: `Pauses.of_phase` at the slot), its tasks those `build_fire` makes
(flowlord/tasks.py: a batch phase's steps and meta rows are built and counted; a plain
phase makes one).

The children are the phases whose dependsOn names the fired phase, as the daemon finds
them when a task completes (flowlord/loader.py `Loader.children`), indexed in one pass
over the phases (`Children`), each child's meta rows read once.

Times are floats, seconds since the epoch: a start is the slot's and the jitter's whole
microseconds added, then divided, which is what `(slot + delay - EPOCH).total_seconds()`
gives, without a datetime per fire.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple

from flowlord.clock import rfc3339_ms
from flowlord.cron import CronSchedule
from flowlord.jitter import delay
from flowlord.model import Phase, split_task
from flowlord.pauses import Pauses
from flowlord.rules import Rule, parse_rule
from flowlord.scheduler import Scheduler
from flowlord.tasks import BuildError, Context, fire_tasks, is_batch, meta_rows

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

@dataclass(eq=False, slots=True)
class Kid:
    """A child phase of a fired phase, with what its walk needs, worked out once."""

    phase: Phase
    topic: str
    run: float | None  # p50 seconds
    per_parent: int  # tasks made per completed parent task (its meta rows, else 1)
    error: str  # why it makes none (a meta-file that cannot be read)
    kids: Sequence[Kid] = ()  # its own children: the walk follows them, no lookup


class Planned(NamedTuple):
    """One cron slot due in the window."""

    phase: Phase
    slot: datetime  # UTC
    start: float  # epoch seconds: the slot plus the phase's jitter
    paused: str | None  # the pause the ledger would record (its why), or None
    tasks: int  # tasks its fire makes (0 when paused, or its tasks cannot be built)
    error: str  # why its fire would make no task ('' for none, or when paused)
    run: float | None  # p50 seconds from history; None: unknown


def fires(phases: Sequence[Phase], now: datetime, end: datetime, ctx: Context,
          pauses: Pauses, p50: Mapping[tuple[str, str], float]) -> tuple[list[Planned], float]:
    """Every fire of `phases` due in (now, end], in start order (then slot, file, task),
    and the most seconds any of them starts after its slot (its phase's jitter)."""
    by_rule: dict[str, list[Phase]] = {}
    for phase in phases:
        if phase.rule and phase.severity != "error":  # the Scheduler skips error phases
            by_rule.setdefault(phase.rule, []).append(phase)
    by_cron: dict[CronSchedule, list[tuple[Rule, list[Phase]]]] = {}
    for text, members in by_rule.items():
        rule = parse_rule(text)
        if rule.cron is not None:
            by_cron.setdefault(rule.cron, []).append((rule, members))
    paused_at = pauses.of_phase if pauses.rows else None
    delays: dict[tuple[str, str], int] = {}  # a phase's jitter in microseconds
    found: list[Planned] = []
    for slot, rules in slots(by_cron, now, end, ctx.zone):
        at = (slot - EPOCH) // _MICRO
        for rule, members in rules:
            batch = is_batch(rule)
            for phase in members:
                key = (phase.file_path, phase.task)
                start = at
                if rule.jitter is not None:
                    shift = delays.get(key)
                    if shift is None:
                        shift = delays[key] = delay(*key, rule.jitter) // _MICRO
                    start += shift
                paused = paused_at(*key, slot) if paused_at is not None else None
                tasks, error = 1, ""
                if paused is not None:
                    tasks = 0
                elif batch:  # the steps and meta rows its fire builds, counted
                    tasks, error = _batch(phase, slot, ctx)
                found.append(Planned(phase, slot, start / 1_000_000,
                                     paused.why() if paused else None, tasks, error,
                                     p50.get(key)))
    found.sort(key=lambda f: (f.start, f.slot, f.phase.file_path, f.phase.task))
    return found, max(delays.values(), default=0) / 1_000_000


def _batch(phase: Phase, slot: datetime, ctx: Context) -> tuple[int, str]:
    try:
        return len(fire_tasks(phase, slot, ctx)), ""
    except BuildError as e:
        return 0, str(e)
    except OverflowError:
        return 0, "time out of range"


def slots(by_cron: Mapping[CronSchedule, list[tuple[Rule, list[Phase]]]], now: datetime,
          end: datetime, zone: tzinfo) -> Iterator[tuple[datetime, list[tuple[Rule, list[Phase]]]]]:
    """Each slot due in (now, end] with the rules (and their phases) that fire at it,
    from the daemon's `Scheduler` started at `now` with no history (nothing caught up)
    and asked once what is due by `end`: it is given one stand-in phase per schedule."""
    scheduler = Scheduler(zone)  # the daemon's: its DST policy, its zone
    stand_ins = {str(n): rules for n, rules in enumerate(by_cron.values())}
    scheduler.start([rules[0][1][0]._replace(file_path=n, task="")
                     for n, rules in stand_ins.items()], now, {})
    for due in scheduler.due(end, 0.0):
        yield due.slot, stand_ins[due.phase.file_path]


class Children:
    """(file, task) → its child phases, as `Loader.children` (flowlord/loader.py) finds
    them when a task completes: the phases of the same file whose dependsOn names the
    task's topic with no job or with its job, in file order; error phases never run.
    Every `Kid` is made and linked to its own children in two passes over the phases (a
    rule's meta rows read once). The children naming one topic of a file are one list,
    shared by all its tasks unless some name a job (`_jobs`): few objects are kept, as
    the HTTP side keeps the agenda and the cycle collector walks them."""

    def __init__(self, phases: Sequence[Phase], p50: Mapping[tuple[str, str], float],
                 ctx: Context) -> None:
        rows: dict[str, tuple[int, str]] = {"": (1, "")}  # rule → per parent task, error
        self._named: dict[tuple[str, str], list[Kid]] = {}  # (file, topic named) → kids
        self._jobs: set[tuple[str, str]] = set()  # of those, where some name a job too
        self._found: dict[tuple[str, str], Sequence[Kid]] = {}  # (file, task) there
        made: list[Kid] = []
        for p in phases:
            if p.depends_on and p.severity != "error":
                per = rows.get(p.rule)
                if per is None:
                    per = rows[p.rule] = _per_parent(p.rule, ctx)
                kid = Kid(p, split_task(p.task)[0], p50.get((p.file_path, p.task)), *per)
                made.append(kid)
                topic, job = split_task(p.depends_on)
                named = self._named.get((p.file_path, topic))
                if named is None:
                    self._named[(p.file_path, topic)] = [kid]
                else:
                    named.append(kid)
                if job:
                    self._jobs.add((p.file_path, topic))
        for kid in made:  # linked once all are made: a cycle is only cut by depth
            kid.kids = self.of(kid.phase.file_path, kid.phase.task)

    def of(self, file_path: str, task: str) -> Sequence[Kid]:
        topic, job = split_task(task)
        named = self._named.get((file_path, topic))
        if named is None or (file_path, topic) not in self._jobs:
            return named or ()
        found = self._found.get((file_path, task))
        if found is None:
            found = self._found[(file_path, task)] = [
                k for k in named if split_task(k.phase.depends_on)[1] in ("", job)]
        return found


def _per_parent(rule_text: str, ctx: Context) -> tuple[int, str]:
    """Tasks a child makes per completed parent task: one per meta row, as
    flowlord/outcomes.py makes them, else one; none, and why, when they cannot be read."""
    rule = parse_rule(rule_text)
    if not (rule.meta or rule.meta_file):
        return 1, ""
    try:
        return len(meta_rows(rule, ctx.meta_dir)), ""
    except BuildError as e:
        return 0, str(e)


def at(seconds: float) -> datetime:
    """Epoch seconds → a UTC datetime."""
    return EPOCH + timedelta(seconds=seconds)


def text(seconds: float | None) -> str | None:
    """Epoch seconds → RFC 3339 with milliseconds; None stays None."""
    return None if seconds is None else rfc3339_ms(at(seconds))
