"""What a task's result leads to: children after `complete`, a retry or a failure after
`error`, an alert after `alert` (docs/compatibility.md, Results, retries and alerts).

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
from functools import lru_cache, partial
from typing import NamedTuple

from flowlord.clock import rfc3339_ms
from flowlord.durations import format_duration
from flowlord.model import NewTask, Phase, StoredTask, Task, split_task
from flowlord.rules import Rule, decode_meta, parse_rule
from flowlord.tasks import BuildError, Context, encode_meta, meta_rows
from flowlord.templates import (
    meta_names,
    one_pass,
    render_meta,
    render_time,
    rendering_values,
    task_time,
)

DEFAULT_RETRY_DELAY = timedelta(seconds=1)
JITTER = 0.4  # up to 40 % of retry_delay added, in whole milliseconds
_ATTEMPT_KEYS = ("retry", "retried", "delayed")  # about one attempt: not inherited by children
_new = tuple.__new__


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
            plan = _plan(child)
            if plan.usual and parent.values is not None:  # the hot path of a burst
                effects.tasks.append(_usual_child(
                    parent, plan, plan.one_pass.format_map(parent.values)))  # type: ignore[union-attr]
            else:
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
    inherited_text: str  # the same, encoded, with a leading '&' (or empty)
    head_text: str | None  # `workflow=…&cron=…` encoded; None: no workflow, the child's
    created: str
    values: dict[str, str] | None  # what a one_pass template formats with (None: none)

    @classmethod
    def of(cls, stored: StoredTask, ctx: Context) -> _Parent:
        meta = decode_meta(stored.task.meta)
        inherited = {k: v for k, v in sorted(meta.items())
                     if k not in _ATTEMPT_KEYS and k not in ("workflow", "cron", "job")}
        inherited_text = encode_meta(inherited.items())
        head_text = (encode_meta(_head(meta, meta["workflow"])) if "workflow" in meta
                     else None)
        time = task_time(meta, stored.task.info)
        return cls(stored, meta, time, inherited,
                   "&" + inherited_text if inherited_text else "", head_text,
                   ctx.created_text, rendering_values(time, meta))


def _head(meta: dict[str, str], workflow: str) -> list[tuple[str, str]]:
    head = [("workflow", workflow)]
    if "cron" in meta:
        head.append(("cron", meta["cron"]))
    return head


class _Plan(NamedTuple):
    """What building any child of a phase needs, worked out once per phase (a burst of
    results builds the same children thousands of times)."""

    phase: Phase
    rule: Rule
    topic: str
    job: str
    require: tuple[str, ...]  # require={meta:x}: these parent meta values must be set
    job_text: str  # `&job=…` encoded, or empty
    batch: bool  # meta= or meta-file=: one child per row
    one_pass: str | None  # the template as one format text (templates.one_pass)
    usual: bool  # one_pass, no batch, no require: rendered in one format_map call


@lru_cache(maxsize=4096)
def _plan(child: Phase) -> _Plan:
    rule = parse_rule(child.rule)
    topic, job = split_task(child.task)
    require = tuple(meta_names(rule.require))
    batch = bool(rule.meta or rule.meta_file)
    template = one_pass(child.template)
    return _Plan(child, rule, topic, job, require,
                 "&" + encode_meta([("job", job)]) if job else "", batch, template,
                 template is not None and not batch and not require)


def _child_tasks(parent: _Parent, child: Phase, ctx: Context,
                 notes: list[str]) -> list[NewTask]:
    plan = _plan(child)
    meta = parent.meta
    for name in plan.require:
        if not meta.get(name):
            notes.append(f"{child.task}: skipped, parent meta {name} is empty")
            return []
    if plan.one_pass is not None and parent.values is not None and not plan.batch:
        return [_usual_child(parent, plan, plan.one_pass.format_map(parent.values))]
    info = render_time(child.template, parent.time)
    try:
        rows = meta_rows(plan.rule, ctx.meta_dir) if plan.batch else []
    except BuildError as e:
        notes.append(f"{child.task}: skipped: {e}")
        return []
    if not rows:
        text = render_meta(info, partial(_lookup, meta))[0] if "{meta:" in info else info
        return [_usual_child(parent, plan, text)]
    head = _head(meta, meta.get("workflow", child.file_path))
    if plan.job:
        head.append(("job", plan.job))
    tasks = []
    for row in rows:
        values = {**meta, **row}
        text, used = render_meta(info, partial(_lookup, values))
        mine = {**parent.inherited, **{name: values.get(name, "") for name in used if name in row}}
        tasks.append(_child(parent, plan, text, encode_meta(head + sorted(mine.items()))))
    return tasks


def _usual_child(parent: _Parent, plan: _Plan, info: str) -> NewTask:
    """The usual child, its template rendered: the parent's meta, no rows of its own."""
    head_text = (parent.head_text if parent.head_text is not None
                 else encode_meta(_head(parent.meta, plan.phase.file_path)))
    return _child(parent, plan, info, head_text + plan.job_text + parent.inherited_text)


def _child(parent: _Parent, plan: _Plan, info: str, meta: str) -> NewTask:
    # every field given, to tuple.__new__: a NamedTuple's own __new__ is a Python
    # function, and took a third of a child's time (bench/tasks.py, results with children)
    return _new(NewTask, (parent.stored.task.id, plan.topic, plan.job, info, meta,
                          parent.created, plan.phase.file_path, plan.phase.task, 0, None,
                          None, parent.stored.task_no, None, False))


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
                 created=ctx.created_text)
    effects.tasks.append(NewTask.of(retry, stored.file_path, stored.phase, stored.attempt + 1,
                                    stored.scheduled_for, rfc3339_ms(due), stored.task_no,
                                    no_children=stored.no_children))


def _jitter(delay: timedelta, jitter: Callable[[], float]) -> timedelta:
    """Whole milliseconds in [0, JITTER × delay): due times are kept to the millisecond,
    `delayed=` stays short, and a float product cannot round up to the bound."""
    bound = int(delay / timedelta(milliseconds=1) * JITTER)
    return timedelta(milliseconds=min(int(bound * jitter()), bound - 1) if bound > 0 else 0)

