"""The SQL of the catch-up of `files=` directories (flowlord/catch_up.py): until when
this database recorded the files that arrived in each watched directory
(`watched_dirs`), and which of some paths it recorded since a time. Functions of a
connection; every write runs inside `write_txn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

_CHUNK = 500  # directories per query: under SQLite's limit of bound parameters


def watched_until(conn: apsw.Connection, directories: Sequence[str]) -> dict[str, str]:
    """directory → until when its arrivals were recorded; a directory never watched by
    this database has no entry."""
    found: dict[str, str] = {}
    for i in range(0, len(directories), _CHUNK):
        chunk = directories[i:i + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update((str(d), str(t)) for d, t in conn.execute(
            f"SELECT directory, watched_until FROM watched_dirs WHERE directory IN ({marks})",
            chunk))
    return found


def mark_watched(conn: apsw.Connection, directories: Sequence[str], until: str) -> None:
    """Their arrivals are recorded up to `until` (never moved back)."""
    conn.executemany(
        "INSERT INTO watched_dirs (directory, watched_until) VALUES (?, ?) "
        "ON CONFLICT (directory) DO UPDATE SET "
        "watched_until = max(watched_until, excluded.watched_until)",
        [(d, until) for d in directories])


def first_watch(conn: apsw.Connection, directories: Sequence[str], now: str) -> None:
    """Directories seen for the first time: what is there now is known, not arrived."""
    conn.executemany("INSERT INTO watched_dirs (directory, watched_until) VALUES (?, ?) "
                     "ON CONFLICT (directory) DO NOTHING", [(d, now) for d in directories])


def recorded_since(conn: apsw.Connection, paths: Sequence[tuple[str, str]]) -> set[str]:
    """Those of the (path, since) pairs whose path arrived (file_messages.received) at or
    after its `since`."""
    return {path for path, since in paths if conn.execute(
        "SELECT 1 FROM file_messages WHERE path = ? AND received >= ? LIMIT 1",
        (path, since)).fetchone()}
