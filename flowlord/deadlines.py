"""Deadlines (README.md, Alerts and notifications): a phase with `deadline=<duration>`
gets one `late` alert per slot that is not complete by slot + deadline, whether its
task runs on, waits, failed, or the slot was never fired (the daemon was down), was
paused, or skipped by overlap=skip.

Cheap, as the scheduler is: a heap of each deadline phase's next slot + deadline.
When one comes due, the phase's slots since the last look, up to now less its
deadline, are enumerated by the scheduler's own code (flowlord/scheduler.py,
`newest_slots` and `slot_after`, the code that fires them) and each is looked up in
the ledger and its tasks. The unique index `alerts_late` (migration 20) makes a slot
late once ever, so a restart may look at a slot again.

At start the daemon looks back at the slots of the last LOOKBACK (a day), newest
`limit` ([catchup_limit], 100) per phase, but not before the first daemon run this
database remembers (`daemon_runs`: a slot before any daemon ran was missed by
nobody), and only for a phase that has fired before (one that never fired is taken
for new, followed from now). The rule is today's: a rule changed while the daemon
was stopped is judged by its new slots over the whole look back. A
phase added or changed while the daemon runs is followed from then on. A standby
(redis bus, no lease) fires nothing and looks at nothing; once it leads, it follows
slots from then on.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import apsw

from flowlord import metrics
from flowlord.clock import Clock, parse_iso, rfc3339, rfc3339_ms
from flowlord.cron import CronSchedule
from flowlord.durations import format_duration
from flowlord.model import Phase, split_task
from flowlord.rules import parse_rule
from flowlord.scheduler import Scheduler
from flowlord.store import Store, write_txn
from flowlord.store import alerts as alert_rows

LOOKBACK = timedelta(days=1)
PhaseKey = tuple[str, str]


@dataclass(slots=True)
class _Watch:
    phase: Phase
    schedule: CronSchedule
    deadline: timedelta
    through: datetime  # the slots up to it (UTC) have been looked at
    seq: int = 0


# (slot, task named or None, message, task that completed it after the deadline or None)
_Late = tuple[str, int | None, str, int | None]


class Deadlines:
    def __init__(self, store: Store, scheduler: Scheduler, clock: Clock, log: Any,
                 limit: int = 100) -> None:
        self.store = store
        self.scheduler = scheduler
        self.clock = clock
        self.log = log
        self.limit = limit
        self.watches: dict[PhaseKey, _Watch] = {}
        self._heap: list[tuple[datetime, int, PhaseKey]] = []
        self._seq = 0
        self.loaded = False  # the deadline phases are read (again after forget())
        self.first = True  # the first read looks back (LOOKBACK)

    def forget(self) -> None:
        """The workflow rows changed: read the deadline phases again."""
        self.loaded = False

    def check(self, now: datetime, leading: bool) -> None:
        if not leading:  # a standby: nothing it fires is here to look at
            self.watches, self._heap, self.loaded, self.first = {}, [], False, False
            return
        if not self.loaded:
            self._load(now)
        due: list[_Watch] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            watch = self.watches.get(key)
            if watch is not None and watch.seq == seq:
                due.append(watch)
        if not due:
            return
        found = [(w, now - w.deadline, self._late(w, now - w.deadline)) for w in due]
        created = rfc3339(now)
        conn = self.store.conn
        added: list[tuple[_Watch, _Late]] = []
        try:
            with write_txn(conn):
                for watch, _, lates in found:
                    topic, job = split_task(watch.phase.task)
                    for slot, task_no, message, done_by in lates:
                        key = (watch.phase.file_path, watch.phase.task)
                        if alert_rows.add_slot_alert(conn, "late", *key, slot, topic, job,
                                                     message, created, task_no):
                            added.append((watch, (slot, task_no, message, done_by)))
                        if done_by is not None:
                            alert_rows.add_slot_alert(
                                conn, "recovered", *key, slot, topic, job,
                                f"task {done_by}: its slot {slot}, late, is complete",
                                created, done_by)
        except (apsw.BusyError, apsw.FullError) as e:
            for watch in due:
                self._push(watch, now)  # looked at again next turn
            if isinstance(e, apsw.FullError):  # the turn ends (flowlord/disk_full.py)
                raise
            return
        for watch, (slot, task_no, message, _) in added:
            metrics.ALERTS.labels("late").inc()
            self.log.warning("slot late", file=watch.phase.file_path, phase=watch.phase.task,
                             slot=slot, task_no=task_no, message=message)
        for watch, upto, _ in found:
            watch.through = max(watch.through, upto)
            self._schedule(watch)

    def _load(self, now: datetime) -> None:
        conn = self.store.conn
        old, self.watches = self.watches, {}
        started = alert_rows.first_run(conn) if self.first else None
        first_run = parse_iso(started) if started else now  # no daemon ran: nothing missed
        for phase in alert_rows.deadline_phases(conn):
            rule = parse_rule(phase.rule)
            if rule.cron is None or rule.deadline is None:
                continue
            key = (phase.file_path, phase.task)
            before = old.get(key)
            if before is not None and before.phase.rule == phase.rule:
                before.phase = phase
                self.watches[key] = before
                continue
            since = now
            if self.first and alert_rows.has_fired(conn, *key):
                since = max(now - LOOKBACK, first_run)
            watch = _Watch(phase, rule.cron, rule.deadline, since)
            self.watches[key] = watch
            self._schedule(watch)
        self.loaded, self.first = True, False

    def _late(self, watch: _Watch, upto: datetime) -> list[_Late]:
        """The slots in (through, upto] not complete by their deadline, without their
        `late` alert yet."""
        if upto <= watch.through:
            return []
        slots = [rfc3339(s) for s in self.scheduler.newest_slots(
            watch.schedule, watch.through, upto, self.limit)]
        conn = self.store.conn
        key = (watch.phase.file_path, watch.phase.task)
        have = alert_rows.late_slots(conn, *key, slots)
        late = []
        for slot in slots:
            if slot in have:
                continue
            bound = parse_iso(slot) + watch.deadline
            state = alert_rows.slot_state(conn, *key, slot, rfc3339_ms(bound))
            if state.done_by:
                continue
            done_by = None
            if state.fire_error is None:
                why = "never fired (the daemon was not running, or did not catch it up)"
            elif state.tasks == 0:
                why = state.fire_error or "fired with no task"
            elif state.open_task is not None:
                why = f"task {state.open_task} {state.open_state}"
            else:
                why = "complete only after its deadline"
                done_by = state.last_task
            message = (f"slot {slot} not complete {format_duration(watch.deadline)} "
                       f"after it: {why}")
            late.append((slot, state.open_task, message, done_by))
        return late

    def _schedule(self, watch: _Watch) -> None:
        slot = self.scheduler.slot_after(watch.schedule, watch.through)
        if slot is not None:
            self._push(watch, slot + watch.deadline)

    def _push(self, watch: _Watch, due: datetime) -> None:
        self._seq += 1
        watch.seq = self._seq
        heapq.heappush(self._heap, (due, self._seq, (watch.phase.file_path, watch.phase.task)))
