"""The real daemon firing cron phases: exactly once per slot through kills, a locked
database, edits by several writers, and broken files."""

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


def test_phases_fire_and_their_tasks_wait_in_the_database(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(EVERY_SECOND.format(extra="") + (
        '[[phase]]\ntask = "child"\ndependsOn = "tick"\n'))
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: len(fired(db)) >= 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    rows = query(db, "SELECT type, info, meta, started, attempt, scheduled_for FROM tasks")
    assert len(rows) == len(fired(db))
    for type_, info, meta, started, attempt, slot in rows:
        stamp = str(slot).replace("-", "").replace(":", "").rstrip("Z")
        assert (type_, info, started, attempt) == ("tick", f"t={stamp}", None, 0)
        assert str(meta).startswith("workflow=a.toml&cron=")
    assert_exactly_once_without_gaps(db)
    listed = run_cli("tasks", "--db", str(db), "--result", "none")
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) == len(rows)
    assert all("\ttick\twaiting\tt=" in line for line in listed.stdout.splitlines())
    plan = query(db, "SELECT task, next_fire, last_fired FROM phase_schedule ORDER BY task")
    assert plan[0][:2] == ("child", None) and plan[1][1] is not None


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


def test_a_broken_edit_keeps_the_last_good_phases_firing(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    good = EVERY_SECOND.format(extra="")
    (wf / "a.toml").write_text(good)
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        wait_for(lambda: len(fired(db)) >= 2)
        (wf / "a.toml").write_text(good + "[[phase]\ntask = \n")
        wait_for(lambda: str(query(db, "SELECT status FROM workflow_files")[0][0])
                 .startswith("parse error"))
        count = len(fired(db))
        wait_for(lambda: len(fired(db)) >= count + 3)
        (wf / "a.toml").write_text(good.replace("t={TS}", "fixed={TS}"))
        wait_for(lambda: query(db, "SELECT f.status, p.template FROM workflow_files AS f "
                                   "JOIN workflow_phases AS p USING (file_path)")
                 == [("", "fixed={TS}")])
        wait_for(lambda: query(db, "SELECT count(*) FROM tasks WHERE info LIKE 'fixed=%'")
                 [0][0] >= 1)  # type: ignore[operator]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert_exactly_once_without_gaps(db)


def test_changes_made_by_another_flowlord_process_are_scheduled(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(EVERY_SECOND.format(extra=""))
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        wait_for(lambda: len(fired(db)) >= 2)
        proc.send_signal(signal.SIGSTOP)  # while it sleeps, `flowlord refresh` does the work
        try:
            (wf / "a.toml").unlink()
            (wf / "b.toml").write_text(EVERY_SECOND.format(extra="").replace("tick", "tock"))
            done = run_cli("refresh", "-w", str(wf), "--db", str(db))
            assert done.stdout.split() == ["+b.toml", "-a.toml"]
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(fired(db, "tock")) >= 2)
        ticks = len(fired(db))
        last_tock = fired(db, "tock")[-1]
        wait_for(lambda: fired(db, "tock")[-1] >= last_tock + 2)
        assert len(fired(db)) == ticks  # the removed phase stopped
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
