"""What an operator can ask of flowlord, the same from the command line and from HTTP:
trigger a phase, backload a range, report arrived files, rescan. Each works on the
stored phases (what the daemon schedules) and writes through the fire ledger, so a
slot fired by the daemon, a trigger or a backload is never created twice.

Every action is a row of the audit trail (`actions`) before it has any effect: who
asked, what, on what, with which arguments; its outcome is written in the
transaction that applies it, or after it failed.

Building (which phase, which fires) only reads; recording writes in one
transaction. The CLI records from its own process (the daemon follows what it
wrote); inside the daemon, the HTTP threads build and ask the loop to record
(`flowlord/commands.py`), so only the loop writes there.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import apsw

from flowlord.arrivals import record_arrival
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.errors import UsageError
from flowlord.model import Fire, NewTask, Phase
from flowlord.pauses import Pauses
from flowlord.rules import BY_STEPS, parse_rule
from flowlord.store import Store, write_txn
from flowlord.tasks import BuildError, Context, backload_steps, build_fire


@dataclass
class Action:
    """An operator action as asked: who, what, on what, with which arguments; `number`
    is its row in `actions` once written (written once, however often it is tried)."""

    actor: str
    kind: str  # trigger, backload, refresh, notify
    target: str = ""  # `file: task`, a path, '' for everything
    args: dict[str, Any] = field(default_factory=dict)
    number: int | None = None
    retried: bool = False  # the daemon tries it again while the database is locked


def unix_actor() -> str:
    """Who acts from a command line: the user behind sudo, else the process's user."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a name (a container)
        return f"uid {os.getuid()}"


def begin(store: Store, action: Action, now: datetime) -> None:
    """Write the action's row, before it has any effect (once)."""
    if action.number is None:
        with write_txn(store.conn):
            action.number = store.add_action(rfc3339_ms(now), action.actor, action.kind,
                                             action.target,
                                             json.dumps(action.args, sort_keys=True))


def done(store: Store, action: Action, now: datetime, message: str) -> None:
    """Its outcome: applied; call inside the transaction that applied it."""
    assert action.number is not None, "begin() first"
    store.settle_action(action.number, rfc3339_ms(now), "done", message)


def failed(store: Store, action: Action, now: datetime, error: BaseException) -> None:
    """Its outcome: it failed, and why (in a transaction of its own, if it can be had:
    a row without an outcome says as much). Not when it will be tried again."""
    if action.number is None or (action.retried and _busy(error)):
        return
    try:
        with write_txn(store.conn):
            store.settle_action(action.number, rfc3339_ms(now), "failed",
                                f"{type(error).__name__}: {error}"[:1000])
    except apsw.Error:
        pass


def fires_message(fires: Sequence[Fire], new: Sequence[Fire]) -> str:
    """What recording fires did, for the audit trail."""
    tasks = sum(len(f.tasks) for f in new)
    return (f"{len(new)} of {len(fires)} fire{'s' if len(fires) != 1 else ''} new, "
            f"{tasks} task{'s' if tasks != 1 else ''} created")


@dataclass(frozen=True)
class Chosen:
    """The phase a TASK argument names, and what a person should hear about the choice."""

    phase: Phase
    warnings: list[str] = field(default_factory=list)


def pick_phase(phases: Sequence[Phase], task: str, workflow: str | None, where: str) -> Chosen:
    """The phase named `task` (exactly, else a topic's first job) in file-key order;
    several matches: the first, with a warning naming the choice."""
    if workflow is not None:
        phases = [p for p in phases if p.file_path == workflow]
        if not phases:
            raise UsageError(f"no workflow file {workflow} in {where}")
    exact = [p for p in phases if p.task == task]
    found = exact or [p for p in phases if ":" not in task and p.topic == task]
    if not found:
        raise UsageError(f"no phase {task} in {where}")
    found.sort(key=lambda p: (p.file_path, p.position))
    warnings = []
    if len(found) > 1:
        warnings.append(f"{len(found)} phases match {task}; using {found[0].file_path}: "
                        f"{found[0].task} (choose with --workflow)")
    return Chosen(found[0], warnings)


def runnable_phase(store: Store, task: str, workflow: str | None) -> Chosen:
    """The stored phase `task` names; one that cannot run is a usage error."""
    chosen = pick_phase(store.phases(), task, workflow, store.path)
    if chosen.phase.severity == "error":
        raise UsageError(f"{chosen.phase.file_path}: {chosen.phase.task} cannot run: "
                         f"{chosen.phase.status}")
    check_not_paused(store, chosen.phase, datetime.now(UTC))
    return chosen


def in_zone(t: datetime, zone: tzinfo) -> datetime:
    """A time given by a person: without an offset it is in the configured zone."""
    return t.replace(tzinfo=zone) if t.tzinfo is None else t


def trigger_fire(phase: Phase, time: datetime | None, ctx: Context) -> Fire:
    """The fire of a phase as if its cron fired at `time` (default: the context's now);
    not recorded. Its `error` says why it has no tasks."""
    slot = in_zone(time, ctx.zone) if time else ctx.created
    slot = slot.astimezone(UTC).replace(microsecond=0)
    return build_fire(phase, slot, "trigger", ctx)


def backload_fires(phase: Phase, start: datetime, end: datetime, by: str | None,
                   ctx: Context) -> list[Fire]:
    """A fire for every step of [start, end]; not recorded. BuildError when the range
    cannot be built (the message says why)."""
    rule = parse_rule(phase.rule)
    try:
        steps = backload_steps(phase, in_zone(start, ctx.zone), in_zone(end, ctx.zone),
                               BY_STEPS[by] if by else rule.by, ctx)
        # a step's slot is the cron time that builds it: its data time less the offset
        return [Fire(phase.file_path, phase.task, rfc3339(t.astimezone(UTC) - rule.offset),
                     "backload", tasks) for t, tasks in steps]
    except OverflowError:
        raise BuildError("time out of range") from None


def record_fires(store: Store, fires: Sequence[Fire], now: datetime,
                 action: Action | None = None) -> list[Fire]:
    """Write fires through the ledger, in one transaction with the action's outcome; the
    ones that were new. A locked database raises BusyError and changes nothing but the
    action's row (written once, however often it is tried)."""
    if action is not None:
        begin(store, action, now)
    try:
        with write_txn(store.conn):
            new = store.record_fires(fires, rfc3339_ms(now))
            if action is not None:
                done(store, action, now, fires_message(fires, new))
    except Exception as e:
        if action is not None:
            failed(store, action, now, e)
        raise
    return new


def rescan(store: Store, action: Action, now: datetime,
           run: Callable[[], list[str]]) -> list[str]:
    """A rescan asked for by an operator: `run` does it (the loader commits its own
    batches); the action's outcome lists the changes. A locked database leaves the
    action without an outcome, to be tried again."""
    begin(store, action, now)
    try:
        changes = run()
    except Exception as e:
        failed(store, action, now, e)
        raise
    with write_txn(store.conn):
        done(store, action, now, " ".join(changes) or "no change")
    return changes


def _busy(e: BaseException) -> bool:
    """A locked database, as such or as the cause of a loader's error."""
    return isinstance(e, apsw.BusyError) or isinstance(e.__cause__, apsw.BusyError)


def notify(store: Store, phases: Sequence[Phase], paths: Sequence[str], source: str,
           ctx: Context, action: Action | None = None) -> list[tuple[str, list[NewTask]]]:
    """Files that arrived: each starts the `files=` phases (of `phases`) it matches, in
    one transaction (with the action's outcome); a paused phase starts nothing. Each
    path with the tasks it started."""
    pauses = Pauses.read(store, ctx.created)
    phases = [p for p in phases if pauses.of_phase(p.file_path, p.task, ctx.created) is None]
    if action is not None:
        begin(store, action, ctx.created)
    try:
        with write_txn(store.conn):
            started = [(path, record_arrival(store, phases, path, source, ctx))
                       for path in paths]
            if action is not None:
                tasks = sum(len(t) for _, t in started)
                done(store, action, ctx.created, f"{len(paths)} path"
                     f"{'s' if len(paths) != 1 else ''}, {tasks} task"
                     f"{'s' if tasks != 1 else ''} created")
    except Exception as e:
        if action is not None:
            failed(store, action, ctx.created, e)
        raise
    return started


def check_not_paused(store: Store, phase: Phase, now: datetime) -> None:
    """A trigger or a backload of a paused phase is refused: it would create tasks."""
    found = Pauses.read(store, now).of_phase(phase.file_path, phase.task, now)
    if found is not None:
        raise UsageError(f"{phase.file_path}: {phase.task} is {found.why()}: resume it first")
