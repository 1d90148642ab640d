"""Task logs (flowlord/tasklog.py): each attempt's stdout and stderr in the order they
came, capped with the head and the tail kept and a line saying how much was cut;
`flowlord logs`, and `doctor` on logs without a task."""

from __future__ import annotations

import re
import socket
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from flowlord.cli import main
from flowlord.clock import utc_now
from flowlord.config import Config
from flowlord.errors import BadRequest
from flowlord.model import Done, StoredTask, Task
from flowlord.store import Store, write_txn
from flowlord.tasklog import TaskLog, log_path, read_log
from flowlord.web.answers import PlainText, response
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard
from flowlord.workers import Run
from tests.helpers import daemon, messages_until, query, run_cli, wait_for, worker_table


def test_a_log_over_its_cap_keeps_the_head_and_the_tail_and_says_what_was_cut(
        tmp_path: Path) -> None:
    path = str(tmp_path / "logs" / "7.log")
    log = TaskLog(path, max_bytes=100)
    lines = [f"line {i:03d}\n".encode() for i in range(100)]  # 900 bytes, 9 a chunk
    for line in lines:
        log.write(line)
    log.close()
    data = b"".join(lines)
    assert Path(path).read_bytes() == (
        data[:50] + b"\n[flowlord: 800 bytes of output cut here, to keep the log under its "
        b"cap]\n" + data[-50:])
    small = TaskLog(str(tmp_path / "logs" / "8.log"), max_bytes=100)
    small.write(b"short\n")
    small.close()
    assert read_log(str(tmp_path / "logs"), 8) == b"short\n"  # under the cap: as it came
    assert read_log(str(tmp_path / "logs"), 9) is None


def run(tmp_path: Path, script: str, max_bytes: int = 10 * 1024 * 1024) -> Done:
    results: list[Done] = []
    Run(StoredTask(1, Task(type="t", id="x")), [sys.executable, "-c", script],
        timedelta(seconds=60), results.append, log_dir=str(tmp_path / "logs"),
        log_max_bytes=max_bytes).run()
    return results[0]


def test_stdout_and_stderr_go_to_the_log_in_the_order_written_and_msg_keeps_stderr(
        tmp_path: Path) -> None:
    # a moment between writes: both pipes are read as output comes, and what two pipes
    # hold at the same instant has no order to keep
    done = run(tmp_path, "import sys, time\nfor i in range(3):\n"
                         "    print(f'out {i}', flush=True)\n    time.sleep(0.1)\n"
                         "    print(f'err {i}', file=sys.stderr, flush=True)\n"
                         "    time.sleep(0.1)\nsys.exit(3)")
    assert read_log(str(tmp_path / "logs"), 1) == (
        b"out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n")
    assert (done.result, done.msg) == ("error", "exit status 3: err 0\nerr 1\nerr 2")


def test_a_flood_of_output_is_capped_and_the_task_still_ends(tmp_path: Path) -> None:
    # 50 MB as fast as the process can write it
    done = run(tmp_path, "import sys\nblock = b'x' * 1048575 + b'\\n'\n"
                         "for _ in range(50):\n    sys.stdout.buffer.write(block)\n",
               max_bytes=1024 * 1024)
    size = Path(log_path(str(tmp_path / "logs"), 1)).stat().st_size
    assert done.result == "complete" and 1024 * 1024 <= size < 1024 * 1024 + 200
    assert b"bytes of output cut here" in (read_log(str(tmp_path / "logs"), 1) or b"")


def test_logs_command_and_doctor_on_logs_without_a_task(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "f.db"
    store = Store(str(db))
    with write_txn(store.conn):
        store.conn.execute("INSERT INTO tasks (id, type, created, started, ended, result) "
                           "VALUES ('x', 't', '', '', '', 'complete')")
    store.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "1.log").write_bytes(b"one\ntwo\nthree\n")
    (logs / "5.log").write_bytes(b"nobody's\n")  # task 5 does not exist
    capsys.readouterr()
    assert main(["logs", "1", "--db", str(db)]) == 0
    assert main(["logs", "1", "--tail", "2", "--db", str(db)]) == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\ntwo\nthree\n"
    assert main(["logs", "9", "--db", str(db)]) == 2  # no such task
    assert main(["doctor", "--db", str(db)]) == 1
    assert f"log without a task: {logs / '5.log'}" in capsys.readouterr().out
    assert main(["doctor", "--fix", "--db", str(db)]) == 0
    assert sorted(p.name for p in logs.iterdir()) == ["1.log"]
    api = Api(Config(db=str(db)), lambda: True, lambda: "leader")
    status, text = api.answer("/api/tasks/1/log", {"tail": ["2"]})
    assert (status, text) == (200, b"two\nthree\n") and isinstance(text, PlainText)
    sent = response(status, text)
    assert sent.content_type == "text/plain; charset=utf-8" and sent.data == b"two\nthree\n"
    for path in ("/api/tasks/9/log", "/api/tasks/x/log"):
        with pytest.raises(BadRequest) as missing:
            api.answer(path, {})
        assert missing.value.status == 404


@pytest.mark.slow
def test_logs_follow_a_running_task_to_its_end(tmp_path: Path, wf: Path,
                                               notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "talk"\n')
    db = tmp_path / "f.db"
    script = "import time\nfor i in range(5):\n    print(f'said {i}', flush=True)\n" \
             "    time.sleep(0.3)"
    config = tmp_path / "flowlord.toml"
    config.write_text('timezone = "UTC"\n' + worker_table("talk", sys.executable, "-c", script))
    common = ["-c", str(config), "-w", str(wf), "--db", str(db)]
    with daemon(tmp_path, wf, db, args=["-c", str(config)]):
        messages_until(notify_socket, "READY=1")
        assert run_cli(*common, "trigger", "talk").returncode == 0
        followed = run_cli(*common, "logs", "1", "--follow")
    assert followed.returncode == 0, followed.stderr  # it completed
    assert followed.stdout == "".join(f"said {i}\n" for i in range(5))
    assert (tmp_path / "logs" / "1.log").exists()  # beside the database by default


def test_a_log_that_cannot_be_written_is_given_up_not_the_task(tmp_path: Path) -> None:
    (tmp_path / "logs" / "1.log").mkdir(parents=True)  # where the file would go
    done = run(tmp_path, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n"
                         "sys.exit(4)")
    assert (done.result, done.msg) == ("error", "exit status 4: err")


def test_a_log_whose_directory_is_gone_makes_it_again(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "nested"  # neither exists: made at the first output
    log = TaskLog(log_path(str(logs), 7))
    log.write(b"first\n")
    log.close()
    assert read_log(str(logs), 7) == b"first\n"


def test_binary_and_invalid_utf8_output_and_very_long_lines_are_kept_byte_for_byte(
        tmp_path: Path) -> None:
    script = ("import sys\nout = sys.stdout.buffer\nout.write(bytes(range(256)))\n"
              "out.write(b'\\xff\\xfe broken \\xc3\\x28 utf-8\\n')\n"
              "out.write(b'y' * 5_000_000)\nout.flush()\n"
              "sys.stderr.buffer.write(b'bad \\xff tail')\n")
    done = run(tmp_path, script)
    data = read_log(str(tmp_path / "logs"), 1) or b""
    broken = b"\xff\xfe broken \xc3\x28 utf-8\n"
    assert data[:256] == bytes(range(256))
    assert data[256:256 + len(broken)] == broken
    start = 256 + len(broken)
    assert data[start:start + 5_000_000] == b"y" * 5_000_000  # one line of 5 MB, not cut
    assert data.endswith(b"bad \xff tail")
    assert done.result == "complete" and done.msg == ""  # msg is for failures only
    failed = run(tmp_path / "again", "import sys\nsys.stderr.buffer.write(b'\\xff no')\n"
                                     "sys.exit(1)")
    assert failed.msg == "exit status 1: \ufffd no"  # text, with a stand-in for the bad byte


def run_in_thread(tmp_path: Path, argv: list[str]) -> tuple[list[Done], threading.Thread]:
    results: list[Done] = []
    task = Run(StoredTask(1, Task(type="t", id="x")), argv, timedelta(seconds=60),
               results.append, log_dir=str(tmp_path / "logs"))
    thread = threading.Thread(target=task.run, daemon=True)
    thread.start()
    return results, thread


def test_a_task_that_closes_its_output_early_ends_when_its_process_exits(
        tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    results, thread = run_in_thread(tmp_path, ["sh", "-c", (
        f"echo before; echo err-before >&2; exec >&- 2>&-; touch {marker}; sleep 1; "
        "exit 5")])
    wait_for(marker.exists, 20)
    assert not results  # its pipes are closed, its process still runs: not ended
    thread.join(30)
    assert [(d.result, d.msg) for d in results] == [("error", "exit status 5: err-before")]
    assert read_log(str(tmp_path / "logs"), 1) == b"before\nerr-before\n"


def test_a_grandchild_holding_the_pipes_open_does_not_hold_the_task(tmp_path: Path) -> None:
    # one grandchild in the task's group, one escaped from it with setsid: both keep
    # the pipes open after the task's own process exited
    results, thread = run_in_thread(tmp_path, ["sh", "-c", (
        "(sleep 120; echo never) & setsid sh -c 'sleep 120; echo never' & echo done-here")])
    thread.join(60)
    assert not thread.is_alive()
    assert [d.result for d in results] == ["complete"]
    assert read_log(str(tmp_path / "logs"), 1) == b"done-here\n"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _lateness(db: Path, after: str, before: str) -> list[float]:
    """Seconds from each `tick` slot in (after, before] to the commit of its fire."""
    return [float(str(late)) for late, in query(
        db, "SELECT (julianday(fired_at) - julianday(scheduled_for)) * 86400 FROM fires "
            "WHERE phase = 'tick' AND scheduled_for > ? AND scheduled_for <= ?",
        (after, before))]


@pytest.mark.slow
def test_four_tasks_printing_50_mb_each_as_fast_as_they_can_change_nothing_else(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    """Their logs are capped with head and tail, the daemon's memory stays bounded, and
    a phase firing every second fires as punctually as it did before they ran."""
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\nrule = "cron=* * * * * *"\n\n'
                               '[[phase]]\ntask = "noisy"\n')
    db, cap = tmp_path / "f.db", 1024 * 1024
    flood = "head -c 50000000 /dev/zero | tr '\\\\0' x; echo; echo last-line"
    config = tmp_path / "flowlord.toml"
    config.write_text(f'timezone = "UTC"\n[logs]\nmax_bytes = {cap}\n\n'
                      + worker_table("tick", "true")
                      + worker_table("noisy", "sh", "-c", flood, concurrency=4))
    common = ["-c", str(config), "-w", str(wf), "--db", str(db)]
    with daemon(tmp_path, wf, db, args=["-c", str(config)]) as proc:
        messages_until(notify_socket, "READY=1")
        quiet_from = utc_now()
        wait_for(lambda: len(_lateness(db, quiet_from, "9999")) >= 8, 60)
        quiet_to, quiet_rss = utc_now(), _peak_rss_kib(proc.pid)
        for hour in range(4):
            assert run_cli(*common, "trigger", "noisy", "--time",
                           f"2026-12-01T{hour:02d}:00:00Z").returncode == 0
        wait_for(lambda: query(db, "SELECT count(*) FROM tasks WHERE type = 'noisy' AND "
                                   "result = 'complete'") == [(4,)], 120)
        noisy_to = utc_now()
        wait_for(lambda: len(_lateness(db, noisy_to, "9999")) >= 2, 60)  # fires go on
        noisy_rss = _peak_rss_kib(proc.pid)
    # the fires from the flood's start until two after its end: a flood over within a
    # second may have had no scheduled second of its own
    quiet, noisy = _lateness(db, quiet_from, quiet_to), _lateness(db, quiet_to, "9999")
    assert quiet and noisy
    assert max(noisy) < max(quiet) + 1.0, (quiet, noisy)  # within its usual range
    assert noisy_rss - quiet_rss < 64 * 1024, (quiet_rss, noisy_rss)  # 200 MB went by
    numbers = [n for n, in query(db, "SELECT task_no FROM tasks WHERE type = 'noisy'")]
    for n in numbers:
        log = read_log(str(tmp_path / "logs"), int(str(n))) or b""
        assert cap <= len(log) < cap + 200
        assert log.startswith(b"x" * (cap // 2))
        assert log.endswith(b"x\nlast-line\n")
        said = re.search(rb"\n\[flowlord: ([0-9]+) bytes of output cut here[^\n]*\n", log)
        assert said is not None  # the cut, and the head and tail around it, add up
        assert int(said[1]) + len(log) - len(said[0]) == 50_000_000 + len("\nlast-line\n")


def test_a_tasks_page_shows_the_end_of_its_log_as_text(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    store = Store(str(db))
    with write_txn(store.conn):
        for result in ("error", None):  # an ended task and a running one
            store.conn.execute(
                "INSERT INTO tasks (id, type, created, started, ended, result, msg) VALUES "
                "('x/1', 't', '2026-12-01T00:00:00.000Z', '2026-12-01T00:00:01.500Z', ?, ?, "
                "?)", (result and "2026-12-01T00:00:04.000Z", result, "boom" if result else ""))
    store.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    hostile = b"<script>alert(1)</script>\n\x1b[31mred\x1b[0m \xff\n"
    (logs / "1.log").write_bytes(b"old line\n" * 20_000 + hostile)  # past what a page shows
    pages = Dashboard(Api(Config(db=str(db)), lambda: True, lambda: "leader"))
    status, page = pages.answer("/tasks/x%2F1/1", {})
    html = str(page)
    assert status == 200 and "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\n\u241b[31mred\u241b[0m \ufffd\n</pre>" in html
    assert html.count("old line") < 20_000 and "the whole text" in html  # the end, linked
    assert 'href="/api/tasks/1/log"' in html and "1.5 s" in html and "2.5 s" in html
    assert 'http-equiv="refresh"' not in html  # it ended: nothing to follow
    status, running = pages.answer("/tasks/x%2F1/2", {})
    assert status == 200 and 'http-equiv="refresh" content="5"' in str(running)
    assert "nothing printed yet" in str(running)
    for wrong in ("/tasks/x%2F1/3", "/tasks/other/1"):
        with pytest.raises(BadRequest) as missing:
            pages.answer(wrong, {})
        assert missing.value.status == 404
