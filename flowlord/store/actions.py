"""The SQL of the audit trail: an operator action is a row before it has any effect,
and gets its outcome when it is applied (flowlord/operations.py says which actions).
Mixed into `flowlord.store.Store`; every write method runs inside `write_txn`.
"""

from __future__ import annotations

import apsw

ACTION_COLUMNS = "action_no, requested, actor, kind, target, args, applied, outcome, message"


class ActionRows:
    conn: apsw.Connection

    def add_action(self, requested: str, actor: str, kind: str, target: str,
                   args: str) -> int:
        """An action asked for, not yet applied; its number. `args` is JSON text."""
        self.conn.execute(
            "INSERT INTO actions (requested, actor, kind, target, args) VALUES (?, ?, ?, ?, ?)",
            (requested, actor, kind, target, args))
        return self.conn.last_insert_rowid()

    def settle_action(self, action_no: int, applied: str, outcome: str, message: str) -> None:
        """The action's outcome: `done` (with what it did) or `failed` (with why)."""
        self.conn.execute("UPDATE actions SET applied = ?, outcome = ?, message = ? "
                          "WHERE action_no = ? AND applied IS NULL",
                          (applied, outcome, message, action_no))

    def last_action_no(self) -> int:
        """The newest action's number (0 without any)."""
        return int(self.conn.execute("SELECT coalesce(max(action_no), 0) FROM actions").get)

    def actions_to_tell(self, after: int, unsettled: list[int], limit: int = 1000,
                        ) -> list[tuple[int, str, str, str, str, str | None, str | None]]:
        """Actions numbered after `after`, and those numbered in `unsettled` (seen before
        their outcome): (action_no, actor, kind, target, args, outcome, message)."""
        marks = ", ".join("?" * len(unsettled))
        return list(self.conn.execute(
            "SELECT action_no, actor, kind, target, args, outcome, message FROM actions "
            f"WHERE action_no > ? OR action_no IN ({marks}) ORDER BY action_no LIMIT ?",
            (after, *unsettled, limit)))
