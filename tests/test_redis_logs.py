"""Task logs of `flowlord worker`s, streamed back over the redis bus
(flowlord/bus/logstream.py): the pieces in-process first, then a real redis-server,
real workers and a real daemon."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlord import logs
from flowlord.bus.logstream import (
    AGAIN_LINE,
    CHUNK,
    Entry,
    LogAppender,
    StreamedLog,
    Target,
    coalesce,
    lost_line,
)
from flowlord.tasklog import TaskLog, cut_line
from tests.helpers import daemon, messages_until, query, run_cli, wait_for, workers
from tests.redis_server import RedisServer

NODE = "n1"
LOG_STREAM = f"flowlord:logs:{NODE}"
RUNS = f"flowlord:log-runs:{NODE}"


# --- in-process: the cap, the offsets, the gaps ---------------------------------------


class Collecting:
    """A LogSender that keeps what it is offered (nothing dropped, nothing sent)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def offer(self, entry: Entry, wait: float = 0.0) -> None:
        self.entries.append(entry)
        for sent in entry.sent:
            sent.set()


def fields(entry: Entry) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode()
            for k, v in entry.fields().items()}


def test_a_streamed_log_is_capped_as_a_local_one_and_its_entries_rebuild_it(
        tmp_path: Path) -> None:
    chunks = [f"line {i:05d}\n".encode() * 7 for i in range(3000)]  # about 230 KB
    local = TaskLog(str(tmp_path / "local.log"), max_bytes=65536)
    sender = Collecting()
    streamed = StreamedLog(sender, Target(LOG_STREAM, 65536, 100), 7, "w:1-0")  # type: ignore[arg-type]
    for chunk in chunks:
        local.write(chunk)
        streamed.write(chunk)
    local.close()
    streamed.close()
    entries = coalesce(sender.entries)
    assert all(len(e.data) <= CHUNK for e in entries) and entries[-1].end
    assert [e.at for e in entries] == [sum(len(e.data) for e in entries[:i])
                                       for i in range(len(entries))]  # no gap
    appender = LogAppender(str(tmp_path), 65536, logs.get("test"))
    changed, gone = appender.take((str(i), fields(e)) for i, e in enumerate(entries))
    assert (changed, gone) == ({}, [7])  # ended: nothing left to remember
    data = b"".join(chunks)
    expected = data[:32768] + cut_line(len(data) - 65536) + data[-32768:]
    assert (tmp_path / "7.log").read_bytes() == expected == (tmp_path / "local.log").read_bytes()


def test_the_appender_says_what_was_lost_skips_what_it_read_twice_and_marks_a_new_run(
        tmp_path: Path) -> None:
    def entry(at: int, data: bytes, run: str = "a", end: bool = False) -> tuple[str, dict]:
        return "id", fields(Entry(LOG_STREAM, 10, 3, run, at, data, end))

    appender = LogAppender(str(tmp_path), 4096, logs.get("test"))
    assert appender.take([entry(0, b"one\n"), entry(4, b"two\n")]) == ({3: ("a", 8)}, [])
    # read again after a restart that came before the acknowledgement: not written twice
    appender = LogAppender(str(tmp_path), 4096, logs.get("test"), {3: ("a", 8)})
    appender.take([entry(4, b"two\nthree\n"), ("gone", None), entry(100, b"far\n")])
    # the same task run by another worker; that one's first entries trimmed away
    appender.take([entry(10, b"again\n", run="b"), entry(16, b"", run="b", end=True)])
    assert (tmp_path / "3.log").read_bytes() == (
        b"one\ntwo\nthree\n" + lost_line(86) + b"far\n" + AGAIN_LINE + lost_line(10)
        + b"again\n")
    assert appender.runs == {}


def test_a_full_queue_drops_output_and_never_waits(tmp_path: Path) -> None:
    """A sender whose redis never answers: the task's writes return at once, and the
    offsets go on, so the daemon can say how much was lost."""
    from flowlord.bus.logstream import QUEUE_CHUNKS, LogSender

    class Stuck:
        def pipeline(self, transaction: bool) -> None:
            threading.Event().wait()  # a server that never answers

    sender = LogSender(Stuck(), logs.get("test"))
    streamed = StreamedLog(sender, Target(LOG_STREAM, 2**30, 10), 1, "w:1-0")
    for _ in range(QUEUE_CHUNKS * 4):
        streamed.write(b"x" * CHUNK)  # a blocking put would hang here
    assert streamed.at == QUEUE_CHUNKS * 4 * CHUNK
    assert sender.dropped >= (QUEUE_CHUNKS * 2) * CHUNK


# --- real processes -------------------------------------------------------------------


def config(tmp_path: Path, url: str, extra: str = "") -> list[str]:
    path = tmp_path / "flowlord.toml"
    path.write_text(f'timezone = "UTC"\nshutdown_grace = "5s"\n[bus]\nurl = "{url}"\n'
                    f'node = "{NODE}"\n{extra}')
    return ["-c", str(path)]


def trigger(args: list[str], wf: Path, db: Path, task: str) -> None:
    done = run_cli(*args, "-w", str(wf), "--db", str(db), "trigger", task)
    assert done.returncode == 0, done.stderr


def result(db: Path, task_no: int) -> str | None:
    rows = query(db, "SELECT result FROM tasks WHERE task_no = ?", (task_no,))
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


@contextlib.contextmanager
def one_task(tmp_path: Path, wf: Path, server: RedisServer, notify_socket: object,
             topic: str, script: str, extra: str = "", *argv: str
             ) -> Iterator[tuple[Path, list[str]]]:
    """A daemon and a `flowlord worker` running `script` for `topic`, its one task
    triggered: (the database, the config's arguments)."""
    (wf / "a.toml").write_text(f'[[phase]]\ntask = "{topic}"\n')
    db = tmp_path / "f.db"
    args = config(tmp_path, server.url, extra)
    with workers(server.url, topic, sys.executable, "-c", script, *argv), \
            daemon(tmp_path, wf, db, args=args):
        messages_until(notify_socket, "READY=1")  # type: ignore[arg-type]
        trigger(args, wf, db, topic)
        yield db, args


def log_of(db: Path, task_no: int) -> bytes:
    path = db.parent / "logs" / f"{task_no}.log"
    return path.read_bytes() if path.exists() else b""


# each line waits until it is in the daemon's log: two pipes hold no order between them,
# so the next line goes only once the last one has arrived
TALKER = """import os, sys, time
def say(stream, line):
    stream.write(line)
    stream.flush()
    while not (os.path.exists(sys.argv[1]) and
               open(sys.argv[1], 'rb').read().endswith(line.encode())):
        time.sleep(0.01)
for i in range(3):
    say(sys.stdout, f'out {i}\\n')
    say(sys.stderr, f'err {i}\\n')
sys.stdout.buffer.write(b'bytes \\xff\\xfe\\x00 not utf-8\\n')
"""


@pytest.mark.slow
def test_a_remote_tasks_output_comes_to_the_daemons_logs_interleaved_and_binary(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        notify_socket: object) -> None:
    expected = (b"out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n"
                b"bytes \xff\xfe\x00 not utf-8\n")
    with one_task(tmp_path, wf, redis_server, notify_socket, "talk", TALKER, "",
                  str(tmp_path / "logs" / "1.log")) as (db, args):
        wait_for(lambda: result(db, 1) == "complete" and log_of(db, 1) == expected, 30)
        shown = subprocess.run([sys.executable, "-m", "flowlord", *args, "--db", str(db),
                                "logs", "1"], capture_output=True, timeout=60)
        assert (shown.returncode, shown.stdout) == (0, expected)
        client = redis_server.client()
        wait_for(lambda: client.xlen(LOG_STREAM) == 0, 10)  # read, acknowledged, deleted
        assert client.hlen(RUNS) == 0  # the log ended: nothing kept about it


@pytest.mark.slow
def test_a_flood_of_remote_output_gives_a_capped_log_with_head_and_tail(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        notify_socket: object) -> None:
    script = ("import sys\nfor i in range(400000):\n"
              "    sys.stdout.write(f'line {i:07d}\\n')\n")  # 5.2 MB
    data = b"".join(f"line {i:07d}\n".encode() for i in range(400000))
    expected = data[:32768] + cut_line(len(data) - 65536) + data[-32768:]
    with one_task(tmp_path, wf, redis_server, notify_socket, "flood", script,
                  "[logs]\nmax_bytes = 65536\n") as (db, _):
        wait_for(lambda: result(db, 1) == "complete" and log_of(db, 1) == expected, 60)


KILLED = """import os, sys, time
runs = sys.argv[1]
n = len(os.listdir(runs))
open(os.path.join(runs, str(n)), 'w').write(str(os.getppid()))
if n == 0:  # the first run: talks until its worker is killed (then SIGPIPE ends it)
    for i in range(100000):
        print(f'first {i}', flush=True)
        time.sleep(0.02)
elif n == 1:  # taken over by the other worker: fails, so a retry comes
    print('second')
    sys.exit(1)
else:
    print('third')
"""


@pytest.mark.slow
def test_a_worker_killed_mid_task_keeps_what_reached_the_daemon_and_the_retry_logs_apart(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        notify_socket: object) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\nrule = "retry_delay=10ms"\n'
                               'retry = 1\n')
    db, runs = tmp_path / "f.db", tmp_path / "runs"
    runs.mkdir()
    args = config(tmp_path, redis_server.url)
    with workers(redis_server.url, "work", sys.executable, "-c", KILLED, str(runs), count=2,
                 claim_idle="1s") as procs, daemon(tmp_path, wf, db, args=args):
        messages_until(notify_socket, "READY=1")  # type: ignore[arg-type]
        trigger(args, wf, db, "work")
        wait_for(lambda: log_of(db, 1).count(b"\n") >= 5, 30)
        [running] = [p for p in procs if str(p.pid) == (runs / "0").read_text()]
        running.kill()
        running.wait(10)
        kept = log_of(db, 1)
        wait_for(lambda: result(db, 2) == "complete" and log_of(db, 2) == b"third\n", 60)
        wait_for(lambda: log_of(db, 1).endswith(b"second\n"), 10)
    assert query(db, "SELECT task_no, attempt, result FROM tasks ORDER BY task_no") == [
        (1, 0, "error"), (2, 1, "complete")]
    first = log_of(db, 1)
    assert first.startswith(kept)  # what reached the daemon before the kill stays
    before, sep, after = first.partition(AGAIN_LINE)
    assert sep and after == b"second\n"
    lines = before.splitlines()
    assert lines == [f"first {i}".encode() for i in range(len(lines))]


@pytest.mark.slow
def test_with_a_small_stream_cap_redis_holds_little_while_the_daemon_is_down(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        notify_socket: object) -> None:
    """The daemon stops while a task prints 6 MB: the stream keeps at most about
    `log_stream_max` entries; the daemon started again reads what is left, says how
    much was lost, and finishes the log (the task has ended meanwhile)."""
    (wf / "a.toml").write_text('[[phase]]\ntask = "chat"\n')
    db, go = tmp_path / "f.db", tmp_path / "go"
    keep = 8
    args = config(tmp_path, redis_server.url, f"log_stream_max = {keep}\n"
                  "[logs]\nmax_bytes = 16777216\n")
    script = (f"import os, sys, time\nprint('started', flush=True)\n"
              f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
              "for i in range(500000):\n    sys.stdout.write(f'chat {i:07d}\\n')\n")
    data = b"started\n" + b"".join(f"chat {i:07d}\n".encode() for i in range(500000))
    client = redis_server.client()
    sizes: list[tuple[int, int]] = []

    def finished() -> bool:  # the worker posted the result: all output was sent
        sizes.append((client.xlen(LOG_STREAM),
                      int(client.memory_usage(LOG_STREAM, samples=0) or 0)))
        return client.xlen(f"flowlord:done:{NODE}") > 0

    with workers(redis_server.url, "chat", sys.executable, "-c", script):
        with daemon(tmp_path, wf, db, args=args) as first:
            messages_until(notify_socket, "READY=1")  # type: ignore[arg-type]
            trigger(args, wf, db, "chat")
            wait_for(lambda: log_of(db, 1) == b"started\n", 30)
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0
        go.touch()
        wait_for(finished, 60)
        assert len(data) > 6_000_000 and sizes
        assert max(n for n, _ in sizes) <= keep + 100  # approximate: whole nodes go
        assert max(m for _, m in sizes) < (keep + 4) * (CHUNK + 1024)  # not 6 MB
        with daemon(tmp_path, wf, db, args=args):
            messages_until(notify_socket, "READY=1")  # type: ignore[arg-type]
            wait_for(lambda: result(db, 1) == "complete" and client.hlen(RUNS) == 0, 60)
    # pieces of the output, and between them lines counting the bytes lost: every byte
    # of the output is in its place, or counted
    parts = re.split(rb"\n\[flowlord: ([0-9]+) bytes of output lost on the way[^\n]*\]\n",
                     log_of(db, 1))
    assert len(parts) >= 3 and parts[0] == b"started\n"  # what came before the stop
    at = 0
    for piece, lost in zip(parts[::2], [*parts[1::2], b"0"], strict=True):
        assert data[at:at + len(piece)] == piece
        at += len(piece) + int(lost)
    assert at == len(data) and 0 < len(parts[-1]) <= (keep + 1) * CHUNK


@pytest.mark.slow
def test_a_cancelled_remote_tasks_log_still_ends(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        notify_socket: object) -> None:
    script = "import time\nprint('waiting', flush=True)\ntime.sleep(600)"
    client = redis_server.client()
    with one_task(tmp_path, wf, redis_server, notify_socket, "wait", script) as (db, args):
        wait_for(lambda: log_of(db, 1) == b"waiting\n" and client.hlen(RUNS) == 1, 30)
        done = run_cli(*args, "--db", str(db), "cancel", "1")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: client.hlen(RUNS) == 0, 30)  # its end came: the log is finished
    assert log_of(db, 1) == b"waiting\n"
    assert result(db, 1) == "error"
    assert not os.path.exists(db.parent / "logs" / "2.log")
