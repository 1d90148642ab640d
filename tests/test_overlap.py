"""The scheduling policy of a phase (flowlord/overlap.py, README.md Scheduling policy):
`overlap=skip|replace|queue` and `max_active`. First turn by turn with a fake clock and
a bus that holds its tasks until the test lets them end; then the real daemon with
real worker processes."""

from __future__ import annotations

import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from flowlord import jitter, waiting
from flowlord.clock import FakeClock, utc_now_ms
from flowlord.loader import Loader
from flowlord.model import Done, Fire, StoredTask, Task
from flowlord.overlap import Overlap
from flowlord.store import Store, reads, taskrows, write_txn
from tests.helpers import (
    at,
    daemon,
    daemon_config,
    messages_until,
    query,
    stepped,
    turn,
    utc,
    wait_for,
    worker_table,
)

START = utc(2026, 12, 1, 12, 0, 0) + timedelta(milliseconds=500)


def phase(name: str, rule: str) -> str:
    return f'[[phase]]\ntask = "{name}"\nrule = "cron=* * * * * *&{rule}"\n\n'


class HoldingBus:
    """Takes every task and holds it, running, until the test ends it."""

    def __init__(self, capacity: dict[str, int] | None = None,
                 completes: tuple[str, ...] = ()) -> None:
        self.held: list[StoredTask] = []
        self.ended: list[Done] = []
        self.room = capacity or {}  # topic → tasks it takes at most; others: 100
        self.completes = completes  # topics whose tasks end at once

    def open_topics(self) -> list[str] | None:
        return None

    def capacity(self, topic: str) -> int:
        return self.room.get(topic, 100) - sum(1 for s in self.held if s.task.type == topic)

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        for stored, _ in tasks:
            if stored.task.type in self.completes:
                self.ended.append(Done(stored.task_no, "complete", "", utc_now_ms()))
            else:
                self.held.append(stored)

    def end(self, which: Callable[[StoredTask], bool] = lambda s: True) -> None:
        for stored in [s for s in self.held if which(s)]:
            self.held.remove(stored)
            self.ended.append(Done(stored.task_no, "complete", "", utc_now_ms()))

    def receive(self, wait: float) -> list[Done]:
        found, self.ended = self.ended, []
        return found

    def running(self) -> list[int]:
        return [s.task_no for s in self.held]

    def stop(self, task_no: int, reason: str) -> bool:
        self.held = [s for s in self.held if s.task_no != task_no]
        return True

    def ack(self, done: Done) -> None:
        pass

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        return []


def fires(db: Path, name: str) -> list[tuple[object, ...]]:
    return query(db, "SELECT scheduled_for, error, (SELECT count(*) FROM tasks AS t WHERE "
                     "t.phase = f.phase AND t.scheduled_for = f.scheduled_for) FROM fires AS f "
                     "WHERE phase = ? ORDER BY scheduled_for", (name,))


def test_skip_records_each_slot_that_came_while_a_task_ran_and_runs_the_next(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=skip"))
    bus, clock, db = HoldingBus(), FakeClock(START), tmp_path / "f.db"
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for _ in range(4):
            turn(d, clock, 1.0)
        bus.end()
        turn(d, clock)  # the result
        turn(d, clock, 1.0)  # the next slot runs again
    found = fires(db, "tick")
    assert [(error, n) for _, error, n in found] == [
        ("", 1), *[("skipped by overlap=skip: task 1 of this phase not finished", 0)] * 3,
        ("", 1)]
    assert query(db, "SELECT count(*) FROM tasks") == [(2,)]


def test_replace_cancels_the_earlier_task_as_an_action_of_overlap(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=replace"))
    bus, clock, db = HoldingBus(), FakeClock(START), tmp_path / "f.db"
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for _ in range(3):
            turn(d, clock, 1.0)
        turn(d, clock)  # the daemon ends what was cancelled
        assert [s.task_no for s in bus.held] == [3]  # never two running
    assert query(db, "SELECT task_no, result, msg FROM tasks ORDER BY task_no") == [
        (1, "error", "cancelled by overlap"), (2, "error", "cancelled by overlap"),
        (3, None, "")]
    assert query(db, "SELECT actor, kind, target, json_extract(args, '$.task_nos'), outcome "
                     "FROM actions ORDER BY action_no") == [
        ("overlap", "cancel", "a.toml: tick", "[1]", "done"),
        ("overlap", "cancel", "a.toml: tick", "[2]", "done")]
    assert query(db, "SELECT count(*) FROM alerts") == [(0,)]  # no `failed` alert, no retry


def test_queue_creates_every_slots_task_and_runs_them_one_at_a_time_in_order(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=queue"))
    bus, clock, db = HoldingBus(), FakeClock(START), tmp_path / "f.db"
    ran: list[int] = []
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for _ in range(4):
            turn(d, clock, 1.0)
            ran += [s.task_no for s in bus.held if s.task_no not in ran]
        assert ran == [1] and len(bus.held) == 1  # four slots, four tasks, one running
        for _ in range(3):
            bus.end()
            turn(d, clock)
            ran += [s.task_no for s in bus.held if s.task_no not in ran]
    assert ran == [1, 2, 3, 4]
    assert [n for _, _, n in fires(db, "tick")] == [1, 1, 1, 1]


def test_max_active_caps_a_phase_while_the_topic_runs_its_other_phases(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("work:capped", "max_active=2")
                               + phase("work:free", "job=free"))
    bus, clock = HoldingBus(), FakeClock(START)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for _ in range(5):
            turn(d, clock, 1.0)
        running = [s.task.job for s in bus.held]
        assert running.count("capped") == 2 and running.count("free") == 5
        bus.end(lambda s: s.task.job == "capped" and s.task_no == min(
            h.task_no for h in bus.held if h.task.job == "capped"))
        turn(d, clock)
        assert [s.task.job for s in bus.held].count("capped") == 2  # the next one, oldest
    waiting = query(tmp_path / "f.db", "SELECT count(*) FROM tasks WHERE started IS NULL")
    assert waiting == [(2,)]


def test_bad_policy_values_are_errors_on_the_phase(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("a", "overlap=sometimes") + phase("b", "max_active=0")
                               + phase("c", "deadline=-1s") + phase("d", "jitter=soon"))
    clock = FakeClock(START)
    with stepped(tmp_path, wf, clock, bus=HoldingBus()):
        pass
    assert query(tmp_path / "f.db", "SELECT task, severity, status FROM workflow_phases "
                                    "ORDER BY task") == [
        ("a", "error", "invalid overlap: sometimes"), ("b", "error", "invalid max_active: 0"),
        ("c", "error", "invalid deadline: -1s"), ("d", "error", "invalid jitter: soon")]


# --- the real daemon, real worker processes ------------------------------------------


def intervals(db: Path, where: str) -> list[tuple[str, str]]:
    """(started, ended) of the tasks that started, in start order; a running one ends
    now."""
    now = utc_now_ms()
    return [(str(s), str(e or now)) for s, e in query(
        db, f"SELECT started, ended FROM tasks WHERE started IS NOT NULL AND {where} "
            "ORDER BY started, task_no")]


def overlapping(spans: list[tuple[str, str]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Pairs of consecutive spans where the later started before the earlier ended."""
    return [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]


def run_daemon(tmp_path: Path, wf: Path, notify_socket: socket.socket, tables: str,
               until: Callable[[], bool]) -> None:
    config = daemon_config(tmp_path, tables)
    with daemon(tmp_path, wf, tmp_path / "f.db", args=["-c", str(config)],
                stderr=subprocess.DEVNULL) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(until, 60)
        proc.kill()  # SIGKILL: what a crash leaves
        proc.wait()


@pytest.mark.slow
def test_skip_never_lets_two_tasks_of_a_phase_overlap_even_across_a_sigkill(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=skip"))
    db = tmp_path / "f.db"
    tables = worker_table("tick", "sleep", "2.5", concurrency=4)

    def skipped(n: int) -> Callable[[], bool]:
        return lambda: query(db, "SELECT count(*) FROM fires WHERE error LIKE "
                                 "'skipped by overlap=skip: task %'") >= [(n,)]
    run_daemon(tmp_path, wf, notify_socket, tables, skipped(4))
    first_life = query(db, "SELECT count(*) FROM fires")[0][0]
    run_daemon(tmp_path, wf, notify_socket, tables, skipped(8))
    assert overlapping(intervals(db, "phase = 'tick'")) == []
    assert query(db, "SELECT count(*) FROM fires")[0][0] > first_life  # it fired again
    ran = query(db, "SELECT count(*) FROM fires WHERE error = ''")[0][0]
    assert ran >= 2 and query(db, "SELECT count(*) FROM tasks")[0][0] >= ran


@pytest.mark.slow
def test_queue_runs_every_slot_one_at_a_time_in_order(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=queue"))
    db = tmp_path / "f.db"
    run_daemon(tmp_path, wf, notify_socket, worker_table("tick", "sleep", "1.2", concurrency=4),
               lambda: query(db, "SELECT count(*) FROM tasks WHERE result = 'complete'")
               >= [(4,)])
    spans = intervals(db, "phase = 'tick'")
    assert overlapping(spans) == []
    started = [str(s) for s, in query(db, "SELECT scheduled_for FROM tasks WHERE started IS "
                                          "NOT NULL ORDER BY started")]
    assert started == sorted(started)  # in slot order
    assert query(db, "SELECT count(*) FROM fires WHERE error <> ''") == [(0,)]  # none skipped
    assert query(db, "SELECT count(*) FROM fires") == query(db, "SELECT count(*) FROM tasks")


@pytest.mark.slow
def test_replace_never_leaves_two_tasks_of_the_phase_running_in_the_ledger(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(phase("tick", "overlap=replace"))
    db = tmp_path / "f.db"
    run_daemon(tmp_path, wf, notify_socket, worker_table("tick", "sleep", "2.5", concurrency=4),
               lambda: query(db, "SELECT count(*) FROM tasks WHERE msg = "
                                 "'cancelled by overlap'") >= [(4,)])
    assert overlapping(intervals(db, "phase = 'tick'")) == []
    assert query(db, "SELECT count(*) FROM actions WHERE actor = 'overlap'")[0][0] >= 4


@pytest.mark.slow
def test_max_active_1_on_a_topic_of_concurrency_8(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(phase("work:capped", "max_active=1")
                               + phase("work:free", "job=free"))
    db = tmp_path / "f.db"
    run_daemon(tmp_path, wf, notify_socket, worker_table("work", "sleep", "2.5", concurrency=8),
               lambda: query(db, "SELECT count(*) FROM tasks WHERE job = 'capped' AND "
                                 "result = 'complete'") >= [(2,)])
    assert overlapping(intervals(db, "job = 'capped'")) == []  # never two of that phase
    assert overlapping(intervals(db, "job = 'free'")) != []  # the rest of the topic is used


# --- jitter ------------------------------------------------------------------------------


def test_jitter_spreads_a_thousand_phases_over_the_window_the_same_every_time() -> None:
    window = timedelta(seconds=30)
    delays = [jitter.delay("etl/hourly.toml", f"load:part{i}", window) for i in range(1000)]
    assert all(timedelta(0) <= d < window for d in delays)
    per_second = Counter(int(d.total_seconds()) for d in delays)
    assert len(per_second) == 30 and max(per_second.values()) <= 60  # ≤ 6 % in any second
    assert delays == [jitter.delay("etl/hourly.toml", f"load:part{i}", window)
                      for i in range(1000)]  # a pure function of the phase: every host
    assert jitter.delay("other.toml", "load:part0", window) != delays[0]


def test_a_jittered_slot_is_recorded_at_its_time_and_its_task_starts_after_its_delay(
        tmp_path: Path, wf: Path) -> None:
    every_minute = '[[phase]]\ntask = "{}"\nrule = "cron=0 * * * * *&jitter=10s"\n\n'
    (wf / "a.toml").write_text(every_minute.format("tick") + every_minute.format("other"))
    db = tmp_path / "f.db"
    offsets = []
    for minute in (1, 2):  # a restart between the two slots: the same delays
        bus = HoldingBus()
        clock = FakeClock(utc(2026, 12, 1, 12, minute - 1, 59) + timedelta(milliseconds=500))
        with stepped(tmp_path, wf, clock, bus=bus) as d:
            turn(d, clock, 1.0)  # the slot: fired, its tasks wait
            fired = query(db, "SELECT phase, scheduled_for, due_at FROM tasks WHERE "
                              "started IS NULL ORDER BY phase")
            assert not bus.held and len(fired) == 2
            assert {slot for _, slot, _ in fired} == {f"2026-12-01T12:0{minute}:00Z"}
            offsets.append([(p, (at(str(due)) - at(str(slot))).total_seconds())
                            for p, slot, due in fired])
            for _ in range(10):
                turn(d, clock, 1.0)
            assert len(bus.held) == 2  # both started, each once its delay had passed
        assert query(db, "SELECT count(*) FROM tasks WHERE started < due_at") == [(0,)]
    assert offsets[0] == offsets[1] and offsets[0][0][1] != offsets[0][1][1]
    assert all(0 <= s < 10 for _, s in offsets[0])


def test_a_waiting_task_says_why(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("work:queued", "overlap=queue")
                               + phase("work:capped", "max_active=1&job=capped")
                               + phase("other", "jitter=1h") + phase("idle", "job=x"))
    bus, clock = HoldingBus(capacity={"idle": 1}), FakeClock(START)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        turn(d, clock, 1.0)
        turn(d, clock, 1.0)  # two slots of each phase

        def why(concurrency: dict[str, int] | None) -> dict[str, str]:
            rows = reads.tasks(d.store, result="none", limit=100)
            waiting.explain(d.store, rows, clock.now(), concurrency)
            return {t["phase"]: t["waiting"] for t in rows if not t["started"]}

        held = {s.task.type: s.task_no for s in bus.held if s.task.job == "queued"}
        reasons = why({"work": 8, "idle": 1})
        assert reasons["work:queued"] == f"queued behind task {held['work']}"
        assert reasons["work:capped"] == "phase max_active 1"
        assert reasons["other"].startswith("due at 2026-12-01T")  # its jitter's start
        assert reasons["idle:x"] == "topic full"
        assert why({"work": 8})["idle:x"] == "no worker for the topic"
        assert why(None)["idle:x"] == "a free worker takes it next"  # a remote bus: unknown
        with write_txn(d.store.conn):
            d.store.conn.execute("INSERT INTO pauses (scope, topic, actor, since) VALUES "
                                 "('topic', 'idle', 'alice', '2026-01-01T00:00:00Z')")
        assert why({"idle": 1})["idle:x"] == "topic paused"


def test_children_follow_their_phases_overlap_too(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(
        phase("tick", "job=x") + '[[phase]]\ntask = "child:s"\ndependsOn = "tick"\n'
        'rule = "overlap=skip"\n\n[[phase]]\ntask = "child:r"\ndependsOn = "tick"\n'
        'rule = "overlap=replace"\n')
    bus, clock, db = HoldingBus(completes=("tick",)), FakeClock(START), tmp_path / "f.db"
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        for _ in range(4):  # each tick completes at once and would start both children
            turn(d, clock, 1.0)
            turn(d, clock)
        assert sorted(s.task.job for s in bus.held) == ["r", "s"]  # never two of a phase
    assert query(db, "SELECT job, count(*) FROM tasks WHERE type = 'child' GROUP BY job") == [
        ("r", 4), ("s", 1)]  # skip made one; replace made each and cancelled the earlier
    assert query(db, "SELECT count(*) FROM tasks WHERE job = 'r' AND msg = "
                     "'cancelled by overlap'") == [(3,)]


def test_past_a_page_of_held_tasks_the_topics_other_phases_still_run(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskrows, "CLAIM_SCAN", 3)  # a page of 3 waiting tasks
    (wf / "a.toml").write_text(phase("work:capped", "max_active=1")
                               + phase("work:free", "job=free"))
    bus, clock = HoldingBus(), FakeClock(START)
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        with write_txn(d.store.conn):  # a backload of the capped phase waits first
            d.store.conn.executemany(
                "INSERT INTO tasks (id, type, job, created, file_path, phase) VALUES "
                "(?, 'work', 'capped', '2026-12-01T00:00:00Z', 'a.toml', 'work:capped')",
                [(f"b{i}",) for i in range(10)])
        turn(d, clock, 1.0)
        jobs = sorted(s.task.job for s in bus.held)
    assert jobs == ["capped", "free"]  # one of the capped, and the free one behind them


def test_a_max_active_of_five_thousand_digits_is_an_error_not_a_crash(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(phase("a", "max_active=" + "9" * 5000))
    with stepped(tmp_path, wf, FakeClock(START), bus=HoldingBus()):
        pass
    [(severity, status)] = query(tmp_path / "f.db",
                                 "SELECT severity, status FROM workflow_phases")
    assert severity == "error" and str(status).startswith("invalid max_active: 999")


def test_replace_among_children_of_one_turn_keeps_one(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(
        phase("tick:a", "") + phase("tick:b", "")
        + '[[phase]]\ntask = "child:r"\ndependsOn = "tick"\nrule = "overlap=replace"\n')
    bus, clock, db = HoldingBus(completes=("tick",)), FakeClock(START), tmp_path / "f.db"
    with stepped(tmp_path, wf, clock, bus=bus) as d:
        turn(d, clock, 1.0)
        turn(d, clock)  # both ticks complete in one turn: each would start child:r
        turn(d, clock)
        assert [s.task.job for s in bus.held] == ["r"]
    # the one made second replaced the first before either was written
    assert query(db, "SELECT count(*) FROM tasks WHERE type = 'child'") == [(1,)]


def test_two_slots_of_a_skip_phase_recorded_together_run_only_the_first(
        tmp_path: Path, wf: Path) -> None:
    """The ledger writes a turn's fires in one call, their tasks together at the end,
    except before a fire the policy applies to: a catch-up's second slot sees the first
    slot's task, unfinished, and is skipped; the fires of phases without a policy in the
    same call keep their tasks."""
    (wf / "a.toml").write_text(phase("tick", "overlap=skip") + phase("plain", ""))
    store = Store(str(tmp_path / "f.db"))
    Loader(str(wf), store).refresh()
    now = "2026-12-01T12:00:05.000Z"

    def fire(name: str, second: int, overlap: str) -> Fire:
        slot = f"2026-12-01T12:00:0{second}Z"
        return Fire("a.toml", name, slot, "catchup", (Task(name, id=f"{name}{second}",
                                                          created=slot),), "", overlap)
    batch = [fire("plain", 1, "allow"), fire("tick", 1, "skip"), fire("plain", 2, "allow"),
             fire("tick", 2, "skip"), fire("plain", 3, "allow")]
    with write_txn(store.conn):
        new = store.record_fires(batch, now, Overlap(store, now))
    with write_txn(store.conn):  # again: every slot is in the ledger, nothing is new
        assert store.record_fires(batch, now, Overlap(store, now)) == []
    store.close()
    assert [(f.phase, f.scheduled_for[-3:], f.error[:23]) for f in new] == [
        ("plain", "01Z", ""), ("tick", "01Z", ""), ("plain", "02Z", ""),
        ("tick", "02Z", "skipped by overlap=skip"), ("plain", "03Z", "")]
    assert query(tmp_path / "f.db", "SELECT phase, count(*) FROM tasks GROUP BY phase "
                 "ORDER BY phase") == [("plain", 3), ("tick", 1)]
