"""The store package: the only place with SQL.

`connection` opens the database (pragmas, migrations, `write_txn`); `workflows`
holds the SQL of workflow files and phases, `fires` the fire ledger's, and
`taskrows` that of tasks, alerts and arrived files, `actions` the audit trail's,
`pauses` the pauses', `runs` the daemon's own runs. `Store` is one connection with
all of them. `reads` is the read model over a Store: what the API, the dashboard and
the commands show.
"""

from __future__ import annotations

from flowlord.store.actions import ActionRows
from flowlord.store.connection import (
    BUSY_TIMEOUT_MS,
    NoDatabase,
    StoreError,
    connect,
    migrate,
    write_txn,
)
from flowlord.store.fires import FireRows
from flowlord.store.pauses import PauseRows
from flowlord.store.runs import RunRows
from flowlord.store.taskrows import TaskRows
from flowlord.store.workflows import FileOp, FileState, FileVersion, WorkflowRows


class Store(WorkflowRows, FireRows, TaskRows, ActionRows, PauseRows, RunRows):
    """The writer's view of the database (the daemon and state-changing commands)."""

    def __init__(self, path: str, *, readonly: bool = False, create: bool = True,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.conn = connect(path, readonly=readonly, create=create,
                            busy_timeout_ms=busy_timeout_ms)

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """A number that changes when another connection commits: how the daemon
        notices what `flowlord refresh` and other processes wrote."""
        return int(self.conn.pragma("data_version"))


__all__ = ["FileOp", "FileState", "FileVersion", "NoDatabase", "Store", "StoreError", "connect",
           "migrate", "write_txn"]
