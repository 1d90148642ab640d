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
    phases = _usual_file(file_path, raw_phases)
    return _validate_all(file_path, raw_phases) if phases is None else phases


def _usual_file(file_path: str, raw_phases: Sequence[RawPhase]) -> list[Phase] | None:
    """The phases of the usual file, which has nothing to say: no phase with an issue of
    its own, no task written twice, and each dependsOn naming tasks all written before
    its phase, as graph.TaskIndex resolves it (`topic:job` that task, `topic` every task
    of the topic), so that no parent is missing, invalid or on a cycle. None for any
    other file: `_validate_all` works out what it has to say. One pass, where the full
    way keeps every phase's issues and searches the graph (a cold load validates
    10,000 files)."""
    phases: list[Phase] = []
    tasks: set[str] = set()
    topics: set[str] = set()
    named: set[str] = set()  # topics a dependsOn named: a later task of one is a parent
    for raw in raw_phases:
        rule = parse_rule(raw.rule)
        task = normalize_task(raw.task, rule.job)
        parent = raw.depends_on
        if (task in tasks or raw.issues or rule.issues or raw.retry > RETRY_LIMIT
                or not (parent or rule.has_cron or rule.files) or task[:1] == ":"
                or task[:1] <= " "):
            return None
        if parent:
            if ":" in parent:
                if parent not in tasks:
                    return None
            elif parent in topics:
                named.add(parent)
            else:
                return None
        topic = task.partition(":")[0]
        if topic in named:  # a parent of this phase or of one before it: not before them
            return None
        tasks.add(task)
        topics.add(topic)
        # the tuple's own constructor, not Phase's Python __new__: 100,000 in a cold load
        phases.append(_new(Phase, (file_path, task, parent, raw.rule, raw.template,
                                   raw.retry, "", "ok", raw.position)))
    return phases


def _validate_all(file_path: str, raw_phases: Sequence[RawPhase]) -> list[Phase]:
    """validate_file for any file: every issue of every phase, the graph searched."""
    kept: dict[str, tuple[RawPhase, list[Issue]]] = {}
    for raw in raw_phases:
        rule = parse_rule(raw.rule)
        task = normalize_task(raw.task, rule.job)
        if task in kept:
            first_issues = kept[task][1]
            duplicate = Issue("error", f"duplicate task: {task}")
            if duplicate not in first_issues:
                first_issues.append(duplicate)
            continue
        # the usual phase has no issue of its own: no call, no list to extend
        usual = (not raw.issues and not rule.issues and raw.retry <= RETRY_LIMIT
                 and (raw.depends_on or rule.has_cron or rule.files) and task[:1] != ":"
                 and task[:1] > " ")
        kept[task] = (raw, [] if usual else _own_issues(raw, task, rule))

    if any(raw.depends_on for raw, _ in kept.values()):  # else no parent to look for
        _check_parents(kept)

    # no status worked out for a phase without issues
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
