"""The commands that read workflow files and need no database: `check` and `next`.

Arguments in, lines out; a file is read and validated exactly as a refresh would
store it (flowlord/loader.py), without touching any database.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from flowlord import cron, operations, report
from flowlord.config import Config
from flowlord.errors import UsageError
from flowlord.loader import Refusals, list_workflows, load_bytes, read_workflow
from flowlord.model import Phase
from flowlord.parse import WorkflowParseError
from flowlord.rules import parse_rule


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    findings: list[report.Finding] = []
    files = 0
    for path in args.paths or [config.workflows]:
        if not os.path.exists(path):
            raise UsageError(f"no such file or directory: {path}")
        if os.path.isdir(path):
            listing = list_workflows(path)
            if listing.unlisted:
                raise UsageError(f"cannot read directory: {path}/{listing.unlisted[0]}")
            targets = listing.files
        else:
            targets = {os.path.basename(path): path}
        # what the daemon would refuse, check reports (with this config's allowance)
        refusals = Refusals(path, config.allow_world_writable)
        for key, file in targets.items():
            files += 1
            findings.extend(check_file(key, file, refusals))
    if args.json:
        report.show(report.findings_json(findings))
    else:
        report.show("\n".join(report.findings_text(findings)))
        report.show(report.summary(files, findings))
    return 1 if any(f[2] == "error" for f in findings) else 0


def load_file(key: str, path: str) -> list[Phase] | str:
    """What a refresh would store for one file: its phases, or its row's status."""
    try:
        return load_bytes(key, read_workflow(path)[1])
    except OSError as e:
        return f"parse error: cannot read file: {e.strerror}"
    except WorkflowParseError as e:
        return str(e)


def check_file(key: str, path: str, refusals: Refusals | None = None) -> list[report.Finding]:
    try:
        refused = refusals.reason(path, os.stat(path)) if refusals else ""
    except OSError:
        refused = ""  # load_file says why it cannot be read
    if refused:
        return [(key, None, "error", f"parse error: refused: {refused}")]
    outcome = load_file(key, path)
    if isinstance(outcome, str):
        return [(key, None, "error", outcome)]
    return [(key, p.task, p.severity, p.status) for p in outcome]


def cmd_next(args: argparse.Namespace, config: Config) -> int:
    phase = find_phase_in_files(config.workflows, args.task, args.workflow)
    if phase.severity == "error":
        print(f"flowlord: {phase.file_path}: {phase.task} cannot run: {phase.status}",
              file=sys.stderr)
        return 1
    schedule = parse_rule(phase.rule).cron
    if schedule is None:
        print(f"flowlord: {phase.file_path}: {phase.task} has no cron rule", file=sys.stderr)
        return 1
    after = args.after or datetime.now(UTC)
    zone = config.zone()
    if after.tzinfo is None:
        after = after.replace(tzinfo=cron.schedule_zone(schedule, zone))
    try:
        times = cron.fire_times(schedule, after, zone, args.n)
    except cron.CronError as e:
        print(f"flowlord: {phase.task}: {e}", file=sys.stderr)
        return 1
    report.show("\n".join(t.isoformat() for t in times))
    return 0


def find_phase_in_files(root: str, task: str, workflow: str | None) -> Phase:
    """The phase named `task` (exactly, else by topic) in the workflow files."""
    if not os.path.exists(root):
        raise UsageError(f"no such file or directory: {root}")
    files = list_workflows(root).files if os.path.isdir(root) else {
        os.path.basename(root): root}
    if workflow is not None and workflow not in files:
        raise UsageError(f"no workflow file {workflow} in {root}")
    phases: list[Phase] = []
    for key, path in sorted(files.items()):
        if workflow is None or key == workflow:
            loaded = load_file(key, path)
            phases += [] if isinstance(loaded, str) else loaded
    chosen = operations.pick_phase(phases, task, workflow, root)
    for warning in chosen.warnings:
        print(f"flowlord: warning: {warning}", file=sys.stderr)
    return chosen.phase
