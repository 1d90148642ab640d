"""The schema makes contradictions impossible; migrations; Debian's sqlite3 reads it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import apsw
import pytest

from flowlord.loader import Loader
from flowlord.store import Store, StoreError, connect, write_txn
from flowlord.store.schema import SCHEMA_VERSION
from flowlord.store.taskrows import task_filter


def test_connection_pragmas(store: Store) -> None:
    c = store.conn
    assert c.pragma("journal_mode") == "wal"
    assert c.pragma("foreign_keys") == 1
    assert c.pragma("synchronous") == 1  # NORMAL
    assert c.pragma("user_version") == SCHEMA_VERSION


def insert_file(store: Store, path: str = "a.toml") -> None:
    store.conn.execute(
        "INSERT INTO workflow_files (file_path, file_hash, loaded_at) VALUES (?, ?, ?)",
        (path, "0" * 32, "2026-01-01T00:00:00Z"))


def insert_phase(store: Store, **values: object) -> None:
    row = {"file_path": "a.toml", "task": "t", "status": "", "severity": "ok", "position": 0,
           "retry": 0, **values}
    store.conn.execute(
        f"INSERT INTO workflow_phases ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()))


@pytest.mark.parametrize(
    "values",
    [
        {"severity": "ok", "status": "something"},       # ok must have an empty status
        {"severity": "error", "status": ""},             # a problem must say why
        {"severity": "fatal", "status": "x"},            # unknown severity
        {"retry": -1},
        {"file_path": "missing.toml"},                   # foreign key
        {"task": None},
    ],
)
def test_contradictory_phase_rows_are_refused(store: Store, values: dict[str, object]) -> None:
    insert_file(store)
    with pytest.raises(apsw.ConstraintError):
        insert_phase(store, **values)


def test_same_task_twice_in_a_file_is_refused(store: Store) -> None:
    insert_file(store)
    insert_phase(store, task="t", position=0)
    with pytest.raises(apsw.ConstraintError):
        insert_phase(store, task="t", position=1)


def test_bad_file_hash_is_refused(store: Store) -> None:
    with pytest.raises(apsw.ConstraintError):
        store.conn.execute(
            "INSERT INTO workflow_files (file_path, file_hash, loaded_at) "
            "VALUES ('a', 'xyz', 'now')")


def test_deleting_or_renaming_a_file_cascades_to_its_phases(store: Store) -> None:
    insert_file(store)
    insert_phase(store)
    store.conn.execute("UPDATE workflow_files SET file_path = 'b.toml'")
    assert [p.file_path for p in store.phases()] == ["b.toml"]
    store.conn.execute("DELETE FROM workflow_files")
    assert store.phases() == []


def test_write_txn_rolls_back_everything_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), write_txn(store.conn):
        insert_file(store)
        raise RuntimeError("boom")
    assert store.files() == []
    assert not store.conn.in_transaction


def test_write_txn_raises_the_first_error_when_sqlite_ended_the_transaction(
        store: Store) -> None:
    """A full disk ends the transaction inside SQLite: the error raised is the disk's,
    not a failed ROLLBACK's "no transaction is active"."""
    store.conn.pragma("max_page_count", store.conn.pragma("page_count") + 2)
    with pytest.raises(apsw.FullError), write_txn(store.conn):
        store.conn.execute("INSERT INTO workflow_files (file_path, file_hash, loaded_at, "
                           "status) VALUES ('big.toml', '', '', zeroblob(1000000))")
    assert not store.conn.in_transaction
    store.conn.pragma("max_page_count", 1_000_000)
    with write_txn(store.conn):  # the connection goes on working
        insert_file(store)
    assert len(store.files()) == 1


def test_write_txn_rolls_back_when_commit_fails(store: Store) -> None:
    """A COMMIT refused (here: a deferred foreign key still broken) leaves SQLite's
    transaction open; it is rolled back, and the connection can write again."""
    store.conn.pragma("defer_foreign_keys", True)
    with pytest.raises(apsw.ConstraintError), write_txn(store.conn):
        store.conn.execute("INSERT INTO workflow_phases (file_path, task) "
                           "VALUES ('nowhere.toml', 'orphan')")
    assert not store.conn.in_transaction
    assert store.phases() == []
    with write_txn(store.conn):
        insert_file(store)
    assert len(store.files()) == 1


def test_newer_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    connect(db).close()
    c = apsw.Connection(db)
    c.pragma("user_version", SCHEMA_VERSION + 5)
    c.close()
    newer = rf"version {SCHEMA_VERSION + 5}.*version {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=newer):
        connect(db)


def test_readonly_open_of_a_missing_database_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="flowlord refresh"):
        Store(str(tmp_path / "none.db"), readonly=True)


def test_views_answer_the_debugging_questions(upstream: Path, store: Store) -> None:
    Loader(str(upstream / "workflow"), store).refresh()
    broken = list(store.conn.execute("SELECT file_path, task, severity FROM broken_phases"))
    assert ("f1.toml", "task6", "ok") not in broken
    assert ("f2.toml", "task1", "warning") in broken
    edges = store.edges()
    assert ("f1.toml", "task1:t2", "task2") in edges
    assert ("f1.toml", "task1:t4", "task2") in edges  # dependsOn topic matches every job
    assert ("f1.toml", "task1:t2", "task5:t5") in edges
    assert ("f1.toml", "task1:t4", "task5:t5") not in edges
    summary = {r[0]: r[5:] for r in store.files()}
    assert summary["f1.toml"] == (7, 0, 0)


def test_debian_sqlite3_reads_the_schema_while_it_is_live(upstream: Path, store: Store) -> None:
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "Debian's sqlite3 is needed (.ci/run installs it)"
    Loader(str(upstream / "workflow"), store).refresh()
    out = subprocess.run(
        [sqlite3, "-readonly", store.path],
        input="PRAGMA integrity_check; SELECT count(*) FROM workflow_phases;"
              "SELECT count(*) FROM broken_phases; SELECT count(*) FROM phase_edges;"
              "SELECT count(*) FROM file_summary;",
        capture_output=True, text=True, check=True).stdout.split()
    phases = len(store.phases())
    assert out == ["ok", str(phases), str(len(store.phases(severity="warning"))
                                          + len(store.phases(severity="error"))),
                   str(len(store.edges())), "4"]


def test_delete_history_removes_old_finished_rows_in_batches(store: Store) -> None:
    from flowlord.model import Fire, NewTask, Task
    from flowlord.store import write_txn

    def task(i: int) -> Task:
        return Task(type="t", info=str(i), id=f"id{i}", created="2026-01-01T00:00:00Z")
    with write_txn(store.conn):
        store.record_fires([Fire("a.toml", "t", f"2026-01-0{d}T00:00:00Z", "cron",
                                 [task(d)]) for d in range(1, 6)], "2026-01-01T00:00:00.000Z")
        old = store.claim("t", 4, "2026-02-01T00:00:00.000Z")  # 4 run; the 5th never starts
        for s in old[:3]:
            store.finish(s.task_no, "2026-01-02T00:00:00Z", "error", "x")
        store.finish(old[3].task_no, "2026-06-01T00:00:00Z", "complete", "")  # recent
        store.add_alert(old[0].task_no, "failed", old[0].task, "x", "2026-01-02T00:00:00Z")
        store.add_tasks([NewTask.of(task(9), "a.toml", "child", parent_no=old[0].task_no)])
    deleted = []
    while True:
        with write_txn(store.conn):
            n = store.delete_history("2026-03-01T00:00:00Z", 2)
        if not n:
            break
        deleted.append(n)
    assert deleted == [2, 1, 2, 1]  # 3 tasks in batches of 2, then the 3 fires no task needs
    rows = list(store.conn.execute("SELECT info, ended, parent_no FROM tasks ORDER BY info"))
    assert rows == [("4", "2026-06-01T00:00:00Z", None), ("5", None, None), ("9", None, None)]
    assert list(store.conn.execute("SELECT count(*) FROM alerts")) == [(0,)]
    fires = [r[0] for r in store.conn.execute("SELECT scheduled_for FROM fires ORDER BY 1")]
    assert fires == ["2026-01-04T00:00:00Z", "2026-01-05T00:00:00Z"]  # their tasks remain
    assert store.foreign_key_problems() == []


@pytest.mark.parametrize(("filters", "index"), [
    ({"type": "t"}, "tasks_by_type"),
    ({"type": "t", "result": "error"}, "tasks_by_type"),
    ({"type": "t", "result": "complete"}, "tasks_by_type"),  # not most of the table
    ({"result": "error"}, "tasks_by_result"),
    ({"result": "none"}, "tasks_unfinished"),
    ({"type": "t", "result": "none", "before": 9}, "tasks_unfinished"),
    ({"job": "j"}, "tasks_by_job"),  # a job that never ran: not every task read
    ({"type": "t", "job": "j", "result": "error"}, "tasks_by_job"),
    ({"job": "j", "result": "none"}, "tasks_unfinished"),
])
def test_task_listings_read_through_the_index_chosen_for_them(
        tmp_path: Path, filters: dict[str, Any], index: str) -> None:
    """The planner has no statistics: each listing is steered to its index, and this
    pins the plan so a new index cannot quietly take over (as tasks_by_type once did)."""
    store = Store(str(tmp_path / "f.db"))
    source, args = task_filter(**filters)
    plan = " ".join(str(r[3]) for r in store.conn.execute(
        f"EXPLAIN QUERY PLAN SELECT task_no {source} ORDER BY task_no DESC LIMIT 10", args))
    store.close()
    assert f"INDEX {index} " in plan, plan
