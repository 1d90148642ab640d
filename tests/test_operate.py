"""Acting on tasks that exist: rerun (a new attempt, its downstream after it), cancel
and drop (ended now, never retried, no alert), mark (a result by hand; `complete`
starts the children). From the CLI and over HTTP, each a row of the audit trail; a
running task ended this way has its process group ended by the daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from flowlord.bus.inprocess import InProcessBus
from flowlord.cli import main
from flowlord.clock import FakeClock
from flowlord.daemon import Daemon
from flowlord.errors import BadRequest
from flowlord.model import StoredTask
from flowlord.operations import unix_actor
from flowlord.web.api import Api
from tests.helpers import (
    daemon,
    messages_until,
    query,
    redis_config,
    run_cli,
    stepped,
    turn,
    utc,
    wait_for,
    worker_table,
    workers,
)

CHAIN = ('[[phase]]\ntask = "extract"\ntemplate = "?h={hh}"\n\n'
         '[[phase]]\ntask = "load"\ndependsOn = "extract"\ntemplate = "?h={hh}"\n')


class Outcomes:
    """An in-process worker whose results the test decides: `extract` fails until told."""

    def __init__(self) -> None:
        self.extract = "error"

    def __call__(self, stored: StoredTask) -> tuple[str, str]:
        if stored.task.type == "extract":
            return self.extract, "source down" if self.extract == "error" else ""
        return "complete", ""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def settle(d: Daemon, clock: FakeClock) -> None:
    for _ in range(4):  # results come back and children are created, turn by turn
        turn(d, clock)


def tasks(db: Path) -> list[tuple[object, ...]]:
    return query(db, "SELECT task_no, type, attempt, result, parent_no FROM tasks "
                     "ORDER BY task_no")


def test_rerun_failed_runs_the_chain_again_and_its_children_once(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db, clock, outcomes = tmp_path / "f.db", FakeClock(utc(2026, 12, 1, 12)), Outcomes()
    common = ("-w", str(wf), "--db", str(db))
    with stepped(tmp_path, wf, clock, bus=InProcessBus(outcomes)) as d:
        assert cli(capsys, "trigger", "extract", "--time", "2026-12-01T05:00:00Z",
                   *common)[0] == 0
        settle(d, clock)
        assert tasks(db) == [(1, "extract", 0, "error", None)]
        code, out, _ = cli(capsys, "rerun", "--failed", "--dry-run", *common)
        assert code == 0 and out == "1\textract\t?h=05\tattempt 1\n"
        assert len(tasks(db)) == 1  # a dry run creates nothing
        outcomes.extract = "complete"
        assert cli(capsys, "rerun", "--failed", *common)[0] == 0
        settle(d, clock)
        assert tasks(db) == [(1, "extract", 0, "error", None),
                             (2, "extract", 1, "complete", 1),
                             (3, "load", 0, "complete", 2)]
        # nothing failed is left to rerun; a rerun of the loaded one runs only it
        assert cli(capsys, "rerun", "--failed", *common)[1] == ""
        assert cli(capsys, "rerun", "2", "--only", *common)[0] == 0
        settle(d, clock)
    assert tasks(db)[3:] == [(4, "extract", 2, "complete", 2)]  # no second `load`
    assert query(db, "SELECT kind, actor, outcome, message FROM actions "
                     "WHERE kind = 'rerun'") == [
        ("rerun", unix_actor(), "done", "1 task to run again"),
        ("rerun", unix_actor(), "done", "0 tasks to run again"),
        ("rerun", unix_actor(), "done", "1 task to run again, without children")]


def test_a_task_not_ended_cannot_be_rerun_and_unknown_ones_are_said(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db = str(tmp_path / "f.db")
    common = ("-w", str(wf), "--db", db)
    cli(capsys, "refresh", *common)
    assert cli(capsys, "trigger", "extract", *common)[0] == 0
    code, _, err = cli(capsys, "rerun", "1", *common)
    assert code == 1 and err == ("flowlord: task 1 is still waiting: only an ended task "
                                 "can be rerun\n")
    assert cli(capsys, "rerun", "9", *common)[2] == "flowlord: no task 9\n"
    assert cli(capsys, "rerun", *common)[0] == 2  # neither tasks nor --failed
    assert query(Path(db), "SELECT outcome FROM actions WHERE kind = 'rerun'") == [
        ("failed",), ("failed",)]


def test_cancel_and_drop_end_waiting_tasks_without_retry_or_alert(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN.replace('task = "extract"',
                                             'task = "extract"\nretry = 3'))
    db = tmp_path / "f.db"
    common = ("-w", str(wf), "--db", str(db))
    cli(capsys, "refresh", *common)
    cli(capsys, "backload", "extract", "--from", "2026-12-01T00:00:00Z",
        "--to", "2026-12-01T02:00:00Z", "--by", "hour", *common)
    code, out, _ = cli(capsys, "cancel", "1", *common)
    assert (code, out) == (0, "1\tcancelled\n")
    code, _, err = cli(capsys, "cancel", "1", *common)  # again: it had ended
    assert code == 1 and "task 1 had already ended" in err
    assert cli(capsys, "drop", "--type", "extract", *common)[1] == (
        "2 waiting tasks cancelled\n")
    assert query(db, "SELECT result, msg FROM tasks ORDER BY task_no") == [
        ("error", f"cancelled by {unix_actor()}")] * 3
    assert query(db, "SELECT count(*) FROM alerts") == [(0,)]


def test_mark_complete_starts_the_children_once(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db, clock = tmp_path / "f.db", FakeClock(utc(2026, 12, 1, 12))
    common = ("-w", str(wf), "--db", str(db))
    with stepped(tmp_path, wf, clock, bus=InProcessBus(Outcomes())) as d:
        cli(capsys, "trigger", "extract", "--time", "2026-12-01T05:00:00Z", *common)
        settle(d, clock)
        code, out, _ = cli(capsys, "mark", "1", "complete", "--msg", "loaded by hand",
                           *common)
        assert (code, out) == (0, "1\tcomplete\t1 child task created\n")
        settle(d, clock)
        code, _, err = cli(capsys, "mark", "1", "complete", *common)
        assert code == 1 and err == "flowlord: task 1 is already complete\n"
    assert query(db, "SELECT type, result, msg, parent_no FROM tasks ORDER BY task_no") == [
        ("extract", "complete", "loaded by hand", None), ("load", "complete", "", 1)]


def test_http_rerun_cancel_and_mark_go_through_the_loop(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db, clock = tmp_path / "f.db", FakeClock(utc(2026, 12, 1, 12))
    with stepped(tmp_path, wf, clock, bus=InProcessBus(Outcomes())) as d:
        api = Api(d.config, lambda: True, lambda: "leader", {"ops": "o-secret"}, loop=d)

        def post(path: str, body: bytes) -> Any:
            answers: list[Any] = []

            def ask() -> None:
                try:
                    answers.append(api.post(path, "Bearer o-secret", body))
                except BadRequest as e:
                    answers.append((e.status, str(e)))

            asking = threading.Thread(target=ask)
            asking.start()
            while asking.is_alive():
                turn(d, clock)
                asking.join(0.01)
            return answers[0]

        assert post("/api/trigger", b'{"task": "extract", "time": "2026-12-01T05:00:00Z"}'
                    )[0] == 201
        settle(d, clock)
        assert post("/api/tasks/1/cancel", b"{}") == (409, "task 1 had already ended")
        status, body = post("/api/tasks/1/rerun", b'{"only": true}')
        assert status == 201 and body["tasks"][0]["attempt"] == 1
        assert post("/api/tasks/2/cancel", b"{}") == (200, {"cancelled": [2]})
        assert post("/api/tasks/2/mark", b'{"result": "complete"}') == (
            200, {"task_no": 2, "result": "complete", "children": 0})  # --only: none
        assert post("/api/tasks/9/rerun", b"{}") == (409, "no task 9")
        assert post("/api/tasks/1/mark", b'{"result": "maybe"}')[0] == 400
    assert query(db, "SELECT actor, kind, target, outcome, message FROM actions "
                     "ORDER BY action_no") == [
        ("ops", "trigger", "a.toml: extract", "done", "1 of 1 fire new, 1 task created"),
        ("ops", "cancel", "1", "done", "0 cancelled, 1 had ended"),
        ("ops", "rerun", "1", "done", "1 task to run again, without children"),
        ("ops", "cancel", "2", "done", "1 cancelled"),
        ("ops", "mark", "2", "done", "marked complete, 0 child tasks created"),
        ("ops", "rerun", "9", "failed", "Refused: no task 9")]


def running_pid(pid_file: Path) -> int:
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 30)
    return int(pid_file.read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


SLEEPER = ("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\n"
           "time.sleep(600)")


@pytest.mark.slow
def test_a_running_local_task_cancelled_from_the_cli_has_its_process_ended(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(CHAIN.replace('task = "extract"', 'task = "extract"\nretry = 2'))
    db, pid_file = tmp_path / "f.db", tmp_path / "pid"
    config = tmp_path / "flowlord.toml"
    config.write_text('timezone = "UTC"\n' +
                      worker_table("extract", sys.executable, "-c", SLEEPER, str(pid_file)))
    with daemon(tmp_path, wf, db, args=["-c", str(config)]) as proc:
        messages_until(notify_socket, "READY=1")
        assert run_cli("-c", str(config), "-w", str(wf), "--db", str(db), "trigger",
                       "extract").returncode == 0
        pid = running_pid(pid_file)
        done = run_cli("-c", str(config), "-w", str(wf), "--db", str(db), "cancel", "1")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: gone(pid), 30)  # the daemon ended its process group
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert query(db, "SELECT result, msg FROM tasks") == [
        ("error", f"cancelled by {unix_actor()}")]  # once; no retry
    assert query(db, "SELECT count(*) FROM alerts") == [(0,)]


@pytest.mark.slow
def test_a_task_cancelled_while_a_redis_worker_runs_it_is_ended_there(
        tmp_path: Path, wf: Path, redis_server: Any) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db, pid_file = tmp_path / "f.db", tmp_path / "pid"
    config = redis_config(tmp_path, redis_server.url)
    with workers(redis_server.url, "extract", sys.executable, "-c", SLEEPER, str(pid_file)), \
            daemon(tmp_path, wf, db, args=config):
        wait_for(lambda: query(db, "SELECT 1 FROM workflow_phases") != [], 30)
        assert run_cli(*config, "-w", str(wf), "--db", str(db), "trigger",
                       "extract").returncode == 0
        pid = running_pid(pid_file)
        assert run_cli(*config, "-w", str(wf), "--db", str(db), "cancel",
                       "1").returncode == 0
        wait_for(lambda: gone(pid), 30)  # the worker was told, and ended it
        assert query(db, "SELECT result, msg FROM tasks") == [
            ("error", f"cancelled by {unix_actor()}")]


def test_backload_reprocess_runs_the_steps_done_before_again(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN)
    db, clock, outcomes = tmp_path / "f.db", FakeClock(utc(2026, 12, 1, 12)), Outcomes()
    common = ("-w", str(wf), "--db", str(db))
    span = ("--from", "2026-12-01T00:00:00Z", "--to", "2026-12-01T01:00:00Z", "--by", "hour")
    with stepped(tmp_path, wf, clock, bus=InProcessBus(outcomes)) as d:
        cli(capsys, "backload", "extract", *span[:3], "2026-12-01T00:00:00Z", "--by", "hour",
            *common)
        settle(d, clock)  # the 00:00 step failed
        outcomes.extract = "complete"
        code, out, _ = cli(capsys, "backload", "extract", *span, "--reprocess", "failed",
                           *common)
        assert code == 0 and out.splitlines() == [
            "a.toml\textract\t2 steps: 1 new, 1 done before; 1 task created",
            "1 task of the steps done before to run again"]
        settle(d, clock)
        # nothing failed is left: `failed` reruns nothing; `all` reruns both steps
        assert cli(capsys, "backload", "extract", *span, "--reprocess", "failed",
                   *common)[1].splitlines()[1] == "0 tasks of the steps done before to run again"
        assert cli(capsys, "backload", "extract", *span, "--reprocess", "all",
                   *common)[1].splitlines()[1] == "2 tasks of the steps done before to run again"
        settle(d, clock)
    # each slot is still one fire; the reruns are attempts, and each completion its load
    assert query(db, "SELECT count(*) FROM fires") == [(2,)]
    assert query(db, "SELECT type, attempt, result FROM tasks ORDER BY task_no") == [
        ("extract", 0, "error"), ("extract", 0, "complete"), ("extract", 1, "complete"),
        ("load", 0, "complete"), ("load", 0, "complete"), ("extract", 1, "complete"),
        ("extract", 2, "complete"), ("load", 0, "complete"), ("load", 0, "complete")]


def test_dry_runs_read_the_workflow_files_when_there_is_no_database(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN + '\n[[phase]]\ntask = "bad"\nrule = "cron=nope"\n')
    db = tmp_path / "none.db"
    common = ("-w", str(wf), "--db", str(db))
    code, out, _ = cli(capsys, "trigger", "extract", "--time", "2026-12-01T05:00:00Z",
                       "--dry-run", *common)
    assert code == 0 and [t["info"] for t in map(json.loads, out.splitlines())] == ["?h=05"]
    code, out, _ = cli(capsys, "backload", "extract", "--from", "2026-12-01T00:00:00Z",
                       "--to", "2026-12-01T02:00:00Z", "--by", "hour", "--dry-run", *common)
    assert code == 0 and len(out.splitlines()) == 3
    code, _, err = cli(capsys, "trigger", "bad", "--dry-run", *common)
    assert code == 2 and "cannot run: no valid rule found: cron=nope" in err
    code, _, err = cli(capsys, "trigger", "extract", *common)  # not a dry run: needs one
    assert code == 2 and f"no database at {db}" in err
    assert not db.exists()  # never made by a command that only reads


@pytest.mark.slow
def test_a_task_cancelled_while_its_redis_worker_is_dead_never_runs_again(
        tmp_path: Path, wf: Path, redis_server: Any) -> None:
    """The worker running it is SIGKILLed, then the task is cancelled: the worker that
    takes over the dead one's message sees the cancel before it starts the task."""
    (wf / "a.toml").write_text(CHAIN.replace('task = "extract"', 'task = "extract"\nretry = 2'))
    db, runs = tmp_path / "f.db", tmp_path / "runs"
    script = ("import os, sys, time\nopen(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
              "time.sleep(600)")
    config = redis_config(tmp_path, redis_server.url)
    common = [*config, "-w", str(wf), "--db", str(db)]
    with daemon(tmp_path, wf, db, args=config):
        wait_for(lambda: query(db, "SELECT 1 FROM workflow_phases") != [], 30)
        with workers(redis_server.url, "extract", sys.executable, "-c", script, str(runs),
                     claim_idle="1s") as [first]:
            assert run_cli(*common, "trigger", "extract").returncode == 0
            wait_for(lambda: runs.exists() and runs.read_text().count("\n") == 1, 30)
            first.kill()  # SIGKILL: its message stays pending, its process is orphaned
            first.wait(10)
            os.kill(int(runs.read_text()), signal.SIGKILL)
        assert run_cli(*common, "cancel", "1").returncode == 0
        with workers(redis_server.url, "extract", sys.executable, "-c", script, str(runs),
                     claim_idle="1s"):
            client = redis_server.client()  # the second worker reclaims, sees, acknowledges
            wait_for(lambda: client.xlen("flowlord:tasks:extract") == 0, 60)
    assert runs.read_text().count("\n") == 1  # it never ran again
    assert query(db, "SELECT result, msg FROM tasks") == [
        ("error", f"cancelled by {unix_actor()}")]  # once, no retry
    assert query(db, "SELECT count(*) FROM alerts") == [(0,)]


def test_mark_refuses_a_task_run_again_and_notify_and_mark_skip_paused_phases(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(CHAIN + '\n[[phase]]\ntask = "drop"\n'
                                       'rule = "files=/tmp/in/*.csv"\n')
    db = tmp_path / "f.db"
    common = ("-w", str(wf), "--db", str(db))
    cli(capsys, "refresh", *common)
    cli(capsys, "trigger", "extract", "--time", "2026-12-01T05:00:00Z", *common)
    cli(capsys, "cancel", "1", *common)
    cli(capsys, "rerun", "1", *common)  # task 2
    code, _, err = cli(capsys, "mark", "1", "complete", *common)
    assert code == 1 and "run again or has children" in err
    cli(capsys, "pause", "load", *common)
    cli(capsys, "pause", "drop", *common)
    assert cli(capsys, "mark", "2", "complete", *common)[1] == (
        "2\tcomplete\t0 child tasks created\n")  # `load` is paused
    assert cli(capsys, "notify", "/tmp/in/x.csv", *common)[1] == "/tmp/in/x.csv\t0 tasks\n"
    code, _, err = cli(capsys, "pause", "extract", "--until", "0s", *common)
    assert code == 1 and "has passed" in err


def test_pausing_a_name_that_several_phases_match_is_refused(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "report:daily"\n\n'
                               '[[phase]]\ntask = "report:weekly"\n')
    common = ("-w", str(wf), "--db", str(tmp_path / "f.db"))
    cli(capsys, "refresh", *common)
    code, _, err = cli(capsys, "pause", "report", *common)
    assert code == 1 and "2 phases match report" in err and "name one" in err
    assert cli(capsys, "pause", "report:weekly", *common)[0] == 0
    code, _, err = cli(capsys, "cancel", "99999999999999999999", *common)
    assert code == 2 and "not a task number" in err and "Traceback" not in err
