"""Between the database and the bus: claim due tasks for workers, record their results
with what the results lead to (children, retries, alerts: flowlord/results.py), each
turn in one transaction.

Runs on the daemon's loop, the only writer. A locked database delays this work;
results wait in `pending` and are recorded on a later turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import apsw

from flowlord import metrics
from flowlord.bus import Bus, BusUnavailable
from flowlord.clock import Clock, SystemClock, parse_iso, rfc3339, rfc3339_ms
from flowlord.durations import format_duration
from flowlord.loader import Loader
from flowlord.model import Done, NewTask, StoredTask
from flowlord.pauses import Pauses
from flowlord.recoveries import Recoveries
from flowlord.results import ResultRecorder
from flowlord.rules import parse_rule
from flowlord.store import Store, write_txn
from flowlord.tasks import Context

RESTARTED = "error: the daemon restarted while the task ran"
OVERDUE_EVERY = 60.0  # seconds between checks for tasks unfinished past task_ttl
NEXT_DUE_MAX_AGE = 1.0  # seconds the next retry's due time is kept between turns that write
STOP_CHECK_EVERY = 0.2  # seconds between looks for running tasks that ended elsewhere


class Dispatcher:
    def __init__(self, loader: Loader, bus: Bus, ctx: Context, task_ttl: timedelta,
                 log: Any, clock: Clock | None = None) -> None:
        self.loader = loader
        self.clock = clock or SystemClock()
        self.store: Store = loader.store
        self.bus = bus
        self.ctx = ctx
        self.task_ttl = task_ttl
        self.log = log
        self.pending: list[Done] = []  # received, not yet recorded
        self.recorder = ResultRecorder(loader, self.clock, log)  # results and their effects
        # per topic, its phases that limit their own tasks: (file, phase) → (max_active,
        # queued); looked up again when the workflow rows change
        self._limits: dict[str, dict[tuple[str, str], tuple[int | None, bool]]] = {}
        self.next_overdue_check = 0.0
        self._next_due: tuple[float, datetime | None] | None = None  # (kept until, due time)
        # a remote bus: tasks run elsewhere, and each is marked published once handed over
        self.remote = bool(getattr(bus, "remote", False))
        self.unsent: list[StoredTask] = []  # claimed, not handed over yet: the bus was away
        self.published: list[int] = []  # handed over, not yet marked in the database
        self.stopping: set[int] = set()  # ended elsewhere; their workers were told to stop
        self.next_stop_check = 0.0

    # The daemon (flowlord/daemon.py) sets these on the dispatcher; the recorder keeps them,
    # as it applies both to results. Pauses hold back claims here too: a paused topic waits.
    @property
    def pauses(self) -> Pauses:
        return self.recorder.pauses

    @pauses.setter
    def pauses(self, pauses: Pauses) -> None:
        self.recorder.pauses = pauses

    @property
    def recoveries(self) -> Recoveries | None:
        """`recovered` and `success` after results (flowlord/recoveries.py)."""
        return self.recorder.recoveries

    @recoveries.setter
    def recoveries(self, recoveries: Recoveries | None) -> None:
        self.recorder.recoveries = recoveries

    def recover(self) -> None:
        """Tasks the last run left running: on the local bus nobody can finish them, so
        they are recorded as errors (the retry rules apply) and none stays running
        forever. On a remote bus they may still run: only those never published are
        published now."""
        if self.remote:
            self.unsent = self.store.unpublished()
            if self.unsent:
                self.log.warning("claimed tasks not yet published; publishing them",
                                 count=len(self.unsent))
            return
        left = self.store.running()
        if left:
            self.log.warning("tasks left running by the last run", count=len(left))
            ended = rfc3339_ms(self.clock.now())
            self.pending += [Done(s.task_no, "error", RESTARTED, ended) for s in left]

    def turn(self, *, claim: bool = True) -> None:
        """Record the results that came back, with their effects, and claim what the
        workers can take now, in one transaction; then send the claimed tasks."""
        self.pending += self.bus.receive(0)
        self._send(self._take_unsent())
        self._mark_published()
        now = rfc3339_ms(self.clock.now())
        topics: list[str] = []
        if claim:
            open_topics = self.bus.open_topics()
            if open_topics is None:
                topics = self.store.ready_topics(now)
            elif self.pending:  # the turn writes anyway: a claim finds what is ready
                topics = open_topics
            else:  # a turn with nothing to record opens no transaction for nothing
                topics = [t for t in open_topics if self.store.has_ready(t, now)]
            if self.pauses.rows:  # (most of the time there is no pause at all)
                topics = [t for t in topics
                          if self.pauses.of_topic(t, self.clock.now()) is None]
        if not self.pending and not topics:
            return
        ctx = Context(self.ctx.zone, self.ctx.meta_dir, self.clock.now())
        try:
            with write_txn(self.store.conn):
                children: list[NewTask] = []  # of the whole turn: one insert
                recorded = self.recorder.record_all(self.pending, ctx, children)
                self.store.add_tasks(children)
                claimed = [stored for topic in topics for stored in self._claim(topic, now)]
        except apsw.BusyError:
            self.log.warning("database locked by another process; results and tasks wait",
                             results_waiting=len(self.pending))
            metrics.BUSY.inc()
            self.recorder.discarded()
            return
        except apsw.FullError:  # nothing was recorded: results wait, counted when they are
            self.recorder.discarded()
            raise
        except Exception:  # rolled back too: what the turn decided must not be counted
            self.recorder.discarded()
            raise
        self.recorder.committed(children)
        for done in self.pending:
            self.bus.ack(done)
        self.pending = []
        if any(t.due_at is not None for t in children):
            self._next_due = None  # a retry waits: its due time may come first
        self.recorder.log_ended(recorded)
        self._send(claimed)
        self._mark_published()

    def _send(self, claimed: list[StoredTask]) -> None:
        """Hand claimed tasks to the bus, all at once; when a remote bus cannot take
        them, they wait in `unsent`."""
        if not claimed:
            return
        try:
            self.bus.send([(stored, self._timeout(stored)) for stored in claimed])
        except BusUnavailable as e:
            self.unsent += [s for s in claimed if s.task_no not in e.handed_over]
            claimed = [s for s in claimed if s.task_no in e.handed_over]
        if self.remote:
            self.published += [stored.task_no for stored in claimed]

    def _take_unsent(self) -> list[StoredTask]:
        """The tasks to publish again, when the bus can take them."""
        if not self.unsent:
            return []
        room = {t: self.bus.capacity(t) for t in {s.task.type for s in self.unsent}}
        ready = [s for s in self.unsent if room[s.task.type] > 0]
        self.unsent = [s for s in self.unsent if room[s.task.type] <= 0]
        return ready

    def _mark_published(self) -> None:
        """Record which tasks the bus took. A crash before this publishes them again at
        the next start: a task may run twice, and only its first result is recorded."""
        if not self.published:
            return
        try:
            with write_txn(self.store.conn):
                self.store.mark_published(self.published, rfc3339(self.clock.now()))
        except apsw.BusyError:
            return  # the next turn tries again
        self.published = []

    def forget_phases(self) -> None:
        """Workflow rows changed (a refresh): look phases and children up again."""
        self.recorder.forget_phases()
        self._limits.clear()

    def _claim(self, topic: str, now: str) -> list[StoredTask]:
        """What the workers of a topic can take now: oldest first, but never more of
        a phase than its `max_active`, and a queued phase's tasks one at a time in
        slot order (README.md, Scheduling policy)."""
        if topic not in self._limits:
            self._limits[topic] = {
                (p.file_path, p.task): (rule.max_active, rule.overlap == "queue")
                for p in self.store.phases(topic=topic)
                if (rule := parse_rule(p.rule)).max_active or rule.overlap == "queue"}
        limits = self._limits[topic]
        if not limits:  # the common case: one indexed UPDATE
            return self.store.claim(topic, self.bus.capacity(topic), now)
        return self.store.claim_limited(topic, self.bus.capacity(topic), now, limits)

    def close(self, grace: float, write_for: float,
              hurry: Callable[[], bool] = lambda: False) -> None:
        """On stop: running tasks get `grace` seconds (none once `hurry()`), then are
        ended; their results are recorded, retried for `write_for` seconds if the
        database is locked (real seconds: this is the daemon's last work)."""
        self.pending += self.bus.close(grace, hurry)
        deadline = time.monotonic() + write_for
        self.turn(claim=False)
        while self.pending and time.monotonic() < deadline and not hurry():
            self.turn(claim=False)
        if self.pending:  # recorded as errors at the next start, and retried by the rules
            self.log.error("results not recorded", task_nos=[d.task_no for d in self.pending])

    def forget_due(self) -> None:
        """Tasks that wait for a due time were written elsewhere (a jittered fire): the
        next due time is looked up again."""
        self._next_due = None

    def next_due(self) -> float | None:
        """Seconds until the next waiting retry is due, if any. Retries come from this
        dispatcher's turns, so the answer is kept until a turn writes (or for a second:
        what a stopped daemon left is found too)."""
        now = self.clock.now()
        kept = self._next_due
        if kept is None or self.clock.monotonic() >= kept[0] or (kept[1] is not None
                                                           and kept[1] <= now):  # due: on
            due = self.store.next_due(rfc3339_ms(now))
            kept = (self.clock.monotonic() + NEXT_DUE_MAX_AGE,
                    None if due is None else parse_iso(due))
            self._next_due = kept
        when = kept[1]
        return None if when is None else max(0.0, (when - now).total_seconds())

    def stop_ended(self, monotonic: float) -> None:
        """Tasks a worker runs whose rows have ended (`flowlord cancel` or `mark`, from
        any process): their processes end now; what they report later changes nothing."""
        if monotonic < self.next_stop_check:
            return
        self.next_stop_check = monotonic + STOP_CHECK_EVERY
        running = self.bus.running()
        self.stopping &= set(running)
        asked = [n for n in running if n not in self.stopping]
        for task_no in self.store.ended_among(asked):
            if self.bus.stop(task_no, "stopped: the task was ended by an operator"):
                self.stopping.add(task_no)
                self.log.warning("running task ended by an operator; stopping it",
                                 task_no=task_no)

    def check_overdue(self, monotonic: float) -> None:
        """One `incomplete` alert per task unfinished after task_ttl."""
        if monotonic < self.next_overdue_check:
            return
        self.next_overdue_check = monotonic + OVERDUE_EVERY
        cutoff = rfc3339(self.clock.now() - self.task_ttl)
        try:
            message = f"unfinished after {format_duration(self.task_ttl)}"
            overdue = self.store.overdue(cutoff)  # read before taking the write lock
            if not overdue:
                return
            with write_txn(self.store.conn):
                for stored in overdue:
                    self.store.add_alert(stored.task_no, "incomplete", stored.task, message,
                                         rfc3339(self.clock.now()))
                    self.log.warning("task unfinished past task_ttl", task_no=stored.task_no,
                                     type=stored.task.type, created=stored.task.created)
        except apsw.BusyError:
            self.next_overdue_check = monotonic + 1.0

    def _timeout(self, stored: StoredTask) -> float | None:
        phase = self.recorder.phase(stored)
        timeout = parse_rule(phase.rule).timeout if phase else None
        return timeout.total_seconds() if timeout else None
