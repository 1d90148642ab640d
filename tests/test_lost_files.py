"""No lost files (flowlord/catch_up.py), with real daemons and their real watch: files
that arrive while the daemon is down, or while a standby stands by, start their phases
once when it records again; a first start on a directory of old files starts none."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import daemon, daemon_config, messages_until, query, wait_for, worker_table
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


def arrivals(db: Path) -> list[str]:
    """The names of the files this database recorded, once per record, sorted."""
    return sorted(str(r[0]).rsplit("/", 1)[-1]
                  for r in query(db, "SELECT path FROM file_messages"))


def loads(db: Path) -> list[str]:
    return sorted(str(r[0]).rsplit("/", 1)[-1]
                  for r in query(db, "SELECT info FROM tasks WHERE type = 'load'"))


def watched_after(db: Path, inbox: Path, after: str) -> bool:
    """Whether the database records the directory watched (caught up) after `after`."""
    rows = query(db, "SELECT watched_until FROM watched_dirs WHERE directory = ?",
                 (str(inbox),))
    return bool(rows) and str(rows[0][0]) > after


def load_phase(wf: Path, inbox: Path) -> None:
    (wf / "a.toml").write_text(f'[[phase]]\ntask = "load"\nrule = "files={inbox}/*.csv"\n'
                               'template = "{meta:file}"\n')


def local_daemon(tmp_path: Path, wf: Path, inbox: Path) -> tuple[Path, list[str], Path]:
    """A `load` phase on inbox/*.csv with a local worker: the database, the arguments
    of `flowlord run`, its log."""
    load_phase(wf, inbox)
    cfg = daemon_config(tmp_path, worker_table("load", "true"))
    return tmp_path / "f.db", ["-c", str(cfg)], tmp_path / "run.log"


def test_files_that_arrive_while_the_daemon_is_down_start_once_at_the_restart(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    inbox, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    db, args, log = local_daemon(tmp_path, wf, inbox)
    with log.open("w") as err, daemon(tmp_path, wf, db, stderr=err, args=args) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: watched_after(db, inbox, ""))  # its first watch
        (inbox / "before.csv").write_text("x\n")
        wait_for(lambda: arrivals(db) == ["before.csv"])
        proc.kill()  # SIGKILL: no word, no last record
        assert proc.wait(10) == -signal.SIGKILL
    (inbox / "down.csv").write_text("written while the daemon was down\n")
    (elsewhere / "moved.csv").write_text("moved in while the daemon was down\n")
    os.utime(elsewhere / "moved.csv", (0, 0))  # mv keeps an old mtime: the ctime counts
    (elsewhere / "moved.csv").rename(inbox / "moved.csv")
    (inbox / "notes.txt").write_text("wanted by no phase\n")
    with log.open("a") as err, daemon(tmp_path, wf, db, stderr=err, args=args) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: "files= directories caught up" in log.read_text())
        (inbox / "after.csv").write_text("x\n")  # the watch goes on
        wait_for(lambda: "after.csv" in arrivals(db))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert arrivals(db) == ["after.csv", "before.csv", "down.csv", "moved.csv"]
    assert loads(db) == ["after.csv", "before.csv", "down.csv", "moved.csv"]
    text = log.read_text()
    assert f"file arrived path={inbox / 'down.csv'} tasks=1 seen=catch-up" in text
    assert f"file arrived path={inbox / 'moved.csv'} tasks=1 seen=catch-up" in text
    assert "first watch of a files= directory" in text  # the first run's, only
    assert f"files= directories caught up paths={inbox} since=" in text
    assert text.count("files= directories caught up") == 1 and "files=2\n" in text


def test_a_standby_that_takes_over_starts_the_files_that_arrived_in_between_once(
        tmp_path: Path, redis_server: RedisServer) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    homes = {node: tmp_path / node for node in ("a", "b")}
    for node, home in homes.items():
        (home / "wf").mkdir(parents=True)
        load_phase(home / "wf", inbox)
        (home / "flowlord.toml").write_text(
            f'timezone = "UTC"\n[bus]\nurl = "{redis_server.url}"\nlease = "2s"\n'
            f'node = "{node}"\n')
    dbs = {node: home / "f.db" for node, home in homes.items()}
    log = tmp_path / "b.log"

    def run(node: str, err: int | IO[str] = subprocess.DEVNULL
            ) -> AbstractContextManager[subprocess.Popen[str]]:
        return daemon(homes[node], homes[node] / "wf", dbs[node], stderr=err,
                      args=["-c", str(homes[node] / "flowlord.toml")])

    with run("a") as leader:
        wait_for(lambda: watched_after(dbs["a"], inbox, ""), 30)  # a leads and watches
        (inbox / "first.csv").write_text("x\n")
        wait_for(lambda: arrivals(dbs["a"]) == ["first.csv"], 30)
        with log.open("w") as err, run("b", err) as standby:
            wait_for(lambda: watched_after(dbs["b"], inbox, ""), 30)  # b knows the directory
            (inbox / "second.csv").write_text("x\n")  # a records it; b stands by
            wait_for(lambda: arrivals(dbs["a"]) == ["first.csv", "second.csv"], 30)
            leader.kill()
            leader.wait(10)
            (inbox / "third.csv").write_text("x\n")
            (inbox / "fourth.csv").write_text("x\n")
            # b takes over within the lease and catches up
            wait_for(lambda: "files= directories caught up" in log.read_text(), 30)
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(30) == 0
    assert arrivals(dbs["a"]) == ["first.csv", "second.csv"]
    assert arrivals(dbs["b"]) == ["fourth.csv", "third.csv"]  # none of a's again
    assert loads(dbs["b"]) == ["fourth.csv", "third.csv"]
    text = log.read_text()
    assert "role=leader" in text
    # a file a recorded after b's first watch is a's: claimed by a, so not started again
    assert f"file started by another daemon path={inbox / 'second.csv'} node=a" in text
    assert "first watch of a files= directory" in text  # b's own, as a standby


def test_a_first_start_on_a_directory_of_old_files_starts_none_and_says_so(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for n in range(3):
        (inbox / f"old-{n}.csv").write_text("x\n")
    (inbox / "old.txt").write_text("wanted by no phase\n")
    db, args, log = local_daemon(tmp_path, wf, inbox)
    with log.open("w") as err, daemon(tmp_path, wf, db, stderr=err, args=args) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: "first watch of a files= directory" in log.read_text())
        (inbox / "new.csv").write_text("x\n")
        wait_for(lambda: arrivals(db) == ["new.csv"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert arrivals(db) == ["new.csv"]
    line = next(x for x in log.read_text().splitlines() if "first watch of" in x)
    assert line.endswith("WARNING first watch of a files= directory: the files already "
                         f"there are not started path={inbox} files=3")
