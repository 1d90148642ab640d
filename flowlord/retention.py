"""Deleting old history: finished tasks, fires and file messages older than `retention`.

Daily, in batches of RETENTION_BATCH rows per transaction and a few batches per turn
of the daemon's loop, so neither the write lock nor the loop is held for long.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import apsw

from flowlord.clock import rfc3339
from flowlord.store import Store, write_txn
from flowlord.tasklog import remove_logs

EVERY = 24 * 3600.0  # seconds between deletions
FIRST_AFTER = 60.0  # seconds after the start
BATCH = 500  # rows per transaction
BATCHES_PER_TURN = 10


class Retention:
    def __init__(self, keep: timedelta, log: Any, monotonic: float,
                 task_logs: str | None = None) -> None:
        self.keep = keep
        self.log = log
        self.task_logs = task_logs  # the directory of task logs: each goes with its task
        self.next_run = monotonic + FIRST_AFTER

    def tick(self, store: Store, now: datetime, monotonic: float) -> None:
        if monotonic < self.next_run:
            return
        cutoff = rfc3339(now - self.keep)
        deleted = 0
        try:
            for _ in range(BATCHES_PER_TURN):
                tasks: list[int] = []
                with write_txn(store.conn):
                    batch = store.delete_history(cutoff, BATCH, tasks)
                if self.task_logs is not None:
                    remove_logs(self.task_logs, tasks)
                deleted += batch
                if batch == 0:
                    self.next_run = monotonic + EVERY
                    break
        except apsw.BusyError:
            self.next_run = monotonic + FIRST_AFTER  # try again soon
        if deleted:
            self.log.info("history deleted", rows=deleted, before=cutoff)
