"""A database that cannot be written (a full disk; here SQLite's max_page_count, set
through the test hook of flowlord/store/connection.py, where mounting a small
filesystem is not allowed): the daemon stays up, says so, fires into memory, and
records every slot once when space returns."""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from flowlord import ledger
from flowlord.bus.inprocess import InProcessBus
from flowlord.clock import FakeClock, parse_iso, rfc3339
from flowlord.store.connection import PAGE_LIMIT_HOOK
from tests.helpers import (
    daemon,
    daemon_config,
    messages_until,
    query,
    stepped,
    utc,
    wait_for,
    worker_table,
)

EVERY_SECOND = '[[phase]]\ntask = "tick"\nrule = "cron=* * * * * *"\ntemplate = "{TS}"\n'


def slots(db: Path) -> list[datetime]:
    return [parse_iso(str(s)) for s, in query(db, "SELECT scheduled_for FROM fires "
                                                   "ORDER BY scheduled_for")]


@pytest.mark.slow
def test_a_full_database_is_waited_out_and_no_slot_is_lost_or_doubled(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(EVERY_SECOND)
    db, limit, log = tmp_path / "f.db", tmp_path / "page-limit", tmp_path / "daemon.log"
    limit.write_text("1000000")
    config = daemon_config(tmp_path, worker_table("tick", "true", concurrency=2))
    with log.open("w") as err, daemon(tmp_path, wf, db, stderr=err, args=["-c", str(config)],
                                      env={PAGE_LIMIT_HOOK: str(limit)}) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: len(slots(db)) >= 3)
        (pages,), = query(db, "PRAGMA page_count")
        limit.write_text(str(pages))  # not one page more: the next writes fail
        wait_for(lambda: "database full" in log.read_text(), 60)
        status: list[str] = []
        while not any(m.startswith("STATUS=database full since ") for m in status):
            status += notify_socket.recv(4096).decode().split("\n")  # 20 s at most
        full_from = slots(db)[-1]
        # slots come due while full: they wait in memory; the daemon stays up
        wait_for(lambda: datetime.now(full_from.tzinfo) > full_from + timedelta(seconds=4))
        assert proc.poll() is None and slots(db)[-1] == full_from
        limit.write_text("1000000")  # space returns
        wait_for(lambda: slots(db)[-1] > full_from + timedelta(seconds=5), 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert "database writable again" in text and "Traceback" not in text
    fired = slots(db)
    assert fired == [fired[0] + timedelta(seconds=i) for i in range(len(fired))]  # each once
    assert query(db, "SELECT count(*) FROM fires WHERE error <> ''") == [(0,)]
    assert query(db, "SELECT count(*) FROM tasks") == [(len(fired),)]  # every one ran
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert rfc3339(fired[-1]) > rfc3339(full_from)


def test_past_its_bound_the_ledger_lets_fires_go_and_records_their_slots_as_missed(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "MAX_PENDING", 3)
    (wf / "a.toml").write_text(EVERY_SECOND)
    clock = FakeClock(utc(2026, 12, 1, 12, 0, 0) + timedelta(milliseconds=500))
    db = tmp_path / "f.db"
    with stepped(tmp_path, wf, clock, bus=InProcessBus()) as d:
        for _ in range(3):
            clock.advance(1.0)
            d._turn()
        (pages,), = d.store.conn.execute("PRAGMA page_count")
        d.store.conn.pragma("max_page_count", pages)  # full soon: no page more
        for _ in range(60):  # the free space left in its pages fills first
            clock.advance(1.0)
            d._turn()
            if d.disk.since is not None:
                break
        for _ in range(8):
            clock.advance(1.0)
            assert d._turn() == 1.0  # tried again each second, the daemon up
            assert len(d.ledger.pending) <= 3  # memory bounded
        assert d.disk.since is not None and d.ledger.missed
        d.store.conn.pragma("max_page_count", 1_000_000)  # space returns
        clock.advance(1.0)
        d._turn()
        assert d.disk.since is None and not d.ledger.missed
    rows = query(db, "SELECT scheduled_for, error, (SELECT count(*) FROM tasks AS t WHERE "
                     "t.scheduled_for = f.scheduled_for) FROM fires AS f ORDER BY 1")
    slots = [parse_iso(str(s)) for s, _, _ in rows]
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]  # each once
    kinds = "".join("m" if e == ledger.MISSED_FULL and n == 0 else "f" if not e and n == 1
                    else "?" for _, e, n in rows)
    # fired, then those let go while full (recorded, no task), then the 3 kept in memory
    # all along and those after: fired with their tasks
    assert re.fullmatch(r"f{3,}m{6,}f{3}", kinds), kinds
