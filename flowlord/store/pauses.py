"""The SQL of pauses: one row per pause of a phase, a file, a topic or everything, kept
after it ended so that a slot's pause can be told afterwards (flowlord/pauses.py has
the rules). Mixed into `flowlord.store.Store`; writes run inside `write_txn`.
"""

from __future__ import annotations

from typing import Any

import apsw

PAUSE_COLUMNS = ("pause_no, scope, file_path, task, topic, actor, reason, since, until, "
                 "ended, ended_by")
_TARGET = ("scope = ? AND coalesce(file_path, '') = ? AND coalesce(task, '') = ? "
           "AND coalesce(topic, '') = ?")


class PauseRows:
    conn: apsw.Connection

    def pauses_since(self, after: str) -> list[tuple[Any, ...]]:
        """Every pause that is open or ended after `after` (PAUSE_COLUMNS order)."""
        return list(self.conn.execute(
            f"SELECT {PAUSE_COLUMNS} FROM pauses WHERE ended IS NULL OR ended > ? "
            "ORDER BY pause_no", (after,)))

    def open_pause(self, target: tuple[str, str, str, str], now: str) -> tuple[Any, ...] | None:
        """The pause of this target in force now (scope, file, task, topic), if any; one
        whose `until` has passed is closed first."""
        self.conn.execute(
            f"UPDATE pauses SET ended = until, ended_by = 'expiry' WHERE {_TARGET} "
            "AND ended IS NULL AND until <= ?", (*target, now))
        return self.conn.execute(
            f"SELECT {PAUSE_COLUMNS} FROM pauses WHERE {_TARGET} AND ended IS NULL",
            target).fetchone()

    def add_pause(self, target: tuple[str, str, str, str], actor: str, reason: str,
                  since: str, until: str | None) -> int:
        scope, file_path, task, topic = target
        self.conn.execute(
            "INSERT INTO pauses (scope, file_path, task, topic, actor, reason, since, until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (scope, file_path or None, task or None, topic or None, actor, reason, since,
             until))
        return self.conn.last_insert_rowid()

    def end_pause(self, pause_no: int, ended: str, actor: str) -> None:
        self.conn.execute("UPDATE pauses SET ended = ?, ended_by = ? WHERE pause_no = ? "
                          "AND ended IS NULL", (ended, actor, pause_no))
