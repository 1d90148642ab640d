"""The scheduler driven by a fake clock: which slots are due, once each, and catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flowlord.clock import FakeClock
from flowlord.model import Phase
from flowlord.scheduler import Due, Scheduler

T0 = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)
NY = ZoneInfo("America/New_York")


def phase(task: str = "p", rule: str = "cron=0 * * * * *", file: str = "a.toml",
          severity: str = "ok") -> Phase:
    status = "" if severity == "ok" else "broken"
    return Phase(file, task, rule=rule, status=status, severity=severity)  # type: ignore[arg-type]


def run(s: Scheduler, clock: FakeClock, seconds: int, step: float = 1.0) -> list[Due]:
    """Advance the clock in steps, collecting what is due at each."""
    due: list[Due] = []
    for _ in range(int(seconds / step)):
        clock.advance(step)
        due += s.due(clock.now(), clock.monotonic())
    return due


def slots(due: list[Due]) -> list[str]:
    return [d.slot.strftime("%H:%M:%S") for d in due]


def test_each_slot_is_due_once_at_its_time() -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    assert s.start([phase()], clock.now(), {}) == []
    assert s.next_deadline() == datetime(2026, 11, 23, 12, 1, tzinfo=UTC)
    due = run(s, clock, 180, step=0.25)
    assert slots(due) == ["12:01:00", "12:02:00", "12:03:00"]
    assert {d.source for d in due} == {"cron"}
    assert s.due(clock.now(), clock.monotonic()) == []  # asking again gives nothing


def test_a_late_loop_still_fires_every_slot_it_slept_through() -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase(rule="cron=* * * * * *")], clock.now(), {})
    clock.advance(5.2)  # the loop was stuck (a locked database) for five seconds
    due = s.due(clock.now(), clock.monotonic())
    assert slots(due) == ["12:00:31", "12:00:32", "12:00:33", "12:00:34", "12:00:35"]
    assert {d.source for d in due} == {"cron"}


@pytest.mark.parametrize(("policy", "expected"), [
    ("none", []),
    ("last", ["13:00:00"]),
    ("all", ["12:01:00", "12:02:00", "12:58:00", "12:59:00", "13:00:00"]),
])
def test_a_clock_step_forward_follows_the_catchup_policy(policy: str, expected: list[str]) -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC, limit=1000)
    s.start([phase(rule=f"cron=0 * * * * *&catchup={policy}")], clock.now(), {})
    clock.advance(1)
    assert s.due(clock.now(), clock.monotonic()) == []
    clock.step(timedelta(hours=1))  # 12:00:31 → 13:00:31 in no time
    due = s.due(clock.now(), clock.monotonic())
    got = slots(due)
    if policy == "all":
        assert len(got) == 60 and got[:2] + got[-3:] == expected
    else:
        assert got == expected
    assert {d.source for d in due} <= {"catchup"}
    assert s.next_deadline() == datetime(2026, 11, 23, 13, 1, tzinfo=UTC)


def test_a_clock_step_back_plans_from_the_new_time() -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase()], clock.now(), {})
    first = run(s, clock, 120)
    assert slots(first) == ["12:01:00", "12:02:00"]
    clock.step(-timedelta(minutes=10))  # 12:02:30 → 11:52:30
    again = run(s, clock, 620)
    # every slot is offered again as the clock passes it; the ledger's key refuses the two
    # that fired before the step (the daemon's tests show that part)
    assert slots(again) == [f"11:{m}:00" for m in range(53, 60)] + [
        "12:00:00", "12:01:00", "12:02:00"]


def test_a_clock_set_years_back_does_not_stall_the_schedule() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))  # a bad real-time clock, then NTP
    s = Scheduler(UTC)
    s.start([phase()], clock.now(), {})
    assert s.due(clock.now(), clock.monotonic()) == []  # the loop runs before the step
    clock.step(-timedelta(days=3 * 365))
    due = run(s, clock, 120)
    assert [d.slot.year for d in due] == [2027, 2027]


def test_start_catches_up_from_the_ledger_by_policy() -> None:
    now = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)
    last = {("a.toml", "none"): now - timedelta(hours=2),
            ("a.toml", "last"): now - timedelta(hours=2),
            ("a.toml", "all"): now - timedelta(minutes=3, seconds=30),
            ("a.toml", "capped"): now - timedelta(hours=2)}
    s = Scheduler(UTC, catchup="all", limit=3)
    due = s.start([phase("none", "cron=0 * * * * *&catchup=none"),
                   phase("last", "cron=0 * * * * *&catchup=last"),
                   phase("all", "cron=0 * * * * *"),  # the default from the config: all
                   phase("capped", "cron=0 * * * * *"),
                   phase("new", "cron=0 * * * * *")], now, last)
    by_task: dict[str, list[str]] = {}
    for d in due:
        by_task.setdefault(d.phase.task, []).append(d.slot.strftime("%H:%M"))
    assert by_task == {"last": ["12:00"], "all": ["11:58", "11:59", "12:00"],
                       "capped": ["11:58", "11:59", "12:00"]}
    assert {d.source for d in due} == {"catchup"}


def test_catch_up_over_a_long_outage_of_a_per_second_rule_takes_the_newest() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    s = Scheduler(UTC, catchup="all", limit=100)
    due = s.start([phase(rule="cron=* * * * * *")], now, {("a.toml", "p"): now - timedelta(days=3)})
    assert len(due) == 100
    assert due[-1].slot == now and due[0].slot == now - timedelta(seconds=99)


def test_update_keeps_unchanged_phases_and_reschedules_changed_ones() -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    keep, change, drop = phase("keep"), phase("change", "cron=0 0 * * * *"), phase("drop")
    s.start([keep, change, drop], clock.now(), {})
    assert s.next_slot(("a.toml", "change")) == datetime(2026, 11, 23, 13, tzinfo=UTC)
    changed = s.update({"a.toml": [keep, phase("change", "cron=30 * * * * *"),
                                   phase("new", "cron=15 * * * * *")]}, clock.now())
    assert set(changed) == {("a.toml", "change"), ("a.toml", "new"), ("a.toml", "drop")}
    assert s.next_slot(("a.toml", "keep")) == datetime(2026, 11, 23, 12, 1, tzinfo=UTC)
    assert s.next_slot(("a.toml", "change")) == datetime(2026, 11, 23, 12, 1, 30, tzinfo=UTC)
    assert s.next_slot(("a.toml", "drop")) is None
    due = run(s, clock, 60)
    assert sorted((d.phase.task, d.slot.strftime("%H:%M:%S")) for d in due) == [
        ("change", "12:01:30"), ("keep", "12:01:00"), ("new", "12:01:15")]


def test_a_phase_that_turns_invalid_stops_and_a_removed_file_empties() -> None:
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase("a"), phase("b", file="b.toml")], clock.now(), {})
    s.update({"a.toml": [phase("a", severity="error")], "b.toml": []}, clock.now())
    assert len(s) == 0
    assert run(s, clock, 120) == []


def test_phases_without_cron_or_with_errors_are_not_scheduled() -> None:
    s = Scheduler(UTC)
    s.start([phase("files", "files=/data/*.csv"), phase("bad", severity="error"),
             phase("child", "")], T0, {})
    assert len(s) == 0 and s.next_deadline() is None


def test_slots_follow_the_zone_across_daylight_saving() -> None:
    # 02:30 daily in New York: on 2026-03-08 02:30 does not exist and fires at 03:00 EDT
    start = datetime(2026, 3, 7, 12, tzinfo=UTC)
    clock = FakeClock(start)
    s = Scheduler(NY)
    s.start([phase(rule="cron=0 30 2 * * *")], clock.now(), {})
    due = run(s, clock, 3 * 24 * 3600, step=600)
    assert [d.slot.astimezone(NY).isoformat() for d in due] == [
        "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]


def test_phases_sharing_a_rule_and_a_last_fire_are_caught_up_alike() -> None:
    s = Scheduler(UTC, catchup="all", limit=3)
    phases = [phase(f"p{i}", file=f"f{i // 2}.toml") for i in range(6)]
    last = {(p.file_path, p.task): T0 - timedelta(minutes=10) for p in phases[:4]}
    due = s.start(phases, T0, lambda: last)  # the history read only when asked
    assert [(d.phase.task, d.slot.strftime("%H:%M")) for d in due] == [
        (f"p{i}", t) for i in range(4) for t in ("11:58", "11:59", "12:00")]
    assert {d.source for d in due} == {"catchup"}
    assert s.phase_keys() == [(p.file_path, p.task) for p in phases]
    assert {s.next_slot(k) for k in s.phase_keys()} == {datetime(2026, 11, 23, 12, 1,
                                                                 tzinfo=UTC)}


def test_start_says_which_stored_plans_it_changes() -> None:
    s = Scheduler(UTC)
    phases = [phase("kept"), phase("moved"), phase("new"), phase("broken", severity="error"),
              phase("unplanned", rule="files=/in/*"), phase("gone", rule="cron=0 0 0 1 1 *")]
    stored = ["2026-11-23T12:01:00Z", "2026-11-23T12:00:00Z", None, "2026-11-23T12:01:00Z",
              None, "2027-01-01T00:00:00Z"]
    s.start(phases, T0, {}, stored)
    assert s.replanned == [("a.toml", "moved"), ("a.toml", "new"), ("a.toml", "broken")]
    s.start([phase("again")], T0, {})  # without stored plans there is nothing to compare
    assert s.replanned == []


def test_phases_due_together_each_get_their_next_slot() -> None:
    clock = FakeClock(T0)
    s = Scheduler(NY)
    rules = ("cron=0 * * * * *", "cron=0 */2 * * * *")
    s.start([phase(f"p{i}", rule=rules[i % 2]) for i in range(6)], clock.now(), {})
    clock.advance(30)  # 12:01:00: the phases of the first rule are due
    assert len(s.due(clock.now(), clock.monotonic())) == 3
    assert [s.next_slot(("a.toml", f"p{i}")) for i in range(2)] == [
        datetime(2026, 11, 23, 12, 2, tzinfo=UTC), datetime(2026, 11, 23, 12, 2, tzinfo=UTC)]
    clock.advance(60)  # 12:02:00: both rules
    assert len(s.due(clock.now(), clock.monotonic())) == 6
    assert [s.next_slot(("a.toml", f"p{i}")) for i in range(2)] == [
        datetime(2026, 11, 23, 12, 3, tzinfo=UTC), datetime(2026, 11, 23, 12, 4, tzinfo=UTC)]


def test_coming_is_each_phases_next_slot_due_by_then_and_nothing_advances() -> None:
    """Scheduler.coming (what flowlord/ahead.py builds ahead) against every entry read
    one by one: 300 phases on 7 rules, after a reschedule left stale heap items."""
    now = datetime(2026, 12, 1, 12, 0, 0, 300_000, tzinfo=UTC)
    rules = ["cron=* * * * * *", "cron=*/2 * * * * *", "cron=*/3 * * * * *",
             "cron=0 * * * * *", "cron=*/7 * * * * *", "cron=30 0 * * * *", "cron=5 * * * * *"]
    s = Scheduler(UTC)
    s.start([phase(f"p{i}", rules[i % 7]) for i in range(300)], now, {})
    s.update({"a.toml": [phase(f"p{i}", rules[(i + 1) % 7]) for i in range(0, 300, 2)]}, now)
    before = [(key, s.next_slot(key)) for key in s.phase_keys()]
    for seconds in (0.0, 0.7, 1.7, 2.7, 6.7, 30.0, 60.0, 3600.0):
        until = now + timedelta(seconds=seconds)
        expected = sorted((key, slot) for key, slot in before if slot is not None
                          and slot <= until)
        assert sorted(((p.file_path, p.task), slot) for p, slot in s.coming(until)) == expected
    assert [(key, s.next_slot(key)) for key in s.phase_keys()] == before


def test_a_slot_every_phase_of_which_was_rescheduled_is_no_deadline() -> None:
    """Phases queued together (one heap item for their slot): once each has left it for
    another slot, that slot is nobody's deadline, and nothing is due at it."""
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase(f"p{i}", "cron=0 0 13 * * *") for i in range(3)], clock.now(), {})
    assert s.next_deadline() == datetime(2026, 11, 23, 13, tzinfo=UTC)
    s.update({"a.toml": [phase(f"p{i}", "cron=0 0 14 * * *") for i in range(3)]},
             clock.now())
    assert s.next_deadline() == datetime(2026, 11, 23, 14, tzinfo=UTC)
    clock.advance(3600)  # 13:00:30
    assert s.due(clock.now(), clock.monotonic()) == []


def test_phases_first_due_at_one_slot_come_in_their_order_whatever_their_rules() -> None:
    """A start queues each slot's phases as one group, in the order given (file by
    file): their fires are built in that order when due, rule or no rule."""
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    rules = ("cron=0 */2 * * * *", "cron=0 2 * * * *", "cron=0 2,5 12 * * *")
    phases = [phase(f"p{i}", rules[i % 3], file=f"f{i // 4}.toml") for i in range(12)]
    s.start(phases, clock.now(), {})
    clock.advance(90)  # 12:02:00: every rule's first slot
    due = s.due(clock.now(), clock.monotonic())
    assert [(d.phase.file_path, d.phase.task) for d in due] == [
        (p.file_path, p.task) for p in phases]
    assert {d.slot for d in due} == {datetime(2026, 11, 23, 12, 2, tzinfo=UTC)}
    # fired together, each goes on to its own rule's next slot
    nexts = [datetime(2026, 11, 23, 12, 4, tzinfo=UTC), datetime(2026, 11, 23, 13, 2, tzinfo=UTC),
             datetime(2026, 11, 23, 12, 5, tzinfo=UTC)]
    assert [s.next_slot((p.file_path, p.task)) for p in phases] == [
        nexts[i % 3] for i in range(12)]
    clock.advance(120)  # 12:04:00: the first rule's alone
    assert [d.phase.task for d in s.due(clock.now(), clock.monotonic())] == [
        f"p{i}" for i in range(0, 12, 3)]


def test_phases_queued_for_a_slot_later_join_its_group() -> None:
    """A refresh that adds 100 phases of one rule, file by file, queues them in the
    group of their slot: one heap item (the burst of bench/daemon.py is 10,000 such
    phases, one pop at their slot), and they fire in the order they came."""
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase("old", "cron=0 0 13 * * *")], clock.now(), {})
    for f in range(10):
        s.update({f"f{f}.toml": [phase(f"p{i}", "cron=0 0 13 * * *", file=f"f{f}.toml")
                                 for i in range(10)]}, clock.now())
    assert len(s._heap) == 1
    clock.advance(3600)
    due = s.due(clock.now(), clock.monotonic())
    assert [(d.phase.file_path, d.phase.task) for d in due] == [("a.toml", "old")] + [
        (f"f{f}.toml", f"p{i}") for f in range(10) for i in range(10)]
    assert len(s._heap) == 1  # and they move on together
    assert s.next_deadline() == datetime(2026, 11, 24, 13, tzinfo=UTC)


def test_a_phase_queued_again_for_its_groups_slot_is_due_once() -> None:
    """A phase leaves its group and comes back to the same slot (its rule edited to the
    same time, its file removed and put back): it is in the group's list twice, and
    still due once at each slot, and coming once."""
    clock = FakeClock(T0)
    s = Scheduler(UTC)
    s.start([phase("p", "cron=0 0 13 * * *"), phase("q", "cron=0 0 13 * * *")],
            clock.now(), {})
    s.update({"a.toml": [phase("p", "cron=0 0 13 * * *&catchup=last"),
                         phase("q", "cron=0 0 13 * * *")]}, clock.now())
    s.update({"a.toml": [phase("p", "cron=0 0 13 * * *&catchup=last")]}, clock.now())
    s.update({"a.toml": [phase("p", "cron=0 0 13 * * *&catchup=last"),
                         phase("q", "cron=0 0 13 * * *")]}, clock.now())
    assert sorted(p.task for p, _ in s.coming(datetime(2026, 11, 23, 13, tzinfo=UTC))) == [
        "p", "q"]
    for hours in (1, 24):  # at 13:00, and again the day after
        clock.advance(hours * 3600)
        assert sorted(d.phase.task for d in s.due(clock.now(), clock.monotonic())) == [
            "p", "q"]
