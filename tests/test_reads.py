"""The read model (flowlord/store/reads.py) on a real SQLite file: what the API, the
dashboard and the commands show, read once, with one name per field."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowlord import cli
from flowlord.config import Config
from flowlord.loader import Loader
from flowlord.model import Fire, Task
from flowlord.store import Store, reads, write_txn
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard

FILES = {
    "a.toml": '[[phase]]\ntask = "extract"\nrule = "cron=0 * * * *"\ntemplate = "{hh}"\n\n'
              '[[phase]]\ntask = "load"\ndependsOn = "extract"\n\n'
              '[[phase]]\ntask = "broken"\nrule = "cron=bad"\n',
    "b.toml": '[[phase]]\ntask = "daily:report"\nrule = "cron=0 6 * * *"\n',
}
SLOTS = ("2026-03-10T10:00:00Z", "2026-03-10T11:00:00Z")


@pytest.fixture
def db(tmp_path: Path, wf: Path) -> Iterator[Path]:
    """a.toml and b.toml loaded, b.toml's newer bytes refused; extract fired twice (the
    second fire's task still waiting), a failed load under the first, an alert on it."""
    for name, text in FILES.items():
        (wf / name).write_text(text)
    path = tmp_path / "flowlord.db"
    store = Store(str(path))
    Loader(str(wf), store).refresh()
    (wf / "b.toml").write_text('[[phase]]\ntask = "x"\nretry = "3"\n')
    Loader(str(wf), store).refresh()
    with write_txn(store.conn):
        store.record_fires([Fire("a.toml", "extract", slot, "cron", [Task(
            "extract", info=slot[11:13], id=f"id-{n}", created=slot)])
            for n, slot in enumerate(SLOTS)], "2026-03-10T11:00:00.001Z")
        store.conn.execute("UPDATE tasks SET started = created, ended = created, "
                           "result = 'complete' WHERE task_no = 1")
        store.conn.execute(
            "INSERT INTO tasks (id, type, created, started, ended, result, msg, file_path, "
            "phase, parent_no) VALUES ('id-0', 'load', '2026-03-10T10:05:00Z', "
            "'2026-03-10T10:05:00Z', '2026-03-10T10:06:00Z', 'error', 'boom', 'a.toml', "
            "'load', 1)")
        store.add_alert(3, "failed", Task("load", id="id-0"), "boom", "2026-03-10T10:06:00Z")
        store.set_next_fires([("2031-01-01T00:00:00Z", "a.toml", "extract")])
    store.close()
    yield path


@pytest.fixture
def read(db: Path) -> Iterator[Store]:
    store = Store(str(db), readonly=True)
    yield store
    store.close()


def api(db: Path, path: str, query: dict[str, list[str]] | None = None) -> Any:
    status, body = Api(Config(db=str(db)), healthy=lambda: True,
                       role=lambda: "leader").answer(path, query or {})
    assert status == 200
    return body


def command(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> str:
    """`flowlord …` in this process, with no config file but the database."""
    config = db.parent / "flowlord.toml"
    config.write_text(f'timezone = "UTC"\ndb = "{db}"\n')
    assert cli.main([*args, "-c", str(config)]) == 0
    return capsys.readouterr().out


@pytest.fixture
def daemon_lock(db: Path) -> Iterator[None]:
    """What a running daemon holds (startup.lock_database): an exclusive flock."""
    fd = os.open(str(db) + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    yield
    os.close(fd)


# --- one name per field -----------------------------------------------------------------


def test_the_command_and_the_api_show_the_same_task_json(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = json.loads(command(capsys, db, "tasks", "--json"))
    answered = api(db, "/api/tasks")
    assert [set(t) for t in listed] == [set(t) for t in answered] == [
        {*reads.TASK_KEYS, "waiting"}] * 3  # why a task waits: flowlord/waiting.py
    assert listed == answered  # the same builder: the same keys and values
    assert "file" in listed[0] and "file_path" not in listed[0]
    assert listed[0]["file"] == "a.toml" and listed[0]["parent_no"] == 1
    assert json.loads(command(capsys, db, "tasks", "--json", "--result", "none")) == \
        api(db, "/api/tasks", {"result": ["none"]})


def test_the_command_and_the_api_show_the_same_phase_json(
        db: Path, capsys: pytest.CaptureFixture[str], daemon_lock: None) -> None:
    """With the daemon's plan shown by both, a phase differs only by the API's last
    result; the refused file's line comes first, as before."""
    refused, *listed = json.loads(command(capsys, db, "phases", "--json"))
    assert refused["file"] == "b.toml" and refused["task"] is None
    answered = api(db, "/api/phases")
    assert listed == [{k: v for k, v in p.items() if k != "last_result"} for p in answered]
    extract = next(p for p in listed if p["task"] == "extract")
    assert (extract["next_fire"], extract["last_fire"]) == ("2031-01-01T00:00:00Z", SLOTS[1])


# --- the stored plan while a daemon runs ---------------------------------------------------


def test_daemon_running_looks_at_the_lock_without_creating_or_taking_it(
        db: Path, tmp_path: Path) -> None:
    lock = Path(str(db) + ".lock")
    assert not reads.daemon_running(str(db)) and not lock.exists()  # never ran: not made
    lock.touch()
    assert not reads.daemon_running(str(db))  # a daemon that stopped
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert reads.daemon_running(str(db))
        other = os.open(lock, os.O_RDWR)  # still held by its owner after the look
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        os.close(fd)
    assert not reads.daemon_running(str(db))


def test_phases_shows_the_stored_plan_while_a_daemon_runs_and_computes_it_otherwise(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def next_fires() -> dict[str, str | None]:
        return {p["task"]: p["next_fire"]
                for p in json.loads(command(capsys, db, "phases", "--json")) if p["task"]}

    computed = next_fires()  # no daemon: from each rule, now
    assert computed["extract"] is not None and computed["extract"].endswith(":00:00Z")
    assert computed["extract"] != "2031-01-01T00:00:00Z"
    assert computed["daily:report"] is not None and computed["broken"] is None
    fd = os.open(str(db) + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        planned = next_fires()  # what the daemon wrote, and nothing else
        text = command(capsys, db, "phases")
    finally:
        os.close(fd)
    assert planned == {"extract": "2031-01-01T00:00:00Z", "load": None, "broken": None,
                       "daily:report": None}
    assert "a.toml\textract\tok\tnext=2031-01-01T00:00:00Z" in text.splitlines()
    again = next_fires()  # the daemon stopped: computed again
    assert again["extract"] != planned["extract"] and again["daily:report"] is not None


# --- the reads themselves ----------------------------------------------------------------


def test_phases_carry_their_plan_last_fire_and_last_result(read: Store) -> None:
    phases = {p["task"]: p for p in reads.phases(read)}
    assert list(phases) == ["extract", "load", "broken", "daily:report"]  # file order
    assert phases["extract"]["last_fire"] == SLOTS[1]
    assert phases["extract"]["last_result"] is None  # its newest task waits
    assert phases["load"]["last_result"] == "error" and phases["load"]["last_fire"] is None
    assert phases["daily:report"]["last_result"] is None
    assert [p["task"] for p in reads.phases(read, severity="error")] == ["broken"]
    assert [p["task"] for p in reads.phases(read, file="a.toml", limit=1, offset=1)] == \
        ["load"]


def test_a_phase_with_its_last_tasks_and_its_parents_state(read: Store) -> None:
    load = reads.phase(read, "a.toml", "load")
    assert load is not None
    assert [t["result"] for t in load["last_tasks"]] == ["error"]
    [parent] = load["parents"]
    assert parent == {"task": "extract", "severity": "ok", "status": "", "last_task_no": 2,
                      "last_started": None, "last_result": None, "last_ended": None}
    assert reads.phase(read, "a.toml", "nope") is None


def test_files_status_and_the_overview_lists(read: Store) -> None:
    status = reads.status(read)
    assert status.pop("last_load") is not None
    assert status == {"files": 2, "refused_files": 1,
                      "phases": {"ok": 3, "warning": 0, "error": 1}}
    files = reads.files(read, 10, 0)
    assert [(f["file"], f["phases"], f["errors"]) for f in files] == [
        ("a.toml", 3, 1), ("b.toml", 1, 0)]
    assert files[1]["status"].startswith("parse error: ")
    assert reads.refused_files(read) == [("b.toml", files[1]["status"])]
    assert reads.file_status(read, "a.toml") == "" and reads.file_status(read, "c") is None
    assert reads.file_paths(read) == ["a.toml", "b.toml"]
    assert reads.phase_count(read, "a.toml") == 3
    assert [r[:3] for r in reads.broken_phases(read, 10)] == [("a.toml", "broken", "error")]
    assert reads.next_fires(read, 10) == [("a.toml", "extract", "2031-01-01T00:00:00Z")]
    assert reads.graph(read, "a.toml")["edges"] == [
        {"from": "extract", "to": "load", "file": "a.toml"}]


def test_tasks_lineage_fires_and_alerts(read: Store) -> None:
    assert [t["task_no"] for t in reads.tasks(read)] == [3, 2, 1]
    assert [t["task_no"] for t in reads.tasks(read, type="extract", before=2)] == [1]
    assert [t["task_no"] for t in reads.recent_failures(read, 10)] == [3]
    assert [t["task_no"] for t in reads.lineage(read, "id-0", 10)] == [1, 3]
    assert reads.lineage_size(read, "id-0") == 2
    assert reads.fire(read, "a.toml", "extract", SLOTS[0]) == (
        "cron", "2026-03-10T11:00:00.001Z", "")
    [alert] = reads.alerts(read)
    assert (alert["task_no"], alert["kind"], alert["task_id"]) == (3, "failed", "id-0")
    assert reads.alerts(read, before=alert["alert_no"]) == []


def test_recent_failures_are_the_final_ones(db: Path) -> None:
    """A failure a later attempt fixed is not one; the last failed attempt is, and so is
    a failure whose retry is still waiting only once that retry failed too."""
    store = Store(str(db))
    with write_txn(store.conn):
        for parent, attempt, result in ((3, 1, "complete"), (None, 0, "error"),
                                        (5, 1, "error"), (None, 0, "alert"), (7, 1, None)):
            ended = None if result is None else "2026-03-10T12:00:01Z"
            store.conn.execute(
                "INSERT INTO tasks (id, type, created, started, ended, result, parent_no, "
                "attempt) VALUES ('id-9', 'load', '2026-03-10T12:00:00Z', "
                "'2026-03-10T12:00:00Z', ?, ?, ?, ?)", (ended, result, parent, attempt))
        # 4 fixed 3; 5 failed, then its retry 6 failed: 6 is final; 7's retry 8 runs
    final = [t["task_no"] for t in reads.recent_failures(store, 10)]
    store.close()
    assert final == [6]


def test_a_listing_of_broken_phases_reads_their_partial_index(read: Store) -> None:
    """As the task listings' plans in test_store.py: the planner has no statistics, so
    the phase listing by severity says `<> 'ok'` for the partial index to serve."""
    plans: list[str] = []

    def explain(cursor: Any, sql: str, bindings: Any) -> bool:
        if sql.startswith("SELECT file_path, task"):
            plans.append(" ".join(str(r[3]) for r in read.conn.execute(
                "EXPLAIN QUERY PLAN " + sql, bindings)))
        return True

    read.conn.exec_trace = explain
    reads.phase_rows(read, severity="error")
    read.conn.exec_trace = None
    assert len(plans) == 1 and "INDEX workflow_phases_broken " in plans[0], plans


def test_the_phases_page_says_which_files_latest_bytes_were_refused(db: Path) -> None:
    pages = Dashboard(Api(Config(db=str(db)), healthy=lambda: True, role=lambda: "leader"))
    listing = str(pages.answer("/phases", {})[1])
    assert '<strong>refused:</strong> <a href="/phases?file=b.toml">b.toml</a>: parse error' \
        in listing
    assert "refused" not in str(pages.answer("/phases", {"file": ["a.toml"]})[1])
