"""The real daemon starting `files=` phases: files closed after writing or moved into a
watched directory, and files reported by `flowlord notify`."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from tests.conftest import run_cli
from tests.test_daemon import daemon, messages_until, wait_for
from tests.test_firing import query
from tests.test_running import config, worker


def test_dropped_and_moved_files_start_their_phase_and_its_children(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    inbox, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    (wf / "a.toml").write_text(
        f'[[phase]]\ntask = "load"\nrule = "files={inbox}/*.csv&job=csv"\n'
        'template = "{meta:file}?day={yyyy}-{mm}-{dd}"\n\n'
        '[[phase]]\ntask = "audit"\ndependsOn = "load"\nrule = "require={meta:file}"\n'
        'template = "{meta:filename}?audit=true"\n')
    db = tmp_path / "f.db"
    cfg = config(tmp_path, worker("load", "true") + worker("audit", "true"))
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
        messages_until(notify_socket, "READY=1")
        with (inbox / "sales-2026-11-20.csv").open("w") as f:  # written in parts: one file
            for part in range(5):
                f.write(f"row {part}\n")
                f.flush()
                os.fsync(f.fileno())
        (elsewhere / "moved.csv").write_text("x\n")
        (elsewhere / "moved.csv").rename(inbox / "moved.csv")
        (inbox / "notes.txt").write_text("not for any phase\n")
        wait_for(lambda: query(db, "SELECT count(*) FROM tasks WHERE type = 'audit' "
                                   "AND result = 'complete'") == [(2,)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    arrivals = query(db, "SELECT path, source, tasks, started FROM file_arrivals ORDER BY path")
    assert arrivals == [(str(inbox / "moved.csv"), "watch", 1, "load:csv"),
                        (str(inbox / "sales-2026-11-20.csv"), "watch", 1, "load:csv")]
    loads = dict(query(db, "SELECT info, meta FROM tasks WHERE type = 'load'"))
    assert set(loads) == {f"{inbox}/sales-2026-11-20.csv?day=2026-11-20",
                          f"{inbox}/moved.csv?day={{yyyy}}-{{mm}}-{{dd}}"}  # no date: kept
    audits = sorted(r[0] for r in query(db, "SELECT info FROM tasks WHERE type = 'audit'"))
    assert audits == ["moved.csv?audit=true", "sales-2026-11-20.csv?audit=true"]


def test_notify_reports_files_that_arrived_elsewhere(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "load"\nrule = "files=gs://bucket/*/data-*.json"\n'
        'template = "{meta:file}?hour={yyyy}-{mm}-{dd}T{hh}"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    done = run_cli("notify", "gs://bucket/2026/data-x.json", "gs://bucket/a/b/data-y.json",
                   "-w", str(wf), "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["gs://bucket/2026/data-x.json\t1 task\tload",
                                        "gs://bucket/a/b/data-y.json\t0 tasks"]
    assert query(db, "SELECT path, source, tasks FROM file_arrivals ORDER BY file_no") == [
        ("gs://bucket/2026/data-x.json", "notify", 1), ("gs://bucket/a/b/data-y.json", "notify", 0)]
    assert query(db, "SELECT type, info, started FROM tasks") == [
        ("load", "gs://bucket/2026/data-x.json?hour={yyyy}-{mm}-{dd}T{hh}", None)]
