"""The commands that act on what exists: `rerun`, `cancel`, `drop`, `mark` a task;
`pause`, `resume` and list the `pauses`.

Arguments in, lines out: what they do is in flowlord/operations.py (the HTTP API
calls the same code). Each is a row of the audit trail. They change rows only, so
they need no daemon; a running daemon ends the process of a task ended here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flowlord import operate, operations
from flowlord.cli_tasks import print_rows
from flowlord.clock import parse_iso, rfc3339, rfc3339_ms
from flowlord.config import Config
from flowlord.durations import DurationError, parse_duration
from flowlord.errors import UsageError
from flowlord.loader import Loader
from flowlord.store import Store
from flowlord.tasks import Context, meta_dir


def add_parsers(sub: Any, common: argparse.ArgumentParser,
                iso_time: Callable[[str], datetime]) -> None:
    p = sub.add_parser("rerun", parents=[common],
                       help="run tasks again: a new attempt each, its children after it")
    p.add_argument("task_nos", nargs="*", type=task_no_arg, metavar="TASK_NO")
    p.add_argument("--only", action="store_true", help="without starting its children")
    p.add_argument("--failed", action="store_true",
                   help="every task whose last attempt failed (with --type, --since)")
    p.add_argument("--type", help="with --failed: only this topic")
    p.add_argument("--since", type=iso_time, help="with --failed: ended since this time")
    p.add_argument("--dry-run", action="store_true", help="list what would run")
    p = sub.add_parser("cancel", parents=[common], help="end tasks now, as errors, not retried")
    p.add_argument("task_nos", nargs="+", type=task_no_arg, metavar="TASK_NO")
    p = sub.add_parser("drop", parents=[common], help="cancel every waiting task of a topic")
    p.add_argument("--type", required=True)
    p.add_argument("--job")
    p = sub.add_parser("mark", parents=[common], help="record a task's result by hand")
    p.add_argument("task_no", type=task_no_arg, metavar="TASK_NO")
    p.add_argument("result", choices=["complete", "error"])
    p.add_argument("--msg", default="")
    p = sub.add_parser("pause", parents=[common],
                       help="stop new work of a phase, a file, a topic or everything")
    _targets(p, many=False)
    p.add_argument("--until", type=_until, help="an ISO 8601 time, or a duration from now")
    p.add_argument("--reason", default="")
    p = sub.add_parser("resume", parents=[common], help="end pauses")
    _targets(p, many=True)
    p = sub.add_parser("pauses", parents=[common], help="the pauses in force")
    p.add_argument("--json", action="store_true")


def _targets(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("tasks", nargs="*" if many else "?", default=[] if many else None,
                   metavar="TASK")
    p.add_argument("--workflow", help="workflow file key, when several define TASK")
    p.add_argument("--file", help="every phase of this workflow file (its key)")
    p.add_argument("--topic", help="keep this topic's tasks waiting")
    p.add_argument("--all", action="store_true", help="everything")


def _until(text: str) -> datetime:
    """An ISO 8601 time, or a duration from now (`2h`, `90m`)."""
    try:
        return datetime.now(UTC) + parse_duration(text)
    except DurationError:
        pass
    try:
        return parse_iso(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time or a duration: {text}") from None


def task_no_arg(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) < 2**62:
        raise argparse.ArgumentTypeError(f"not a task number: {text}")
    return int(text)


def _action(kind: str, target: str, args: dict[str, Any]) -> operations.Action:
    return operations.Action(operations.unix_actor(), kind, target, args)


def _refused(e: operate.Refused) -> int:
    print(f"flowlord: {e}", file=sys.stderr)
    return 1


def cmd_rerun(args: argparse.Namespace, config: Config) -> int:
    """A new attempt of each task, waiting now (or, --dry-run, what would run)."""
    if bool(args.task_nos) == args.failed:
        raise UsageError("rerun: name tasks (TASK_NO…) or --failed, not both")
    if (args.type or args.since) and not args.failed:
        raise UsageError("rerun: --type and --since go with --failed")
    now = datetime.now(UTC)
    store = Store(config.db, readonly=args.dry_run, create=False)
    try:
        since = (rfc3339_ms(operations.in_zone(args.since, config.zone())) if args.since
                 else None)  # to the millisecond, as task times are kept
        task_nos = (store.failed_last_attempts(args.type, since, 10_000) if args.failed
                    else args.task_nos)
        if args.dry_run:
            reruns = operate.plan_reruns(store, task_nos, args.only, now)
        else:
            reruns = operate.rerun(store, task_nos, args.only, now, _action(
                "rerun", " ".join(map(str, task_nos))[:1000],
                {"tasks": task_nos, "only": args.only}))
    except operate.Refused as e:
        return _refused(e)
    finally:
        store.close()
    for r in reruns:
        kind = f"{r.type}:{r.job}" if r.job else r.type
        print(f"{r.parent_no}\t{kind}\t{r.info}\tattempt {r.attempt}"
              + ("\twithout children" if r.no_children else ""))
    if not args.dry_run:
        print(f"{len(reruns)} task{'s' if len(reruns) != 1 else ''} to run again",
              file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace, config: Config) -> int:
    """End tasks now; exit 1 when one had already ended."""
    store = Store(config.db, create=False)
    try:
        cancelled, over = operate.cancel(store, args.task_nos, datetime.now(UTC), _action(
            "cancel", " ".join(map(str, args.task_nos))[:1000], {"tasks": args.task_nos}))
    except operate.Refused as e:
        return _refused(e)
    finally:
        store.close()
    for task_no in cancelled:
        print(f"{task_no}\tcancelled")
    for task_no in over:
        print(f"flowlord: task {task_no} had already ended", file=sys.stderr)
    return 1 if over else 0


def cmd_drop(args: argparse.Namespace, config: Config) -> int:
    """Cancel every waiting task of a topic."""
    store = Store(config.db, create=False)
    try:
        dropped = operate.drop(store, args.type, args.job, datetime.now(UTC), _action(
            "drop", f"{args.type}:{args.job}" if args.job else args.type,
            {"type": args.type, "job": args.job}))
    finally:
        store.close()
    print(f"{len(dropped)} waiting task{'s' if len(dropped) != 1 else ''} cancelled")
    return 0


def cmd_mark(args: argparse.Namespace, config: Config) -> int:
    """Record a result by hand; `complete` starts the task's children."""
    store = Store(config.db, create=False)
    loader = Loader(config.workflows, store)
    ctx = Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))
    try:
        children = operate.mark(store, args.task_no, args.result, args.msg, ctx, _action(
            "mark", str(args.task_no), {"result": args.result, "msg": args.msg}),
            loader.children)
    except operate.Refused as e:
        return _refused(e)
    finally:
        loader.close()
    print(f"{args.task_no}\t{args.result}"
          + (f"\t{len(children)} child task{'s' if len(children) != 1 else ''} created"
             if args.result == "complete" else ""))
    return 0


def cmd_pause(args: argparse.Namespace, config: Config) -> int:
    """Open a pause; exit 1 when one is in force for that already."""
    now = datetime.now(UTC)
    until = operations.in_zone(args.until, config.zone()) if args.until else None
    store = Store(config.db, create=False)
    try:
        target, label = operate.pause_target(store, task=args.tasks, workflow=args.workflow,
                                             file=args.file, topic=args.topic,
                                             everything=args.all)
        operate.pause(store, target, until, args.reason, now, _action(
            "pause", label, {"until": rfc3339(until) if until else None,
                             "reason": args.reason}))
    except operate.Refused as e:
        return _refused(e)
    finally:
        store.close()
    print(f"paused {label}" + (f" until {rfc3339(until)}" if until else ""))
    return 0


def cmd_resume(args: argparse.Namespace, config: Config) -> int:
    """End the pauses named; exit 1 when none of them was in force."""
    store = Store(config.db, create=False)
    try:
        named = [operate.pause_target(store, task=t, workflow=args.workflow) for t in args.tasks]
        if args.file or args.topic or args.all or not named:
            named.append(operate.pause_target(store, file=args.file, topic=args.topic,
                                              everything=args.all))
        ended = operate.resume(store, [target for target, _ in named], datetime.now(UTC),
                               _action("resume", ", ".join(label for _, label in named)[:1000],
                                       {}))
    except operate.Refused as e:
        return _refused(e)
    finally:
        store.close()
    print(f"{ended} pause{'s' if ended != 1 else ''} ended")
    return 0 if ended else 1


def cmd_pauses(args: argparse.Namespace, config: Config) -> int:
    """The pauses in force: target, actor, reason, since, until."""
    return print_rows(config, lambda store: operate.pauses_in_force(store, datetime.now(UTC)),
                      args.json, lambda r: f"{r['target']}\t{r['actor']}\tsince {r['since']}"
                                           f"\tuntil {r['until'] or 'resumed'}\t{r['reason']}")


COMMANDS = {"rerun": cmd_rerun, "cancel": cmd_cancel, "drop": cmd_drop, "mark": cmd_mark,
            "pause": cmd_pause, "resume": cmd_resume, "pauses": cmd_pauses}
