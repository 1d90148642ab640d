"""The daemon driven in-process, turn by turn, with a fake clock and the in-process bus:
firing, catch-up after a restart, a locked database, clock steps, edits by other
writers and commands from other threads. The real database file and the real
watchdog observer; only time and the workers are stand-ins."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest

from flowlord import metrics
from flowlord.bus.inprocess import InProcessBus
from flowlord.bus.local import LocalBus
from flowlord.cli import main
from flowlord.clock import FakeClock
from flowlord.commands import DaemonBusy
from flowlord.config import Config
from flowlord.daemon import Daemon
from flowlord.loader import Loader
from flowlord.model import StoredTask
from flowlord.operations import Action, record_fires, trigger_fire
from flowlord.store import Store
from flowlord.tasks import Context
from tests.helpers import query, stepped, turn, utc

EVERY_10S = ('[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *{extra}"\n'
             'template = "t={{TS}}"\n')
START = utc(2026, 12, 1, 12, 0, 5)


def slots(db: Path, phase: str = "tick") -> list[str]:
    return [str(r[0]) for r in query(db, "SELECT scheduled_for FROM fires WHERE phase = ? "
                                         "ORDER BY 1", (phase,))]


def every_10s(first: str, n: int) -> list[str]:
    start = utc(*(int(x) for x in (first[:4], first[5:7], first[8:10], first[11:13],
                                   first[14:16], first[17:19])))
    return [(start + timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for i in range(n)]


def test_each_slot_fires_once_its_tasks_run_and_the_plan_is_written(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra="") +
                               '[[phase]]\ntask = "child"\ndependsOn = "tick"\n')
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        assert query(db, "SELECT next_fire FROM workflow_phases WHERE task = 'tick'") == [
            ("2026-12-01T12:00:10Z",)]
        wait = turn(d, clock)
        assert slots(db) == [] and 0 < wait <= 1.0  # the loop may sleep until the slot
        for _ in range(30):  # a turn every second for 30 s
            turn(d, clock, 1.0)
        turn(d, clock)  # the last results come back
    assert slots(db) == every_10s("2026-12-01T12:00:10Z", 3)
    rows = query(db, "SELECT type, info, result FROM tasks ORDER BY task_no")
    assert rows[:2] == [("tick", "t=20261201T120010", "complete"), ("child", "", "complete")]
    assert len(rows) == 6  # each fire and its child, once
    ran = metrics.REGISTRY.get_sample_value("flowlord_task_duration_seconds_count",
                                            {"topic": "child"})
    assert ran is not None and ran >= 3  # each run's time, by topic
    waited = metrics.REGISTRY.get_sample_value("flowlord_task_wait_seconds_count",
                                               {"topic": "child"})
    assert waited is not None and waited >= 3  # and how long each waited for a worker
    assert query(db, "SELECT next_fire FROM workflow_phases WHERE task = 'tick'") == [
        ("2026-12-01T12:00:40Z",)]


def test_without_a_worker_tasks_wait_in_the_database_and_are_listed(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra="") +
                               '[[phase]]\ntask = "child"\ndependsOn = "tick"\n')
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock, bus=LocalBus({})) as d:
        for _ in range(3):
            turn(d, clock, 10.0)
    rows = query(db, "SELECT type, info, meta, started, attempt, scheduled_for FROM tasks")
    assert [r[5] for r in rows] == every_10s("2026-12-01T12:00:10Z", 3)
    for type_, info, meta, started, attempt, slot in rows:
        stamp = str(slot).replace("-", "").replace(":", "").rstrip("Z")
        assert (type_, info, started, attempt) == ("tick", f"t={stamp}", None, 0)
        assert str(meta).startswith("workflow=a.toml&cron=")
    capsys.readouterr()  # the daemon's log lines
    assert main(["tasks", "--db", str(db), "--result", "none"]) == 0
    header, *listed = capsys.readouterr().out.splitlines()
    assert header.startswith("task_no\tcreated\ttask\tstate\twait\trun\tinfo")
    assert len(listed) == 3 and all(
        line.split("\t")[2:4] == ["tick", "waiting: no worker for the topic"]
        and "\tt=" in line for line in listed)
    assert query(db, "SELECT task, next_fire FROM phase_schedule ORDER BY task") == [
        ("child", None), ("tick", "2026-12-01T12:00:40Z")]


def test_a_restart_catches_up_the_slots_missed_while_down(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra="&catchup=all"))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 20.0)
    assert slots(db) == every_10s("2026-12-01T12:00:10Z", 2)
    clock.advance(34.0)  # down until 12:00:59: 12:00:30, :40 and :50 are missed
    with stepped(tmp_path, wf, clock) as d:
        # recorded by start(), before the daemon says it is ready
        assert slots(db) == every_10s("2026-12-01T12:00:10Z", 5)
        assert query(db, "SELECT count(*) FROM fires WHERE source = 'catchup'") == [(3,)]
        turn(d, clock, 10.0)
    assert slots(db) == every_10s("2026-12-01T12:00:10Z", 6)


def test_missed_slots_follow_the_policy_none_by_default(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 10.0)
    clock.advance(40.0)
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 10.0)
    assert slots(db) == ["2026-12-01T12:00:10Z", "2026-12-01T12:01:00Z"]


def test_a_locked_database_delays_fires_and_results_but_loses_none(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        d.store.conn.set_busy_timeout(0)  # a turn does not wait for the lock here
        turn(d, clock, 10.0)
        holder = apsw.Connection(str(db))  # a sqlite3 shell inside BEGIN IMMEDIATE
        holder.execute("BEGIN IMMEDIATE")
        for _ in range(3):
            assert turn(d, clock, 10.0) <= 0.2  # work waits: look again soon
        assert len(d.ledger.pending) == 3
        holder.execute("COMMIT")
        holder.close()
        turn(d, clock)
        turn(d, clock)
    assert slots(db) == every_10s("2026-12-01T12:00:10Z", 4)
    assert query(db, "SELECT count(*), count(DISTINCT scheduled_for) FROM tasks "
                     "WHERE result = 'complete'") == [(4, 4)]


def test_clock_steps_neither_repeat_nor_invent_slots(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 20.0)  # 12:00:10 and :20
        clock.step(timedelta(seconds=-24))  # back to 12:00:01: nothing fires twice
        for _ in range(20):
            turn(d, clock, 1.0)
        assert slots(db) == every_10s("2026-12-01T12:00:10Z", 2)
        clock.step(timedelta(hours=1))  # forward: the hour jumped over is missed (none)
        turn(d, clock, 1.0)
        turn(d, clock, 10.0)
    fired = slots(db)
    assert fired[:2] == every_10s("2026-12-01T12:00:10Z", 2)
    assert len(fired) == 3 and fired[2] > "2026-12-01T13:00:00Z"


def test_rows_written_by_another_process_are_followed(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock, rescan=timedelta(days=1)) as d:
        d.sync.stop()  # only the other writer can tell it about the change
        d.sync.watcher = None
        (wf / "a.toml").write_text(EVERY_10S.format(extra="").replace("tick", "tock"))
        other = Loader(str(wf), Store(str(db)))  # `flowlord refresh` in another process
        assert other.refresh() == ["~a.toml"]
        other.close()
        turn(d, clock)  # before the slot: the change is seen in time
        turn(d, clock, 10.0)
    assert slots(db, "tock") == ["2026-12-01T12:00:10Z"] and slots(db) == []


def test_a_broken_edit_keeps_the_last_good_phases_firing(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        (wf / "a.toml").write_text("[[phase]\ntask = \n")
        assert d.sync.rescan(clock.now()) == ["~a.toml"]
        turn(d, clock, 10.0)
    assert str(query(db, "SELECT status FROM workflow_files")[0][0]).startswith("parse error")
    assert slots(db) == ["2026-12-01T12:00:10Z"]


def test_a_command_from_another_thread_is_applied_by_the_loop(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "manual"\ntemplate = "h={hh}"\n')
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        phase = d.store.phases()[0]
        fire = trigger_fire(phase, utc(2026, 12, 1, 9), Context(d.ledger.scheduler.zone,
                                                                 str(wf), clock.now()))
        answers: list[Any] = []
        asking = threading.Thread(target=lambda: answers.append(d.commands.ask(
            "trigger", "tester", lambda: record_fires(d.store, [fire], clock.now()), 30)))
        asking.start()
        while asking.is_alive():  # the loop's turns; the request waits for its outcome
            turn(d, clock)
            asking.join(0.01)
        turn(d, clock)
    assert [f.scheduled_for for f in answers[0]] == ["2026-12-01T09:00:00Z"]
    assert query(db, "SELECT info, result FROM tasks") == [("h=09", "complete")]


def test_a_command_the_loop_does_not_reach_in_time_changes_nothing(
        tmp_path: Path, wf: Path) -> None:
    clock = FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        applied: list[bool] = []
        with pytest.raises(DaemonBusy, match="nothing was changed"):
            d.commands.ask("refresh", "tester", lambda: applied.append(True), 0.05)
        turn(d, clock)  # the withdrawn command is not applied later
    assert applied == []


def test_a_failing_task_is_retried_when_its_delay_has_passed(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "flaky"\nrule = "retry_delay=1m"\n'
                               'retry = 1\ntemplate = "x"\n')
    db, clock = tmp_path / "f.db", FakeClock(START)

    def fail_first(stored: StoredTask) -> tuple[str, str]:
        return ("error", "boom") if stored.task_no == 1 else ("complete", "")

    with stepped(tmp_path, wf, clock, bus=InProcessBus(fail_first)) as d:
        ctx = Context(d.ledger.scheduler.zone, str(wf), clock.now())
        record_fires(d.store, [trigger_fire(d.store.phases()[0], None, ctx)], clock.now())
        turn(d, clock)
        turn(d, clock)
        assert query(db, "SELECT attempt, result FROM tasks ORDER BY task_no") == [
            (0, "error"), (1, None)]
        assert 0 < turn(d, clock, 30.0) <= 1.0  # the retry waits for its due time
        turn(d, clock)
        assert query(db, "SELECT result FROM tasks WHERE attempt = 1") == [(None,)]
        turn(d, clock, 60.0)  # past 1 m plus at most 40 % jitter
        turn(d, clock)
    assert query(db, "SELECT attempt, result FROM tasks ORDER BY task_no") == [
        (0, "error"), (1, "complete")]


def test_a_rescan_asked_while_the_database_is_locked_waits_for_it(
        tmp_path: Path, wf: Path) -> None:
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        d.store.conn.set_busy_timeout(0)
        d.sync.stop()  # only the asked-for rescan finds the new file
        d.sync.watcher = None
        (wf / "b.toml").write_text('[[phase]]\ntask = "new"\n')
        holder = apsw.Connection(str(db))
        holder.execute("BEGIN IMMEDIATE")
        answers: list[Any] = []
        action = Action("tester", "refresh", retried=True)
        asking = threading.Thread(target=lambda: answers.append(d.rescan(action)))
        asking.start()
        while not d.commands.waiting:
            asking.join(0.01)
        for _ in range(3):
            turn(d, clock)
        assert asking.is_alive() and d.commands.waiting  # put back, not failed
        holder.execute("COMMIT")
        holder.close()
        while asking.is_alive():
            turn(d, clock)
            asking.join(0.01)
    # answered, not failed (the turn's own rescan, due after the failed one, may have
    # found the file first)
    assert answers in ([["+b.toml"]], [[]])
    assert query(db, "SELECT task FROM workflow_phases WHERE file_path = 'b.toml'") == [
        ("new",)]
    # one row in the audit trail, however often it was tried
    assert query(db, "SELECT actor, kind, outcome FROM actions") == [
        ("tester", "refresh", "done")]


def test_ready_comes_after_the_plan_and_the_catch_up_are_committed(
        tmp_path: Path, wf: Path) -> None:
    """start() is what runs before READY=1: when it returns, every cron phase has its
    next fire in the database and the missed slots are recorded."""
    (wf / "a.toml").write_text(EVERY_10S.format(extra="&catchup=all"))
    db, clock = tmp_path / "f.db", FakeClock(START)
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 10.0)
    clock.advance(30.0)
    d = Daemon(Config(workflows=str(wf), db=str(db), timezone="UTC"), clock=clock,
               bus=InProcessBus())
    d.open()
    try:
        d.start()  # no turn yet
        assert query(db, "SELECT next_fire FROM workflow_phases") == [("2026-12-01T12:00:50Z",)]
        assert slots(db) == every_10s("2026-12-01T12:00:10Z", 4)
    finally:
        d.close()


def test_the_loop_turns_a_moment_before_a_slot_to_build_its_fires_then_at_the_slot(
        tmp_path: Path, wf: Path) -> None:
    """flowlord/ahead.py through the daemon's turns: the wait ends AHEAD before the
    slot, that turn builds the slot's fires, the next wait ends at the slot, and the
    task fired then was built ahead (created at its slot, not at the turn)."""
    (wf / "a.toml").write_text(EVERY_10S.format(extra=""))
    db, clock = tmp_path / "f.db", FakeClock(START + timedelta(seconds=4))  # 12:00:09
    with stepped(tmp_path, wf, clock) as d:
        assert turn(d, clock) == pytest.approx(0.5)  # until 12:00:09.5
        assert turn(d, clock, 0.5) == pytest.approx(0.5)  # built: until the slot
        turn(d, clock, 0.6)  # 12:00:10.1
    assert query(db, "SELECT scheduled_for, created FROM tasks") == [
        ("2026-12-01T12:00:10Z", "2026-12-01T12:00:10.000Z")]
