"""The SQL of the fire ledger: one row per (file, phase, slot) ever fired, written in
the transaction that inserts the fire's tasks, and each phase's plan (`next_fire`).
The ledger's primary key is what makes a second fire of a slot impossible; the
rules around it (pending, held and claimed slots) are in `flowlord/ledger.py`.
Mixed into `flowlord.store.Store`; every write method runs inside `write_txn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import apsw

from flowlord.model import Fire


class Settle(Protocol):
    """What may change a new fire before it is recorded (flowlord/overlap.py)."""

    def applies(self, fire: Fire) -> bool:
        """Whether it may change this fire: else the fire is recorded as it is."""

    def __call__(self, fire: Fire) -> Fire:
        """The fire as it is to be recorded."""


class FireRows:
    conn: apsw.Connection

    def record_fires(self, fires: Sequence[Fire], fired_at: str,
                     settle: Settle | None = None) -> list[Fire]:
        """Write each fire with its tasks, skipping slots already in the ledger; call
        inside write_txn. `settle` may change a new fire first, in the transaction (the
        overlap policy, flowlord/overlap.py). Returns the fires that were new, as
        recorded.

        The tasks are inserted together at the end (10,000 fires at one second were
        three statements each), except before a fire `settle` applies to: it reads
        the phase's unfinished tasks, an earlier slot's of this batch among them."""
        new: list[Fire] = []
        tasks: list[tuple[object, ...]] = []
        for fire in fires:
            if settle is not None and settle.applies(fire):
                if self.conn.execute(
                        "SELECT 1 FROM fires WHERE file_path = ? AND phase = ? AND "
                        "scheduled_for = ?", (fire.file_path, fire.phase,
                                               fire.scheduled_for)).fetchone():
                    continue  # fired before: by another run, or a restart
                self._insert_tasks(tasks)
                tasks = []
                fire = settle(fire)
            self.conn.execute(  # with the hash of the file bytes its phase came from
                "INSERT INTO fires (file_path, phase, scheduled_for, fired_at, source, error, "
                "file_hash) VALUES (?, ?, ?, ?, ?, ?, (SELECT loaded_hash FROM workflow_files "
                "WHERE file_path = ?)) ON CONFLICT DO NOTHING",
                (fire.file_path, fire.phase, fire.scheduled_for, fired_at, fire.source,
                 fire.error, fire.file_path))
            if self.conn.changes() == 0:  # fired before: by another run, or a restart
                continue
            new.append(fire)
            tasks += [(t.id, t.type, t.job, t.info, t.meta, t.created, fire.file_path,
                       fire.phase, fire.scheduled_for, fire.due_at) for t in fire.tasks]
        self._insert_tasks(tasks)
        return new

    def _insert_tasks(self, rows: list[tuple[object, ...]]) -> None:
        if rows:
            self.conn.executemany(
                "INSERT INTO tasks (id, type, job, info, meta, created, file_path, phase, "
                "scheduled_for, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def last_fires(self) -> dict[tuple[str, str], str]:
        """The latest slot the scheduler fired, of every (file, phase): what catch-up
        counts from (a trigger or a backload, at any time, says nothing about it)."""
        return {(f, p): slot for f, p, slot in self.conn.execute(
            "SELECT file_path, phase, max(scheduled_for) FROM fires "
            "WHERE source IN ('cron', 'catchup') GROUP BY file_path, phase")}

    def set_next_fires(self, plan: Sequence[tuple[str | None, str, str]]) -> None:
        """(next fire UTC text or None, file, task) for each phase; call inside write_txn.
        Rows in key order are written 3× faster than in random order (the B-tree's pages
        in turn rather than each read again): `flowlord/ledger.py` sorts them."""
        self.conn.executemany(
            "UPDATE workflow_phases SET next_fire = ? WHERE file_path = ? AND task = ?", plan)

    def unfinished_of_phase(self, file_path: str, phase: str, limit: int) -> list[int]:
        """The oldest unfinished tasks of a phase (any attempt, a waiting retry too)."""
        return [n for n, in self.conn.execute(
            "SELECT task_no FROM tasks INDEXED BY tasks_unfinished_by_phase WHERE "
            "file_path = ? AND phase = ? AND ended IS NULL ORDER BY task_no LIMIT ?",
            (file_path, phase, limit))]
