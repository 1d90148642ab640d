"""Text renderings for people: check results and the dependency graph."""

from __future__ import annotations

import json
from collections.abc import Sequence

from flowlord.model import Phase

# (file, task or None, severity, status): one phase, or a file-level problem (task None)
Finding = tuple[str, str | None, str, str]


def findings_text(findings: Sequence[Finding]) -> list[str]:
    lines = []
    for file, task, severity, status in findings:
        if severity == "ok":
            continue
        label = "" if status.startswith(("warning:", "parse error:")) else f"{severity}: "
        lines.append(f"{file}: {task + ': ' if task else ''}{label}{status}")
    return lines


def findings_json(findings: Sequence[Finding]) -> str:
    return json.dumps([{"file": f, "task": t, "severity": s, "status": st}
                       for f, t, s, st in findings], indent=1)


def summary(files: int, findings: Sequence[Finding]) -> str:
    phases = sum(1 for f in findings if f[1] is not None)
    errors = sum(1 for f in findings if f[2] == "error")
    warnings = sum(1 for f in findings if f[2] == "warning")
    return (f"{count(files, 'file')}, {count(phases, 'phase')}: "
            f"{count(errors, 'error')}, {count(warnings, 'warning')}")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def graph_text(phases: Sequence[Phase], edges: Sequence[tuple[str, str, str]]) -> str:
    """Each file's roots with their descendants indented beneath them.

    A phase reached a second time (a shared child, a cycle) is named with
    `(see above)` instead of being expanded again, so the output stays linear.
    """
    lines: list[str] = []
    kids: dict[tuple[str, str], list[str]] = {}
    has_parent: set[tuple[str, str]] = set()
    for file, parent, child in edges:
        kids.setdefault((file, parent), []).append(child)
        has_parent.add((file, child))
    for file, file_phases in _by_file(phases).items():
        lines.append(f"{file}:")
        severity = {p.task: p.severity for p in file_phases}
        shown: set[str] = set()
        roots = [p.task for p in file_phases if (file, p.task) not in has_parent]
        # then phases only reachable through a cycle
        for start in roots + [p.task for p in file_phases]:
            if start in shown:
                continue
            stack = [(start, 1)]
            while stack:
                task, depth = stack.pop()
                if task in shown:
                    lines.append(f"{'  ' * depth}{task}  (see above)")
                    continue
                shown.add(task)
                mark = "" if severity[task] == "ok" else f"  [{severity[task]}]"
                lines.append(f"{'  ' * depth}{task}{mark}")
                stack.extend((child, depth + 1) for child in reversed(kids.get((file, task), [])))
    return "\n".join(lines)


def _by_file(phases: Sequence[Phase]) -> dict[str, list[Phase]]:
    by_file: dict[str, list[Phase]] = {}
    for p in phases:
        by_file.setdefault(p.file_path, []).append(p)
    return by_file


def _idents(phases: Sequence[Phase]) -> dict[tuple[str, str], str]:
    """A node name per phase; numbered, since tasks like `a:b` and `a_b` must not merge."""
    return {(p.file_path, p.task): f"n{i}" for i, p in enumerate(phases)}


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def graph_dot(phases: Sequence[Phase], edges: Sequence[tuple[str, str, str]]) -> str:
    ident = _idents(phases)
    colour = {"ok": "black", "warning": "orange", "error": "red"}
    lines = ["digraph flowlord {", "  rankdir=LR;"]
    for i, (file, file_phases) in enumerate(_by_file(phases).items()):
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={json.dumps(file)};")
        for p in file_phases:
            lines.append(f"    {ident[(file, p.task)]} [label={json.dumps(p.task)}, "
                         f"color={colour[p.severity]}];")
        lines.append("  }")
    for file, parent, child in edges:
        lines.append(f"  {ident[(file, parent)]} -> {ident[(file, child)]};")
    lines.append("}")
    return "\n".join(lines)


def graph_mermaid(phases: Sequence[Phase], edges: Sequence[tuple[str, str, str]]) -> str:
    ident = _idents(phases)
    lines = ["flowchart LR"]
    for i, (file, file_phases) in enumerate(_by_file(phases).items()):
        lines.append(f"  subgraph f{i} [{_mermaid_label(file)}]")
        for p in file_phases:
            lines.append(f"    {ident[(file, p.task)]}[{_mermaid_label(p.task)}]:::{p.severity}")
        lines.append("  end")
    for file, parent, child in edges:
        lines.append(f"  {ident[(file, parent)]} --> {ident[(file, child)]}")
    lines += ["  classDef warning stroke:#e69500", "  classDef error stroke:#d00"]
    return "\n".join(lines)


def show(text: str) -> None:
    """Print text for a person; nothing at all (not even a newline) when it is empty."""
    if text:
        print(text)
