"""The dispatcher on a real database, with a bus that completes tasks in-process."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, Histogram

from flowlord import dispatch, logs, metrics, results
from flowlord.bus.inprocess import InProcessBus
from flowlord.clock import utc_now_ms
from flowlord.loader import Loader
from flowlord.model import Done, Fire, NewTask, StoredTask, Task
from flowlord.rules import decode_meta
from flowlord.store import Store, write_txn
from flowlord.tasks import Context
from tests.helpers import store_rows


def setup(wf: Path, store: Store, bus: InProcessBus) -> dispatch.Dispatcher:
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


def test_a_turn_claims_sends_and_records_with_children(wf: Path, store: Store) -> None:
    d = setup(wf, store, InProcessBus())
    d.turn()  # claims p and sends it; the bus completes it at once
    d.turn()  # records p's result, which creates its child
    d.turn()  # claims and sends the child
    d.turn()  # records the child
    assert store_rows(store, "SELECT type, result, id, parent_no FROM tasks ORDER BY task_no") == [
        ("p", "complete", "id1", None), ("c", "complete", "id1", 1)]


def test_a_failure_working_out_effects_still_records_the_result_and_alerts(
        wf: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    d = setup(wf, store, InProcessBus())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(results, "after_result", broken)
    d.turn()
    d.turn()
    assert store_rows(store, "SELECT type, result FROM tasks") == [("p", "complete")]
    assert store_rows(store, "SELECT kind, message FROM alerts") == [
        ("alert", "internal error after the result: boom")]
    assert d.pending == []


class Unstarted(InProcessBus):
    """Gives every task back without running it, as a closing bus does with the tasks
    that waited for a slot."""

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        self.done += [Done(stored.task_no, "", "", "", ran=False) for stored, _ in tasks]


def test_a_task_that_never_started_goes_back_to_the_queue(wf: Path, store: Store) -> None:
    d = setup(wf, store, Unstarted())
    d.turn()  # claims p: it is marked started
    assert store_rows(store, "SELECT started IS NOT NULL FROM tasks") == [(1,)]
    d.turn(claim=False)  # the bus gave it back
    assert store_rows(store, "SELECT started, ended, result FROM tasks") == [(None, None, None)]
    assert store_rows(store, "SELECT count(*) FROM alerts") == [(0,)]


def test_the_process_start_time_replaces_the_claim_time(wf: Path, store: Store) -> None:
    class StartedLater(InProcessBus):
        def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
            self.done += [Done(stored.task_no, "complete", "", "2099-01-01T00:00:09Z",
                               "2099-01-01T00:00:05Z") for stored, _ in tasks]
    d = setup(wf, store, StartedLater())
    d.turn()
    d.turn(claim=False)
    assert store_rows(store, "SELECT started, ended, result FROM tasks WHERE type = 'p'") == [
        ("2099-01-01T00:00:05Z", "2099-01-01T00:00:09Z", "complete")]


def test_two_results_of_one_task_in_a_turn_record_the_first_once(
        wf: Path, store: Store) -> None:
    class Twice(InProcessBus):  # a result delivered twice (the redis bus may)
        def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
            for stored, _ in tasks:
                self.done += [Done(stored.task_no, "error", "first", "2099-01-01T00:00:09Z"),
                              Done(stored.task_no, "complete", "", "2099-01-01T00:00:10Z")]
    d = setup(wf, store, Twice())
    d.turn()
    d.turn(claim=False)
    assert store_rows(store, "SELECT type, result, msg, ended FROM tasks") == [
        ("p", "error", "first", "2099-01-01T00:00:09Z")]  # no child from the second
    assert store_rows(store, "SELECT kind FROM alerts") == [("failed",)]
    assert d.pending == []


def test_a_result_of_a_task_not_running_changes_nothing(wf: Path, store: Store) -> None:
    d = setup(wf, store, InProcessBus())
    d.pending = [Done(1, "complete", "", "2099-01-01T00:00:09Z")]  # never claimed
    d.turn(claim=False)
    assert store_rows(store, "SELECT started, result FROM tasks") == [(None, None)]


def test_children_are_looked_up_per_job_of_the_meta(wf: Path, store: Store) -> None:
    """A parent whose job is in its meta only: each job's children, none of the other's
    (the lookup is kept per workflow, topic and job)."""
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "p:x"\n\n[[phase]]\ntask = "p:y"\n\n'
        '[[phase]]\ntask = "cx"\ndependsOn = "p:x"\n\n'
        '[[phase]]\ntask = "cy"\ndependsOn = "p:y"\n')
    loader = Loader(str(wf), store)
    loader.refresh()
    tasks = [Task(type="p", meta=f"workflow=a.toml&job={job}", id=f"id-{job}",
                  created="2026-01-01T00:00:00Z") for job in ("x", "y")]
    with write_txn(store.conn):
        store.add_tasks([NewTask.of(t, None, None) for t in tasks])
    d = dispatch.Dispatcher(loader, InProcessBus(), Context(ZoneInfo("UTC"), str(wf),
                                                            datetime.now(UTC)),
                            timedelta(hours=4), logs.get("test"))
    d.turn()
    d.turn(claim=False)
    assert store_rows(store, "SELECT id, type FROM tasks WHERE parent_no IS NOT NULL "
                             "ORDER BY task_no") == [("id-x", "cx"), ("id-y", "cy")]


@pytest.mark.parametrize("meta", [
    "", "workflow=a.toml", "job=j&workflow=a.toml&cron=x", "workflow=a.toml&workflow=b.toml",
    "workflow&workflow=b", "&&workflow=a&", "workflow=a%20b&job=%2F", "workflow=a+b",
    "x=1;y&workflow=a", "job=&job=k", "workflow=a=b", "job=%zz&job=k"])
def test_workflow_and_job_read_as_decode_meta_reads_them(meta: str) -> None:
    decoded = decode_meta(meta)
    assert results._workflow_and_job(meta) == (decoded.get("workflow", ""),
                                               decoded.get("job", ""))


def test_observe_all_counts_as_observe_one_by_one() -> None:
    registry = CollectorRegistry()
    one = Histogram("one", "", ["t"], buckets=(0.1, 1, 5), registry=registry)
    many = Histogram("many", "", ["t"], buckets=(0.1, 1, 5), registry=registry)
    amounts = [0.0, 0.1, 0.1000001, 0.5, 1, 1.5, 5, 5.5, 1e9]
    for a in amounts:
        one.labels("x").observe(a)
    metrics.observe_all(many.labels("x"), amounts)
    samples = {m.name: [(s.name.replace("many", "one"), s.labels, s.value) for s in m.samples]
               for m in registry.collect()}
    assert samples["many"] == samples["one"]
