"""`flowlord backup PATH`: a consistent copy of the database made while the daemon
writes it, that restores as README.md says (stop, copy over, start)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import apsw
import pytest

from flowlord.store import Store, StoreError
from flowlord.store.backup import backup
from tests.helpers import (
    daemon,
    daemon_config,
    messages_until,
    query,
    run_cli,
    wait_for,
    worker_table,
)

EVERY_SECOND = '[[phase]]\ntask = "tick"\nrule = "cron=* * * * * *"\n'


@pytest.mark.slow
def test_a_backup_made_while_the_daemon_fires_is_whole_and_restores(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(EVERY_SECOND)
    db, copy = tmp_path / "f.db", tmp_path / "backups" / "f-copy.db"
    copy.parent.mkdir()
    config = daemon_config(tmp_path, worker_table("tick", "true", concurrency=2))
    common = ["-c", str(config), "-w", str(wf), "--db", str(db)]
    with daemon(tmp_path, wf, db, args=["-c", str(config)]) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: query(db, "SELECT count(*) FROM fires") >= [(3,)])
        made = run_cli(*common, "backup", str(copy))
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith(f"{copy}: ") and " copied from " in made.stdout
        again = run_cli(*common, "backup", str(copy))  # never over an existing file
        assert again.returncode == 2 and again.stderr.strip().endswith(
            "exists: a backup goes to a new path")
        wait_for(lambda: query(db, "SELECT count(*) FROM fires") > query(
            copy, "SELECT count(*) FROM fires"))  # the daemon went on firing
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    # the copy: one file, whole, its foreign keys holding, every slot with its tasks
    assert sorted(p.name for p in copy.parent.iterdir()) == ["f-copy.db"]
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        fired = conn.execute("SELECT count(*) FROM fires").fetchone()[0]
        assert fired >= 3 and conn.execute(
            "SELECT count(*) FROM tasks").fetchone()[0] == fired
    # restored as the README says: stopped, copied over, started again
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    subprocess.run(["cp", str(copy), str(db)], check=True)
    with daemon(tmp_path, wf, db, args=["-c", str(config)]) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: query(db, "SELECT count(*) FROM fires") > [(fired,)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert run_cli(*common, "doctor").returncode == 0


def test_a_backup_keeps_the_database_as_it_is_old_schema_and_mode_and_touches_no_other_file(
        tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    Store(str(db)).close()
    conn = apsw.Connection(str(db))
    conn.pragma("user_version", 12)  # as an older release left it, before an upgrade
    conn.close()
    os.chmod(db, 0o640)
    copy = tmp_path / "copy.db"
    assert backup(str(db), str(copy)) > 0
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
    with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn2:
        assert conn2.execute("PRAGMA user_version").fetchone() == (12,)
    (tmp_path / "other.db.part").write_text("someone's")
    with pytest.raises(StoreError, match="other.db.part exists"):
        backup(str(db), str(tmp_path / "other.db"))
    assert (tmp_path / "other.db.part").read_text() == "someone's"  # left alone
    assert not (tmp_path / "other.db").exists()
    with pytest.raises(StoreError, match="no database at"):
        backup(str(tmp_path / "none.db"), str(tmp_path / "x.db"))
