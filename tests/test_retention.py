"""Daily deletion of old history, in batches, through the real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flowlord import logs
from flowlord.model import Fire, Task
from flowlord.retention import BATCH, BATCHES_PER_TURN, EVERY, FIRST_AFTER, Retention
from flowlord.store import Store, write_txn

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def fill(store: Store, n: int, ended: str) -> None:
    tasks = [Task(type="t", info=str(i), id=f"id{i}", created="2026-01-01T00:00:00Z")
             for i in range(n)]
    with write_txn(store.conn):
        store.record_fires([Fire("a.toml", "t", f"slot-{ended}", "cron", tasks)], ended)
        for s in store.claim("t", n, "2026-12-31T00:00:00.000Z"):
            store.finish(s.task_no, ended, "complete", "")


def table_count(store: Store, table: str) -> int:
    return int(store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_old_history_goes_in_batches_a_few_per_turn_then_daily(store: Store) -> None:
    n = BATCH * BATCHES_PER_TURN + 10  # more than one turn can delete
    fill(store, n, "2026-01-01T00:00:00Z")  # older than 90 days
    fill(store, 3, "2026-11-20T00:00:00Z")  # recent: stays
    retention = Retention(timedelta(days=90), logs.get("test"), 1000.0)
    start = retention.next_run
    retention.tick(store, NOW, start - 1)  # not yet (a minute after the start)
    assert table_count(store, "tasks") == n + 3
    retention.tick(store, NOW, start + FIRST_AFTER)
    assert table_count(store, "tasks") == 13  # one turn: BATCHES_PER_TURN batches
    retention.tick(store, NOW, start + FIRST_AFTER + 1)  # the next turn finishes the job
    assert table_count(store, "tasks") == 3 and table_count(store, "fires") == 1
    assert retention.next_run == start + FIRST_AFTER + 1 + EVERY
    fill(store, 2, "2026-01-02T00:00:00Z")
    retention.tick(store, NOW, retention.next_run - 1)  # daily, not before
    assert table_count(store, "tasks") == 5


def test_a_task_log_goes_with_its_task(store: Store, tmp_path: Path) -> None:
    fill(store, 3, "2026-01-01T00:00:00Z")  # old: they go
    fill(store, 2, "2026-11-20T00:00:00Z")  # recent: they stay
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    numbers = [n for n, in store.conn.execute("SELECT task_no FROM tasks")]
    for n in numbers:
        (logs_dir / f"{n}.log").write_bytes(b"said something\n")
    retention = Retention(timedelta(days=90), logs.get("test"), 0.0, str(logs_dir))
    retention.tick(store, NOW, FIRST_AFTER)
    kept = {n for n, in store.conn.execute("SELECT task_no FROM tasks")}
    assert len(kept) == 2
    assert {int(p.stem) for p in logs_dir.iterdir()} == kept  # no orphan, none missing
