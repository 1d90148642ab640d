"""Bytes of a workflow file → raw phases, or one error naming line and column.

Parsing uses rtoml (TOML in Rust): 15× faster than tomllib on workflow files,
which a cold load of 10,000 files needs, and it names line and column for every
error (tomllib reports duplicate keys "at end of document").
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import rtoml

from flowlord.model import Issue

# phase keys, matched case-insensitively; `depends_on` is accepted for dependsOn
_FIELDS = {
    "task": "task",
    "dependson": "depends_on",
    "depends_on": "depends_on",
    "rule": "rule",
    "retry": "retry",
    "template": "template",
}
_MAX_RETRY = 2**63 - 1
_USUAL_KEYS = frozenset({"task", "dependsOn", "rule", "retry", "template"})
_HEADER = re.compile(r"""^[ \t]*\[\[[ \t]*(["']?)(phase)\1[ \t]*\]\]""", re.I | re.M)


class WorkflowParseError(ValueError):
    """The file's bytes cannot be used; str(e) is the `parse error: …` text for its row."""

    def __init__(self, message: str) -> None:
        super().__init__(f"parse error: {message}")


class RawPhase(NamedTuple):
    """One [[phase]] table as written, with problems found in its keys."""

    position: int
    task: str = ""
    depends_on: str = ""
    rule: str = ""
    template: str = ""
    retry: int = 0
    issues: tuple[Issue, ...] = ()


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # line and column of the first bad byte, counted in the valid prefix
        line, col = _line_col(data[: e.start].decode("utf-8", "replace"), e.start)
        raise WorkflowParseError(f"not UTF-8: {e.reason} at line {line} column {col}") from e


def _phase_tables(doc: dict[str, Any], text: str) -> list[Any]:
    """The tables of every `phase` array, in file order, whatever the key's case."""
    spellings = [k for k in doc if k.lower() == "phase"]
    for key in spellings:
        value = doc[key]
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise WorkflowParseError(f"{key} must be an array of tables ([[{key}]])")
    if len(spellings) <= 1:
        return list(doc[spellings[0]]) if spellings else []
    # [[Phase]] and [[phase]] interleaved: the headers tell the file order
    queues = {k: list(doc[k]) for k in spellings}
    ordered: list[Any] = []
    for m in _HEADER.finditer(text):
        queue = queues.get(m.group(2))
        if queue:
            ordered.append(queue.pop(0))
    for queue in queues.values():  # tables the header scan missed (inline arrays)
        ordered.extend(queue)
    return ordered


def _locate(text: str, position: int, key: str) -> str:
    """`at line L column C` of `key = …` inside the position-th phase, for type errors."""
    headers = [m.start() for m in _HEADER.finditer(text)]
    start = headers[position] if position < len(headers) else 0
    end = headers[position + 1] if position + 1 < len(headers) else len(text)
    m = re.compile(rf"""^[ \t]*["']?{re.escape(key)}["']?[ \t]*=[ \t]*""", re.M).search(
        text, start, end)
    line, col = _line_col(text, m.end() if m else start)
    return f"at line {line} column {col}"


_new = tuple.__new__
_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", float: "float", list: "array",
               dict: "table"}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _raw_phase(table: dict[str, Any], position: int, text: str) -> RawPhase:
    """One table → RawPhase; called 100,000 times by a cold load, so kept lean."""
    if table.keys() <= _USUAL_KEYS:  # the usual spellings: no per-key work
        get = table.get
        task, depends_on, rule, template, retry = (
            get("task", ""), get("dependsOn", ""), get("rule", ""), get("template", ""),
            get("retry", 0))
        if (type(task) is type(depends_on) is type(rule) is type(template) is str
                and type(retry) is int and 0 <= retry <= _MAX_RETRY):
            # the tuple's own constructor: RawPhase() runs a Python __new__ per phase
            return _new(RawPhase, (position, task, depends_on, rule, template, retry, ()))
    values: dict[str, Any] = {}
    issues: list[Issue] = []
    for key, value in table.items():
        name = _FIELDS.get(key) or _FIELDS.get(key.lower())
        if name is None:
            issues.append(Issue("warning", f"warning: ignored key: {key}"))
        elif name in values:
            first = next(k for k in table if _FIELDS.get(k.lower()) == name)
            issues.append(Issue("error", f"invalid phase: {first} and {key} together"))
        elif type(value) is (int if name == "retry" else str):
            values[name] = value
        else:
            wanted = "an integer" if name == "retry" else "a string"
            raise WorkflowParseError(
                f"phase {position + 1}: {key} must be {wanted}, "
                f"found {_type_name(value)} {_locate(text, position, key)}")
    retry = values.get("retry", 0)
    if retry > _MAX_RETRY:  # SQLite stores 64-bit integers
        raise WorkflowParseError(f"phase {position + 1}: retry is too large "
                                 f"{_locate(text, position, 'retry')}")
    if retry < 0:
        issues.append(Issue("error", f"invalid retry: {retry}"))
        retry = 0
    return RawPhase(position, values.get("task", ""), values.get("depends_on", ""),
                    values.get("rule", ""), values.get("template", ""), retry, tuple(issues))


def parse_workflow(data: bytes) -> list[RawPhase]:
    """Raises WorkflowParseError for anything that is not a usable workflow file."""
    text = decode(data)
    try:
        doc = rtoml.loads(text)
    except (rtoml.TomlParsingError, ValueError, TypeError, OverflowError, RecursionError) as e:
        message = " ".join(str(e).split())  # one line, whatever the parser said
        raise WorkflowParseError(message) from e
    return [_raw_phase(t, i, text) for i, t in enumerate(_phase_tables(doc, text))]
