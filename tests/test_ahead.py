"""Fires built a moment before their slot (flowlord/ahead.py), through the ledger on a
real database with the times given: taken when the slot comes, created at the slot;
never for a phase reloaded meanwhile, a pause made meanwhile or in force at the slot, a
slot long past or caught up after a clock step, nor a phase whose tasks read a
meta-file; a fire that cannot be built is said once, at its slot."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from flowlord import ahead, ledger
from flowlord.ahead import AHEAD, FRESH
from flowlord.clock import rfc3339
from flowlord.ledger import Ledger
from flowlord.loader import Loader
from flowlord.pauses import target_of
from flowlord.scheduler import Due
from flowlord.store import Store, write_txn
from tests.helpers import store_rows, utc
from tests.test_ledger import clock, ctx, ledger_on

SLOT = utc(2026, 12, 1, 12, 0, 10)
PHASE = '[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *{rule}"\ntemplate = "{template}"\n'


def load(wf: Path, store: Store, template: str = "?v=1", rule: str = "") -> None:
    (wf / "a.toml").write_text(PHASE.format(template=template, rule=rule))
    Loader(str(wf), store).refresh()


def started(store: Store, now: datetime) -> Ledger:
    ledger = ledger_on(store)
    ledger.start(store, now, ctx(now))
    ledger.write(store, now, clock)
    return ledger


BEFORE = SLOT - timedelta(seconds=0.3)  # within AHEAD of the slot


def built_ahead(wf: Path, store: Store, **phase: str) -> Ledger:
    """A ledger started on the phase 5 s before BEFORE, the slot's fires built at BEFORE."""
    load(wf, store, **phase)
    ledger = started(store, BEFORE - timedelta(seconds=5))
    ledger.build_ahead(BEFORE, ctx)
    return ledger


def fire_at(ledger: Ledger, store: Store, now: datetime) -> list[tuple[object, ...]]:
    """The slot's fire recorded at `now`: its tasks' (info, created), and its error."""
    ledger.fire_due(now, 1000.0 + now.timestamp(), ctx(now))
    ledger.write(store, now, clock)
    return store_rows(store, "SELECT t.info, t.created, f.error FROM fires AS f LEFT JOIN "
                             "tasks AS t USING (file_path, phase, scheduled_for)")


def test_a_fire_built_ahead_is_taken_at_its_slot_its_tasks_created_at_the_slot(
        wf: Path, store: Store) -> None:
    load(wf, store)
    ledger = started(store, BEFORE - timedelta(seconds=5))
    assert ledger.ahead.wake_before(SLOT) == AHEAD  # not built yet: wake a moment before
    assert ledger.next_turn() == SLOT - AHEAD
    ledger.build_ahead(BEFORE - AHEAD - timedelta(seconds=0.1), ctx)  # too early: nothing
    assert ledger.ahead.wake_before(SLOT) == AHEAD
    ledger.build_ahead(BEFORE, ctx)
    assert ledger.next_turn() == SLOT
    assert ledger.ahead.wake_before(SLOT) == timedelta(0)
    assert fire_at(ledger, store, SLOT + timedelta(seconds=0.2)) == [
        ("?v=1", "2026-12-01T12:00:10.000Z", "")]


def test_without_one_the_tasks_are_created_when_the_slot_is_fired(
        wf: Path, store: Store) -> None:
    """The same slot fired without a build ahead: what the build ahead changes is only
    the created time (to the slot), and a slot fired past FRESH is built again."""
    load(wf, store)
    ledger = started(store, SLOT - timedelta(seconds=5))
    assert fire_at(ledger, store, SLOT + timedelta(seconds=0.2)) == [
        ("?v=1", "2026-12-01T12:00:10.200Z", "")]
    late = SLOT + timedelta(seconds=10) + FRESH  # the next slot, built ahead, fired late
    ledger.build_ahead(SLOT + timedelta(seconds=9.8), ctx)
    assert fire_at(ledger, store, late)[-1] == ("?v=1", "2026-12-01T12:00:21.000Z", "")


def test_a_phase_reloaded_after_its_fire_was_built_ahead_fires_as_it_is_now(
        wf: Path, store: Store) -> None:
    ledger = built_ahead(wf, store)
    load(wf, store, template="?v=2")  # its rule unchanged: its slot stays planned
    ledger.reschedule({"a.toml": store.phases(file_path="a.toml")}, BEFORE)
    assert fire_at(ledger, store, SLOT) == [("?v=2", "2026-12-01T12:00:10.000Z", "")]


def test_a_pause_made_after_a_fire_was_built_ahead_holds_at_the_slot(
        wf: Path, store: Store) -> None:
    ledger = built_ahead(wf, store)
    with write_txn(store.conn):
        store.add_pause(target_of(store.phases()[0]), "me", "deploy", rfc3339(BEFORE), None)
    ledger.pauses.load(store, BEFORE)
    [(info, created, error)] = fire_at(ledger, store, SLOT)
    assert (info, created) == (None, None) and error.startswith("paused by me")


def test_a_phase_reading_a_meta_file_is_built_when_due(wf: Path, store: Store,
                                                      tmp_path: Path) -> None:
    """Its file is read when the slot comes: a row written after the moment before the
    slot is in the fire."""
    meta = tmp_path / "rows.json"
    meta.write_text('{"k": "a"}\n')
    ledger = built_ahead(wf, store, template="?k={meta:k}", rule=f"&meta-file={meta}")
    assert ledger.ahead.wake_before(SLOT) == timedelta(0)  # looked at: no second wake
    meta.write_text('{"k": "a"}\n{"k": "b"}\n')
    assert sorted(r[0] for r in fire_at(ledger, store, SLOT)) == ["?k=a", "?k=b"]


def test_after_the_clock_steps_back_fires_are_built_ahead_again(wf: Path, store: Store) -> None:
    """A slot built ahead, then the clock set back a minute: the slots from the new now
    are built ahead again (not only once the clock has passed the old one)."""
    ledger = built_ahead(wf, store)
    back = BEFORE - timedelta(minutes=1, seconds=2)  # 11:59:07.7; its next slot :10
    ledger.fire_due(BEFORE, 1000.0, ctx(BEFORE))  # nothing due yet
    ledger.fire_due(back, 1000.1, ctx(back))  # a step back: planned from the new now
    ledger.write(store, back, clock)
    ledger.build_ahead(back, ctx)  # the end of that turn: too early to build
    slot = ledger.scheduler.next_deadline()
    assert slot is not None and slot < SLOT and ledger.ahead.wake_before(slot) == AHEAD
    ledger.build_ahead(slot - timedelta(seconds=0.3), ctx)
    assert ledger.ahead.wake_before(slot) == timedelta(0)


def pause(store: Store, ledger: Ledger, at: datetime) -> None:
    with write_txn(store.conn):
        store.add_pause(target_of(store.phases()[0]), "me", "deploy", rfc3339(at), None)
    ledger.pauses.load(store, at)


def test_a_phase_paused_at_its_slot_is_not_built_ahead(wf: Path, store: Store) -> None:
    """Nothing is built for a slot that will be recorded as paused, with no task."""
    load(wf, store)
    ledger = started(store, BEFORE - timedelta(seconds=5))
    pause(store, ledger, BEFORE - timedelta(seconds=1))
    ledger.build_ahead(BEFORE, ctx)
    assert ledger.ahead.wake_before(SLOT) == timedelta(0)  # looked at: no second wake
    [(phase, slot)] = ledger.scheduler.coming(SLOT)  # the very phase the slot fires from
    assert slot == SLOT and ledger.ahead.take(Due(phase, SLOT, "cron"), SLOT) is None
    [(info, _, error)] = fire_at(ledger, store, SLOT)
    assert info is None and error.startswith("paused by me")


def test_a_slot_caught_up_after_a_clock_step_is_built_as_a_catch_up(
        wf: Path, store: Store) -> None:
    """The clock set 2.8 s forward between a turn and the slot, its fire built ahead
    meanwhile: the slot counts as jumped over, and fires as a catch-up (created when
    caught up), not as the cron fire built for it, though it comes within FRESH."""
    load(wf, store, rule="&catchup=all")
    ledger = started(store, SLOT - timedelta(seconds=5))
    ledger.fire_due(SLOT - timedelta(seconds=2.4), 1000.0, ctx(SLOT))  # nothing due yet
    ledger.build_ahead(BEFORE, ctx)
    now = SLOT + timedelta(seconds=0.5)
    ledger.fire_due(now, 1000.1, ctx(now))  # 2.9 s on the wall clock in 0.1 s of real time
    ledger.write(store, now, clock)
    assert store_rows(store, "SELECT f.scheduled_for, f.source, t.created FROM fires AS f "
                             "JOIN tasks AS t USING (file_path, phase, scheduled_for)") == [
        ("2026-12-01T12:00:10Z", "catchup", "2026-12-01T12:00:10.500Z")]


def test_a_fire_that_cannot_be_built_is_said_once_at_its_slot(
        wf: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in building (build_fire raising) is logged and recorded on the fire when the
    slot comes; the try a moment before says nothing of its own."""
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")
    monkeypatch.setattr(ahead, "build_fire", broken)
    monkeypatch.setattr(ledger, "build_fire", broken)
    with capture_logs() as logged:
        fires = fire_at(built_ahead(wf, store), store, SLOT)
    assert fires == [(None, None, "internal error: RuntimeError: a bug")]
    assert [e["event"] for e in logged if "build" in e["event"]] == [
        "cannot build the tasks of a fire"]
