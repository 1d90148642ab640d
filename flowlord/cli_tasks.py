"""The commands that create and list tasks: `trigger`, `backload`, `notify`, `tasks`.

They work on the stored phases (what the daemon schedules) and write through
the fire ledger, so a slot fired by the daemon, a trigger or a backload is
never created twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from flowlord.arrivals import record_arrival, storable
from flowlord.clock import rfc3339, utc_now_ms
from flowlord.config import Config
from flowlord.errors import UsageError
from flowlord.model import Fire, Phase
from flowlord.report import count
from flowlord.rules import BY_STEPS, parse_rule
from flowlord.store import Store, reads, write_txn
from flowlord.tasks import BuildError, Context, backload_steps, build_fire, meta_dir


def pick_phase(phases: Sequence[Phase], task: str, workflow: str | None, where: str) -> Phase:
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
    if len(found) > 1:
        print(f"flowlord: warning: {len(found)} phases match {task}; using "
              f"{found[0].file_path}: {found[0].task} (choose with --workflow)", file=sys.stderr)
    return found[0]


def stored_phase(config: Config, task: str, workflow: str | None) -> Phase:
    """The phase `task` names in the database; one that cannot run is a usage error."""
    store = Store(config.db, readonly=True)
    try:
        phase = pick_phase(store.phases(), task, workflow, config.db)
    finally:
        store.close()
    if phase.severity == "error":
        raise UsageError(f"{phase.file_path}: {phase.task} cannot run: {phase.status}")
    return phase


def in_zone(t: datetime, config: Config) -> datetime:
    """A time given by a person: without an offset it is in the configured zone."""
    return t.replace(tzinfo=config.zone()) if t.tzinfo is None else t


def _context(config: Config) -> Context:
    return Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))


def record(config: Config, fires: list[Fire]) -> list[Fire]:
    """Write fires through the ledger; the ones that were new."""
    store = Store(config.db)
    try:
        with write_txn(store.conn):
            return store.record_fires(fires, utc_now_ms())
    finally:
        store.close()


def trigger_fire(config: Config, task: str, time: datetime | None,
                 workflow: str | None) -> tuple[Phase, Fire]:
    """The fire of a phase as if its cron fired at `time` (default now); not recorded.
    Its `error` says why it has no tasks."""
    phase = stored_phase(config, task, workflow)
    slot = in_zone(time, config) if time else datetime.now(UTC)
    slot = slot.astimezone(UTC).replace(microsecond=0)
    return phase, build_fire(phase, slot, "trigger", _context(config))


def backload_fires(config: Config, task: str, start: datetime, end: datetime,
                   by: str | None, workflow: str | None) -> tuple[Phase, list[Fire]]:
    """A fire for every step of [start, end]; not recorded. BuildError when the range
    cannot be built (the message says why)."""
    phase = stored_phase(config, task, workflow)
    rule = parse_rule(phase.rule)
    try:
        steps = backload_steps(phase, in_zone(start, config), in_zone(end, config),
                               BY_STEPS[by] if by else rule.by, _context(config))
        # a step's slot is the cron time that builds it: its data time less the offset
        return phase, [Fire(phase.file_path, phase.task,
                            rfc3339(t.astimezone(UTC) - rule.offset), "backload", tasks)
                       for t, tasks in steps]
    except OverflowError:
        raise BuildError("time out of range") from None


def cmd_trigger(args: argparse.Namespace, config: Config) -> int:
    """Fire a phase as if its cron fired at --time (default now)."""
    phase, fire = trigger_fire(config, args.task, args.time, args.workflow)
    if fire.error:
        print(f"flowlord: {phase.file_path}: {phase.task}: {fire.error}", file=sys.stderr)
        return 1
    if args.dry_run:  # one line per task; no task, no line
        for t in fire.tasks:
            print(t.to_json())
        return 0
    if not record(config, [fire]):
        print(f"flowlord: {phase.file_path}: {phase.task} already fired for "
              f"{fire.scheduled_for}; nothing created", file=sys.stderr)
        return 0
    print(f"{phase.file_path}\t{phase.task}\t{fire.scheduled_for}\t"
          f"{count(len(fire.tasks), 'task')} created")
    return 0


def cmd_backload(args: argparse.Namespace, config: Config) -> int:
    """The phase's tasks for every step of [--from, --to]; a step done before is skipped."""
    try:
        phase, fires = backload_fires(config, args.task, args.start, args.end, args.by,
                                      args.workflow)
    except BuildError as e:
        print(f"flowlord: {args.task}: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        for fire in fires:
            for t in fire.tasks:
                print(t.to_json())
        return 0
    new = record(config, fires)
    created = sum(len(f.tasks) for f in new)
    print(f"{phase.file_path}\t{phase.task}\t{count(len(fires), 'step')}: {len(new)} new, "
          f"{len(fires) - len(new)} done before; {count(created, 'task')} created")
    return 0


def cmd_tasks(args: argparse.Namespace, config: Config) -> int:
    """Task history, newest first; --json prints what /api/tasks answers."""
    store = Store(config.db, readonly=True)
    try:
        records = reads.tasks(store, type=args.type, result=args.result, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(records, indent=1, ensure_ascii=False))
        return 0
    for r in records:
        state = str(r["result"] or ("running" if r["started"] else "waiting"))
        if r["attempt"]:  # a retry: which one
            state += f" (attempt {r['attempt']})"
        kind = f"{r['type']}:{r['job']}" if r["job"] else r["type"]
        print(f"{r['task_no']}\t{r['created']}\t{kind}\t{state}\t{r['info']}\t{r['id']}")
    return 0


def cmd_notify(args: argparse.Namespace, config: Config) -> int:
    """Report files that arrived elsewhere: each starts the `files=` phases it matches."""
    bad = [p for p in args.paths if not storable(p)]
    for path in bad:
        print(f"flowlord: not a UTF-8 path, skipped: {ascii(path)}", file=sys.stderr)
    store = Store(config.db)
    try:
        phases = [p for p in store.file_phases() if parse_rule(p.rule).files]
        with write_txn(store.conn):
            started = [(path, record_arrival(store, phases, path, "notify", _context(config)))
                       for path in args.paths if path not in bad]
    finally:
        store.close()
    for path, tasks in started:
        names = " ".join(t.phase or "" for t in tasks)
        print(f"{path}\t{count(len(tasks), 'task')}" + (f"\t{names}" if names else ""))
    return 1 if bad else 0
