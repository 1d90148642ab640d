"""The overlap policy of a phase (README.md, Scheduling policy): what a new slot does
while an earlier task of the same phase (any attempt, a waiting retry too) has not
ended.

- `allow` (the default): both run.
- `skip`: the slot is recorded in `fires` with no task and an `error` naming the
  unfinished task, so catch-up never fires it later and "why didn't it run?" is a row.
- `replace`: the unfinished tasks are cancelled as `flowlord cancel` would (`error`,
  `cancelled by overlap`, no retry, no alert; a running process is ended by its
  daemon), an action row of the actor `overlap` says so, and the new slot runs.
- `queue`: the tasks are created, and wait until the earlier ones end, in slot order:
  that is a rule of claiming (flowlord/store/taskrows.py, claim_limited).

Applied in the transaction that records the fire (`settle`), so what it looked at is
what it wrote against; only scheduled slots (cron, catch-up) follow it: a trigger or
a backload is an operator's explicit wish. The children a completion starts and the
tasks an arrived file starts follow the same rule (`skipped`, `replace_earlier`), in
the transaction that creates them.
"""

from __future__ import annotations

import json

from flowlord.model import Fire, NewTask, Phase
from flowlord.rules import parse_rule
from flowlord.store import Store

ACTOR = "overlap"
SCHEDULED = ("cron", "catchup")
NAMED = 5  # unfinished tasks named in a skipped slot's error, at most


class Overlap:
    """`settle` for Store.record_fires, writing with `store` at the time `fired_at`."""

    def __init__(self, store: Store, fired_at: str) -> None:
        self.store = store
        self.fired_at = fired_at

    def applies(self, fire: Fire) -> bool:
        """A scheduled fire with tasks, of a phase with overlap=skip or replace (an
        error fire, paused or of a bad template, has nothing that would run)."""
        return fire.overlap in ("skip", "replace") and fire.source in SCHEDULED and \
            bool(fire.tasks)

    def __call__(self, fire: Fire) -> Fire:
        if not self.applies(fire):
            return fire
        limit = NAMED if fire.overlap == "skip" else 1_000_000
        earlier = self.store.unfinished_of_phase(fire.file_path, fire.phase, limit)
        if not earlier:
            return fire
        if fire.overlap == "skip":
            named = ", ".join(str(n) for n in earlier)
            return Fire(fire.file_path, fire.phase, fire.scheduled_for, fire.source, (),
                        f"skipped by overlap=skip: task{'s' if len(earlier) > 1 else ''} "
                        f"{named} of this phase not finished", fire.overlap)
        cancel_earlier(self.store, fire.file_path, fire.phase, earlier, self.fired_at,
                       fire.scheduled_for)
        return fire


def cancel_earlier(store: Store, file_path: str, phase: str, earlier: list[int], now: str,
                   slot: str = "") -> None:
    """Cancel the earlier tasks as `flowlord cancel` does, recorded as an action of the
    actor `overlap`, for the slot `slot` (or, '', a child's or an arrived file's task)."""
    msg = f"cancelled by {ACTOR}"
    cancelled = [n for n in earlier if store.end_now(n, now, "error", msg)]
    for_what = f"the slot {slot}" if slot else "a new task of the phase"
    action = store.add_action(now, ACTOR, "cancel", f"{file_path}: {phase}",
                              json.dumps({"task_nos": cancelled, "slot": slot or None}))
    store.settle_action(action, now, "done", f"{len(cancelled)} cancelled for {for_what}")


def skipped(store: Store, phase: Phase, made: list[NewTask]) -> str:
    """Why the phase's new tasks (a completion's children, an arrived file's tasks) are
    not created ('' when they are): `overlap=skip` while an earlier task of the phase
    is unfinished, among the rows or among `made` (this transaction's tasks, not yet
    written). Call inside write_txn."""
    if parse_rule(phase.rule).overlap != "skip":
        return ""
    earlier = store.unfinished_of_phase(phase.file_path, phase.task, NAMED)
    if earlier:
        named = ", ".join(str(n) for n in earlier)
        return f"skipped by overlap=skip: task {named} of this phase not finished"
    if any(t.file_path == phase.file_path and t.phase == phase.task for t in made):
        return "skipped by overlap=skip: a task of this phase was created in the same turn"
    return ""


def replace_earlier(store: Store, phase: Phase, made: list[NewTask], now: str) -> None:
    """`overlap=replace`, once the phase's new tasks are built (so a child that builds
    none cancels nothing): its unfinished tasks are cancelled, as an action of
    `overlap`, and the ones made earlier in this transaction are dropped from `made`.
    Call inside write_txn."""
    if parse_rule(phase.rule).overlap != "replace":
        return
    made[:] = [t for t in made if (t.file_path, t.phase) != (phase.file_path, phase.task)]
    earlier = store.unfinished_of_phase(phase.file_path, phase.task, 1_000_000)
    if earlier:
        cancel_earlier(store, phase.file_path, phase.task, earlier, now)
