"""Signals: handlers only set flags and the loop is woken through a pipe, so no signal
can hang a wait; a second SIGTERM stops the daemon at once, its running tasks ended
and recorded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from flowlord.wakeup import Wakeup
from tests.helpers import daemon, messages_until, query, wait_for, worker_table


def test_a_flood_of_signals_during_waits_never_hangs_the_waiter() -> None:
    """The main thread waits again and again while another thread sends it thousands of
    signals; each wait ends (woken or timed out), and every signal's flag is seen."""
    wakeup = Wakeup()
    received: list[int] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        received.append(signum)  # a flag: no lock, no Event

    old = signal.signal(signal.SIGUSR1, on_signal)
    wakeup.on_signals()
    sent = 0

    def flood() -> None:
        nonlocal sent
        for _ in range(3000):
            os.kill(os.getpid(), signal.SIGUSR1)
            sent += 1

    sender = threading.Thread(target=flood)
    try:
        sender.start()
        deadline = time.monotonic() + 60
        while sender.is_alive() or not received:
            assert time.monotonic() < deadline, "the waits did not keep ending"
            wakeup.wait(0.05)
        sender.join()
    finally:
        wakeup.close()
        signal.signal(signal.SIGUSR1, old)
    assert sent == 3000 and received  # signals coalesce; none hung the waiter


def test_a_woken_wait_returns_before_its_timeout() -> None:
    wakeup = Wakeup()
    try:
        threading.Timer(0.05, wakeup.wake).start()
        started = time.monotonic()
        wakeup.wait(60)
        assert time.monotonic() - started < 30  # woken, not timed out
        for _ in range(100_000):  # a full pipe is already a wake-up: never blocks
            wakeup.wake()
        wakeup.wait(60)
    finally:
        wakeup.close()


@pytest.mark.slow
def test_the_daemon_answers_sigterm_after_a_flood_of_sighups(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\nrule = "cron=* * * * * *"\n')
    db = tmp_path / "f.db"
    with daemon(tmp_path, wf, db) as proc:
        messages_until(notify_socket, "READY=1")
        for _ in range(2000):  # rescans asked for faster than they can run
            proc.send_signal(signal.SIGHUP)
        fired = len(query(db, "SELECT 1 FROM fires"))
        wait_for(lambda: len(query(db, "SELECT 1 FROM fires")) >= fired + 2, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once_ending_and_recording_running_tasks(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "long"\n')
    db = tmp_path / "f.db"
    started = tmp_path / "started"
    script = f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(600)"
    config = tmp_path / "flowlord.toml"
    config.write_text('timezone = "UTC"\nshutdown_grace = "10m"\n' +
                      worker_table("long", sys.executable, "-c", script))
    with daemon(tmp_path, wf, db, args=["-c", str(config)]) as proc:
        messages_until(notify_socket, "READY=1")
        subprocess.run([sys.executable, "-m", "flowlord", "-c", str(config), "-w", str(wf),
                        "--db", str(db), "trigger", "long"], check=True,
                       capture_output=True)
        wait_for(started.exists, 30)
        proc.send_signal(signal.SIGTERM)  # the task may take its 10 minutes of grace…
        messages_until(notify_socket, "STOPPING=1")
        proc.send_signal(signal.SIGTERM)  # …until a second SIGTERM says: now
        assert proc.wait(timeout=60) == 0  # well before the grace
    assert query(db, "SELECT result, msg FROM tasks") == [
        ("error", "stopped: the daemon shut down while the task ran")]
