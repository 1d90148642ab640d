"""The daemon while its database cannot be written (SQLite's SQLITE_FULL: the disk,
or the database's size limit). It stays up: due slots keep firing into memory (the
ledger bounds them, flowlord/ledger.py `_bound_pending`), results wait with the bus,
nothing is claimed, and every turn tries again. Once a minute it says so in the log
and in systemd's STATUS=; when a write goes through again it says that too, and the
slots it had to let go are recorded as missed.
"""

from __future__ import annotations

from typing import Any

from flowlord.clock import Clock, rfc3339
from flowlord.sdnotify import notify

SAY_EVERY = 60.0  # seconds between two log lines (and STATUS=) while full
RETRY_EVERY = 1.0  # seconds between two tries while full


class DiskFull:
    def __init__(self, log: Any, clock: Clock) -> None:
        self.log = log
        self.clock = clock
        self.since: str | None = None  # when the database stopped taking writes
        self.next_say = 0.0

    def full(self, error: Exception, fires_waiting: int) -> float:
        """A write failed for want of space; how long to wait before trying again."""
        monotonic = self.clock.monotonic()
        if self.since is None:
            self.since = rfc3339(self.clock.now())
            self.next_say = monotonic
        if monotonic >= self.next_say:
            self.log.error("database full: firing into memory and trying again every "
                           "second", since=self.since, fires_waiting=fires_waiting,
                           error=str(error))
            notify(f"STATUS=database full since {self.since}: {fires_waiting} fires "
                   "waiting in memory")
            self.next_say = monotonic + SAY_EVERY
        return RETRY_EVERY

    def writable(self) -> bool:
        """A turn went through: True once, when the database had been full."""
        if self.since is None:
            return False
        self.log.warning("database writable again", full_since=self.since)
        self.since = None
        return True
