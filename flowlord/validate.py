"""The phases of one file → stored phases, each with its status and severity (README.md,
Status messages)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from flowlord import __version__, graph
from flowlord.model import Issue, Phase, Severity, normalize_task
from flowlord.parse import RawPhase
from flowlord.rules import Rule, parse_rule

RETRY_LIMIT = 10


# the modules whose code decides a phase's status: a change to one is an upgrade
STATUS_MODULES = ("parse.py", "rules.py", "cron.py", "durations.py", "templates.py",
                  "graph.py", "model.py", "validate.py")


def _validator() -> str:
    """Which code writes the statuses: the release and a digest of the modules that
    decide them (STATUS_MODULES), so that any change to them, released or not, counts
    as an upgrade. Each file's row records it
    (workflow_files.validator); at start, a file validated by other code is validated
    again (flowlord/loader.py)."""
    digest = hashlib.md5(__version__.encode())
    here = Path(__file__).resolve().parent
    for name in STATUS_MODULES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


VALIDATOR = _validator()


def _own_issues(raw: RawPhase, task: str, rule: Rule) -> list[Issue]:
    """Problems visible from the phase alone."""
    issues: list[Issue] = []
    if not task.partition(":")[0].strip():
        issues.append(Issue("error", "invalid phase: task is blank"))
    issues.extend(raw.issues)
    issues.extend(rule.issues)
    if not raw.depends_on and not rule.has_cron and not rule.files:
        issues.append(
            Issue("warning", "warning: non-scheduled phase: use dependsOn, cron or files"))
    if raw.retry > RETRY_LIMIT:
        issues.append(Issue("warning", "warning: retry count exceeds recommended limit"))
    return issues


def status_of(issues: Sequence[Issue]) -> tuple[str, Severity]:
    """Errors first, then warnings, joined with `; `; `''` exactly when severity is ok."""
    if not issues:
        return "", "ok"
    errors = [i.message for i in issues if i.severity == "error"]
    warnings = [i.message for i in issues if i.severity == "warning"]
    messages = list(dict.fromkeys(errors + warnings))  # no message twice
    severity: Severity = "error" if errors else "warning" if warnings else "ok"
    return "; ".join(messages), severity


def validate_file(file_path: str, raw_phases: Sequence[RawPhase]) -> list[Phase]:
    """One Phase per distinct normalized task, in file order.

    A task written twice keeps its first phase, marked as an error; the later
    ones are not stored (the primary key is (file, task)).
    """
    kept: dict[str, tuple[RawPhase, list[Issue]]] = {}
    clean = True  # no phase has an issue of its own and no task is written twice
    for raw in raw_phases:
        rule = parse_rule(raw.rule)
        task = normalize_task(raw.task, rule.job)
        if task in kept:
            first_issues = kept[task][1]
            duplicate = Issue("error", f"duplicate task: {task}")
            if duplicate not in first_issues:
                first_issues.append(duplicate)
            clean = False
            continue
        # the usual phase has no issue of its own: no call, no list to extend
        usual = (not raw.issues and not rule.issues and raw.retry <= RETRY_LIMIT
                 and (raw.depends_on or rule.has_cron or rule.files) and task[:1] != ":"
                 and task[:1] > " ")
        issues = [] if usual else _own_issues(raw, task, rule)
        clean = clean and not issues
        kept[task] = (raw, issues)

    # No parent named: nothing to look for. The usual file (nothing broken, every parent
    # written before its children): no parent is missing, invalid or on a cycle, and
    # the search would find nothing.
    if any(raw.depends_on for raw, _ in kept.values()) and not (
            clean and _parents_written_first(kept)):
        _check_parents(kept)

    # a cold load builds 100,000 phases: the tuple's own constructor, not Phase's
    # Python __new__, and no status worked out for a phase without issues
    return [_new(Phase, (file_path, task, raw.depends_on, raw.rule, raw.template, raw.retry,
                         *(status_of(issues) if issues else _OK), raw.position))
            for task, (raw, issues) in kept.items()]


_new = tuple.__new__
_OK = ("", "ok")


def _check_parents(kept: dict[str, tuple[RawPhase, list[Issue]]]) -> None:
    """The issues of parents: one not found, a cycle, an invalid one."""
    index = graph.TaskIndex(kept)
    parents = {task: index.parents(raw.depends_on) for task, (raw, _) in kept.items()}
    for task, (raw, issues) in kept.items():
        if raw.depends_on and not parents[task]:
            issues.append(Issue("error", f"parent task not found: {raw.depends_on}"))
    if not _parents_come_first(parents):  # else no cycle is possible: skip the search
        pairs = [(task, raw.depends_on) for task, (raw, _) in kept.items()]
        for task, path in graph.cycles(pairs).items():
            kept[task][1].append(Issue("error", "dependency cycle: " + " -> ".join(path)))

    broken = {t for t, (_, issues) in kept.items()
              if issues and any(i.severity == "error" for i in issues)}
    if broken:
        for task, (raw, issues) in kept.items():
            if task not in broken and any(p in broken for p in parents[task]):
                issues.append(
                    Issue("warning", f"warning: parent task is invalid: {raw.depends_on}"))


def _parents_come_first(parents: dict[str, list[str]]) -> bool:
    """True when every parent is written before its children (the usual case)."""
    order = {task: i for i, task in enumerate(parents)}
    return all(order[p] < order[task] for task, ps in parents.items() for p in ps)


def _parents_written_first(kept: dict[str, tuple[RawPhase, list[Issue]]]) -> bool:
    """True when each dependsOn names tasks that are all written before its phase, as
    graph.TaskIndex resolves it (`topic:job` that task, `topic` every task of the
    topic): every parent is found and no cycle is possible. Three passes over the file,
    where _check_parents builds an index, a list of parents per task and the search."""
    position = {task: i for i, task in enumerate(kept)}
    last = {task.partition(":")[0]: i for task, i in position.items()}  # later ones win
    for task, (raw, _) in kept.items():
        parent = raw.depends_on
        if parent and (position if ":" in parent else last).get(
                parent, len(position)) >= position[task]:
            return False
    return True
