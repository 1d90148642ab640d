"""The dispatcher on a real database, with a bus that completes tasks in-process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from flowlord import dispatch, logs
from flowlord.loader import Loader
from flowlord.model import Fire, StoredTask, Task
from flowlord.store import Store, utc_now_ms, write_txn
from flowlord.tasks import Context
from flowlord.workers import Done, now_text


class InstantBus:
    """Completes every task it is sent with `result`, at once."""

    def __init__(self, result: str = "complete") -> None:
        self.result = result
        self.done: list[Done] = []

    def open_topics(self) -> list[str] | None:
        return None

    def capacity(self, topic: str) -> int:
        return 100

    def send(self, stored: StoredTask, timeout_seconds: float | None) -> None:
        self.done.append(Done(stored.task_no, self.result, "", now_text()))

    def receive(self, wait: float) -> list[Done]:
        found, self.done = self.done, []
        return found

    def ack(self, done: Done) -> None:
        pass

    def close(self, grace: float) -> list[Done]:
        return self.receive(0)


def setup(wf: Path, store: Store, bus: InstantBus) -> dispatch.Dispatcher:
    (wf / "a.toml").write_text('[[phase]]\ntask = "p"\n\n[[phase]]\ntask = "c"\n'
                               'dependsOn = "p"\n')
    loader = Loader(str(wf), store)
    loader.refresh()
    task = Task(type="p", meta="workflow=a.toml", id="id1", created="2026-01-01T00:00:00Z")
    with write_txn(store.conn):
        store.record_fires([Fire("a.toml", "p", "2026-01-01T00:00:00Z", "trigger", [task])],
                           utc_now_ms())
    return dispatch.Dispatcher(loader, bus, Context(ZoneInfo("UTC"), str(wf),
                                                    datetime.now(UTC)),
                               timedelta(hours=4), logs.get("test"))


def rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    return list(store.conn.execute(sql))


def test_a_turn_claims_sends_and_records_with_children(wf: Path, store: Store) -> None:
    d = setup(wf, store, InstantBus())
    d.turn()  # claims p and sends it; the bus completes it at once
    d.turn()  # records p's result, which creates its child
    d.turn()  # claims and sends the child
    d.turn()  # records the child
    assert rows(store, "SELECT type, result, id, parent_no FROM tasks ORDER BY task_no") == [
        ("p", "complete", "id1", None), ("c", "complete", "id1", 1)]


def test_a_failure_working_out_effects_still_records_the_result_and_alerts(
        wf: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    d = setup(wf, store, InstantBus())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(dispatch, "after_result", broken)
    d.turn()
    d.turn()
    assert rows(store, "SELECT type, result FROM tasks") == [("p", "complete")]
    assert rows(store, "SELECT kind, message FROM alerts") == [
        ("alert", "internal error after the result: boom")]
    assert d.pending == []
