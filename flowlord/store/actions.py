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
