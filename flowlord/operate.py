"""Acting on what exists: rerun, cancel, drop and mark a task; pause and resume a phase,
a file, a topic or everything. The same code for the command line and for HTTP (which
runs it on the daemon's loop); each action is a row of the audit trail
(flowlord/operations.py: `Action`, `begin`, `done`, `failed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.model import Fire, NewTask, Phase, StoredTask, Task
from flowlord.operations import Action, begin, done, failed, pick_phase
from flowlord.outcomes import after_result
from flowlord.pauses import Pauses
from flowlord.store import Store, write_txn
from flowlord.store.taskrows import RESULT, stored_task
from flowlord.tasks import Context

# --- tasks: rerun, cancel, drop, mark -------------------------------------------------
# None of these needs a process: they change rows, and the daemon follows. A task ended
# here while a worker runs it has its process ended by the daemon that runs it
# (flowlord/dispatch.py, stop_ended), and its late result changes nothing.


Target = tuple[str, str, str, str]  # scope, file, task, topic: what a pause stops


class Refused(Exception):
    """The action does not apply to what it names; str(e) is one line for people."""


@dataclass(frozen=True)
class Place:
    """Where an action is applied: the database, the time and what building tasks
    needs, and how to find a task's child phases (the daemon's loader, or one the
    command opened)."""

    store: Store
    ctx: Context
    children: Callable[[Task], list[Phase]]


def _row(store: Store, task_no: int) -> tuple[StoredTask, str | None]:
    """The task and its result (None: not ended); Refused when there is none."""
    row = store.task_row(task_no)
    if row is None:
        raise Refused(f"no task {task_no}")
    return stored_task(row), row[RESULT]


def plan_reruns(store: Store, task_nos: Sequence[int], only: bool,
                now: datetime) -> list[NewTask]:
    """A new attempt of each task (attempt + 1, its parent the task), waiting now; with
    `only`, its completion starts no children. Only reads; Refused when a task is not
    there or has not ended."""
    reruns = []
    for task_no in dict.fromkeys(task_nos):
        stored, result = _row(store, task_no)
        if result is None:
            state = "running" if stored.task.started else "waiting"
            raise Refused(f"task {task_no} is still {state}: only an ended task can be rerun")
        task = stored.task._replace(created=rfc3339_ms(now))
        reruns.append(NewTask.of(task, stored.file_path, stored.phase, stored.attempt + 1,
                                 stored.scheduled_for, None, task_no, no_children=only))
    return reruns


def rerun(store: Store, task_nos: Sequence[int], only: bool, now: datetime,
          action: Action) -> list[NewTask]:
    """The reruns of `plan_reruns`, created in one transaction with the action's outcome."""
    begin(store, action, now)
    try:
        with write_txn(store.conn):
            reruns = plan_reruns(store, task_nos, only, now)
            store.add_tasks(reruns)
            done(store, action, now, f"{len(reruns)} task{'s' if len(reruns) != 1 else ''} "
                 "to run again" + (", without children" if only else ""))
    except Exception as e:
        failed(store, action, now, e)
        raise
    return reruns


def reprocess(store: Store, fires: Sequence[Fire], new: Sequence[Fire], mode: str,
              now: datetime, action: Action) -> list[NewTask]:
    """`backload --reprocess failed|all`: the steps whose slot had fired before have
    their failed (or all their) last attempts run again, as reruns."""
    old = {f.scheduled_for for f in fires} - {f.scheduled_for for f in new}
    if not fires or not old:
        return []
    task_nos = store.slot_last_attempts(fires[0].file_path, fires[0].phase, sorted(old),
                                        failed_only=mode == "failed")
    return rerun(store, task_nos, False, now, action)


def cancel(store: Store, task_nos: Sequence[int], now: datetime,
           action: Action) -> tuple[list[int], list[int]]:
    """End each unfinished task now as `error`, `cancelled by <actor>`: never retried,
    no `failed` alert. (cancelled, those that had already ended)."""
    begin(store, action, now)
    msg, ended = f"cancelled by {action.actor}", rfc3339_ms(now)
    try:
        with write_txn(store.conn):
            for task_no in task_nos:
                _row(store, task_no)
            cancelled = [n for n in dict.fromkeys(task_nos)
                         if store.end_now(n, ended, "error", msg)]
            over = [n for n in dict.fromkeys(task_nos) if n not in cancelled]
            done(store, action, now, f"{len(cancelled)} cancelled"
                 + (f", {len(over)} had ended" if over else ""))
    except Exception as e:
        failed(store, action, now, e)
        raise
    return cancelled, over


def drop(store: Store, type: str, job: str | None, now: datetime, action: Action) -> list[int]:
    """Cancel every waiting task of a topic (and job); the tasks cancelled."""
    begin(store, action, now)
    msg, ended = f"cancelled by {action.actor}", rfc3339_ms(now)
    try:
        with write_txn(store.conn):
            dropped = [n for n in store.waiting_task_nos(type, job)
                       if store.end_now(n, ended, "error", msg)]
            done(store, action, now, f"{len(dropped)} waiting task"
                 f"{'s' if len(dropped) != 1 else ''} cancelled")
    except Exception as e:
        failed(store, action, now, e)
        raise
    return dropped


def mark(store: Store, task_no: int, result: str, msg: str, ctx: Context, action: Action,
         children: Callable[[Task], list[Phase]]) -> list[NewTask]:
    """Record `result` by hand (an unfinished task ends now; a running one's process is
    ended by its daemon). `complete` starts its children as a worker's would; `error`
    is final (no retry, no alert). The children created."""
    now = ctx.created
    begin(store, action, now)
    msg = msg or f"marked {result} by {action.actor}"
    try:
        with write_txn(store.conn):
            stored, before = _row(store, task_no)
            if before == result:
                raise Refused(f"task {task_no} is already {result}")
            if store.has_followers(task_no):  # its children, or its next attempt, exist
                raise Refused(f"task {task_no} was run again or has children: mark its "
                              "newest attempt instead")
            if not store.end_now(task_no, rfc3339_ms(now), result, msg):
                store.set_result(task_no, result, msg)
            new: list[NewTask] = []
            if result == "complete" and not stored.no_children:
                pauses = Pauses.read(store, now)
                kept = [c for c in children(stored.task)  # a paused phase creates nothing
                        if pauses.of_phase(c.file_path, c.task, now) is None]
                new = list(after_result(stored, "complete", msg, phase=None, children=kept,
                                        ctx=ctx).tasks)
                store.add_tasks(new)
            done(store, action, now, f"marked {result}"
                 + (f", {len(new)} child task{'s' if len(new) != 1 else ''} created"
                    if result == "complete" else ""))
    except Exception as e:
        failed(store, action, now, e)
        raise
    return new


# --- pausing: a phase, a file, a topic or everything ------------------------------------


def pause(store: Store, target: Target, until: datetime | None,
          reason: str, now: datetime, action: Action) -> int:
    """Open a pause of `target` (scope, file, task, topic) from now; its number. Refused
    when one is already in force for it."""
    begin(store, action, now)
    if until is not None and rfc3339(until) <= rfc3339(now):  # pauses keep whole seconds
        e = Refused(f"--until {rfc3339(until)} has passed")
        failed(store, action, now, e)
        raise e
    try:
        with write_txn(store.conn):
            open_now = store.open_pause(target, rfc3339(now))
            if open_now is not None:
                raise Refused(f"{action.target} is already paused by {open_now[5]} since "
                              f"{open_now[7]}: resume it first")
            number = store.add_pause(target, action.actor, reason, rfc3339(now),
                                     rfc3339(until) if until else None)
            done(store, action, now, f"paused {action.target}"
                 + (f" until {rfc3339(until)}" if until else ""))
    except Exception as e:
        failed(store, action, now, e)
        raise
    return number


def resume(store: Store, targets: Sequence[Target], now: datetime,
           action: Action) -> int:
    """End the pauses of these targets now; how many were in force."""
    begin(store, action, now)
    try:
        with write_txn(store.conn):
            ended = 0
            for target in targets:
                open_now = store.open_pause(target, rfc3339(now))
                if open_now is not None:
                    store.end_pause(open_now[0], rfc3339(now), action.actor)
                    ended += 1
            done(store, action, now, f"{ended} pause{'s' if ended != 1 else ''} ended")
    except Exception as e:
        failed(store, action, now, e)
        raise
    return ended


def pause_target(store: Store, *, task: str | None = None, workflow: str | None = None,
                 file: str | None = None, topic: str | None = None,
                 everything: bool = False) -> tuple[Target, str]:
    """What one pause or resume names (exactly one of a task, a file, a topic or
    everything), and how to say it; Refused when the phase or the file is not there."""
    if sum(x is not None for x in (task, file, topic)) + everything != 1:
        raise Refused("name one thing to pause: a TASK, --file KEY, --topic T or --all")
    if task is not None:
        chosen = pick_phase(store.phases(), task, workflow, store.path)
        if chosen.warnings:  # a pause stops what it names: name one phase
            raise Refused(f"{chosen.warnings[0].split(';')[0]}: name one (topic:job, or "
                          "--workflow KEY)")
        phase = chosen.phase
        return ("phase", phase.file_path, phase.task, ""), f"{phase.file_path}: {phase.task}"
    if file is not None:
        if file not in store.file_states((file,)):
            raise Refused(f"no workflow file {file} in {store.path}")
        return ("file", file, "", ""), file
    if topic is not None:
        return ("topic", "", "", topic), f"topic {topic}"
    return ("all", "", "", ""), "everything"


def pauses_in_force(store: Store, now: datetime) -> list[dict[str, Any]]:
    """The pauses in force now, as `flowlord pauses --json` and /api/pauses show them."""
    return [p.as_json() for p in Pauses.read(store, now).in_force(now)]
