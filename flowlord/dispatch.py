"""Between the database and the bus: claim due tasks for workers, record their results
with what the results lead to (children, retries, alerts), each in one transaction.

Runs on the daemon's loop, the only writer. A locked database delays this work;
results wait in `pending` and are recorded on a later turn.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw

from flowlord.bus import Bus
from flowlord.durations import format_duration
from flowlord.loader import Loader
from flowlord.model import NewTask, Phase, StoredTask
from flowlord.outcomes import after_result
from flowlord.rules import decode_meta, parse_rule
from flowlord.store import Store, utc_now, utc_now_ms, write_txn
from flowlord.tasks import Context
from flowlord.workers import Done

RESTARTED = "error: the daemon restarted while the task ran"
OVERDUE_EVERY = 60.0  # seconds between checks for tasks unfinished past task_ttl


class Dispatcher:
    def __init__(self, loader: Loader, bus: Bus, ctx: Context, task_ttl: timedelta,
                 log: Any) -> None:
        self.loader = loader
        self.store: Store = loader.store
        self.bus = bus
        self.ctx = ctx
        self.task_ttl = task_ttl
        self.log = log
        self.pending: list[Done] = []  # received, not yet recorded
        self._phases: dict[tuple[str | None, str | None, str, str], Phase | None] = {}
        self._children: dict[tuple[str, str, str], list[Phase]] = {}
        self.next_overdue_check = 0.0

    def recover(self) -> None:
        """Tasks the last run left running cannot be finished by anyone: record them as
        errors (the retry rules apply), so none stays running forever."""
        left = self.store.running()
        if left:
            self.log.warning("tasks left running by the last run", count=len(left))
            self.pending += [Done(s.task_no, "error", RESTARTED, utc_now()) for s in left]

    def turn(self, *, claim: bool = True) -> None:
        """Record the results that came back, with their effects, and claim what the
        workers can take now, in one transaction; then send the claimed tasks."""
        self.pending += self.bus.receive(0)
        now = utc_now_ms()
        topics: list[str] = []
        if claim:
            open_topics = self.bus.open_topics()
            topics = (self.store.ready_topics(now) if open_topics is None
                      else [t for t in open_topics if self.store.has_ready(t, now)])
        if not self.pending and not topics:
            return
        ctx = Context(self.ctx.zone, self.ctx.meta_dir, datetime.now(UTC))
        try:
            with write_txn(self.store.conn):
                children: list[NewTask] = []  # of the whole turn: one insert
                recorded = [d for d in self.pending if self._record_safely(d, ctx, children)]
                self.store.add_tasks(children)
                claimed = [stored for topic in topics
                           for stored in self.store.claim(topic, self.bus.capacity(topic), now)]
        except apsw.BusyError:
            self.log.warning("database locked by another process; results and tasks wait",
                             results_waiting=len(self.pending))
            return
        for done in self.pending:
            self.bus.ack(done)
        self.pending = []
        for done in recorded:
            self.log.info("task ended", task_no=done.task_no, result=done.result,
                          msg=done.msg[:200])
        for stored in claimed:
            self.bus.send(stored, self._timeout(stored))

    def forget_phases(self) -> None:
        """Workflow rows changed (a refresh): look phases and children up again."""
        self._phases.clear()
        self._children.clear()

    def close(self, grace: float, write_for: float) -> None:
        """On stop: running tasks get `grace` seconds, then are ended; their results are
        recorded, retried for `write_for` seconds if the database is locked."""
        self.pending += self.bus.close(grace)
        deadline = time.monotonic() + write_for
        self.turn(claim=False)
        while self.pending and time.monotonic() < deadline:
            self.turn(claim=False)
        if self.pending:  # recorded as errors at the next start, and retried by the rules
            self.log.error("results not recorded", task_nos=[d.task_no for d in self.pending])

    def next_due(self) -> float | None:
        """Seconds until the next waiting retry is due, if any."""
        due = self.store.next_due(utc_now_ms())
        if due is None:
            return None
        when = datetime.fromisoformat(due.replace("Z", "+00:00"))
        return max(0.0, (when - datetime.now(UTC)).total_seconds())

    def check_overdue(self, monotonic: float) -> None:
        """One `incomplete` alert per task unfinished after task_ttl."""
        if monotonic < self.next_overdue_check:
            return
        self.next_overdue_check = monotonic + OVERDUE_EVERY
        cutoff = (datetime.now(UTC) - self.task_ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            message = f"unfinished after {format_duration(self.task_ttl)}"
            overdue = self.store.overdue(cutoff)  # read before taking the write lock
            if not overdue:
                return
            with write_txn(self.store.conn):
                for stored in overdue:
                    self.store.add_alert(stored.task_no, "incomplete", stored.task, message,
                                         utc_now())
                    self.log.warning("task unfinished past task_ttl", task_no=stored.task_no,
                                     type=stored.task.type, created=stored.task.created)
        except apsw.BusyError:
            self.next_overdue_check = monotonic + 1.0

    # --- helpers --------------------------------------------------------------------

    def _record_safely(self, done: Done, ctx: Context, new_tasks: list[NewTask]) -> bool:
        """_record in a savepoint: when working out a result's effects fails, the result is
        still recorded, with an alert saying why its effects are missing."""
        mine: list[NewTask] = []
        try:
            with self.store.conn:  # inside the turn's transaction: a savepoint
                recorded = self._record(done, ctx, mine)
        except apsw.BusyError:
            raise
        except Exception as e:
            self.log.exception("cannot work out a result's effects", task_no=done.task_no)
            with self.store.conn:
                recorded = self.store.finish(done.task_no, done.ended, done.result, done.msg)
                stored = self.store.stored_task(done.task_no)
                if recorded and stored is not None:
                    self.store.add_alert(stored.task_no, "alert", stored.task,
                                         f"internal error after the result: {e}", utc_now())
            return recorded
        new_tasks += mine
        return recorded

    def _record(self, done: Done, ctx: Context, new_tasks: list[NewTask]) -> bool:
        """The result and its effects (new tasks go to `new_tasks`); False when the task
        already had a result."""
        if not self.store.finish(done.task_no, done.ended, done.result, done.msg):
            return False
        stored = self.store.stored_task(done.task_no)
        assert stored is not None
        phase = self._phase(stored)
        children = self._children_of(stored) if done.result == "complete" else []
        effects = after_result(stored, done.result, done.msg, phase=phase, children=children,
                               ctx=ctx)
        new_tasks += effects.tasks
        for kind, message in effects.alerts:
            self.store.add_alert(stored.task_no, kind, stored.task, message, utc_now())
            self.log.error("alert", kind=kind, task_no=stored.task_no, type=stored.task.type,
                           message=message[:200])
        for note in effects.notes:
            self.log.info("child not created", task_no=stored.task_no, note=note)
        return True

    def _phase(self, stored: StoredTask) -> Phase | None:
        key = (stored.file_path, stored.phase, stored.task.type, stored.task.job)
        if key not in self._phases:
            if stored.file_path is not None and stored.phase is not None:
                found = self.store.phases(file_path=stored.file_path, task=stored.phase)
                self._phases[key] = found[0] if found else None
            else:
                self._phases[key] = self.loader.get(stored.task)
        return self._phases[key]

    def _children_of(self, stored: StoredTask) -> list[Phase]:
        task = stored.task
        key = (decode_meta(task.meta).get("workflow", ""), task.type, task.job)
        if key not in self._children:
            self._children[key] = self.loader.children(task)
        return self._children[key]

    def _timeout(self, stored: StoredTask) -> float | None:
        phase = self._phase(stored)
        timeout = parse_rule(phase.rule).timeout if phase else None
        return timeout.total_seconds() if timeout else None
