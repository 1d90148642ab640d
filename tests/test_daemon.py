"""`flowlord run` as a real process: systemd notifications, file events, signals, logs."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
import structlog

import flowlord
from flowlord import logs
from flowlord.sdnotify import notify, watchdog_interval
from tests.helpers import ROOT, daemon, messages_until, wait_for


def keys(db: Path) -> set[str]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {r[0] for r in conn.execute("SELECT file_path FROM workflow_files")}
    finally:
        conn.close()


@pytest.mark.slow
def test_daemon_follows_the_directory_and_stops_on_sigterm(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db, stderr=subprocess.PIPE) as proc:
        ready = messages_until(notify_socket, "READY=1")
        assert "STATUS=1 valid phases, 0 invalid" in ready
        (wf / "b.toml").write_text('[[phase]]\ntask = "b"\nrule = "cron=bad"\n')
        wait_for(lambda: keys(db) == {"a.toml", "b.toml"})
        assert "STATUS=1 valid phases, 1 invalid" in messages_until(
            notify_socket, "STATUS=1 valid phases, 1 invalid")
        (wf / "a.toml").unlink()
        wait_for(lambda: keys(db) == {"b.toml"})
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in messages_until(notify_socket, "STOPPING=1")
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read() if proc.stderr else ""
    # stderr is a pipe here, not the journal: the time first, no level word for info
    lines = [line.split(" ", 1)[1] for line in err.splitlines()]
    assert "workflows changed changes=+a.toml" in lines
    assert "workflows changed changes=+b.toml" in lines
    assert lines[-1] == "stopped"


@pytest.mark.slow
def test_after_an_upgrade_the_daemon_validates_every_file_again_at_start(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    """Statuses an older release wrote (its validator recorded on the file's row) are
    written again by this one before READY, though no byte of the file changed."""
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    db = tmp_path / "f.db"
    refreshed = subprocess.run([sys.executable, "-m", "flowlord", "refresh", "-w", str(wf),
                                "--db", str(db)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refreshed.returncode == 0, refreshed.stderr
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE workflow_files SET validator = '0.0.9'")  # as an old release left it
    conn.execute("UPDATE workflow_phases SET status = 'warning: what 0.0.9 said', "
                 "severity = 'warning'")
    conn.close()
    with daemon(tmp_path, wf, db):
        messages_until(notify_socket, "READY=1")
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        rows = list(conn.execute("SELECT p.status, p.severity, f.validator <> '0.0.9' "
                                 "FROM workflow_phases AS p JOIN workflow_files AS f "
                                 "USING (file_path)"))
        conn.close()
    assert rows == [("", "ok", 1)]


@pytest.mark.slow
def test_daemon_refuses_a_missing_directory_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flowlord", "run", "-w", str(tmp_path / "no"),
                           "--db", str(tmp_path / "f.db")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "workflow path not found" in done.stderr


def test_notify_reaches_a_path_and_an_abstract_socket(
        tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    assert notify("READY=1", "STATUS=x")
    assert notify_socket.recv(100) == b"READY=1\nSTATUS=x"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"flowlord-test-{os.getpid()}"
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1")
        assert abstract.recv(100) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def test_watchdog_interval_is_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None


def test_log_lines_have_a_time_and_stay_on_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Not the journal (tests/test_logging.py has its format): a time, the level when
    it is not info."""
    logs.configure()
    try:
        log = logs.get("t")
        log.warning("dir gone", path="/x y")
        try:
            raise ValueError("a\nb")
        except ValueError:
            log.error("failed", exc_info=True)
        lines = capsys.readouterr().err.splitlines()
    finally:
        structlog.reset_defaults()
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING dir gone '
                        r'path="/x y"', lines[0])
    assert lines[1].split(" ", 1)[1].startswith("ERROR failed exception=")
    assert "ValueError" in lines[1]
    assert len(lines) == 2


@pytest.mark.slow
def test_sighup_rescans_what_no_event_reports(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    # inotify does not follow a symlinked directory, the rescan's walk does
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "linked").symlink_to(elsewhere)
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        (elsewhere / "x.toml").write_text('[[phase]]\ntask = "x"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: keys(db) == {"linked/x.toml"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


@pytest.mark.slow
def test_a_symlink_swap_of_the_directory_is_followed(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    old, new = tmp_path / "release1", tmp_path / "release2"
    old.mkdir()
    new.mkdir()
    (old / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    (new / "b.toml").write_text('[[phase]]\ntask = "b"\n')
    wf = tmp_path / "current"
    wf.symlink_to(old)
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        assert keys(db) == {"a.toml"}
        (tmp_path / "next").symlink_to(new)
        os.replace(tmp_path / "next", wf)  # the atomic swap a deployment does
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: keys(db) == {"b.toml"})
        (new / "c.toml").write_text('[[phase]]\ntask = "c"\n')  # an event, no SIGHUP
        wait_for(lambda: keys(db) == {"b.toml", "c.toml"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "full.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "full.sock"))
    try:
        sent = [notify(f"STATUS={'x' * 1000} {i}") for i in range(5000)]  # fills the queue
    finally:
        s.close()
    assert sent[0] is True and sent[-1] is False


@pytest.mark.slow
def test_a_second_daemon_on_the_same_database_is_refused(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as first:
        messages_until(notify_socket, "READY=1")
        second = subprocess.run([sys.executable, "-m", "flowlord", "run", "-w", str(wf),
                                 "--db", str(db)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert second.returncode == 2
        assert second.stderr == f"flowlord: another flowlord run is using {db}\n"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0


@pytest.mark.slow
def test_each_run_is_a_row_and_each_fire_names_the_bytes_that_built_it(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    """Was it even running, and with which version of the file? A run killed without a
    word is closed by the next one as `vanished` at its last sign of life."""
    wf = tmp_path / "wf"
    wf.mkdir()
    first = b'[[phase]]\ntask = "beat"\nrule = "cron=* * * * * *"\n'
    (wf / "a.toml").write_bytes(first)
    db = tmp_path / "f.db"

    def fired_with(digest: str) -> bool:
        return bool(read(db, "SELECT count(*) FROM fires WHERE file_hash = ?", digest)[0][0])

    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: fired_with(hashlib.md5(first).hexdigest()))
        proc.kill()  # SIGKILL: no word of its end
        proc.wait()
    second = first + b'template = "v2"\n'
    (wf / "a.toml").write_bytes(second)
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: fired_with(hashlib.md5(second).hexdigest()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    runs = read(db, "SELECT pid, version, started <= last_seen, stopped = last_seen, ended "
                    "FROM daemon_runs ORDER BY run_no")
    assert [r[2:] for r in runs] == [(1, 1, "vanished"), (1, 1, "stopped")]
    assert runs[0][1] == flowlord.__version__ and runs[0][0] != runs[1][0]
    # every fire names the bytes its phase came from: the first file, then the second
    hashes = [h for h, in read(db, "SELECT DISTINCT file_hash FROM fires "
                                   "ORDER BY scheduled_for")]
    assert hashes == [hashlib.md5(first).hexdigest(), hashlib.md5(second).hexdigest()]


def read(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()
