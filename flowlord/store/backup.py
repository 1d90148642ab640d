"""A consistent copy of the database while the daemon writes it (`flowlord backup`):
SQLite's online backup through APSW, in one step, so the copy is one snapshot (a
reader of a WAL database never blocks the writer: the daemon goes on firing while
the copy is made). The copy is written beside its destination and renamed into
place once it is whole and checked, so a destination path is either absent or a
complete database; it is a single file (no -wal), readable by any sqlite3.
"""

from __future__ import annotations

import contextlib
import os

import apsw

from flowlord.store.connection import StoreError, connect


def backup(source: str, dest: str) -> int:
    """Copy the database at `source` to the new file `dest`; its size in pages.
    StoreError (one line) when `dest` exists or the copy cannot be made or checked."""
    if os.path.lexists(dest):
        raise StoreError(f"{dest} exists: a backup goes to a new path")
    part = dest + ".part"
    src = connect(source, readonly=True)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)  # a copy an earlier backup left half made
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
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.rename(part, dest)
    except apsw.Error as e:
        raise StoreError(f"cannot back up {source} to {dest}: {e}") from e
    except OSError as e:
        raise StoreError(f"cannot back up {source} to {dest}: {e.strerror}") from e
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
    return int(pages)
