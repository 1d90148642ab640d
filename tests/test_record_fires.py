"""Store.record_fires writes a run of fires in one statement: each slot is new once
(already in the ledger, or twice in the batch, it is skipped with its tasks), the new
ones come back in their order, and a fire the overlap policy applies to still sees the
tasks of the earlier fires of its batch."""

from __future__ import annotations

from pathlib import Path

from flowlord.model import Fire, Task
from flowlord.store import Store, write_txn

FIRED_AT = "2026-01-01T00:00:00.000Z"


def fire(phase: str, day: int, info: str = "", overlap: str = "allow") -> Fire:
    task = Task(type=phase, info=info or f"{phase}{day}", id=f"{phase}-{day}-{info}",
                created=FIRED_AT)
    return Fire("a.toml", phase, f"2026-01-0{day}T00:00:00Z", "cron", [task], "", overlap)


def tasks(store: Store) -> list[tuple[object, ...]]:
    return list(store.conn.execute(
        "SELECT phase, scheduled_for, info FROM tasks ORDER BY task_no"))


def test_a_slot_twice_in_a_batch_or_already_fired_is_new_once(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "f.db"))
    with write_txn(store.conn):
        assert store.record_fires([fire("p", 1)], FIRED_AT) == [fire("p", 1)]
    batch = [fire("p", 1, "again"), fire("q", 2), fire("p", 3), fire("q", 2, "twice")]
    with write_txn(store.conn):
        new = store.record_fires(batch, FIRED_AT)
    assert new == [fire("q", 2), fire("p", 3)]
    assert tasks(store) == [("p", "2026-01-01T00:00:00Z", "p1"),
                            ("q", "2026-01-02T00:00:00Z", "q2"),
                            ("p", "2026-01-03T00:00:00Z", "p3")]
    store.close()


class SeesTasks:
    """A settle that records how many tasks of the phase it saw, and keeps the fire."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[int] = []

    def applies(self, fire: Fire) -> bool:
        return fire.overlap == "skip"

    def __call__(self, fire: Fire) -> Fire:
        self.seen.append(len(self.store.unfinished_of_phase(fire.file_path, fire.phase, 10)))
        return fire


def test_a_settled_fire_sees_the_earlier_fires_tasks_and_keeps_its_place(
        tmp_path: Path) -> None:
    store = Store(str(tmp_path / "f.db"))
    settle = SeesTasks(store)
    batch = [fire("p", 1), fire("q", 1), fire("p", 2, overlap="skip"), fire("q", 2),
             fire("p", 2, "again", overlap="skip"), fire("p", 3, overlap="skip")]
    with write_txn(store.conn):
        new = store.record_fires(batch, FIRED_AT, settle)
    assert [(f.phase, f.scheduled_for[:10]) for f in new] == [
        ("p", "2026-01-01"), ("q", "2026-01-01"), ("p", "2026-01-02"), ("q", "2026-01-02"),
        ("p", "2026-01-03")]
    assert settle.seen == [1, 2]  # the slot fired earlier in the batch is not settled again
    assert len(tasks(store)) == 5
    store.close()
