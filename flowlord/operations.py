"""What an operator can ask of flowlord, the same from the command line and from HTTP:
trigger a phase, backload a range, report arrived files. Each works on the stored
phases (what the daemon schedules) and writes through the fire ledger, so a slot
fired by the daemon, a trigger or a backload is never created twice.

Building (which phase, which fires) only reads; recording writes in one
transaction. The CLI records from its own process (the daemon follows what it
wrote); inside the daemon, the HTTP threads build and ask the loop to record
(`flowlord/commands.py`), so only the loop writes there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from flowlord.arrivals import record_arrival
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.errors import UsageError
from flowlord.model import Fire, NewTask, Phase
from flowlord.rules import BY_STEPS, parse_rule
from flowlord.store import Store, write_txn
from flowlord.tasks import BuildError, Context, backload_steps, build_fire


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


def record_fires(store: Store, fires: Sequence[Fire], now: datetime) -> list[Fire]:
    """Write fires through the ledger, in one transaction; the ones that were new."""
    with write_txn(store.conn):
        return store.record_fires(fires, rfc3339_ms(now))


def notify(store: Store, phases: Sequence[Phase], paths: Sequence[str], source: str,
           ctx: Context) -> list[tuple[str, list[NewTask]]]:
    """Files that arrived: each starts the `files=` phases (of `phases`) it matches, in
    one transaction. Each path with the tasks it started."""
    with write_txn(store.conn):
        return [(path, record_arrival(store, phases, path, source, ctx)) for path in paths]
