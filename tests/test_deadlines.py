"""Deadlines turn by turn with a fake clock (flowlord/deadlines.py): one `late` alert per
slot not complete by slot + deadline (running on, never fired while the daemon was down,
paused, skipped by overlap=skip), once ever; `recovered` when a late slot completes and
at a phase's first complete after a failure (flowlord/recoveries.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowlord.cli import main
from flowlord.clock import FakeClock, rfc3339, rfc3339_ms
from flowlord.model import Done, StoredTask
from tests.helpers import query, stepped, turn


class HeldBus:
    """Holds every task it is sent until the test ends it, at a time of the fake clock."""

    def __init__(self) -> None:
        self.held: dict[int, StoredTask] = {}
        self.done: list[Done] = []

    def open_topics(self) -> list[str] | None:
        return None

    def capacity(self, topic: str) -> int:
        return 1000

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        for stored, _ in tasks:
            self.held[stored.task_no] = stored

    def receive(self, wait: float) -> list[Done]:
        found, self.done = self.done, []
        return found

    def running(self) -> list[int]:
        return list(self.held)

    def stop(self, task_no: int, reason: str) -> bool:
        return True

    def ack(self, done: Done) -> None:
        pass

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        return self.receive(0)

    def finish(self, task_no: int, result: str, ended: datetime) -> None:
        del self.held[task_no]
        self.done.append(Done(task_no, result, "", rfc3339_ms(ended)))


class Times:
    """Loaded workflow files carry the real time: the fake clock starts a little after it,
    5 s past a multiple of 10 s, so that each turn of 10 s meets one `*/10` slot."""

    def __init__(self) -> None:
        self.base = datetime.fromtimestamp((int(time.time()) // 10 + 2) * 10, UTC)
        self.start = self.base + timedelta(seconds=5)

    def slot(self, n: int) -> str:
        return rfc3339(self.base + timedelta(seconds=10 * n))


def alerts(db: Path) -> list[tuple[object, ...]]:
    return query(db, "SELECT kind, scheduled_for, task_no, message FROM alerts "
                     "ORDER BY alert_no")


def test_a_slot_still_running_at_its_deadline_is_late_once_then_recovered(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\n'
                               'rule = "cron=*/10 * * * * *&deadline=2s"\n')
    times, bus = Times(), HeldBus()
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        turn(d, clock, 5.0)  # slot 1 fires; its task runs on
        turn(d, clock, 1.0)
        assert alerts(db) == []  # 1 s after the slot: not late yet
        for _ in range(3):  # 2 s and more after it: late, once
            turn(d, clock, 1.0)
        assert alerts(db) == [("late", times.slot(1), 1, f"slot {times.slot(1)} not complete "
                                                         "2s after it: task 1 running")]
        bus.finish(1, "complete", clock.now())
        turn(d, clock, 1.0)  # it completes late: recovered
        turn(d, clock, 5.0)  # slot 2 fires; done within its deadline
        bus.finish(2, "complete", clock.now() + timedelta(seconds=1))
        for _ in range(5):
            turn(d, clock, 1.0)
    assert [a[:3] for a in alerts(db)] == [("late", times.slot(1), 1),
                                           ("recovered", times.slot(1), 1)]


def test_a_slot_missed_while_the_daemon_was_down_is_late_after_the_restart_once(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\n'
                               'rule = "cron=*/10 * * * * *&deadline=3s"\n')
    times, bus = Times(), HeldBus()
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        turn(d, clock, 5.0)  # slot 1 fires and completes in time
        bus.finish(1, "complete", clock.now())
        turn(d, clock, 4.0)
    clock.advance(21.0)  # down across slots 2 and 3 (catchup none: never fired)
    for _ in range(2):  # a second restart finds them alerted already
        with stepped(tmp_path, wf, clock, bus=HeldBus()) as d:
            turn(d, clock, 0.0)
    assert [a[:3] for a in alerts(db)] == [("late", times.slot(2), None),
                                           ("late", times.slot(3), None)]
    assert "never fired (the daemon was not running" in str(alerts(db)[0][3])


def test_a_paused_phases_slot_and_a_slot_skipped_by_overlap_are_late(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *&deadline=2s"\n\n'
        '[[phase]]\ntask = "slow"\nrule = "cron=*/10 * * * * *&deadline=2s&overlap=skip"\n')
    times, bus = Times(), HeldBus()
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        turn(d, clock, 5.0)  # slot 1 of both fires
        tick = next(n for n, s in bus.held.items() if s.task.type == "tick")
        bus.finish(tick, "complete", clock.now())
        assert main(["pause", "tick", "--reason", "db maintenance", "-w", str(wf),
                     "--db", str(db)]) == 0
        capsys.readouterr()
        for _ in range(6):  # slot 2: tick paused; slow skipped (its slot 1 runs on)
            turn(d, clock, 2.0)
    whys = sorted(str(a[3]).split(" after it: ")[1] for a in alerts(db)
                  if a[1] == times.slot(2))
    assert len(whys) == 2
    assert whys[0].startswith("paused by ") and whys[0].endswith(": db maintenance")
    assert whys[1].startswith("skipped by overlap=skip: task 2 ")
    assert query(db, "SELECT phase, count(*) FROM alerts WHERE kind = 'late' "
                     "GROUP BY phase ORDER BY phase") == [("slow", 2), ("tick", 1)]


def test_recovered_is_a_phases_first_complete_after_a_failure(tmp_path: Path,
                                                               wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *"\n')
    times, bus = Times(), HeldBus()
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for n, result in enumerate(["complete", "error", "error", "complete", "complete"], 1):
            turn(d, clock, 5.0 if n == 1 else 10.0)  # slot n fires
            bus.finish(n, result, clock.now())
            turn(d, clock, 0.0)
    assert [(a[0], a[2]) for a in alerts(db)] == [("failed", 2), ("failed", 3),
                                                  ("recovered", 4)]
    assert alerts(db)[2][3] == "task 4: complete after a failure"
