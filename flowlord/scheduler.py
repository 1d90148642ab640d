"""When each cron phase fires: a heap of next slots, and the catch-up policy.

The heap holds groups, not phases: the phases queued together for one slot (at a
start, those whose first slot it is; later, those due together whose next slot it is)
are one item, popped once, and the slot is the group's: phases that move on together
are queued again whole. 100,000 phases sharing a few rules are a few items; 10,000 due
at one second are one pop, not 10,000 (bench/daemon.py, the warm start and the burst).

Pure logic: time is always an argument. The daemon asks `due(now, monotonic)`
for the slots to fire, writes them through the fire ledger (whose unique key
is the last word on exactly-once), and sleeps until `next_deadline()`.

Which missed slots fire (`catchup`; README.md, Scheduling, exactly once):

* slots that came due while this scheduler ran fire, even late (a busy disk or
  a locked database delays them; it does not drop them);
* slots missed while no daemon ran (at start: every slot after the phase's
  last fire in the ledger) or jumped over by a forward clock step follow the
  phase's policy: `none` skips them, `last` fires the newest, `all` fires
  them all, the newest `limit` when there are more.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import NamedTuple

from flowlord.clock import rfc3339
from flowlord.cron import CronError, CronSchedule, next_fire
from flowlord.model import FireSource, Phase
from flowlord.rules import parse_rule

CLOCK_STEP = 2.0  # seconds the wall clock may run ahead of elapsed time before it counts as a step
_MICROSECOND = timedelta(microseconds=1)
PhaseKey = tuple[str, str]  # (file_path, task)
# each phase's last slot fired by the scheduler, or a function that reads them
LastFires = Mapping[PhaseKey, datetime] | Callable[[], Mapping[PhaseKey, datetime]]
_Plan = tuple[CronSchedule, str, datetime | None, str | None]  # schedule, policy, slot, text


class Due(NamedTuple):
    phase: Phase
    slot: datetime  # UTC
    source: FireSource  # 'cron' or 'catchup'


class _Entry(NamedTuple):
    """One per scheduled phase: 100,000 of them. A tuple, replaced whole when its slot
    or phase changes: built with tuple.__new__, it costs a start a fifth of what a
    slotted dataclass's __init__ did (bench/daemon.py, the warm start)."""

    phase: Phase
    schedule: CronSchedule
    catchup: str
    # of the group it is queued in, whose slot is its next (`_slots`; none: the rule
    # never fires again): an entry replaced leaves its group
    seq: int = 0


_new = tuple.__new__


@lru_cache(maxsize=1024)  # the phases due together share their slot's text
def parse_slot(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class Scheduler:
    def __init__(self, zone: tzinfo, *, catchup: str = "none", limit: int = 100) -> None:
        self.zone = zone
        self.default_catchup = catchup
        self.limit = limit
        self._entries: dict[PhaseKey, _Entry] = {}
        self._by_file: dict[str, set[str]] = {}  # file → its scheduled tasks
        # (slot, seq) of each group queued; seq → the keys queued in it, in their order.
        # A key whose entry has another seq now left the group: it is passed over, and
        # a group none of whose keys is left is dropped when it comes to the top.
        self._heap: list[tuple[datetime, int]] = []
        self._groups: dict[int, list[PhaseKey]] = {}
        self._slots: dict[int, datetime] = {}  # seq → the slot its group is queued for
        # slot → its group that phases queued for it later join (a refresh adding 10,000
        # phases of one rule makes one group, not 10,000)
        self._open: dict[datetime, int] = {}
        self._seq = 0
        self._seen: tuple[datetime, float] | None = None  # (wall, monotonic) of the last due()
        self.replanned: list[PhaseKey] = []  # of the last start: phases whose plan it changed

    def __len__(self) -> int:
        return len(self._entries)

    # --- what is scheduled ----------------------------------------------------------

    def start(self, phases: Iterable[Phase], now: datetime, last_fires: LastFires,
              stored: Iterable[str | None] | None = None) -> list[Due]:
        """Schedule every phase after a (re)start; the slots missed since each phase's
        last fire in the ledger are caught up by its policy. `last_fires` may be a
        function that reads them: it is called only if some phase's policy catches up
        (with `catchup = none` nobody needs the ledger's history). `stored`: beside
        each phase, its plan as stored (its next slot as `rfc3339` text, or None); the
        phases whose plan this start changes are then in `replanned`, in their order."""
        due: list[Due] = []
        self.replanned = replanned = []
        # A start schedules 100,000 phases, which usually share far fewer rules: what a
        # rule means (its schedule, policy, first slot after now and that slot's text,
        # and the group of that slot) is worked out once per rule text, and so are the
        # slots caught up after one last fire; each phase costs only its entry and its
        # place in its group. Each slot is one group, its phases in their order.
        plans: dict[str, tuple[CronSchedule, str, datetime | None, str | None, int,
                               list[PhaseKey]] | None] = {}
        groups: dict[datetime | None, tuple[int, list[PhaseKey]]] = {}
        caught: dict[tuple[str, str, datetime], list[datetime]] = {}
        last: Mapping[PhaseKey, datetime] | None = (
            last_fires if isinstance(last_fires, Mapping) else None)
        entries = self._entries
        file: str | None = None
        tasks: set[str] = set()
        pairs = (((p, None) for p in phases) if stored is None
                 else zip(phases, stored, strict=True))
        for phase, planned in pairs:
            rule = phase.rule
            plan = None if phase.severity == "error" else (
                plans[rule] if rule in plans else plans.setdefault(
                    rule, self._grouped(self._plan(rule, now), groups)))
            if plan is None:
                if planned is not None:
                    replanned.append((phase.file_path, phase.task))
                continue
            schedule, catchup, slot, text, seq, members = plan
            key = (phase.file_path, phase.task)
            if planned != text and stored is not None:
                replanned.append(key)
            if catchup != "none":
                if last is None:
                    last = last_fires() if callable(last_fires) else last_fires
                after = last.get(key)
                if after is not None and after < now:
                    memo = (schedule.expr, catchup, after)
                    if memo not in caught:
                        caught[memo] = self._missed(schedule, catchup, after, now)
                    due += [Due(phase, s, "catchup") for s in caught[memo]]
            entries[key] = _new(_Entry, (phase, schedule, catchup, seq))
            members.append(key)
            if key[0] != file:  # phases come file by file: one set lookup per file
                file = key[0]
                tasks = self._by_file.setdefault(file, set())
            tasks.add(key[1])
        for slot, (seq, members) in groups.items():
            if slot is not None and members:
                self._groups[seq], self._slots[seq] = members, slot
                self._open.setdefault(slot, seq)
                self._heap.append((slot, seq))
        heapq.heapify(self._heap)
        return due

    def _grouped(self, plan: _Plan | None, groups: dict[datetime | None, tuple[
            int, list[PhaseKey]]]) -> tuple[CronSchedule, str, datetime | None, str | None,
                                            int, list[PhaseKey]] | None:
        """A rule's plan with the group of its slot (made on the slot's first rule)."""
        if plan is None:
            return None
        slot = plan[2]
        if slot not in groups:
            self._seq += 1
            groups[slot] = (self._seq, [])
        return (*plan, *groups[slot])

    def update(self, files: Mapping[str, list[Phase]], now: datetime) -> list[PhaseKey]:
        """Reschedule the phases of changed files (file key → its phases now; an empty list
        for a removed file). A phase whose rule is unchanged keeps its next slot; a new or
        changed rule starts now, or from the old rule's next slot if that is still due.
        Returns the keys whose plan changed."""
        changed: list[PhaseKey] = []
        for file_path, phases in files.items():
            old = {(file_path, t): self._entries[(file_path, t)]
                   for t in self._by_file.get(file_path, ())}
            for phase in phases:
                key = (file_path, phase.task)
                before = old.pop(key, None)
                if before and before.phase.rule == phase.rule and phase.severity != "error":
                    self._entries[key] = before._replace(phase=phase)  # in its group still
                    continue
                entry = self._entry(phase)
                if before:
                    self._remove(key)
                    changed.append(key)
                if entry is None:
                    continue
                was = None if before is None else self._slots.get(before.seq)
                start = now if was is None else min(now, was - _MICROSECOND)
                self._by_file.setdefault(file_path, set()).add(phase.task)
                self._queue([(key, entry)], self._next(entry, start))
                changed.append(key)
            for key in old:  # phases that are gone
                self._remove(key)
                changed.append(key)
        return list(dict.fromkeys(changed))

    def phase_keys(self) -> list[PhaseKey]:
        return list(self._entries)

    def next_slot(self, key: PhaseKey) -> datetime | None:
        entry = self._entries.get(key)
        return self._slots.get(entry.seq) if entry else None

    def coming(self, until: datetime) -> list[tuple[Phase, datetime]]:
        """Each phase's next slot if it is due by `until`, as things stand (nothing
        advances): what the ledger may build ahead (flowlord/ahead.py)."""
        heap, entries, found = self._heap, self._entries, []
        below = [0] if heap else []  # a heap's children come no sooner: only the items
        while below:  # due by `until` and their children are looked at
            i = below.pop()
            slot, seq = heap[i]
            if slot > until:
                continue
            for key in dict.fromkeys(self._groups.get(seq, ())):  # once each (see due)
                entry = entries.get(key)
                if entry is not None and entry.seq == seq:
                    found.append((entry.phase, slot))
            below += [c for c in (2 * i + 1, 2 * i + 2) if c < len(heap)]
        return found

    def next_deadline(self) -> datetime | None:
        while self._heap:
            slot, seq = self._heap[0]
            if self._holds_any(seq):
                return slot
            heapq.heappop(self._heap)  # every phase of it was rescheduled or removed
        return None

    def _holds_any(self, seq: int) -> bool:
        """Whether some phase is still queued in group `seq`. The keys found gone are
        dropped from its end as they are looked at, so each is looked at once."""
        members = self._groups.get(seq)
        while members:
            entry = self._entries.get(members[-1])
            if entry is not None and entry.seq == seq:
                return True
            members.pop()
        self._groups.pop(seq, None)
        self._close(seq, self._slots.pop(seq, None))
        return False

    def _close(self, seq: int, slot: datetime | None) -> None:
        """No phase joins group `seq` from now on (it is due, or empty)."""
        if slot is not None and self._open.get(slot) == seq:
            del self._open[slot]

    # --- what is due ----------------------------------------------------------------

    def due(self, now: datetime, monotonic: float) -> list[Due]:
        """Every slot due by `now`, each once; advances the schedule past them."""
        real_now = now
        if self._seen is not None:
            wall, mono = self._seen
            elapsed = timedelta(seconds=max(0.0, monotonic - mono))
            ahead = (now - wall).total_seconds() - elapsed.total_seconds()
            if ahead > CLOCK_STEP:
                real_now = wall + elapsed  # what lies beyond was jumped over by a clock step
            elif ahead < -CLOCK_STEP:
                self._restart_from(now)  # stepped back: plan from the new now (the ledger
                # refuses any slot that fired before the step)
        self._seen = (now, monotonic)
        due: list[Due] = []
        # phases due together usually share their rule: each rule's next slot after a
        # time is computed once (10,000 phases due at one second, one computation)
        nexts: dict[tuple[str, datetime], datetime | None] = {}

        def after(entry: _Entry, time: datetime) -> datetime | None:
            memo = (entry.schedule.expr, time)
            if memo not in nexts:
                nexts[memo] = self._next(entry, time)
            return nexts[memo]

        entries = self._entries
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, seq = heapq.heappop(self._heap)
            first = self._slots.pop(seq)
            self._close(seq, first)
            # each schedule's slots due from the group's slot, and its next slot after
            # them, worked out once: a group's phases mostly share one schedule
            steps: dict[int, tuple[list[datetime], datetime | None]] = {}
            nexts_of: dict[datetime | None, list[tuple[PhaseKey, _Entry]]] = {}
            # once each: a phase that left the group and was queued again for its slot
            # (its rule edited, its file removed and put back) is in its list twice
            for key in dict.fromkeys(self._groups.pop(seq)):
                entry = entries.get(key)
                if entry is None or entry.seq != seq:  # left the group
                    continue
                step = steps.get(id(entry.schedule))
                if step is None:
                    slots: list[datetime] = []
                    slot: datetime | None = first
                    while slot is not None and slot <= real_now:
                        slots.append(slot)
                        slot = after(entry, slot)
                    step = steps[id(entry.schedule)] = (slots, slot)
                slots, slot = step
                phase = entry.phase
                due += [_new(Due, (phase, s, "cron")) for s in slots]
                if slot is not None and slot <= now:  # beyond a clock step: its policy
                    due += self._catch_up(entry, slot - _MICROSECOND, now)
                    slot = after(entry, now)
                if slot in nexts_of:
                    nexts_of[slot].append((key, entry))
                else:
                    nexts_of[slot] = [(key, entry)]
            if not nexts_of:  # next_deadline found one left; none now is no harm
                continue
            (slot, members), *others = nexts_of.items()
            if not others and slot is not None and slot not in self._open:  # the usual:
                self._groups[seq] = [key for key, _ in members]  # all move on together,
                self._slots[seq] = slot  # as they were
                self._open[slot] = seq
                heapq.heappush(self._heap, (slot, seq))
                continue
            for slot, members in nexts_of.items():  # already in _by_file
                self._queue(members, slot)
        return due

    # --- helpers --------------------------------------------------------------------

    def _entry(self, phase: Phase) -> _Entry | None:
        if phase.severity == "error":
            return None
        rule = parse_rule(phase.rule)
        if rule.cron is None:
            return None
        return _Entry(phase, rule.cron, rule.catchup or self.default_catchup)

    def _plan(self, rule_text: str, now: datetime) -> _Plan | None:
        """A rule's schedule, catch-up policy, first slot after `now` and its text; None
        when it has no valid cron."""
        rule = parse_rule(rule_text)
        if rule.cron is None:
            return None
        slot = self._next_after(rule.cron, now)
        return (rule.cron, rule.catchup or self.default_catchup, slot,
                None if slot is None else rfc3339(slot))

    def _next(self, entry: _Entry, after: datetime) -> datetime | None:
        return self._next_after(entry.schedule, after)

    def _queue(self, members: list[tuple[PhaseKey, _Entry]], slot: datetime | None) -> None:
        """The entries (in `_entries` anew) queued at `slot`, in their order: at the end
        of the group open for it, else as a new one; the groups they were in pass them
        over from now on. With no slot (the rule never fires again) they stay
        scheduled, in no group."""
        seq = None if slot is None else self._open.get(slot)
        if seq is None:
            self._seq += 1
            seq = self._seq
            if slot is not None:
                self._groups[seq], self._slots[seq], self._open[slot] = [], slot, seq
                heapq.heappush(self._heap, (slot, seq))
        entries = self._entries
        for key, entry in members:
            entries[key] = _new(_Entry, (entry.phase, entry.schedule, entry.catchup, seq))
        if slot is not None:
            self._groups[seq] += [key for key, _ in members]

    def _restart_from(self, now: datetime) -> None:
        self._heap, self._groups, self._slots, self._open = [], {}, {}, {}
        by_slot: dict[datetime | None, list[tuple[PhaseKey, _Entry]]] = {}
        for key, entry in self._entries.items():
            by_slot.setdefault(self._next(entry, now), []).append((key, entry))
        for slot, members in by_slot.items():
            self._queue(members, slot)

    def _remove(self, key: PhaseKey) -> None:
        del self._entries[key]  # its heap item is dropped when it surfaces
        tasks = self._by_file[key[0]]
        tasks.discard(key[1])
        if not tasks:
            del self._by_file[key[0]]

    def _catch_up(self, entry: _Entry, after: datetime, upto: datetime) -> list[Due]:
        return [_new(Due, (entry.phase, s, "catchup"))
                for s in self._missed(entry.schedule, entry.catchup, after, upto)]

    def _missed(self, schedule: CronSchedule, catchup: str, after: datetime,
                upto: datetime) -> list[datetime]:
        """The slots in (after, upto] that a policy fires."""
        if catchup == "none":
            return []
        wanted = 1 if catchup == "last" else self.limit
        return self.newest_slots(schedule, after, upto, wanted)

    def newest_slots(self, schedule: CronSchedule, after: datetime, upto: datetime,
                     n: int) -> list[datetime]:
        """The newest `n` slots in (after, upto], oldest first. Searches back from `upto`
        in growing windows, so a long outage of a per-second rule costs little."""
        window = timedelta(minutes=1)
        while True:
            start = max(after, upto - window)
            slots: list[datetime] = []
            slot = self._next_after(schedule, start)
            while slot is not None and slot <= upto:
                slots.append(slot)
                slot = self._next_after(schedule, slot)
            if len(slots) >= n or start == after:
                return slots[-n:]
            window *= 4

    def slot_after(self, schedule: CronSchedule, after: datetime) -> datetime | None:
        """The first slot of a schedule after `after` (UTC), as the schedule fires it;
        None: never again. For those who follow slots without firing them
        (flowlord/deadlines.py)."""
        return self._next_after(schedule, after)

    def _next_after(self, schedule: CronSchedule, after: datetime) -> datetime | None:
        try:
            return next_fire(schedule, after, self.zone).astimezone(UTC)
        except CronError:
            return None
