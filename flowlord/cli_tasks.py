"""The commands that create and list tasks, and list actions: `trigger`, `backload`,
`notify`, `tasks`, `actions`.

Arguments in, lines out: what they do is in flowlord/operations.py, which the
daemon's HTTP API calls too. They write from their own process; a running daemon
follows what they wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flowlord import operate, operations, waiting
from flowlord.arrivals import storable
from flowlord.cli_files import find_phase_in_files
from flowlord.clock import rfc3339_ms, seconds_between, utc_now_ms
from flowlord.config import Config
from flowlord.durations import format_seconds
from flowlord.errors import UsageError
from flowlord.file_triggers import runnable_file_phases
from flowlord.model import Fire, Phase
from flowlord.report import count
from flowlord.store import Store, reads
from flowlord.store.taskrows import RESULT
from flowlord.tasklog import log_path, read_log
from flowlord.tasks import BuildError, Context, meta_dir


def _context(config: Config) -> Context:
    return Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"flowlord: warning: {warning}", file=sys.stderr)


def _runnable(config: Config, task: str, workflow: str | None,
              dry_run: bool = False) -> Phase:
    """The stored phase `task` names; for a dry run without a database, the phase as
    the workflow files define it (as `flowlord next` reads them)."""
    if dry_run and not os.path.exists(config.db):
        phase = find_phase_in_files(config.workflows, task, workflow)
        if phase.severity == "error":
            raise UsageError(f"{phase.file_path}: {phase.task} cannot run: {phase.status}")
        return phase
    store = Store(config.db, readonly=True)
    try:
        chosen = operations.runnable_phase(store, task, workflow)
    finally:
        store.close()
    _warn(chosen.warnings)
    return chosen.phase


def _recorded(config: Config, fires: list[Fire], action: operations.Action) -> list[Fire]:
    store = Store(config.db)
    try:
        return operations.record_fires(store, fires, datetime.now(UTC), action)
    finally:
        store.close()


def _target(phase: Phase) -> str:
    return f"{phase.file_path}: {phase.task}"


def cmd_trigger(args: argparse.Namespace, config: Config) -> int:
    """Fire a phase as if its cron fired at --time (default now)."""
    phase = _runnable(config, args.task, args.workflow, args.dry_run)
    fire = operations.trigger_fire(phase, args.time, _context(config))
    if fire.error:
        print(f"flowlord: {phase.file_path}: {phase.task}: {fire.error}", file=sys.stderr)
        return 1
    if args.dry_run:  # one line per task; no task, no line
        for t in fire.tasks:
            print(t.to_json())
        return 0
    action = operations.Action(operations.unix_actor(), "trigger", _target(phase),
                               {"time": fire.scheduled_for})
    if not _recorded(config, [fire], action):
        print(f"flowlord: {phase.file_path}: {phase.task} already fired for "
              f"{fire.scheduled_for}; nothing created", file=sys.stderr)
        return 0
    print(f"{phase.file_path}\t{phase.task}\t{fire.scheduled_for}\t"
          f"{count(len(fire.tasks), 'task')} created")
    return 0


def cmd_backload(args: argparse.Namespace, config: Config) -> int:
    """The phase's tasks for every step of [--from, --to]; a step done before is skipped."""
    phase = _runnable(config, args.task, args.workflow, args.dry_run)
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
    action = operations.Action(operations.unix_actor(), "backload", _target(phase),
                               {"from": args.start.isoformat(), "to": args.end.isoformat(),
                                "by": args.by})
    new = _recorded(config, fires, action)
    created = sum(len(f.tasks) for f in new)
    print(f"{phase.file_path}\t{phase.task}\t{count(len(fires), 'step')}: {len(new)} new, "
          f"{len(fires) - len(new)} done before; {count(created, 'task')} created")
    if args.reprocess and len(new) < len(fires):
        store = Store(config.db)
        try:
            reruns = operate.reprocess(store, fires, new, args.reprocess, datetime.now(UTC),
                                       operations.Action(operations.unix_actor(), "rerun",
                                                         _target(phase),
                                                         {"reprocess": args.reprocess}))
        finally:
            store.close()
        print(f"{count(len(reruns), 'task')} of the steps done before to run again")
    return 0


def print_rows(config: Config, read: Callable[[Store], list[dict[str, Any]]], as_json: bool,
               line: Callable[[dict[str, Any]], str], header: str = "") -> int:
    """Rows of the read model: the JSON the API answers (--json), else a line each
    (under `header`, if given)."""
    store = Store(config.db, readonly=True)
    try:
        rows = read(store)
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    elif header:
        print(header)
    for row in [] if as_json else rows:
        print(line(row))
    return 0


MSG_WIDTH = 120  # characters of a task's message on its line of `flowlord tasks`
TASK_HEADER = "task_no\tcreated\ttask\tstate\twait\trun\tinfo\tid\tmsg"


def cmd_tasks(args: argparse.Namespace, config: Config) -> int:
    """Task history, newest first, under a header line; --json prints what /api/tasks
    answers. Wait (created → started) and run (started → ended) times; an unfinished
    task's so far, marked with `…`."""
    now = utc_now_ms()

    def line(r: dict[str, Any]) -> str:
        state = str(r["result"] or ("running" if r["started"] else f"waiting: {r['waiting']}"))
        if r["attempt"]:  # a retry: which one
            state += f" (attempt {r['attempt']})"
        kind = f"{r['type']}:{r['job']}" if r["job"] else r["type"]
        wait = format_seconds(r["wait_seconds"]) or format_seconds(
            seconds_between(r["created"], now)) + "…"
        run = format_seconds(r["run_seconds"]) or (
            format_seconds(seconds_between(r["started"], now)) + "…" if r["started"] else "-")
        msg = " ".join(r["msg"].split())  # one line
        msg = msg if len(msg) <= MSG_WIDTH else msg[:MSG_WIDTH - 1] + "…"
        return (f"{r['task_no']}\t{r['created']}\t{kind}\t{state}\t{wait}\t{run}\t"
                f"{r['info'] or '-'}\t{r['id']}\t{msg or '-'}")
    since = rfc3339_ms(operations.in_zone(args.since, config.zone())) if args.since else None
    def read(store: Store) -> list[dict[str, Any]]:
        rows = reads.tasks(store, type=args.type, job=args.job, result=args.result,
                           phase=args.phase, since=since, id=args.id, limit=args.limit)
        waiting.explain(store, rows, datetime.now(UTC), waiting.local_concurrency(config))
        return rows
    return print_rows(config, read, args.json, line, header=TASK_HEADER)


def cmd_actions(args: argparse.Namespace, config: Config) -> int:
    """The audit trail, newest first; --json prints what /api/actions answers."""
    return print_rows(config, lambda store: reads.actions(store, limit=args.limit), args.json,
                      lambda r: f"{r['action_no']}\t{r['requested']}\t{r['actor']}\t"
                                f"{r['kind']}\t{r['target'] or '-'}\t"
                                f"{r['outcome'] or 'not applied'}\t{r['message']}")


def stats_since(since: datetime | None, config: Config) -> str:
    """The start of the history `stats` reads: --since, else the last STATS_DAYS days."""
    when = operations.in_zone(since, config.zone()) if since else (
        datetime.now(UTC) - timedelta(days=reads.STATS_DAYS))
    return rfc3339_ms(when)  # as task times are kept


def cmd_stats(args: argparse.Namespace, config: Config) -> int:
    """Per phase (or per topic with --by topic): runs, results, run and wait times
    (p50, p95, max), from history."""
    since = stats_since(args.since, config)
    if args.by == "topic" and args.file is not None:
        raise UsageError("--file is for --by phase: a topic's tasks come from any file")

    def line(r: dict[str, Any]) -> str:
        what = f"{r['file']}\t{r['task']}" if args.by == "phase" else r["topic"]
        return (f"{what}\t{r['runs']} runs\t{r['complete']} complete\t{r['error']} error"
                f"\trun p50 {r['run_p50']}s p95 {r['run_p95']}s max {r['run_max']}s"
                f"\twait p50 {r['wait_p50']}s p95 {r['wait_p95']}s")
    return print_rows(config, lambda store: reads.stats(
        store, type=args.type, since=since, by=args.by, file=args.file), args.json, line)


FOLLOW_EVERY = 0.2  # seconds between looks at a followed task's log and row


def cmd_logs(args: argparse.Namespace, config: Config) -> int:
    """A task's log; --follow: until the task ends, then exit 0 if it completed, else 1."""
    directory = config.task_logs()
    store = Store(config.db, readonly=True)
    try:
        row = store.task_row(args.task_no)
        if row is None:
            raise UsageError(f"no task {args.task_no}")
        if not args.follow:
            data = read_log(directory, args.task_no, args.tail)
            if data is None:
                print(f"flowlord: task {args.task_no} has no log (not started yet, or its "
                      "output went nowhere)", file=sys.stderr)
                return 1
            sys.stdout.buffer.write(data)
            return 0
        offset, path = 0, log_path(directory, args.task_no)
        while True:
            row = store.task_row(args.task_no)
            offset = _print_from(path, offset)
            if row is None:  # deleted meanwhile (retention)
                return 1
            if row[RESULT] is not None:
                # a cancel or a mark ends the row before the worker closes the log: what
                # it writes last comes within a few looks
                for _ in range(10):
                    time.sleep(FOLLOW_EVERY)
                    if (grown := _print_from(path, offset)) == offset:
                        break
                    offset = grown
                return 0 if row[RESULT] == "complete" else 1
            time.sleep(FOLLOW_EVERY)
    finally:
        store.close()


def _print_from(path: str, offset: int) -> int:
    """What the log at `path` holds past `offset`, printed; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return offset + len(data)


def cmd_notify(args: argparse.Namespace, config: Config) -> int:
    """Report files that arrived elsewhere: each starts the `files=` phases it matches."""
    bad = [p for p in args.paths if not storable(p)]
    for path in bad:
        print(f"flowlord: not a UTF-8 path, skipped: {ascii(path)}", file=sys.stderr)
    store = Store(config.db, create=False)
    try:
        paths = [p for p in args.paths if p not in bad]
        action = operations.Action(operations.unix_actor(), "notify", " ".join(paths)[:1000],
                                   {"paths": paths})
        started = operations.notify(store, runnable_file_phases(store), paths, "notify",
                                    _context(config), action)
    finally:
        store.close()
    for path, tasks in started:
        names = " ".join(t.phase or "" for t in tasks)
        print(f"{path}\t{count(len(tasks), 'task')}" + (f"\t{names}" if names else ""))
    return 1 if bad else 0
