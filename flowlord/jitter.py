"""A phase's `jitter=<duration>` (README.md, Scheduling policy): its tasks start at a
fixed delay in [0, duration) after the slot, so thousands of phases on one cron do
not all start in the same second. The delay comes from a hash of the phase's file key
and task, so it is the same on every restart and every host, and moves only when the
phase is renamed or its jitter changed. The slot, the template time and the ledger's
key stay the cron time: a fire is recorded at its slot, its tasks wait until
slot + delay (`tasks.due_at`), as a retry waits for its delay.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


def delay(file_path: str, task: str, jitter: timedelta) -> timedelta:
    """The phase's fixed delay within [0, jitter), to the millisecond."""
    digest = hashlib.sha256(f"{file_path}\0{task}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(milliseconds=int(fraction * jitter / timedelta(milliseconds=1)))


def start(file_path: str, task: str, jitter: timedelta | None, slot: datetime) -> datetime:
    """When the phase's tasks of `slot` may start."""
    return slot if jitter is None else slot + delay(file_path, task, jitter)
