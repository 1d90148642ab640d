"""The commands that create and list tasks: `trigger`, `backload`, `notify`, `tasks`.

Arguments in, lines out: what they do is in flowlord/operations.py, which the
daemon's HTTP API calls too. They write from their own process; a running daemon
follows what they wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from flowlord import operations
from flowlord.arrivals import storable
from flowlord.config import Config
from flowlord.file_triggers import runnable_file_phases
from flowlord.model import Fire, Phase
from flowlord.report import count
from flowlord.store import Store, reads
from flowlord.tasks import BuildError, Context, meta_dir


def _context(config: Config) -> Context:
    return Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"flowlord: warning: {warning}", file=sys.stderr)


def _runnable(config: Config, task: str, workflow: str | None) -> Phase:
    store = Store(config.db, readonly=True)
    try:
        chosen = operations.runnable_phase(store, task, workflow)
    finally:
        store.close()
    _warn(chosen.warnings)
    return chosen.phase


def _recorded(config: Config, fires: list[Fire]) -> list[Fire]:
    store = Store(config.db)
    try:
        return operations.record_fires(store, fires, datetime.now(UTC))
    finally:
        store.close()


def cmd_trigger(args: argparse.Namespace, config: Config) -> int:
    """Fire a phase as if its cron fired at --time (default now)."""
    phase = _runnable(config, args.task, args.workflow)
    fire = operations.trigger_fire(phase, args.time, _context(config))
    if fire.error:
        print(f"flowlord: {phase.file_path}: {phase.task}: {fire.error}", file=sys.stderr)
        return 1
    if args.dry_run:  # one line per task; no task, no line
        for t in fire.tasks:
            print(t.to_json())
        return 0
    if not _recorded(config, [fire]):
        print(f"flowlord: {phase.file_path}: {phase.task} already fired for "
              f"{fire.scheduled_for}; nothing created", file=sys.stderr)
        return 0
    print(f"{phase.file_path}\t{phase.task}\t{fire.scheduled_for}\t"
          f"{count(len(fire.tasks), 'task')} created")
    return 0


def cmd_backload(args: argparse.Namespace, config: Config) -> int:
    """The phase's tasks for every step of [--from, --to]; a step done before is skipped."""
    phase = _runnable(config, args.task, args.workflow)
    try:
        fires = operations.backload_fires(phase, args.start, args.end, args.by,
                                          _context(config))
    except BuildError as e:
        print(f"flowlord: {args.task}: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        for fire in fires:
            for t in fire.tasks:
                print(t.to_json())
        return 0
    new = _recorded(config, fires)
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
        started = operations.notify(store, runnable_file_phases(store),
                                    [p for p in args.paths if p not in bad], "notify",
                                    _context(config))
    finally:
        store.close()
    for path, tasks in started:
        names = " ".join(t.phase or "" for t in tasks)
        print(f"{path}\t{count(len(tasks), 'task')}" + (f"\t{names}" if names else ""))
    return 1 if bad else 0
