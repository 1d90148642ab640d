"""What the daemon's log tells an operator once, when it happens, not at every turn.

- a warning when a phase becomes an error, when a file's latest bytes are refused
  (and a line when either is fixed), and when a topic has waiting tasks but no worker
  (the local bus: no `[workers.<topic>]` table);
- a line for every operator action (trigger, backload, refresh, notify, rerun,
  cancel, drop, mark, pause, resume) with its actor and outcome, once it has one,
  whoever wrote it: the HTTP API through this daemon's loop, or a command in its own
  process (flowlord/operations.py writes the rows; they are read here from
  `actions`, which every one of them goes through).

Read on the daemon's loop from its connection: the broken phases (their partial
index), the refused files and the queue every few seconds and after this daemon's
refresh changed something; the audit trail by its primary key at each turn.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from flowlord.store import Store, reads

CHECK_EVERY = 5.0  # seconds between looks at the broken phases, refused files and queue
SHOWN = 20  # phases (or files) named one by one in a turn; the rest are counted
GIVE_UP = 600.0  # seconds an action without an outcome is watched; then told as such
ACTIONS_EVERY = 1.0  # seconds between looks at the audit trail: a query a turn costs the
# task loop (bench/tasks.py), and an action told a second late is told


class Notices:
    def __init__(self, log: Any, workers: Collection[str] | None, monotonic: float) -> None:
        self.log = log
        # the topics local workers run; None: another bus, whose workers come and go
        self.workers = workers
        self.broken: dict[tuple[str, str], str] | None = None  # None: not looked yet
        self.refused: dict[str, str] = {}
        self.idle: set[str] = set()  # topics with waiting tasks and no worker
        self.workflows_changed = True
        self.next_check = monotonic
        self.last_action = -1  # -1: not started (start() skips the actions of before)
        self.unsettled: dict[int, float] = {}  # action_no → when first seen (monotonic)
        self.next_actions = monotonic

    def start(self, store: Store) -> None:
        """From now on: the actions of before this run were told by the runs before."""
        self.last_action = store.last_action_no()

    def changed(self) -> None:
        """This daemon's refresh changed workflow rows: look at them at the next check."""
        self.workflows_changed = True

    def tick(self, store: Store, now: str, monotonic: float) -> None:
        self._actions(store, monotonic)
        if not self.workflows_changed and monotonic < self.next_check:
            return
        self.workflows_changed = False
        self.next_check = monotonic + CHECK_EVERY
        self._phases(store)  # the broken ones through their partial index
        self._files(store)
        if self.workers is not None:
            self._queue(store, now)

    # --- workflows ----------------------------------------------------------------------

    def _phases(self, store: Store) -> None:
        now = {(p.file_path, p.task): p.status for p in store.phases(severity="error")}
        before, self.broken = self.broken, now
        new = [k for k in sorted(now) if (before or {}).get(k) != now[k]]
        for file, task in new[:SHOWN]:
            self.log.warning("phase is an error; it does not run", file=file, phase=task,
                             status=now[file, task])
        if len(new) > SHOWN:
            self.log.warning("more phases are errors", count=len(new) - SHOWN)
        if before is not None:
            for file, task in sorted(set(before) - set(now))[:SHOWN]:
                self.log.info("phase is no longer an error", file=file, phase=task)

    def _files(self, store: Store) -> None:
        now = dict(reads.refused_files(store))
        before, self.refused = self.refused, now
        new = [f for f in sorted(now) if before.get(f) != now[f]]
        for file in new[:SHOWN]:
            self.log.warning("workflow file refused; its last good phases stay", file=file,
                             status=now[file])
        if len(new) > SHOWN:
            self.log.warning("more workflow files refused", count=len(new) - SHOWN)
        for file in sorted(set(before) - set(now))[:SHOWN]:
            self.log.info("workflow file loaded again", file=file)

    # --- the queue ----------------------------------------------------------------------

    def _queue(self, store: Store, now: str) -> None:
        assert self.workers is not None
        idle = set(store.ready_topics(now)) - set(self.workers)
        for topic in sorted(idle - self.idle):
            self.log.warning(f"tasks wait for a topic without a worker: no [workers.{topic}] "
                             "in the config", topic=topic)
        for topic in sorted(self.idle - idle):
            self.log.info("no task waits any more for a topic without a worker", topic=topic)
        self.idle = idle

    # --- the audit trail ----------------------------------------------------------------

    def _actions(self, store: Store, monotonic: float) -> None:
        if self.last_action < 0 or monotonic < self.next_actions:
            return
        self.next_actions = monotonic + ACTIONS_EVERY
        rows = store.actions_to_tell(self.last_action, sorted(self.unsettled))
        for number, actor, kind, target, args, outcome, message in rows:
            self.last_action = max(self.last_action, number)
            first_seen = self.unsettled.setdefault(number, monotonic)
            if outcome is None and monotonic - first_seen < GIVE_UP:
                continue  # told when it has its outcome
            del self.unsettled[number]
            fields = {"actor": actor, "kind": kind, "target": target,
                      "outcome": outcome or "none", "message": message or ""}
            for key, value in sorted((json.loads(args) if args else {}).items()):
                if value is not None and key not in fields:  # the arguments given
                    fields[key] = (" ".join(map(str, value)) if isinstance(value, list)
                                   else str(value).lower() if isinstance(value, bool)
                                   else str(value))
            if outcome == "failed" or outcome is None:
                self.log.warning("action", **fields)
            else:
                self.log.info("action", **fields)
