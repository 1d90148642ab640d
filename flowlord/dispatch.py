"""Between the database and the bus: claim due tasks for workers, record their results
with what the results lead to (children, retries, alerts), each in one transaction.

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
from flowlord.clock import Clock, SystemClock, parse_iso, rfc3339, rfc3339_ms, seconds_between
from flowlord.durations import format_duration
from flowlord.loader import Loader
from flowlord.model import Done, NewTask, Phase, StoredTask
from flowlord.outcomes import Effects, after_result
from flowlord.overlap import replace_earlier, skipped
from flowlord.pauses import Pauses
from flowlord.recoveries import Recoveries
from flowlord.rules import decode_meta, parse_rule
from flowlord.store import Store, write_txn
from flowlord.tasks import Context

RESTARTED = "error: the daemon restarted while the task ran"
OVERDUE_EVERY = 60.0  # seconds between checks for tasks unfinished past task_ttl
NEXT_DUE_MAX_AGE = 1.0  # seconds the next retry's due time is kept between turns that write
STOP_CHECK_EVERY = 0.2  # seconds between looks for running tasks that ended elsewhere
COMPLETED_LOG_EVERY = 10.0  # seconds between the log lines counting completed tasks
FEW = 8  # observations of a series in a turn below which observe() one by one is cheaper


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
        self._phases: dict[tuple[str | None, str | None, str, str], Phase | None] = {}
        # per (workflow, topic, job) of a parent: the phases of its children, and whether
        # one of them has overlap=skip or replace (most have neither: no check per child)
        self._children: dict[tuple[str, str, str], tuple[list[Phase], bool]] = {}
        # per topic, its phases that limit their own tasks: (file, phase) → (max_active,
        # queued); looked up again when the workflow rows change
        self._limits: dict[str, dict[tuple[str, str], tuple[int | None, bool]]] = {}
        self.next_overdue_check = 0.0
        self._next_due: tuple[float, datetime | None] | None = None  # (kept until, due time)
        self._completed = 0  # tasks completed since the last line that counted them
        self._next_completed_log = 0.0
        # a remote bus: tasks run elsewhere, and each is marked published once handed over
        self.remote = bool(getattr(bus, "remote", False))
        self.unsent: list[StoredTask] = []  # claimed, not handed over yet: the bus was away
        self.published: list[int] = []  # handed over, not yet marked in the database
        # (topic, result, run seconds, wait seconds) of the results this turn recorded
        self._counted: list[tuple[str, str, float | None, float | None]] = []
        self._series: dict[tuple[Any, str], Any] = {}  # metrics' labelled series
        self._alerted: list[str] = []  # this turn's alert kinds, for metrics
        self.stopping: set[int] = set()  # ended elsewhere; their workers were told to stop
        self.pauses = Pauses()  # paused topics wait; paused phases start no children
        self.recoveries: Recoveries | None = None  # `recovered` and `success` after results
        self.next_stop_check = 0.0

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
                recorded = self._record_all(self.pending, ctx, children)
                self.store.add_tasks(children)
                claimed = [stored for topic in topics for stored in self._claim(topic, now)]
        except apsw.BusyError:
            self.log.warning("database locked by another process; results and tasks wait",
                             results_waiting=len(self.pending))
            metrics.BUSY.inc()
            self._counted, self._alerted = [], []
            if self.recoveries is not None:
                self.recoveries.discarded()
            return
        except apsw.FullError:  # nothing was recorded: results wait, counted when they are
            self._counted, self._alerted = [], []
            if self.recoveries is not None:
                self.recoveries.discarded()
            raise
        if self.recoveries is not None:
            self.recoveries.committed()
        self._count(children)
        for done in self.pending:
            self.bus.ack(done)
        self.pending = []
        if any(t.due_at is not None for t in children):
            self._next_due = None  # a retry waits: its due time may come first
        self._log_ended(recorded)
        self._send(claimed)
        self._mark_published()

    def _send(self, claimed: list[StoredTask]) -> None:
        """Hand claimed tasks to the bus; once a remote bus fails, the rest wait in
        `unsent` (each try could wait for a timeout)."""
        for n, stored in enumerate(claimed):
            try:
                self.bus.send(stored, self._timeout(stored))
            except BusUnavailable:
                self.unsent += claimed[n:]
                return
            if self.remote:
                self.published.append(stored.task_no)

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

    def _count(self, new_tasks: list[NewTask]) -> None:
        """The metrics of a committed turn, added up per series first: a turn may
        record thousands of results."""
        ended: dict[tuple[str, str], int] = {}
        runs: dict[str, list[float]] = {}
        waits: dict[str, list[float]] = {}
        for topic, result, seconds, waited in self._counted:
            ended[topic, result] = ended.get((topic, result), 0) + 1
            if seconds is not None:
                runs.setdefault(topic, []).append(seconds)
            if waited is not None:
                waits.setdefault(topic, []).append(waited)
        series = self._series  # a label lookup costs more than the count
        for (topic, result), n in ended.items():
            if (topic, result) not in series:
                series[topic, result] = metrics.TASKS.labels(topic, result)
            series[topic, result].inc(n)
        for histogram, amounts in ((metrics.TASK_DURATION, runs), (metrics.TASK_WAIT, waits)):
            for topic, values in amounts.items():
                if (histogram, topic) not in series:
                    series[histogram, topic] = histogram.labels(topic)
                if len(values) > FEW:
                    metrics.observe_all(series[histogram, topic], values)
                else:
                    for value in values:
                        series[histogram, topic].observe(value)
        for kind in self._alerted:
            metrics.ALERTS.labels(kind).inc()
        metrics.RETRIES.inc(sum(1 for t in new_tasks if t.attempt > 0))
        self._counted, self._alerted = [], []

    def _log_ended(self, recorded: list[Done]) -> None:
        """A line per task that did not complete, and every few seconds a count of those
        that did: a line per completed task would be thousands a second in a burst, past
        journald's default rate limit, and the database keeps every result anyway."""
        for done in recorded:
            if done.result == "complete":
                self._completed += 1
            else:
                self.log.warning("task ended", task_no=done.task_no, result=done.result,
                                 msg=done.msg[:200])
        if self._completed and self.clock.monotonic() >= self._next_completed_log:
            self.log.info("tasks completed", count=self._completed)
            self._completed = 0
            self._next_completed_log = self.clock.monotonic() + COMPLETED_LOG_EVERY

    def forget_phases(self) -> None:
        """Workflow rows changed (a refresh): look phases and children up again."""
        self._phases.clear()
        self._children.clear()
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

    # --- helpers --------------------------------------------------------------------

    def _record_all(self, pending: list[Done], ctx: Context,
                    new_tasks: list[NewTask]) -> list[Done]:
        """The results of a turn, then the effects of each in the order they came (new
        tasks go to `new_tasks`); the results recorded, without those of tasks that
        already had one (or a second result of one task). A task that never ran goes
        back to the queue. The results are written together (store.finish_many), before
        any effect: an effect (overlap=replace) cancels only tasks still running."""
        first: dict[int, Done] = {}
        for done in pending:  # the first word about a task counts, as it ever did
            first.setdefault(done.task_no, done)
        ran = []
        for done in first.values():
            if done.ran:
                ran.append(done)
            else:
                self.store.unclaim(done.task_no)
        if not ran:
            return []
        finished = self.store.finish_many(
            [(d.task_no, d.ended, d.result, d.msg, d.started) for d in ran])
        recorded = []
        for done in ran:
            stored = finished.get(done.task_no)
            if stored is not None:
                self._record(done, stored, ctx, new_tasks)
                recorded.append(done)
        return recorded

    def _record(self, done: Done, stored: StoredTask, ctx: Context,
                new_tasks: list[NewTask]) -> None:
        """The effects of a result just recorded (new tasks go to `new_tasks`). Working
        out the effects only reads: when it fails, the result is still recorded, with an
        alert saying why its effects are missing."""
        phase: Phase | None = None
        try:
            phase = self._phase(stored)
            children: list[Phase] = []
            policy = False  # a child phase with overlap=skip or replace
            if done.result == "complete" and not stored.no_children:
                children, policy = self._children_of(stored)
                children = self._unpaused(children, stored)
            if policy:
                children = self._not_skipped(children, stored, new_tasks)
            effects = after_result(stored, done.result, done.msg, phase=phase,
                                   children=children, ctx=ctx)
            for child in children if policy else ():  # overlap=replace, once built
                if parse_rule(child.rule).overlap == "replace" and any(
                        (t.file_path, t.phase) == (child.file_path, child.task)
                        for t in effects.tasks):
                    replace_earlier(self.store, child, new_tasks,
                                    rfc3339_ms(self.clock.now()))
        except (apsw.BusyError, apsw.FullError):  # the turn is tried again
            raise
        except Exception as e:
            self.log.exception("cannot work out a result's effects", task_no=done.task_no)
            effects = Effects(alerts=[("alert", f"internal error after the result: {e}")])
        new_tasks += effects.tasks
        started = done.started or stored.task.started
        self._counted.append((stored.task.type, done.result,
                              seconds_between(started, done.ended),
                              seconds_between(stored.task.created, started)))
        self._alerted += [kind for kind, _ in effects.alerts]
        for kind, message in effects.alerts:
            self.store.add_alert(stored.task_no, kind, stored.task, message,
                                 rfc3339(self.clock.now()))
            self.log.error("alert", kind=kind, task_no=stored.task_no, type=stored.task.type,
                           message=message[:200])
        if self.recoveries is not None:
            self.recoveries.recorded(stored, done.result, effects.alerts, phase)
        for note in effects.notes:
            self.log.info("child not created", task_no=stored.task_no, note=note)

    def _not_skipped(self, children: list[Phase], parent: StoredTask,
                     made: list[NewTask]) -> list[Phase]:
        """The children their phases' `overlap=skip` lets start now (flowlord/overlap.py);
        one held back is logged with why."""
        kept = []
        for child in children:
            why = skipped(self.store, child, made)
            if why:
                self.log.info("child not created", task_no=parent.task_no, child=child.task,
                              why=why)
            else:
                kept.append(child)
        return kept

    def _unpaused(self, children: list[Phase], parent: StoredTask) -> list[Phase]:
        """The children whose phases are not paused; a paused one is logged with why."""
        if not self.pauses.rows or not children:
            return children
        now = self.clock.now()
        kept = []
        for child in children:
            paused = self.pauses.of_phase(child.file_path, child.task, now)
            if paused is None:
                kept.append(child)
            else:
                self.log.warning("child not created", task_no=parent.task_no,
                                 child=child.task, why=paused.why())
        return kept

    def _phase(self, stored: StoredTask) -> Phase | None:
        key = (stored.file_path, stored.phase, stored.task.type, stored.task.job)
        if key not in self._phases:
            if stored.file_path is not None and stored.phase is not None:
                found = self.store.phases(file_path=stored.file_path, task=stored.phase)
                self._phases[key] = found[0] if found else None
            else:
                self._phases[key] = self.loader.get(stored.task)
        return self._phases[key]

    def _children_of(self, stored: StoredTask) -> tuple[list[Phase], bool]:
        """The phases of the task's children (Loader.children), and whether one of them
        has overlap=skip or replace; kept per workflow, topic and job (the task's, or
        its meta's, as Loader.children reads it)."""
        task = stored.task
        workflow, job = _workflow_and_job(task.meta)
        key = (workflow, task.type, task.job or job)
        if key not in self._children:
            phases = self.loader.children(task)
            self._children[key] = (phases, any(
                parse_rule(p.rule).overlap in ("skip", "replace") for p in phases))
        return self._children[key]

    def _timeout(self, stored: StoredTask) -> float | None:
        phase = self._phase(stored)
        timeout = parse_rule(phase.rule).timeout if phase else None
        return timeout.total_seconds() if timeout else None


def _workflow_and_job(meta: str) -> tuple[str, str]:
    """decode_meta(meta)'s `workflow` and `job` (first values, '' when missing), without
    a dict per result: meta with no escape (`%`, `+`) or `;` is read as it is, any other
    through decode_meta."""
    if "%" in meta or "+" in meta or ";" in meta:
        decoded = decode_meta(meta)
        return decoded.get("workflow", ""), decoded.get("job", "")
    workflow = job = None
    for part in meta.split("&"):
        key, _, value = part.partition("=")
        if key == "workflow" and workflow is None:
            workflow = value
        elif key == "job" and job is None:
            job = value
    return workflow or "", job or ""
