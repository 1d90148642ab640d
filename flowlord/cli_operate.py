"""The commands that act on tasks that exist: `rerun`, `cancel`, `drop`, `mark`.

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

from flowlord import operations
from flowlord.clock import rfc3339
from flowlord.config import Config
from flowlord.errors import UsageError
from flowlord.loader import Loader
from flowlord.store import Store
from flowlord.tasks import Context, meta_dir


def add_parsers(sub: Any, common: argparse.ArgumentParser,
                iso_time: Callable[[str], datetime]) -> None:
    p = sub.add_parser("rerun", parents=[common],
                       help="run tasks again: a new attempt each, its children after it")
    p.add_argument("task_nos", nargs="*", type=_task_no, metavar="TASK_NO")
    p.add_argument("--only", action="store_true", help="without starting its children")
    p.add_argument("--failed", action="store_true",
                   help="every task whose last attempt failed (with --type, --since)")
    p.add_argument("--type", help="with --failed: only this topic")
    p.add_argument("--since", type=iso_time, help="with --failed: ended since this time")
    p.add_argument("--dry-run", action="store_true", help="list what would run")
    p = sub.add_parser("cancel", parents=[common], help="end tasks now, as errors, not retried")
    p.add_argument("task_nos", nargs="+", type=_task_no, metavar="TASK_NO")
    p = sub.add_parser("drop", parents=[common], help="cancel every waiting task of a topic")
    p.add_argument("--type", required=True)
    p.add_argument("--job")
    p = sub.add_parser("mark", parents=[common], help="record a task's result by hand")
    p.add_argument("task_no", type=_task_no, metavar="TASK_NO")
    p.add_argument("result", choices=["complete", "error"])
    p.add_argument("--msg", default="")


def _task_no(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a task number: {text}")
    return int(text)


def _action(kind: str, target: str, args: dict[str, Any]) -> operations.Action:
    return operations.Action(operations.unix_actor(), kind, target, args)


def _refused(e: operations.Refused) -> int:
    print(f"flowlord: {e}", file=sys.stderr)
    return 1


def cmd_rerun(args: argparse.Namespace, config: Config) -> int:
    """A new attempt of each task, waiting now (or, --dry-run, what would run)."""
    if bool(args.task_nos) == args.failed:
        raise UsageError("rerun: name tasks (TASK_NO…) or --failed, not both")
    if (args.type or args.since) and not args.failed:
        raise UsageError("rerun: --type and --since go with --failed")
    now = datetime.now(UTC)
    store = Store(config.db, readonly=args.dry_run)
    try:
        since = rfc3339(operations.in_zone(args.since, config.zone())) if args.since else None
        task_nos = (store.failed_last_attempts(args.type, since, 10_000) if args.failed
                    else args.task_nos)
        if args.dry_run:
            reruns = operations.plan_reruns(store, task_nos, args.only, now)
        else:
            reruns = operations.rerun(store, task_nos, args.only, now, _action(
                "rerun", " ".join(map(str, task_nos))[:1000],
                {"tasks": task_nos, "only": args.only}))
    except operations.Refused as e:
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
    store = Store(config.db)
    try:
        cancelled, over = operations.cancel(store, args.task_nos, datetime.now(UTC), _action(
            "cancel", " ".join(map(str, args.task_nos))[:1000], {"tasks": args.task_nos}))
    except operations.Refused as e:
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
    store = Store(config.db)
    try:
        dropped = operations.drop(store, args.type, args.job, datetime.now(UTC), _action(
            "drop", f"{args.type}:{args.job}" if args.job else args.type,
            {"type": args.type, "job": args.job}))
    finally:
        store.close()
    print(f"{len(dropped)} waiting task{'s' if len(dropped) != 1 else ''} cancelled")
    return 0


def cmd_mark(args: argparse.Namespace, config: Config) -> int:
    """Record a result by hand; `complete` starts the task's children."""
    store = Store(config.db)
    loader = Loader(config.workflows, store)
    ctx = Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))
    try:
        children = operations.mark(store, args.task_no, args.result, args.msg, ctx, _action(
            "mark", str(args.task_no), {"result": args.result, "msg": args.msg}),
            loader.children)
    except operations.Refused as e:
        return _refused(e)
    finally:
        loader.close()
    print(f"{args.task_no}\t{args.result}"
          + (f"\t{len(children)} child task{'s' if len(children) != 1 else ''} created"
             if args.result == "complete" else ""))
    return 0


COMMANDS = {"rerun": cmd_rerun, "cancel": cmd_cancel, "drop": cmd_drop, "mark": cmd_mark}
