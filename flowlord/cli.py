"""flowlord: workflow files into SQLite, validated, with their dependency graph and schedules.

Exit status: 0 ok, 1 the check failed, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, NoReturn

import apsw

from flowlord import (
    __version__,
    cli_agenda,
    cli_files,
    cli_operate,
    cli_tasks,
    cron,
    daemon,
    logs,
    operations,
    report,
)
from flowlord.clock import parse_iso, rfc3339
from flowlord.config import (
    Config,
    ConfigError,
    db_origin,
    find_config_file,
    load_config,
    with_flags,
)
from flowlord.durations import parse_duration
from flowlord.errors import UsageError
from flowlord.export import ExportError, export
from flowlord.loader import (
    Loader,
    LoaderError,
)
from flowlord.model import Phase
from flowlord.rules import parse_rule
from flowlord.store import NoDatabase, Store, StoreError, reads, write_txn
from flowlord.store.backup import backup
from flowlord.tasklog import log_path, logged_task_nos, remove_logs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        raise UsageError(message)


def _common_options(default: object) -> _Parser:
    common = _Parser(add_help=False, argument_default=default)
    common.add_argument("-c", "--config", help="config file (TOML)")
    common.add_argument("-w", "--workflows", help="workflow directory or file")
    common.add_argument("--db", help="SQLite database file")
    return common


def _parser() -> argparse.ArgumentParser:
    # The options work before and after the command; after it they must not reset
    # what was given before it, hence SUPPRESS as the subcommands' default.
    common = _common_options(argparse.SUPPRESS)
    parser = _Parser(prog="flowlord", description=__doc__, parents=[_common_options(None)],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"flowlord {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", parents=[common], help="the daemon: keeps the database in step")
    p.add_argument("--once", action="store_true", help="one refresh and a summary, then exit")
    p = sub.add_parser("check", parents=[common], help="validate files; no database")
    p.add_argument("paths", nargs="*")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("refresh", parents=[common], help="sync workflow files into the database")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("phases", parents=[common], help="stored phases, status, next fire")
    p.add_argument("--severity", choices=["ok", "warning", "error"])
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("graph", parents=[common], help="the dependency graph")
    p.add_argument("--format", choices=["text", "dot", "mermaid"], default="text")
    p = sub.add_parser("next", parents=[common], help="next fire times of a cron phase")
    p.add_argument("task")
    p.add_argument("--after", type=_iso_time, help="ISO 8601 time (default now)")
    p.add_argument("-n", type=_positive, default=5)
    p.add_argument("--workflow", help="workflow file key, when several define TASK")
    p = sub.add_parser("export", parents=[common],
                       help="write the stored workflows back to TOML files")
    p.add_argument("--out", default="flowlord-export",
                   help="directory to write them to (default ./flowlord-export)")
    p = sub.add_parser("backup", parents=[common],
                       help="a consistent copy of the database, made while the daemon runs")
    p.add_argument("path", help="the new file to write (an existing one is refused)")
    p = sub.add_parser("doctor", parents=[common], help="integrity and foreign-key checks")
    p.add_argument("--fix", action="store_true",
                   help="remove orphans (rows whose parent is gone) in one transaction")
    p = sub.add_parser("trigger", parents=[common], help="fire a phase now or at --time")
    p.add_argument("task")
    p.add_argument("--time", type=_iso_time, help="ISO 8601 fire time (default now)")
    p.add_argument("--workflow", help="workflow file key, when several define TASK")
    p.add_argument("--dry-run", action="store_true", help="print the tasks as JSON lines")
    p = sub.add_parser("backload", parents=[common], help="a phase's tasks for a time range")
    p.add_argument("task")
    p.add_argument("--from", dest="start", type=_iso_time, required=True)
    p.add_argument("--to", dest="end", type=_iso_time, required=True)
    p.add_argument("--by", choices=["hour", "day", "week", "month"])
    p.add_argument("--workflow", help="workflow file key, when several define TASK")
    p.add_argument("--dry-run", action="store_true", help="print the tasks as JSON lines")
    p.add_argument("--reprocess", choices=["failed", "all"],
                   help="steps fired before: run their failed (or all) tasks again")
    p = sub.add_parser("notify", parents=[common], help="files that arrived: start their phases")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = sub.add_parser("worker", parents=[common],
                       help="run a topic's tasks from the redis bus: worker … -- COMMAND…")
    p.add_argument("--bus", help="redis URL (default: bus.url of the config)")
    p.add_argument("--topic", required=True)
    p.add_argument("--concurrency", type=_positive, default=1)
    p.add_argument("--timeout", type=_duration, default=timedelta(hours=1),
                   help="per task, unless its phase sets timeout= (default 1h)")
    p.add_argument("--claim-idle", type=_duration, default=timedelta(minutes=1),
                   help="take over a task another worker left silent this long (default 1m)")
    p.add_argument("--grace", type=_duration, default=timedelta(seconds=30),
                   help="at SIGTERM, how long running tasks may finish (default 30s)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p = sub.add_parser("tasks", parents=[common], help="task history, newest first")
    p.add_argument("--type")
    p.add_argument("--result", choices=["complete", "error", "alert", "warn", "none"],
                   help="none: tasks not finished")
    p.add_argument("--job")
    p.add_argument("--phase", help="the tasks of phases of this name")
    p.add_argument("--since", type=_iso_time, help="created at or after this ISO 8601 time")
    p.add_argument("--id", help="every attempt and child of one id")
    p.add_argument("--limit", type=_positive, default=100)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("actions", parents=[common],
                       help="the audit trail: who did what, newest first")
    p.add_argument("--limit", type=_positive, default=100)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("logs", parents=[common], help="a task's output (stdout and stderr)")
    p.add_argument("task_no", type=cli_operate.task_no_arg, metavar="TASK_NO")
    p.add_argument("--follow", action="store_true",
                   help="until the task ends; exit 0 when it completed, else 1")
    p.add_argument("--tail", type=_positive, help="only the last N lines")
    p = sub.add_parser("stats", parents=[common],
                       help="per phase: runs, results, run and wait times, from history")
    p.add_argument("--type")
    p.add_argument("--by", choices=("phase", "topic"), default="phase",
                   help="one line per phase (default) or per topic")
    p.add_argument("--file", help="the phases of this workflow file only")
    p.add_argument("--since", type=_iso_time, help="ISO 8601 time (default: 30 days ago)")
    p.add_argument("--json", action="store_true")
    cli_operate.add_parsers(sub, common, _iso_time)
    cli_agenda.add_parser(sub, common, _iso_time)
    return parser


def _iso_time(text: str) -> datetime:
    try:
        return parse_iso(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text}") from None


def _duration(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"not a positive duration: {text}")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"not an integer from 1 to 10000: {text}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    config = Config()
    try:
        args = _parser().parse_args(argv)
        config = with_flags(load_config(find_config_file(args.config)),
                            workflows=args.workflows, db=args.db)
        return int(COMMANDS[args.command](args, config))
    except NoDatabase as e:  # which path, from where, and the command that makes it
        print(f"flowlord: {_no_database(e, config)}", file=sys.stderr)
        return 2
    except (UsageError, ConfigError, StoreError, LoaderError) as e:
        print(f"flowlord: {e}", file=sys.stderr)
        return 2
    except OverflowError as e:  # a time near year 1 or 9999, moved by a zone or an offset
        print(f"flowlord: out of range: {e}", file=sys.stderr)
        return 2
    except apsw.Error as e:  # e.g. the database is locked by a shell left inside BEGIN
        print(f"flowlord: database error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0



def _no_database(e: NoDatabase, config: Config) -> str:
    """A missing database, said so that following the advice makes that same database,
    not an empty one wherever the command happens to run."""
    if config.db_from == "flag":
        again = f"flowlord --db {e.path} refresh"
    elif config.source:
        again = f"flowlord -c {os.path.abspath(config.source)} refresh"
    else:
        again = f"flowlord --db {e.path} refresh"
    return f"no database at {e.path} ({db_origin(config)}): `{again}` creates it"


# --- commands ---------------------------------------------------------------------------


def _loader(config: Config) -> Loader:
    """A loader on the database; a missing workflow path is refused before the database
    is created."""
    if not os.path.exists(config.workflows):
        raise UsageError(f"workflow path not found: {os.path.abspath(config.workflows)}")
    return Loader(config.workflows, Store(config.db),
                  allow_world_writable=config.allow_world_writable)


def cmd_refresh(args: argparse.Namespace, config: Config) -> int:
    loader = _loader(config)
    try:
        changes = operations.rescan(loader.store, operations.Action(
            operations.unix_actor(), "refresh"), datetime.now(UTC), loader.refresh)
        _warn_problems(loader)
    finally:
        loader.close()
    if args.json:
        report.show(json.dumps({kind: [c[1:] for c in changes if c[0] == sign]
                         for sign, kind in (("+", "added"), ("~", "changed"),
                                            ("-", "removed"))}))
    else:
        report.show("\n".join(changes))
    return 0


def _warn_problems(loader: Loader) -> None:
    """Directories that could not be read, and files whose bytes were refused."""
    for problem in loader.problems:
        print(f"flowlord: warning: {problem}", file=sys.stderr)
    for file_path, status, *_ in loader.store.files():
        if status:
            print(f"flowlord: {file_path}: {status}", file=sys.stderr)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """The daemon (watch, refresh); with --once, one refresh and a summary."""
    if not args.once:
        return daemon.run(config)
    loader = _loader(config)
    try:
        changes = loader.refresh()
        phases = loader.store.phases()
        _warn_problems(loader)
        refused = sum(1 for f in loader.store.files() if f[1])
    finally:
        loader.close()
    counts = {s: sum(p.severity == s for p in phases) for s in ("ok", "warning", "error")}
    print(f"flowlord: loaded {config.workflows} into {config.db}: "
          f"{report.count(len(changes), 'file')} changed, {report.count(refused, 'file')} "
          f"refused, {report.count(len(phases), 'phase')} ({counts['ok']} ok, "
          f"{counts['warning']} warning, {counts['error']} error)")
    return 0


def _next_fire(phase: Phase, zone: tzinfo, now: datetime) -> datetime | None:
    schedule = parse_rule(phase.rule).cron
    if phase.severity == "error" or schedule is None:
        return None
    try:
        return cron.next_fire(schedule, now, zone)
    except cron.CronError:
        return None


def cmd_phases(args: argparse.Namespace, config: Config) -> int:
    """Stored phases as the API shows them; the next fire is the running daemon's plan
    when one runs on the database, else computed here as it would plan it."""
    planned = reads.daemon_running(config.db)
    store = Store(config.db, readonly=True)
    try:
        phases = reads.phase_rows(store, severity=args.severity)
        refused = reads.refused_files(store)
        pauses = reads.pauses_now(store)
    finally:
        store.close()
    zone, now = config.zone(), datetime.now(UTC)
    # a file whose latest bytes were refused: its row first, then its last good phases
    rows: list[dict[str, object]] = [
        {"file": file, "task": None, "severity": "error", "status": status}
        for file, status in refused if args.severity in (None, "error")]
    for phase, next_fire, last_fire in phases:
        if not planned:
            fire = _next_fire(phase, zone, now)
            next_fire = rfc3339(fire) if fire else None
        rows.append(reads.phase_json(phase, next_fire, last_fire, pauses))
    if args.json:
        report.show(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        if r["task"] is None:
            report.show(f"{r['file']}\t-\terror\t{r['status']}")
            continue
        line = f"{r['file']}\t{r['task']}\t{r['severity']}\tnext={r['next_fire'] or '-'}"
        paused: Any = r.get("paused")
        if paused:  # who, until when and why: one line says it all
            line += f"\tpaused by {paused['actor']}" + (
                f" until {paused['until']}" if paused["until"] else "") + (
                f": {paused['reason']}" if paused["reason"] else "")
        report.show(line + (f"\t{r['status']}" if r["status"] else ""))
    return 0


def cmd_graph(args: argparse.Namespace, config: Config) -> int:
    store = Store(config.db, readonly=True)
    try:
        phases, edges = store.phases(), store.edges()
    finally:
        store.close()
    render = {"text": report.graph_text, "dot": report.graph_dot,
              "mermaid": report.graph_mermaid}[args.format]
    report.show(render(phases, edges))
    return 0


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    """Integrity, foreign keys and orphans; with --fix, orphans removed, then checked
    again. Exit 1 while anything is found."""
    if args.fix:
        store = Store(config.db, create=False)
        try:
            with write_txn(store.conn):
                fixed = store.remove_orphans()
        finally:
            store.close()
        print(f"flowlord: removed or cleared {report.count(fixed, 'orphan row')}",
              file=sys.stderr)
        logs = remove_logs(config.task_logs(), _orphan_logs(config))
        print(f"flowlord: removed {report.count(logs, 'log')} without a task",
              file=sys.stderr)
    store = Store(config.db, readonly=True)
    try:
        findings = [f"integrity: {p}" for p in store.integrity_problems()]
        findings += [f"orphan phase: {f}: {t}" for f, t in store.orphan_phases()]
        findings += [f"foreign key: {p}" for p in store.foreign_key_problems()
                     if not p.startswith("workflow_phases ")]  # named above as orphans
    finally:
        store.close()
    findings += [f"log without a task: {log_path(config.task_logs(), n)}"
                 for n in _orphan_logs(config)]
    report.show("\n".join(findings) if findings else f"{config.db}: ok")
    return 1 if findings else 0


def cmd_backup(args: argparse.Namespace, config: Config) -> int:
    """SQLite's online backup of the database to a new file (flowlord/store/backup.py)."""
    pages = backup(config.db, args.path)
    print(f"{args.path}: {report.count(pages, 'page')} copied from {config.db}")
    return 0


def _orphan_logs(config: Config) -> list[int]:
    """Task logs whose task is gone (deleted by hand, or a database started anew)."""
    logged = logged_task_nos(config.task_logs())
    store = Store(config.db, readonly=True)
    try:
        return store.missing_tasks(logged)
    finally:
        store.close()


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """The stored workflows as TOML files under --out, one per workflow key."""
    out = os.path.abspath(args.out)
    workflows = os.path.abspath(config.workflows)
    if out == workflows or out.startswith(workflows.rstrip(os.sep) + os.sep):
        raise UsageError(f"export: {args.out} is the workflow directory: the files there "
                         "are the source; choose another --out")
    store = Store(config.db, readonly=True)
    try:
        keys = export(store, out)
    except ExportError as e:
        raise UsageError(f"export: {e}") from None
    except OSError as e:
        raise UsageError(f"export: cannot write {e.filename or args.out}: {e.strerror}") \
            from None
    finally:
        store.close()
    report.show("\n".join(os.path.join(args.out, key) for key in keys))
    return 0


def cmd_worker(args: argparse.Namespace, config: Config) -> int:
    """A remote worker: the tasks of one topic from the redis bus (README.md, Beyond one
    machine: the redis bus)."""
    from flowlord.bus import BusUnavailable
    from flowlord.bus.worker import RemoteWorker

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("worker: the command is missing: worker --topic T -- COMMAND…")
    url = args.bus or config.bus_url
    if url == "local":
        raise UsageError("worker: needs a redis bus: --bus redis://host:port/db, or bus.url")
    logs.configure()
    worker = RemoteWorker(url, args.topic, argv, concurrency=args.concurrency,
                          timeout=args.timeout, claim_idle=args.claim_idle, grace=args.grace,
                          log=logs.get("flowlord.worker"))
    try:
        return worker.run()
    except BusUnavailable as e:
        raise UsageError(f"worker: {e}") from None
    except ImportError:
        raise UsageError("worker: the redis bus needs redis-py: pip install 'flowlord[redis]'") \
            from None


COMMANDS = {
    "run": cmd_run, "check": cli_files.cmd_check, "refresh": cmd_refresh,
    "phases": cmd_phases, "graph": cmd_graph, "next": cli_files.cmd_next, "doctor": cmd_doctor,
    "backup": cmd_backup,
    "trigger": cli_tasks.cmd_trigger, "backload": cli_tasks.cmd_backload,
    "tasks": cli_tasks.cmd_tasks, "notify": cli_tasks.cmd_notify, "worker": cmd_worker,
    "actions": cli_tasks.cmd_actions, "stats": cli_tasks.cmd_stats,
    "logs": cli_tasks.cmd_logs, **cli_operate.COMMANDS,
    "export": cmd_export, "agenda": cli_agenda.cmd_agenda,
}

if __name__ == "__main__":
    sys.exit(main())
