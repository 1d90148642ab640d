"""The daemon's own history (README.md, Debugging with sqlite3): each run is a row of
`daemon_runs`, begun once the database is the run's own (its lock held), its
`last_seen` brought forward every SEEN_EVERY seconds by the loop, and ended with how
it ended. A run killed without a word (SIGKILL, a crash, power lost) is found open by
the next one, which closes it as `vanished` at its last sign of life: so "was the
daemon running at 02:18?" is a query, to within SEEN_EVERY.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import apsw

from flowlord import __version__
from flowlord.clock import Clock, rfc3339_ms
from flowlord.store import Store, write_txn

SEEN_EVERY = 10.0  # seconds between two writes of a run's last_seen


class DaemonRun:
    """This run's row: begun, kept seen, ended; a locked database only delays it."""

    def __init__(self, node: str, clock: Clock, log: Any) -> None:
        self.node = node or socket.gethostname()
        self.clock = clock
        self.log = log
        self.run_no: int | None = None
        self.started = ""  # when this run began, its row written or not yet
        self.next_seen = 0.0

    def begin(self, store: Store) -> None:
        """The run's row, at start; a database locked by another process puts it off to
        the loop's next turns (`seen`), with the time the run began."""
        self.started = rfc3339_ms(self.clock.now())
        self._write_begin(store)

    def _write_begin(self, store: Store) -> None:
        try:
            with write_txn(store.conn):
                self.run_no = store.begin_run(self.node, os.getpid(), __version__,
                                              self.started)
        except apsw.BusyError:
            return
        self.next_seen = self.clock.monotonic() + SEEN_EVERY

    def seen(self, store: Store, monotonic: float) -> None:
        """From the loop: alive now, written every SEEN_EVERY seconds."""
        if self.run_no is None and self.started:
            self._write_begin(store)  # put off by a locked database at start
            return
        if self.run_no is None or monotonic < self.next_seen:
            return
        try:
            with write_txn(store.conn):
                store.seen_run(self.run_no, rfc3339_ms(self.clock.now()))
        except apsw.BusyError:
            return  # the next turn tries again
        self.next_seen = monotonic + SEEN_EVERY

    def end(self, store: Store, how: str) -> None:
        """`stopped` or `failed`; a database that cannot be written leaves the row open,
        and the next run closes it as `vanished` at its last sign of life."""
        if self.run_no is None:
            return
        try:
            with write_txn(store.conn):
                store.end_run(self.run_no, rfc3339_ms(self.clock.now()), how)
        except apsw.Error as e:
            self.log.error("cannot record the end of this run", error=str(e))
