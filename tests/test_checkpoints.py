"""WAL checkpoints run on a thread of their own, never in the daemon's loop
(flowlord/checkpoints.py): the loop's connection does not checkpoint, and the log is
still copied back into the database, so it does not grow without end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import apsw
import pytest

from flowlord import checkpoints, logs
from flowlord.clock import FakeClock
from flowlord.store import Store, write_txn
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


def test_a_truncate_a_reader_holds_off_is_tried_again_only_after_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each TRUNCATE try holds the loop's writes back up to its busy timeout: while a
    reader keeps the log, one try in TRUNCATE_BACKOFF checkpoints, not one each."""
    db = str(tmp_path / "f.db")
    writer = Store(db)
    writer.conn.pragma("wal_autocheckpoint", 0)
    writer.conn.execute("CREATE TABLE ballast (b BLOB)")
    with write_txn(writer.conn):
        for _ in range(2):
            writer.conn.execute("INSERT INTO ballast VALUES (zeroblob(1048576))")
    reader = apsw.Connection(db)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM ballast").fetchall() == [(2,)]  # holds it
    seen: list[str] = []
    real_connect = checkpoints.connect

    def traced(*args: Any, **kwargs: Any) -> apsw.Connection:
        conn = real_connect(*args, **kwargs)
        conn.exec_trace = lambda _cursor, sql, _bindings: seen.append(sql) or True
        return conn
    monkeypatch.setattr(checkpoints, "connect", traced)
    monkeypatch.setattr(checkpoints, "EVERY", 0.01)
    monkeypatch.setattr(checkpoints, "WAL_TRUNCATE_BYTES", 1024 * 1024)
    thread = checkpoints.Checkpoints(db, logs.get("test"))
    thread.start()
    try:
        wait_for(lambda: sum("PASSIVE" in s for s in seen) >= 31)
    finally:
        thread.stop()
        reader.execute("COMMIT")
        reader.close()
        writer.close()
    passives = sum("PASSIVE" in s for s in seen)
    truncates = sum("TRUNCATE" in s for s in seen)
    assert 1 <= truncates <= passives // checkpoints.TRUNCATE_BACKOFF + 1, (truncates, passives)
