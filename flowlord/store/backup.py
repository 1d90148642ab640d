"""A consistent copy of the database while the daemon writes it (`flowlord backup`):
SQLite's online backup through APSW, in one step, so the copy is one snapshot (a
reader of a WAL database never blocks the writer: the daemon goes on firing while
the copy is made). The copy is written beside its destination and renamed into
place once it is whole and checked (a hard link: a file that appeared there meanwhile
is never replaced), so a destination path is either absent or a complete database; it
is a single file (no -wal), readable by any sqlite3, with the database's mode. The
source is opened as it is, whatever its schema version: a copy made right before an
upgrade is the one to keep.
"""

from __future__ import annotations

import contextlib
import os

import apsw

from flowlord.store.connection import NoDatabase, StoreError


def backup(source: str, dest: str) -> int:
    """Copy the database at `source` to the new file `dest`; its size in pages.
    StoreError (one line) when `dest` exists or the copy cannot be made or checked."""
    if os.path.lexists(dest):
        raise StoreError(f"{dest} exists: a backup goes to a new path")
    part = dest + ".part"
    if not os.path.exists(source):
        raise NoDatabase(source)
    try:  # as it is, whatever its schema: a copy made before an upgrade is one to keep
        src = apsw.Connection(source, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as e:
        raise StoreError(f"cannot open database {source}: {e}") from e
    if os.path.lexists(part):
        src.close()
        raise StoreError(f"{part} exists: an interrupted backup? remove it first")
    try:
        out = apsw.Connection(part)
        try:
            with out.backup("main", src, "main") as copy:
                copy.step(-1)  # every page at once: one snapshot of the source
                pages = copy.pagecount
            out.pragma("journal_mode", "delete")  # one self-contained file
            problems = [r[0] for r in out.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise StoreError(f"the copy failed its check: {problems[0]}")
        finally:
            out.close()
        os.chmod(part, os.stat(source).st_mode & 0o777)  # readable by whom it was
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.link(part, dest)  # never over a file that appeared meanwhile
    except apsw.Error as e:
        raise StoreError(f"cannot back up {source} to {dest}: {e}") from e
    except OSError as e:
        raise StoreError(f"cannot back up {source} to {dest}: {e.strerror}") from e
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
    return int(pages)
