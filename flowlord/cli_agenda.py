"""`flowlord agenda`: what will run when, from the database and the config
(flowlord/agenda.py computes it; README.md, Agenda)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flowlord import agenda, report
from flowlord.config import Config
from flowlord.durations import format_seconds
from flowlord.errors import UsageError
from flowlord.operations import in_zone
from flowlord.store import Store


def add_parser(sub: Any, common: argparse.ArgumentParser,
               iso_time: Callable[[str], datetime]) -> None:
    p = sub.add_parser("agenda", parents=[common],
                       help="what will run when: cron fires, their children, backlogs")
    p.add_argument("--hours", type=_hours, default=agenda.DEFAULT_HOURS,
                   help=f"the window, from 1 to {agenda.MAX_HOURS} (default "
                        f"{agenda.DEFAULT_HOURS})")
    p.add_argument("--from", dest="start", type=iso_time,
                   help="ISO 8601 time the window starts after (default now)")
    p.add_argument("--concurrency", action="append", default=[], metavar="TOPIC=N",
                   help="a topic's concurrency (the only source on a redis bus)")
    p.add_argument("--json", action="store_true")


def _hours(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= agenda.MAX_HOURS:
        raise argparse.ArgumentTypeError(f"not an integer from 1 to {agenda.MAX_HOURS}: {text}")
    return int(text)


def cmd_agenda(args: argparse.Namespace, config: Config) -> int:
    try:
        given = agenda.parse_concurrency(args.concurrency)
    except ValueError as e:
        raise UsageError(str(e)) from None
    now = in_zone(args.start, config.zone()) if args.start else datetime.now(UTC)
    store = Store(config.db, readonly=True)
    try:
        found = agenda.read(store, config, now.astimezone(UTC), args.hours, given)
    finally:
        store.close()
    if args.json:
        report.show(json.dumps(found.as_json(), ensure_ascii=False))
        return 0
    lines: list[str] = []
    for fire in found.fires:
        shown = found.fire_json(fire)
        lines.append(f"{shown['slot']}\t{_line(shown)}")
        _children(shown["children"], 1, lines)
    if not found.fires:
        lines.append(f"no cron fire due from {found.start:%Y-%m-%dT%H:%M:%SZ} to "
                     f"{found.end:%Y-%m-%dT%H:%M:%SZ}")
    lines += [f"warning: {w.text()}" for w in found.warnings]
    lines += [f"note: {n}" for n in found.notes]
    report.show("\n".join(lines))
    return 0


def _line(node: dict[str, Any]) -> str:
    run = format_seconds(node["expected_run"]) if node["expected_run"] is not None else "unknown"
    words = (f"{node['file']}\t{node['task']}\tstart {node['start'] or 'unknown'}\t"
             f"{node['tasks']} {'task' if node['tasks'] == 1 else 'tasks'}\trun {run}\t"
             f"end {node['expected_end'] or '-'}")
    if node["pause"]:
        words += f"\t{node['pause']}"
    if node["error"]:
        words += f"\t{node['error']}"
    return words


def _children(children: list[dict[str, Any]], depth: int, lines: list[str]) -> None:
    for child in children:
        lines.append("  " * depth + "└ " + _line(child))
        _children(child["children"], depth + 1, lines)
