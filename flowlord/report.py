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
    """Each file's roots with their descendants indented beneath them."""
    lines: list[str] = []
    by_file: dict[str, list[Phase]] = {}
    for p in phases:
        by_file.setdefault(p.file_path, []).append(p)
    kids: dict[tuple[str, str], list[str]] = {}
    has_parent: set[tuple[str, str]] = set()
    for file, parent, child in edges:
        kids.setdefault((file, parent), []).append(child)
        has_parent.add((file, child))
    severity = {(p.file_path, p.task): p.severity for p in phases}
    shown: set[tuple[str, str]] = set()

    def show(file: str, task: str, depth: int, path: tuple[str, ...]) -> None:
        if task in path:
            lines.append(f"{'  ' * depth}{task}  (cycle)")
            return
        shown.add((file, task))
        mark = "" if severity[(file, task)] == "ok" else f"  [{severity[(file, task)]}]"
        lines.append(f"{'  ' * depth}{task}{mark}")
        for child in kids.get((file, task), []):
            show(file, child, depth + 1, (*path, task))

    for file, file_phases in by_file.items():
        lines.append(f"{file}:")
        for p in file_phases:
            if (file, p.task) not in has_parent:
                show(file, p.task, 1, ())
        for p in file_phases:  # phases reachable only through a cycle
            if (file, p.task) not in shown:
                show(file, p.task, 1, ())
    return "\n".join(lines)


def _idents(phases: Sequence[Phase]) -> dict[tuple[str, str], str]:
    """A node name per phase; numbered, since tasks like `a:b` and `a_b` must not merge."""
    return {(p.file_path, p.task): f"n{i}" for i, p in enumerate(phases)}


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def graph_dot(phases: Sequence[Phase], edges: Sequence[tuple[str, str, str]]) -> str:
    ident = _idents(phases)
    colour = {"ok": "black", "warning": "orange", "error": "red"}
    lines = ["digraph flowlord {", "  rankdir=LR;"]
    by_file: dict[str, list[Phase]] = {}
    for p in phases:
        by_file.setdefault(p.file_path, []).append(p)
    for i, (file, file_phases) in enumerate(by_file.items()):
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
    by_file: dict[str, list[Phase]] = {}
    for p in phases:
        by_file.setdefault(p.file_path, []).append(p)
    for i, (file, file_phases) in enumerate(by_file.items()):
        lines.append(f"  subgraph f{i} [{_mermaid_label(file)}]")
        for p in file_phases:
            lines.append(f"    {ident[(file, p.task)]}[{_mermaid_label(p.task)}]:::{p.severity}")
        lines.append("  end")
    for file, parent, child in edges:
        lines.append(f"  {ident[(file, parent)]} --> {ident[(file, child)]}")
    lines += ["  classDef warning stroke:#e69500", "  classDef error stroke:#d00"]
    return "\n".join(lines)
