"""Building the tasks a phase creates: a cron fire (plain or batch) and backload steps.

flowlord's behaviour (docs/compatibility.md, Tasks of a fire; Backload and trigger) with
its bugs fixed: meta values are percent-encoded where they would break the query
string, JSON values of a meta-file render as JSON, batch steps stay on the zone's
wall clock, and each meta row builds its own meta.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property, lru_cache, partial

from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.jitter import start
from flowlord.model import Fire, FireSource, Phase, Task, split_task
from flowlord.rules import Rule, parse_rule
from flowlord.templates import cron_hour, meta_names, render_meta, render_time

MAX_BATCH_TASKS = 100_000  # one fire or backload never builds more than this
MAX_META_FILE_BYTES = 64 * 1024 * 1024
# `;` too: a query parser like Go's (and flowlord.rules.parse_query) rejects a raw one
_ENCODE = {c: f"%{ord(c):02X}" for c in "%&=+ ;"}
_ENCODE_TABLE = str.maketrans(_ENCODE)
_NEEDS_ENCODING = re.compile("[%&=+ ;]")
_NEEDS_ENCODING_INSIDE = re.compile("[%+ ;]")  # and `&` or `=` beside the separators


class BuildError(Exception):
    """The phase's tasks cannot be built; str(e) says why (it is stored on the fire)."""



def _escape(text: str) -> str:
    return text.translate(_ENCODE_TABLE) if _NEEDS_ENCODING.search(text) else text


def encode_meta(pairs: Iterable[tuple[str, str]]) -> str:
    """`k=v&…`, with `%`, `&`, `=`, `+`, space and `;` percent-encoded
    (docs/compatibility.md, Meta)."""
    pairs = list(pairs)
    text = "&".join([f"{k}={v}" for k, v in pairs])
    # The usual meta needs no escape: then the text has none of `%+ ;`, and its `=` and
    # `&` are the separators alone. One search of the text, not two a pair (a burst of
    # 10,000 fires encodes 30,000 pairs).
    if (_NEEDS_ENCODING_INSIDE.search(text) is None and text.count("=") == len(pairs)
            and text.count("&") == max(len(pairs) - 1, 0)):
        return text
    return "&".join(f"{_escape(k)}={_escape(v)}" for k, v in pairs)


def new_task_id() -> str:
    """`str(uuid.uuid4())` without the UUID object (its checks and properties took more
    than half of it): 122 random bits, the version nibble 4 and the variant's two bits
    10 (the nibble 8, 9, a or b)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {f"{n:x}": "89ab"[n & 3] for n in range(16)}  # keeps the nibble's two low bits


@dataclass(frozen=True)
class Context:
    """What building needs beyond the phase: the zone templates render in, the
    directory relative meta-file paths start from, and the creation time."""

    zone: tzinfo
    meta_dir: str
    created: datetime

    @cached_property
    def created_text(self) -> str:
        """`created` as task rows keep it, to the millisecond (as `started` and `ended`):
        a burst of children all take the same one."""
        return rfc3339_ms(self.created)


def meta_dir(workflows: str) -> str:
    """Where relative `meta-file` paths start: the workflow directory (or a single
    workflow file's directory)."""
    root = os.path.abspath(workflows)
    return root if os.path.isdir(root) else os.path.dirname(root)


@lru_cache(maxsize=256)
def data_time(slot: datetime, offset: timedelta, zone: tzinfo) -> datetime:
    """A fire's template time: the slot plus `offset` (real elapsed time), in `zone`.
    Kept for the last slots: the phases due together then render with one time object,
    whose template values `flowlord.templates` keeps (by identity) for the next."""
    try:
        return (slot.astimezone(UTC) + offset).astimezone(zone)
    except OverflowError:  # a valid duration can still reach past year 9999
        raise BuildError(f"time out of range: {rfc3339(slot)} plus offset {offset}") from None


def is_batch(rule: Rule) -> bool:
    return bool(rule.for_) or bool(rule.meta) or bool(rule.meta_file)


def fire_tasks(phase: Phase, slot: datetime, ctx: Context) -> list[Task]:
    """The tasks of one fire of a cron phase at `slot` (docs/compatibility.md, Tasks of a fire)."""
    rule = parse_rule(phase.rule)
    t = data_time(slot, rule.offset, ctx.zone)
    if not is_batch(rule):  # a plain job: the time pass only, {meta:…} stays literal
        topic, job = split_task(phase.task)
        # encode_meta(_base_meta(phase, t)) written out: a burst builds 10,000 of these,
        # and only the file and the job can need an escape (cron_hour is digits, - and T)
        meta = f"workflow={_escape(phase.file_path)}&cron={cron_hour(t)}"
        return [Task(type=topic, job=job, info=render_time(phase.template, t),
                     meta=f"{meta}&job={_escape(job)}" if job else meta, id=new_task_id(),
                     created=ctx.created_text)]
    start = t.replace(minute=0, second=0, microsecond=0)
    end = (start.astimezone(UTC) + rule.for_).astimezone(ctx.zone)
    return expand(phase, rule, start, end, rule.by, ctx)


def backload_steps(phase: Phase, start: datetime, end: datetime, by: str,
                   ctx: Context) -> list[tuple[datetime, list[Task]]]:
    """Each step's data time of [start, end] (either order) with its tasks."""
    rule = parse_rule(phase.rule)
    rows = meta_rows(rule, ctx.meta_dir)
    if rule.meta_file and not rows and _utc(start) == _utc(end):
        return []  # Range step 2, as for a fire
    built: list[tuple[datetime, list[Task]]] = []
    count = 0
    for t in steps(start, end, by, ctx.zone):
        at = _tasks_at(phase, t, rows, ctx)
        count = _check_count(count + len(at))
        built.append((t, at))
    return built


def expand(phase: Phase, rule: Rule, start: datetime, end: datetime, by: str,
           ctx: Context) -> list[Task]:
    """flowlord's Range(start, end): every step of the range times every meta row."""
    rows = meta_rows(rule, ctx.meta_dir)
    if rule.meta_file and not rows and _utc(start) == _utc(end):
        return []
    tasks: list[Task] = []
    for t in steps(start, end, by, ctx.zone):
        tasks += _tasks_at(phase, t, rows, ctx)
        _check_count(len(tasks))
    return tasks


def _check_count(count: int) -> int:
    if count > MAX_BATCH_TASKS:
        raise BuildError(f"more than {MAX_BATCH_TASKS} tasks")
    return count


def _utc(t: datetime) -> datetime:
    # compared in UTC: aware times sharing a tzinfo compare by wall clock, fold ignored,
    # so 01:00 EDT and 01:00 EST would be equal
    return t.astimezone(UTC)


def steps(start: datetime, end: datetime, by: str, zone: tzinfo) -> list[datetime]:
    """start, start+by, … up to end inclusive; a backwards range is walked from its
    earlier end and returned newest first, as flowlord does."""
    backwards = _utc(end) < _utc(start)
    low, high = (end, start) if backwards else (start, end)
    low, last = low.astimezone(zone), _utc(high)
    times: list[datetime] = []
    t = low
    while _utc(t) <= last:
        times.append(t)
        if len(times) > MAX_BATCH_TASKS:
            raise BuildError(f"range has more than {MAX_BATCH_TASKS} steps")
        t = step(t, by, zone)
    return times[::-1] if backwards else times


def step(t: datetime, by: str, zone: tzinfo) -> datetime:
    """One `by` step: an hour of real time, or a calendar day, week or month at the
    same wall-clock time (Go's AddDate: 31 January + 1 month is 3 March)."""
    if by == "hour":
        return (t.astimezone(UTC) + timedelta(hours=1)).astimezone(zone)
    wall = t.replace(tzinfo=None)
    if by == "month":
        months = wall.month + 1
        year, month = wall.year + (months - 1) // 12, (months - 1) % 12 + 1
        first = wall.replace(year=year, month=month, day=1)
        wall = first + timedelta(days=wall.day - 1)
    else:
        wall += timedelta(days=7 if by == "week" else 1)
    return wall.replace(tzinfo=zone)


def meta_rows(rule: Rule, meta_dir: str) -> list[dict[str, str]]:
    """The rows of `meta=` (value i of every key) then those of `meta-file=`."""
    rows: list[dict[str, str]] = []
    if rule.meta:
        count = len(rule.meta[0][1])
        rows += [{key: values[i] for key, values in rule.meta} for i in range(count)]
    if rule.meta_file:
        rows += _meta_file_rows(os.path.join(meta_dir, rule.meta_file))
    return rows


def _meta_file_rows(pattern: str) -> list[dict[str, str]]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise BuildError(f"no files found for {pattern}")
    rows: list[dict[str, str]] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):  # a FIFO would block the daemon
                    raise BuildError(f"meta-file {path} is not a regular file")
                if st.st_size > MAX_META_FILE_BYTES:
                    raise BuildError(f"meta-file {path} is larger than {MAX_META_FILE_BYTES} "
                                     "bytes")
                lines = f.read(MAX_META_FILE_BYTES + 1).decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:  # only '\n' ends a JSON line, above
            raise BuildError(f"cannot read meta-file {path}: {e}") from e
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise BuildError(f"meta-file {path} line {number}: {e}") from e
            if not isinstance(row, dict):
                raise BuildError(f"meta-file {path} line {number}: not a JSON object")
            text = {str(k): _json_text(v) for k, v in row.items()}
            if not all(_storable(k) and _storable(v) for k, v in text.items()):
                raise BuildError(f"meta-file {path} line {number}: "
                                 "text that is not valid Unicode (a lone surrogate)")
            rows.append(text)
            if len(rows) > MAX_BATCH_TASKS:
                raise BuildError(f"meta-file {pattern} has more than {MAX_BATCH_TASKS} rows")
    return rows


def _storable(text: str) -> bool:
    """JSON allows lone surrogates (`"\\ud800"`); UTF-8, and so SQLite, does not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _tasks_at(phase: Phase, t: datetime, rows: Sequence[dict[str, str]],
              ctx: Context) -> list[Task]:
    info = render_time(phase.template, t)
    base = _base_meta(phase, t)
    if not rows:  # a batch's meta keys are sorted, rows or not
        return [_task(phase, info, sorted(base), ctx)]
    names = list(dict.fromkeys(meta_names(info)))
    tasks = []
    for row in rows:
        text, _ = render_meta(info, partial(_lookup, row))
        meta = dict(base)
        meta.update((name, row.get(name, "")) for name in names)
        tasks.append(_task(phase, text, sorted(meta.items()), ctx))
    return tasks


def _lookup(row: dict[str, str], name: str) -> str:
    return row.get(name, "")


def _base_meta(phase: Phase, t: datetime) -> list[tuple[str, str]]:
    pairs = [("workflow", phase.file_path), ("cron", cron_hour(t))]
    if phase.job:
        pairs.append(("job", phase.job))
    return pairs


def _task(phase: Phase, info: str, meta: Iterable[tuple[str, str]], ctx: Context) -> Task:
    return Task(type=phase.topic, job=phase.job, info=info, meta=encode_meta(meta),
                id=new_task_id(), created=ctx.created_text)


def build_fire(phase: Phase, slot: datetime, source: FireSource, ctx: Context) -> Fire:
    """The ledger row of one fire with its tasks; a phase whose tasks cannot be built
    still records the slot, with the reason (so it shows, and is not retried forever)."""
    try:
        tasks = fire_tasks(phase, slot, ctx)
        error = ""
    except BuildError as e:
        tasks, error = [], str(e)
    except OverflowError:  # e.g. a `for` that reaches past year 9999
        tasks, error = [], "time out of range"
    rule = parse_rule(phase.rule)
    due = rfc3339_ms(start(phase.file_path, phase.task, rule.jitter, slot)) if rule.jitter \
        and source in ("cron", "catchup") else None
    return Fire(phase.file_path, phase.task, rfc3339(slot), source, tasks, error,
                rule.overlap, due)
