"""What a task's result leads to (flowlord-reference §5.4–5.7): children after
`complete`, a retry or a failure after `error`, an alert after `alert`.

Pure decisions on values read from the database; the daemon writes them in the
transaction that records the result, so each result has its effects exactly once.
Flowlord's bugs fixed: a child's meta keeps the parent's keys (so grandchildren
see them), siblings build their meta separately, a retry without `retry_delay`
drops a stale `delayed=`, and a failed task whose phase is gone still alerts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple

from flowlord.durations import format_duration
from flowlord.model import NewTask, Phase, StoredTask, Task
from flowlord.rules import decode_meta, parse_rule
from flowlord.tasks import BuildError, Context, encode_meta, meta_rows, rfc3339
from flowlord.templates import meta_names, render_meta, render_time, task_time

DEFAULT_RETRY_DELAY = timedelta(seconds=1)
JITTER = 0.4  # up to 40 % of retry_delay added, in whole milliseconds
_ATTEMPT_KEYS = ("retry", "retried", "delayed")  # about one attempt: not inherited by children


@dataclass
class Effects:
    """What one result leads to."""

    tasks: list[NewTask] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    notes: list[str] = field(default_factory=list)  # for the log: skipped children, …


def after_result(stored: StoredTask, result: str, msg: str, *, phase: Phase | None,
                 children: Sequence[Phase], ctx: Context,
                 jitter: Callable[[], float] = random.random) -> Effects:
    """The effects of `result` on a task whose phase is `phase` (None: gone) and whose
    file's dependents are `children`."""
    effects = Effects()
    if result == "complete" and children:
        parent = _Parent.of(stored, ctx)
        for child in children:
            effects.tasks += _child_tasks(parent, child, ctx, effects.notes)
    elif result == "error":
        _retry_or_fail(stored, msg, phase, ctx, jitter, effects)
    elif result == "alert":
        effects.alerts.append(("alert", msg))
    return effects  # warn: nothing further, as flowlord


class _Parent(NamedTuple):
    """What every child of one completed task takes from it, worked out once."""

    stored: StoredTask
    meta: dict[str, str]
    time: datetime | None
    inherited: dict[str, str]  # meta keys its children keep
    inherited_text: str  # the same, encoded
    created: str

    @classmethod
    def of(cls, stored: StoredTask, ctx: Context) -> _Parent:
        meta = decode_meta(stored.task.meta)
        inherited = {k: v for k, v in sorted(meta.items())
                     if k not in _ATTEMPT_KEYS and k not in ("workflow", "cron", "job")}
        return cls(stored, meta, task_time(meta, stored.task.info), inherited,
                   encode_meta(inherited.items()), rfc3339(ctx.created))


def _child_tasks(parent: _Parent, child: Phase, ctx: Context,
                 notes: list[str]) -> list[NewTask]:
    meta = parent.meta
    rule = parse_rule(child.rule)
    for name in meta_names(rule.require):  # require={meta:x}: x must be set and not empty
        if not meta.get(name):
            notes.append(f"{child.task}: skipped, parent meta {name} is empty")
            return []
    info = render_time(child.template, parent.time)
    try:
        rows = meta_rows(rule, ctx.meta_dir)
    except BuildError as e:
        notes.append(f"{child.task}: skipped: {e}")
        return []
    head = [("workflow", meta.get("workflow", child.file_path))]
    if "cron" in meta:
        head.append(("cron", meta["cron"]))
    if child.job:
        head.append(("job", child.job))
    if not rows:  # the usual child: the parent's meta, no rows of its own
        text = render_meta(info, partial(_lookup, meta))[0] if "{meta:" in info else info
        own = encode_meta(head) + ("&" + parent.inherited_text if parent.inherited_text else "")
        return [_child(parent, child, text, own)]
    tasks = []
    for row in rows:
        values = {**meta, **row}
        text, used = render_meta(info, partial(_lookup, values))
        mine = {**parent.inherited, **{name: values.get(name, "") for name in used if name in row}}
        tasks.append(_child(parent, child, text, encode_meta(head + sorted(mine.items()))))
    return tasks


def _child(parent: _Parent, child: Phase, info: str, meta: str) -> NewTask:
    task = Task(type=child.topic, job=child.job, info=info, meta=meta,
                id=parent.stored.task.id, created=parent.created)
    return NewTask(task, child.file_path, child.task, parent_no=parent.stored.task_no)


def _lookup(values: dict[str, str], name: str) -> str:
    return values.get(name, "")


def _retry_or_fail(stored: StoredTask, msg: str, phase: Phase | None, ctx: Context,
                   jitter: Callable[[], float], effects: Effects) -> None:
    task = stored.task
    rule = parse_rule(phase.rule) if phase else None
    if phase is None or stored.attempt >= phase.retry:
        attempts = stored.attempt + 1
        if rule is None or not rule.no_alert:
            why = ("its phase is gone" if phase is None
                   else f"after {attempts} attempt{'' if attempts == 1 else 's'}")
            effects.alerts.append(("failed", f"failed {why}: {msg}" if msg else f"failed {why}"))
        return
    meta = decode_meta(task.meta)
    meta["retry"] = str(stored.attempt + 1)
    meta.pop("delayed", None)
    if rule is not None and rule.retry_delay is not None:
        delay = rule.retry_delay + _jitter(rule.retry_delay, jitter)
        meta["delayed"] = format_duration(delay)
    else:
        delay = DEFAULT_RETRY_DELAY
    due = ctx.created.astimezone(UTC) + delay
    retry = Task(type=task.type, job=task.job, info=task.info,
                 meta=encode_meta(sorted(meta.items())), id=task.id,
                 created=rfc3339(ctx.created))
    effects.tasks.append(NewTask(retry, stored.file_path, stored.phase, stored.attempt + 1,
                                 stored.scheduled_for, _due_text(due), stored.task_no))


def _jitter(delay: timedelta, jitter: Callable[[], float]) -> timedelta:
    """Whole milliseconds in [0, JITTER × delay): due times are kept to the millisecond,
    `delayed=` stays short, and a float product cannot round up to the bound."""
    bound = int(delay / timedelta(milliseconds=1) * JITTER)
    return timedelta(milliseconds=min(int(bound * jitter()), bound - 1) if bound > 0 else 0)


def _due_text(t: datetime) -> str:
    """Due times to the millisecond: a retry's delay of 1.3 s is not rounded to 1 s."""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
