"""The daemon's WAL checkpoints, off its loop (docs/decisions.md, Checkpoints).

SQLite copies the write-ahead log back into the database (a checkpoint) from the
connection whose commit makes the log pass 1,000 pages; that copy ends with an fsync
of the database file, which on a big database takes tens of milliseconds or more, and
it would land in the daemon's loop, in the middle of a turn that fires slots. So the
loop's connection does not checkpoint (`wal_autocheckpoint = 0`) and this thread, with
a connection of its own, runs a PASSIVE checkpoint every second: it never blocks the
writer (it copies what no reader still needs and leaves the rest for the next one),
and its fsync waits on this thread, not the loop. It writes no row: the loop stays
the only writer of the data.

A passive checkpoint alone lets the log grow without end on a busy daemon: the log
starts over only when a writer begins after a checkpoint that copied every frame,
and a loop that commits every few milliseconds always adds frames while the copy
runs (10,000 phases firing once a minute grew it to 190 MB in two minutes). So once
the log passes WAL_TRUNCATE_BYTES, the thread runs a TRUNCATE checkpoint: it waits
for the loop's transaction in progress, holds off the next one for the copy of what
is left (the passive ones copied the rest) and the fsync, and empties the log. The
loop waits that out like any lock (flowlord/store/connection.py, wait_while_busy).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import apsw

from flowlord.store.connection import StoreError, connect

EVERY = 1.0  # seconds between two checkpoints
WAL_TRUNCATE_BYTES = 64 * 1024 * 1024  # a log this big is emptied, not only copied
TRUNCATE_BACKOFF = 10  # checkpoints between two TRUNCATE tries that a reader made busy


class Checkpoints:
    def __init__(self, db: str, log: Any) -> None:
        self.db = db
        self.log = log
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop, after one last checkpoint (the loop has written its last)."""
        self.stopping.set()
        if self.thread.ident is not None:  # started
            self.thread.join(10)

    def _run(self) -> None:
        conn: apsw.Connection | None = None
        held_off = 0  # checkpoints to run before another TRUNCATE, after a busy one
        try:
            while True:
                stop = self.stopping.wait(EVERY)
                try:
                    if conn is None:  # opened here: a database locked at start waits
                        conn = connect(self.db, busy_timeout_ms=100)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if self._wal_size() > WAL_TRUNCATE_BYTES and not held_off:
                        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
                        # a reader holds the log: each try holds the loop's writes back
                        # up to the busy timeout, so wait a while before the next one
                        held_off = TRUNCATE_BACKOFF if busy else 0
                    held_off = max(0, held_off - 1)
                except (apsw.Error, StoreError) as e:  # busy, a full disk: tried again
                    self.log.debug("checkpoint put off", error=str(e))
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(f"{self.db}-wal")
        except OSError:
            return 0
