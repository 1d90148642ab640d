"""Opening the database: one connection factory with flowlord's pragmas, the
migrations, and `write_txn`, the one way a write transaction is run.

Writes run in transactions begun with `BEGIN IMMEDIATE` (docs/decisions.md: a
`with conn:` block in IMMEDIATE mode holds the GIL while it waits).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import apsw

from flowlord.store.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used; str(e) is one line for the person at the terminal."""


class NoDatabase(StoreError):
    """There is no database at `path`, and this command does not make one: the command
    line says where the path came from (flowlord/cli.py)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        super().__init__(f"no database at {self.path}: run `flowlord refresh` first")


PAGE_LIMIT_HOOK = "FLOWLORD_TEST_PAGE_LIMIT"


def apply_page_limit(conn: apsw.Connection) -> None:
    """A test hook (tests/test_disk_full.py): with FLOWLORD_TEST_PAGE_LIMIT naming a
    file that holds a number, the database may grow to that many pages and no more
    (SQLite's max_page_count), so a full disk can be had where mounting a small
    filesystem is not allowed; read again at each try while the database is full."""
    hook = os.environ.get(PAGE_LIMIT_HOOK)
    if not hook:
        return
    try:
        with open(hook) as f:
            conn.pragma("max_page_count", int(f.read().strip()))
    except (OSError, ValueError):
        return


def wait_while_busy(conn: apsw.Connection, timeout_ms: int,
                    on_wait: Callable[[], None]) -> None:
    """Wait for a lock another process holds, as SQLite's busy timeout would, but call
    `on_wait` between tries: a daemon whose every writer waits out a lock in one turn is
    still alive and keeps telling systemd's watchdog so (flowlord/daemon.py)."""
    started = [0.0]

    def busy(tries: int) -> bool:
        now = time.monotonic()
        if tries == 0:
            started[0] = now
        elif now - started[0] >= timeout_ms / 1000:
            return False
        on_wait()
        time.sleep(min(0.001 * 2 ** min(tries, 6), 0.05))  # 1 ms, doubling up to 50 ms
        return True

    conn.set_busy_handler(busy)


def connect(path: str, *, readonly: bool = False, create: bool = True,
            busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> apsw.Connection:
    """Open the database with flowlord's pragmas; a writer also migrates it. Only a
    writer with `create` makes a missing database (`flowlord refresh`, `run`): any other
    command would leave an empty one behind wherever its path led (NoDatabase)."""
    if (readonly or not create) and not os.path.exists(path):
        raise NoDatabase(path)
    flags = apsw.SQLITE_OPEN_READONLY if readonly else (
        apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        if not readonly:
            _create_group_readable(path)
        conn = apsw.Connection(path, flags=flags, statementcachesize=200)
        conn.set_busy_timeout(busy_timeout_ms)
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        conn.pragma("foreign_keys", "ON")
        conn.pragma("synchronous", "NORMAL")
        if not readonly:
            _persist_wal(conn)
            conn.pragma("journal_mode", "wal")
            conn.pragma("journal_size_limit", 64 * 1024 * 1024)
            apply_page_limit(conn)
        version = conn.pragma("user_version")
    except apsw.Error as e:
        raise StoreError(f"cannot open database {path}: {e}") from e
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            f"database {path} has schema version {version}, newer than this flowlord "
            f"understands (version {SCHEMA_VERSION}): upgrade flowlord")
    if version < SCHEMA_VERSION:
        if readonly:
            conn.close()
            raise StoreError(f"database {path} has schema version {version}, expected "
                             f"{SCHEMA_VERSION}: run `flowlord refresh` to upgrade it")
        migrate(conn)
    return conn


def _create_group_readable(path: str) -> None:
    """A new database file is readable by its owner and group only, whatever the umask;
    SQLite gives its -wal and -shm files the same permissions (docs/install.md: operators
    in the service's group read it with `sqlite3 -readonly`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError:  # it exists; or SQLite will say why it cannot open it
        return
    try:
        os.fchmod(fd, 0o640)
    finally:
        os.close(fd)


def _persist_wal(conn: apsw.Connection) -> None:
    """Keep the -wal and -shm files when the last connection closes. A reader who may not
    create files in the database's directory (a member of the service's group) can open a
    WAL database read-only only while both exist: without this, a daemon that stopped
    cleanly took them away, and `sqlite3 -readonly` failed with "attempt to write a
    readonly database". Set on every writer, as any of them may close last."""
    persist = ctypes.c_int(1)
    conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(persist))


@contextmanager
def write_txn(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """One write transaction: committed when the block ends, rolled back when it raises
    or when COMMIT fails. The first error is the one raised: after a disk-full or I/O
    error SQLite may already have ended the transaction, and a ROLLBACK then would
    fail with "no transaction is active" and hide it."""
    conn.execute("BEGIN IMMEDIATE")  # waits for the lock with the GIL released
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(apsw.Error):  # the first error matters, not this one
                conn.execute("ROLLBACK")
        raise


def migrate(conn: apsw.Connection) -> None:
    """Apply each missing migration in the transaction that records its number."""
    try:
        with write_txn(conn):
            version = conn.pragma("user_version")  # again, now under the write lock
            for number in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.pragma("user_version", number)
    except apsw.Error as e:
        raise StoreError(f"cannot migrate database: {e}") from e
