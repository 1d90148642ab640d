"""The store package: the only place with SQL. `Store` is the writer's view of the
database (the daemon and the commands that change state)."""

from flowlord.store.workflows import (
    FileOp,
    FileState,
    FileVersion,
    Store,
    StoreError,
    connect,
    migrate,
    mtime_text,
    utc_now,
    utc_now_ms,
    write_txn,
)

__all__ = ["FileOp", "FileState", "FileVersion", "Store", "StoreError", "connect", "migrate",
           "mtime_text", "utc_now", "utc_now_ms", "write_txn"]
