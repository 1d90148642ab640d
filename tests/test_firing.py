"""The real daemon firing cron phases: exactly once per slot through SIGKILLs, a locked
database (with systemd's watchdog pings going on), a database locked at start, and
edits by several writers. Firing, catch-up, clock steps, other writers and broken
edits are also driven in-process, turn by turn, in tests/test_daemon_step.py."""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import daemon, messages_until, query, run_cli, wait_for

pytestmark = pytest.mark.slow

EVERY_SECOND = '[[phase]]\ntask = "tick"\nrule = "cron=* * * * * *{extra}"\ntemplate = "t={{TS}}"\n'


def fired(db: Path, phase: str = "tick") -> list[int]:
    """The phase's fired slots as epoch seconds, in order."""
    return [int(datetime.fromisoformat(str(r[0]).replace("Z", "+00:00")).timestamp())
            for r in query(db, "SELECT scheduled_for FROM fires WHERE phase = ? ORDER BY 1",
                           (phase,))]


def until(moment: float) -> None:
    """Let real time pass on purpose (a random kill moment, a downtime)."""
    wait_for(lambda: time.monotonic() >= moment)


def assert_exactly_once_without_gaps(db: Path) -> None:
    slots = fired(db)
    assert slots == list(range(slots[0], slots[0] + len(slots))), "a slot is missing"
    per_slot = query(db, "SELECT scheduled_for, count(*) FROM tasks WHERE phase = 'tick' "
                         "GROUP BY scheduled_for")
    assert len(per_slot) == len(slots) and {n for _, n in per_slot} == {1}
    assert query(db, "PRAGMA foreign_key_check") == []


def test_sigkill_and_restart_never_fire_a_slot_twice_and_catch_up_all(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(EVERY_SECOND.format(extra="&catchup=all"))
    db = tmp_path / "f.db"
    rng = random.Random(7)
    for _ in range(6):
        wanted = len(fired(db)) + rng.randint(1, 3)
        with daemon(tmp_path, wf, db) as proc:
            # kill at a random moment: after one to three new slots, plus up to 0.9 s
            wait_for(lambda wanted=wanted: len(fired(db)) >= wanted)
            until(time.monotonic() + rng.random() * 0.9)
            proc.kill()
            proc.wait(timeout=10)
        until(time.monotonic() + 1.5)  # down long enough to miss at least one slot
    catchups = query(db, "SELECT count(*) FROM fires WHERE source = 'catchup'")
    assert catchups[0][0] >= 6  # type: ignore[operator]  # each restart filled its gap
    assert_exactly_once_without_gaps(db)


def test_a_locked_database_delays_but_loses_nothing(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    sqlite3 = shutil.which("sqlite3")
    if sqlite3 is None:
        pytest.fail("the sqlite3 shell is needed (.ci/run installs it)")
    (wf / "a.toml").write_text(EVERY_SECOND.format(extra=""))
    db, log = tmp_path / "f.db", tmp_path / "daemon.log"
    pings: list[float] = []

    def listen() -> None:
        while True:
            try:
                data = notify_socket.recv(4096).decode()
            except OSError:
                return
            if "WATCHDOG=1" in data:
                pings.append(time.monotonic())

    with log.open("w") as err, daemon(tmp_path, wf, db, stderr=err,
                                      env={"WATCHDOG_USEC": "2000000"}) as proc:
        threading.Thread(target=listen, daemon=True).start()
        wait_for(lambda: len(fired(db)) >= 2)
        holder = subprocess.Popen([sqlite3, str(db)], stdin=subprocess.PIPE, text=True)
        assert holder.stdin is not None
        holder.stdin.write("BEGIN IMMEDIATE;\n.shell sleep 5\nCOMMIT;\n")
        holder.stdin.close()
        wait_for(lambda: "database locked" in log.read_text())
        locked_at = time.monotonic()
        (wf / "b.toml").write_text(EVERY_SECOND.format(extra="").replace("tick", "tock"))
        (wf / "a.toml").write_text(EVERY_SECOND.format(extra="") + "# edited\n")
        assert holder.wait(timeout=30) == 0
        released_at = time.monotonic()
        wait_for(lambda: query(db, "SELECT count(*) FROM workflow_phases WHERE task = 'tock'")
                 == [(1,)] and len(fired(db, "tock")) >= 2)
        edited = query(db, "SELECT file_hash FROM workflow_files WHERE file_path = 'a.toml'")
        assert edited == [(hashlib.md5((wf / "a.toml").read_bytes()).hexdigest(),)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert_exactly_once_without_gaps(db)
    during = [p for p in pings if locked_at <= p <= released_at]
    assert len(during) >= 2, f"watchdog pings stopped while the database was locked: {pings}"


WRITER = r"""
import os, random, sys
root, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
def content():
    n = rng.randint(1, 3)
    return "".join(f'[[phase]]\ntask = "{name}{i}"\nrule = "cron=0 {rng.randint(0, 59)} * * * *"\n'
                   for i in range(n))
live = []
for step in range(100):
    op = rng.choice(["create", "create", "edit", "rename", "delete", "subdir"])
    if op in ("create", "subdir") or not live:
        d = os.path.join(root, f"{name}-dir{step}") if op == "subdir" else root
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{name}-{step}.toml")
        with open(path, "w") as f:
            f.write(content())
        live.append(path)
    elif op == "edit":
        path = rng.choice(live)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(content())
        os.replace(tmp, path)
    elif op == "rename":
        path = live.pop(rng.randrange(len(live)))
        new = os.path.join(os.path.dirname(path), f"{name}-r{step}.toml")
        os.rename(path, new)
        live.append(new)
    else:
        os.remove(live.pop(rng.randrange(len(live))))
"""


def directory_state(wf: Path) -> dict[str, str]:
    return {str(p.relative_to(wf)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in wf.rglob("*.toml")}


def test_many_writers_end_with_the_database_equal_to_the_directory(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(wf), f"w{i}", str(i)])
                   for i in range(3)]
        assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
        expected = directory_state(wf)
        assert len(expected) > 50

        def in_step() -> bool:
            rows = query(db, "SELECT file_path, file_hash FROM workflow_files")
            return dict(rows) == expected  # type: ignore[arg-type]
        wait_for(in_step, seconds=30)
        phases = query(db, "SELECT count(*) FROM workflow_phases")[0][0]
        assert phases == sum(p.read_text().count("[[phase]]") for p in wf.rglob("*.toml"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_a_database_locked_at_start_is_waited_for(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "the sqlite3 shell is needed (.ci/run installs it)"
    (wf / "a.toml").write_text(EVERY_SECOND.format(extra=""))
    db, log = tmp_path / "f.db", tmp_path / "daemon.log"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    (wf / "b.toml").write_text(EVERY_SECOND.format(extra="").replace("tick", "tock"))
    holder = subprocess.Popen([sqlite3, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("BEGIN IMMEDIATE;\nSELECT 'locked';\n.shell sleep 3\nCOMMIT;\n")
    holder.stdin.close()
    assert holder.stdout.readline() == "locked\n"
    with log.open("w") as err, daemon(tmp_path, wf, db, stderr=err) as proc:
        messages_until(notify_socket, "READY=1")
        assert holder.wait(timeout=30) == 0
        holder.stdout.close()
        assert "database locked at start; waiting" in log.read_text()
        wait_for(lambda: len(fired(db, "tock")) >= 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
