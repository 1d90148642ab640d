"""The SQL of the daemon's own history: one row per run (README.md, Debugging
with sqlite3), written by the run itself (flowlord/runs.py). Mixed into
`flowlord.store.Store`; every write method runs inside `write_txn`.
"""

from __future__ import annotations

import apsw

RUN_COLUMNS = "run_no, node, pid, version, started, last_seen, stopped, ended"


class RunRows:
    conn: apsw.Connection

    def begin_run(self, node: str, pid: int, version: str, now: str) -> int:
        """A new run; the runs that never said they ended are closed first, as
        `vanished` when they were last seen. Its number."""
        self.conn.execute("UPDATE daemon_runs SET stopped = last_seen, ended = 'vanished' "
                          "WHERE stopped IS NULL")
        self.conn.execute("INSERT INTO daemon_runs (node, pid, version, started, last_seen) "
                          "VALUES (?, ?, ?, ?, ?)", (node, pid, version, now, now))
        return self.conn.last_insert_rowid()

    def seen_run(self, run_no: int, now: str) -> None:
        self.conn.execute("UPDATE daemon_runs SET last_seen = max(last_seen, ?) "
                          "WHERE run_no = ? AND stopped IS NULL", (now, run_no))

    def end_run(self, run_no: int, now: str, ended: str) -> None:
        self.conn.execute("UPDATE daemon_runs SET last_seen = max(last_seen, ?), "
                          "stopped = max(last_seen, ?), ended = ? "
                          "WHERE run_no = ? AND stopped IS NULL", (now, now, ended, run_no))

    def runs(self, limit: int) -> list[tuple[object, ...]]:
        """The newest runs first, RUN_COLUMNS."""
        return list(self.conn.execute(
            f"SELECT {RUN_COLUMNS} FROM daemon_runs ORDER BY run_no DESC LIMIT ?", (limit,)))
