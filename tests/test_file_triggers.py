"""The real daemon starting `files=` phases: files closed after writing or moved into a
watched directory, and files reported by `flowlord notify`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.helpers import (
    daemon,
    daemon_config,
    messages_until,
    query,
    run_cli,
    wait_for,
    worker_table,
)

pytestmark = pytest.mark.slow


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
    cfg = daemon_config(tmp_path, worker_table("load", "true") + worker_table("audit", "true"))
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


def test_a_slow_writer_counts_once_and_a_recreated_directory_is_watched_again(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (wf / "a.toml").write_text(f'[[phase]]\ntask = "load"\nrule = "files={inbox}/*.csv"\n')
    db = tmp_path / "f.db"
    cfg = daemon_config(tmp_path, worker_table("load", "true")).read_text()
    (tmp_path / "flowlord.toml").write_text('rescan = "1s"\n' + cfg)
    with daemon(tmp_path, wf, db, args=["-c", str(tmp_path / "flowlord.toml")]) as proc:
        messages_until(notify_socket, "READY=1")
        with (inbox / "slow.csv").open("w") as f:  # open well past the moved-in delay
            start = time.monotonic()
            wait_for(lambda: time.monotonic() > start + 1.5)
            f.write("late\n")
        wait_for(lambda: arrivals(db) == ["slow.csv"])
        shutil.rmtree(inbox)
        inbox.mkdir()  # a new directory: its watch is made again at the next rescan
        wait_for(lambda: not_watched_yet(db, inbox))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    seen = arrivals(db)
    assert seen.count("slow.csv") == 1 and set(seen) == {"after.csv", "slow.csv"}


def arrivals(db: Path) -> list[str]:
    return sorted(str(r[0]).rsplit("/", 1)[-1]
                  for r in query(db, "SELECT path FROM file_messages"))


def not_watched_yet(db: Path, inbox: Path) -> bool:
    """Drop a file until one is seen (the first may come before the new watch)."""
    (inbox / "after.csv").write_text("x\n")
    return "after.csv" in arrivals(db)
