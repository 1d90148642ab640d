"""WAL checkpoints run on a thread of their own, never in the daemon's loop
(flowlord/checkpoints.py): the loop's connection does not checkpoint, and the log is
still copied back into the database, so it does not grow without end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowlord import checkpoints
from flowlord.clock import FakeClock
from flowlord.store import write_txn
from tests.helpers import stepped, utc, wait_for


def test_the_wal_is_checkpointed_off_the_loop_and_stays_small(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "EVERY", 0.02)  # not a second per MiB written
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    db = tmp_path / "f.db"
    wal = Path(f"{db}-wal")
    with stepped(tmp_path, wf, FakeClock(utc(2026, 12, 1))) as d:
        assert d.store.conn.pragma("wal_autocheckpoint") == 0  # never in a loop's commit
        d.store.conn.execute("CREATE TABLE ballast (b BLOB)")
        for _ in range(40):  # 40 MiB written, a MiB a transaction
            size = os.path.getsize(db)
            with write_txn(d.store.conn):
                d.store.conn.execute("INSERT INTO ballast VALUES (zeroblob(1048576))")
            # the thread copied the whole MiB back (not just begun: a write that starts
            # during a copy cannot reuse the log)
            wait_for(lambda size=size: os.path.getsize(db) >= size + 1024 * 1024)
        assert wal.stat().st_size < 8 * 1024 * 1024  # the log was reused, not grown


def test_a_log_past_its_bound_is_emptied(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy loop always adds frames while a passive checkpoint copies, so the log
    never starts over by itself: past its bound the thread empties it."""
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    db = tmp_path / "f.db"
    wal = Path(f"{db}-wal")
    monkeypatch.setattr(checkpoints, "EVERY", 0.02)
    monkeypatch.setattr(checkpoints, "WAL_TRUNCATE_BYTES", 2 * 1024 * 1024)
    with stepped(tmp_path, wf, FakeClock(utc(2026, 12, 1))) as d:
        d.store.conn.execute("CREATE TABLE ballast (b BLOB)")
        with write_txn(d.store.conn):  # 5 MiB in the log at once
            for _ in range(5):
                d.store.conn.execute("INSERT INTO ballast VALUES (zeroblob(1048576))")
        assert wal.stat().st_size > 5 * 1024 * 1024
        wait_for(lambda: wal.stat().st_size == 0)  # a passive checkpoint keeps its size
        rows = d.store.conn.execute("SELECT count(*) FROM ballast").fetchall()
        assert rows == [(5,)]
