"""A turn's results, inside the dispatcher's transaction: each result recorded with its
effects (children, with pauses and `overlap` applied; a retry; alerts), then, once the
turn commits, counted in the metrics and told in the log.

`Dispatcher` (flowlord/dispatch.py) moves tasks between the database and the bus; this
is the other half of its turn, what a result leads to. The metrics are gathered per
result here and added up only after the commit (a rolled-back turn is recorded again),
so the recording and the counting share their lists and live together. Runs on the
daemon's loop, the only writer.
"""

from __future__ import annotations

from typing import Any

import apsw

from flowlord import metrics
from flowlord.clock import Clock, rfc3339, rfc3339_ms, seconds_between
from flowlord.loader import Loader
from flowlord.logs import EndedTasks
from flowlord.model import Done, NewTask, Phase, StoredTask
from flowlord.outcomes import Effects, after_result
from flowlord.overlap import replace_earlier, skipped
from flowlord.pauses import Pauses
from flowlord.recoveries import Recoveries
from flowlord.rules import decode_meta, parse_rule
from flowlord.store import Store
from flowlord.tasks import Context

FEW = 8  # observations of a series in a turn below which observe() one by one is cheaper


class ResultRecorder:
    """Records each result of a turn with its effects (`record_all`), then counts them
    once the turn commits (`committed`) or forgets them when it does not (`discarded`)."""

    def __init__(self, loader: Loader, clock: Clock, log: Any) -> None:
        self.loader = loader
        self.store: Store = loader.store
        self.clock = clock
        self.log = log
        self.pauses = Pauses()  # paused phases start no children
        self.recoveries: Recoveries | None = None  # `recovered` and `success` after results
        self._phases: dict[tuple[str | None, str | None, str, str], Phase | None] = {}
        # per (workflow, topic, job) of a parent: the phases of its children, and whether
        # one of them has overlap=skip or replace (most have neither: no check per child)
        self._children: dict[tuple[str, str, str], tuple[list[Phase], bool]] = {}
        # (topic, result, run seconds, wait seconds) of the results this turn recorded
        self._counted: list[tuple[str, str, float | None, float | None]] = []
        self._series: dict[tuple[Any, str], Any] = {}  # metrics' labelled series
        self._alerted: list[str] = []  # this turn's alert kinds, for metrics
        self._ended = EndedTasks(log, self.clock.monotonic)  # their log lines

    def record_all(self, pending: list[Done], ctx: Context,
                   new_tasks: list[NewTask]) -> list[Done]:
        """The results of a turn, then the effects of each in the order they came (new
        tasks go to `new_tasks`); the results recorded, without those of tasks that
        already had one (or a second result of one task). A task that never ran goes
        back to the queue. The results are written together (store.finish_many), before
        any effect, so each effect sees every result of the turn as recorded: an
        overlap=replace cancels only tasks still running, an overlap=skip does not skip
        a child for a task whose result came in the same turn, and a late slot's
        `recovered` names the first of its tasks handled here that finds it done."""
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
            phase = self.phase(stored)
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

    def phase(self, stored: StoredTask) -> Phase | None:
        """The phase of a task (None when it has none now), kept until forget_phases."""
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

    def committed(self, new_tasks: list[NewTask]) -> None:
        """The turn's transaction committed: what it decided stands, and is counted."""
        if self.recoveries is not None:
            self.recoveries.committed()
        self._count(new_tasks)

    def discarded(self) -> None:
        """The turn's transaction did not commit: its results wait, counted when they
        are recorded."""
        self._counted, self._alerted = [], []
        if self.recoveries is not None:
            self.recoveries.discarded()

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

    def log_ended(self, recorded: list[Done]) -> None:
        """A line per task that did not complete, a count of those that did now and then
        (flowlord/logs.py, EndedTasks)."""
        for done in recorded:
            self._ended.ended(done.task_no, done.result, done.msg)
        self._ended.count()

    def forget_phases(self) -> None:
        """Workflow rows changed (a refresh): look phases and children up again."""
        self._phases.clear()
        self._children.clear()


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
