"""The ledger on its own (flowlord/ledger.py): a real database, a scheduler and the times
given, no daemon. Due slots become fires recorded once with their tasks; catch-up at
start; a locked database keeps them pending; a fire the database refuses is recorded
alone with why; with a lease, slots wait for their claim."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import apsw

from flowlord import logs
from flowlord.ledger import Ledger
from flowlord.loader import Loader
from flowlord.model import Fire, Task
from flowlord.scheduler import Scheduler
from flowlord.store import Store
from flowlord.tasks import Context
from tests.helpers import store_rows, utc

EVERY_10S = '[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *{extra}"\n'
T0 = utc(2026, 12, 1, 12, 0, 5)


def ledger_on(store: Store, catchup: str = "none") -> Ledger:
    return Ledger(Scheduler(ZoneInfo("UTC"), catchup=catchup), logs.get("test"))


def ctx(now: datetime) -> Context:
    return Context(ZoneInfo("UTC"), "/nonexistent", now)


def at(seconds: float) -> tuple[datetime, float]:
    """The wall clock and elapsed time, `seconds` after T0."""
    return T0 + timedelta(seconds=seconds), 1000.0 + seconds


def clock() -> float:
    return 0.0


def loaded(wf: Path, store: Store, text: str) -> None:
    (wf / "a.toml").write_text(text)
    Loader(str(wf), store).refresh()


def slots(store: Store) -> list[tuple[object, ...]]:
    return store_rows(store, "SELECT scheduled_for, source, error FROM fires ORDER BY 1")


def test_due_slots_are_recorded_once_with_their_tasks_and_the_plan(
        wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    ledger = ledger_on(store)
    ledger.start(store, T0, ctx(T0))
    for second in (5, 15, 20):  # 12:00:10, :20 and :25
        now, mono = at(second)
        ledger.fire_due(now, mono, ctx(now))
        ledger.write(store, now, clock)
    assert slots(store) == [("2026-12-01T12:00:10Z", "cron", ""),
                            ("2026-12-01T12:00:20Z", "cron", "")]
    assert store_rows(store, "SELECT scheduled_for FROM tasks ORDER BY 1") == [
        ("2026-12-01T12:00:10Z",), ("2026-12-01T12:00:20Z",)]
    assert store_rows(store, "SELECT next_fire FROM workflow_phases") == [
        ("2026-12-01T12:00:30Z",)]
    assert not ledger.waiting


def test_a_slot_recorded_before_is_never_recorded_again(wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    first = ledger_on(store)
    first.start(store, T0, ctx(T0))
    now, mono = at(10)
    first.fire_due(now, mono, ctx(now))
    again = list(first.pending)
    first.write(store, now, clock)
    second = ledger_on(store)  # a restart that built the same slot again
    second.pending = again
    second.write(store, now, clock)
    assert len(slots(store)) == 1
    assert store_rows(store, "SELECT count(*) FROM tasks") == [(1,)]


def test_start_catches_up_what_the_policy_asks_for(wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra="&catchup=last"))
    ledger = ledger_on(store)
    ledger.start(store, T0, ctx(T0))
    now, mono = at(10)
    ledger.fire_due(now, mono, ctx(now))
    ledger.write(store, now, clock)
    later = T0 + timedelta(minutes=5)  # down for five minutes: 29 slots missed
    restarted = ledger_on(store)
    restarted.start(store, later, ctx(later))
    restarted.write(store, later, clock)
    assert slots(store) == [("2026-12-01T12:00:10Z", "cron", ""),
                            ("2026-12-01T12:05:00Z", "catchup", "")]


def test_a_restart_rewrites_only_the_plans_that_differ(wf: Path, store: Store) -> None:
    (wf / "a.toml").write_text(EVERY_10S.format(extra="") + '[[phase]]\ntask = "daily"\n'
                               'rule = "cron=0 0 0 * * *"\n'
                               '[[phase]]\ntask = "broken"\nrule = "cron=nonsense"\n')
    Loader(str(wf), store).refresh()
    first = ledger_on(store)
    first.start(store, T0, ctx(T0))
    assert list(first.unplanned) == [("a.toml", "tick"), ("a.toml", "daily")]  # file order
    first.write(store, T0, clock)
    plan = "SELECT task, next_fire FROM workflow_phases ORDER BY position"
    assert store_rows(store, plan) == [("tick", "2026-12-01T12:00:10Z"),
                                       ("daily", "2026-12-02T00:00:00Z"), ("broken", None)]
    same = ledger_on(store)  # a restart before the next slot: nothing to write
    same.start(store, T0 + timedelta(seconds=1), ctx(T0))
    assert not same.unplanned
    later = T0 + timedelta(seconds=30)  # a restart after it: only that phase's plan moves
    moved = ledger_on(store)
    moved.start(store, later, ctx(later))
    assert list(moved.unplanned) == [("a.toml", "tick")]
    store.conn.execute("UPDATE workflow_phases SET next_fire = '2030-01-01T00:00:00Z' "
                       "WHERE task = 'broken'")  # a plan no schedule gives: cleared
    cleared = ledger_on(store)
    cleared.start(store, T0, ctx(T0))
    assert list(cleared.unplanned) == [("a.toml", "broken")]
    cleared.write(store, T0, clock)
    assert store_rows(store, plan)[2] == ("broken", None)


def test_the_ledgers_history_is_read_only_when_a_policy_catches_up(
        wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    reads: list[int] = []
    last_fires = store.last_fires

    def counted() -> dict[tuple[str, str], str]:
        reads.append(1)
        return last_fires()
    store.last_fires = counted  # type: ignore[method-assign]
    ledger_on(store).start(store, T0, ctx(T0))  # catchup none: nothing to look up
    assert reads == []
    ledger_on(store, catchup="last").start(store, T0, ctx(T0))
    assert reads == [1]


def test_a_locked_database_keeps_fires_pending_until_it_is_free(
        tmp_path: Path, wf: Path) -> None:
    store = Store(str(tmp_path / "f.db"), busy_timeout_ms=0)
    try:
        loaded(wf, store, EVERY_10S.format(extra=""))
        ledger = ledger_on(store)
        ledger.start(store, T0, ctx(T0))
        holder = apsw.Connection(str(tmp_path / "f.db"))
        holder.execute("BEGIN IMMEDIATE")
        for second in (10, 20):
            now, mono = at(second)
            ledger.fire_due(now, mono, ctx(now))
            ledger.write(store, now, clock)
        assert ledger.waiting and len(ledger.pending) == 2 and slots(store) == []
        holder.execute("COMMIT")
        holder.close()
        ledger.write(store, at(21)[0], clock)
        assert len(slots(store)) == 2 and not ledger.waiting
    finally:
        store.close()


def test_a_fire_the_database_refuses_is_recorded_alone_with_why(
        wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra="") + '[[phase]]\ntask = "other"\n')
    ledger = ledger_on(store)
    good = Fire("a.toml", "tick", "2026-12-01T12:00:10Z", "cron",
                [Task(type="tick", id="x", created="2026-12-01T12:00:10Z")])
    bad = Fire("a.toml", "other", "2026-12-01T12:00:10Z", "trigger",
               [Task(type="other", id="", created="2026-12-01T12:00:10Z")])  # an empty id
    ledger.pending = [bad, good]
    ledger.write(store, at(10)[0], clock)
    assert store_rows(store, "SELECT phase, error FROM fires ORDER BY phase") == [
        ("other", "cannot store its tasks: ConstraintError: CHECK constraint failed: id <> ''"),
        ("tick", "")]
    assert store_rows(store, "SELECT type FROM tasks") == [("tick",)]
    assert not ledger.pending


class Claims:
    """A lease holder's answers without a Redis (flowlord/standby.py's Leadership is
    tested against a real redis-server in tests/test_standby.py)."""

    def __init__(self, leading: bool, owners: dict[str, str | None] | None) -> None:
        self.leading = leading
        self.owners = owners  # slot → who claimed it; None: Redis cannot be asked

    def claim(self, fires: Sequence[Fire]) -> list[Fire] | None:
        if self.owners is None:
            return None
        return [f if self.owners.get(f.scheduled_for) in (None, "me") else
                Fire(f.file_path, f.phase, f.scheduled_for, f.source, (), "fired by flowlord b")
                for f in fires]

    def settle(self, fires: Sequence[Fire]) -> tuple[list[Fire], list[Fire]] | None:
        if self.owners is None:
            return None
        return ([f for f in fires if self.owners.get(f.scheduled_for)],
                [f for f in fires if not self.owners.get(f.scheduled_for)])


def test_with_a_lease_slots_wait_for_their_claim(wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    claims: Any = Claims(leading=False, owners=None)
    ledger = Ledger(Scheduler(ZoneInfo("UTC")), logs.get("test"), claims)
    ledger.start(store, T0, ctx(T0))
    now, mono = at(10)
    ledger.fire_due(now, mono, ctx(now))
    ledger.write(store, now, clock)  # Redis away: held, not recorded
    assert len(ledger.held) == 1 and slots(store) == []
    claims.owners = {}  # back, nobody claimed it: a standby keeps holding it
    ledger.write(store, now, clock)
    assert len(ledger.held) == 1 and slots(store) == []
    claims.leading = True  # it leads now: it claims the slot and records it
    ledger.write(store, now, clock)
    assert slots(store) == [("2026-12-01T12:00:10Z", "cron", "")] and not ledger.held


def test_a_slot_another_daemon_claimed_is_recorded_as_fired_there(
        wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    claims: Any = Claims(leading=True, owners={"2026-12-01T12:00:10Z": "b"})
    ledger = Ledger(Scheduler(ZoneInfo("UTC")), logs.get("test"), claims)
    ledger.start(store, T0, ctx(T0))
    now, mono = at(10)
    ledger.fire_due(now, mono, ctx(now))
    ledger.write(store, now, clock)
    assert slots(store) == [("2026-12-01T12:00:10Z", "cron", "fired by flowlord b")]
    assert store_rows(store, "SELECT count(*) FROM tasks") == [(0,)]


def test_operator_fires_are_recorded_at_once_and_only_the_new_ones_returned(
        wf: Path, store: Store) -> None:
    loaded(wf, store, EVERY_10S.format(extra=""))
    ledger = ledger_on(store)
    fire = Fire("a.toml", "tick", "2026-12-01T09:00:00Z", "trigger",
                [Task(type="tick", id="x", created="2026-12-01T12:00:00Z")])
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert ledger.record_now(store, [fire], now) == [fire]
    assert ledger.record_now(store, [fire], now) == []


def test_fire_lateness_is_observed_once_per_cron_fire(
        wf: Path, store: Store, monkeypatch: Any) -> None:
    """Fires of one slot are observed together (metrics.observe_all): the count and sum
    are those of one observation each."""
    from prometheus_client import CollectorRegistry, Histogram

    from flowlord import metrics

    lateness = Histogram("lateness", "", buckets=(0.5, 1, 5), registry=CollectorRegistry())
    monkeypatch.setattr(metrics, "FIRE_LATENESS", lateness)
    loaded(wf, store, "".join(f'[[phase]]\ntask = "t{i}"\nrule = "cron=*/10 * * * * *"\n\n'
                              for i in range(3)))
    ledger = ledger_on(store)
    ledger.start(store, T0, ctx(T0))
    now, mono = at(5.75)  # 12:00:10 fired 0.75 s late
    ledger.fire_due(now, mono, ctx(now))
    ledger.write(store, now, clock)
    samples = lateness.collect()[0].samples
    assert [s.value for s in samples if s.name == "lateness_bucket"] == [0, 3, 3, 3]
    assert [s.value for s in samples if s.name in ("lateness_count", "lateness_sum")] == [
        3, 3 * 0.75]
