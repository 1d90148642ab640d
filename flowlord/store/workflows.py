"""The SQL of workflow files and phases: the half of the Store that the loader, the
scheduler and `flowlord check`'s neighbours use. Mixed into `flowlord.store.Store`,
which owns the connection; a file's row and its phases always change in the same
transaction (the caller's `write_txn`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, NamedTuple

import apsw

from flowlord.clock import utc_now
from flowlord.model import Phase

PHASE_COLUMNS = "file_path, task, depends_on, rule, template, retry, status, severity, position"


class FileState(NamedTuple):
    """What the database knows of one workflow file, for deciding whether to read it.
    A NamedTuple: a rescan reads 10,000 of them, and a frozen dataclass is slow to make."""

    file_hash: str
    stat_token: str | None
    last_modified: str | None
    status: str
    validator: str  # the code that wrote its statuses (flowlord/validate.py, VALIDATOR)


class FileVersion(NamedTuple):
    """The file's bytes as last read: their hash, size and mtime. A NamedTuple, like
    FileState (and FileOp): a cold load makes 10,000 of each, and a frozen dataclass
    sets every field through object.__setattr__."""

    file_path: str
    file_hash: str
    stat_token: str | None  # None: read it again at the next rescan (unreadable, or too fresh)
    last_modified: str | None


class FileOp(NamedTuple):
    """One file's change, found by a refresh:

    replace: new bytes loaded, phases replaced; reject: new bytes unusable, the
    last good phases stay and `status` says why; touch: same bytes, new mtime;
    remove: the file is gone.
    """

    kind: Literal["replace", "reject", "touch", "remove"]
    version: FileVersion
    phases: Sequence[Phase] = ()
    status: str = ""


def _phase(row: Sequence[object]) -> Phase:
    # the tuple's own constructor: Phase(*row) runs a Python __new__ per row, and a
    # start reads 100,000 of them
    return _new(Phase, row)


_new = tuple.__new__


class WorkflowRows:
    conn: apsw.Connection

    # --- workflow files ---------------------------------------------------------------

    def file_states(self, scope: Sequence[str] = ("",)) -> dict[str, FileState]:
        """Stored files by key, for the keys in `scope`: `` is every file, `dir/` the
        files below dir, anything else one key."""
        sql = ("SELECT file_path, file_hash, stat_token, last_modified, status, validator "
               "FROM workflow_files")
        states: dict[str, FileState] = {}
        for prefix in dict.fromkeys(scope):
            if prefix in ("", "./"):
                rows = self.conn.execute(sql)
            elif prefix.endswith("/"):  # '0' is the character after '/'
                rows = self.conn.execute(sql + " WHERE file_path > ? AND file_path < ?",
                                         (prefix, prefix[:-1] + "0"))
            else:
                rows = self.conn.execute(sql + " WHERE file_path = ?", (prefix,))
            states.update((r[0], _new(FileState, r[1:])) for r in rows)
        return states

    def apply(self, ops: Sequence[FileOp], validator: str) -> None:
        """Write what a refresh found, file by file, the statuses written by `validator`
        (flowlord/validate.py, VALIDATOR); call inside write_txn.

        Each file's row and phases change together, in the caller's transaction.
        Statements are batched per kind: a cold load inserts 100,000 phases.
        """
        upserts = [(op.version, op.status) for op in ops if op.kind in ("replace", "reject")]
        now = utc_now()
        self.conn.executemany(
            """INSERT INTO workflow_files
                   (file_path, file_hash, loaded_at, last_modified, status, stat_token,
                    validator, loaded_hash)
               VALUES (?, ?, ?, ?, ?, ?, ?, CASE WHEN ?5 = '' THEN ?2 END)
               ON CONFLICT (file_path) DO UPDATE SET
                   file_hash = excluded.file_hash,
                   -- loaded_at: when the stored phases were loaded; refused bytes keep it
                   loaded_at = CASE WHEN excluded.status = '' THEN excluded.loaded_at
                                    ELSE workflow_files.loaded_at END,
                   loaded_hash = CASE WHEN excluded.status = '' THEN excluded.file_hash
                                      ELSE workflow_files.loaded_hash END,
                   last_modified = excluded.last_modified, status = excluded.status,
                   stat_token = excluded.stat_token, validator = excluded.validator""",
            [(v.file_path, v.file_hash, now, v.last_modified, status, v.stat_token, validator)
             for v, status in upserts])
        # Same bytes, new mtime (`touch`): remember it, so the next rescan skips the file.
        self.conn.executemany(
            "UPDATE workflow_files SET stat_token = ?, last_modified = ? WHERE file_path = ?",
            [(op.version.stat_token, op.version.last_modified, op.version.file_path)
             for op in ops if op.kind == "touch"])
        replaced = [op for op in ops if op.kind == "replace"]
        self.conn.executemany("DELETE FROM workflow_phases WHERE file_path = ?",
                              [(op.version.file_path,) for op in replaced])
        self.conn.executemany(  # a Phase is a tuple in PHASE_COLUMNS order
            f"INSERT INTO workflow_phases ({PHASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [p for op in replaced for p in op.phases])
        # phases of a removed file go by ON DELETE CASCADE
        self.conn.executemany("DELETE FROM workflow_files WHERE file_path = ?",
                              [(op.version.file_path,) for op in ops if op.kind == "remove"])

    @contextmanager
    def checkpoints_deferred(self) -> Iterator[None]:
        """Several write transactions in a row (a cold load's, of 500 files each) with
        one checkpoint of the WAL at their end, where SQLite's automatic one ran after
        every few of them (each copying index pages written again since, and syncing):
        a tenth of a cold load's writing. A connection that does not checkpoint (the
        daemon's loop: flowlord/checkpoints.py) is left as it is."""
        every = self.conn.pragma("wal_autocheckpoint")
        if not every:
            yield
            return
        self.conn.pragma("wal_autocheckpoint", 0)
        try:
            yield
        finally:
            self.conn.pragma("wal_autocheckpoint", every)
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def file_counts(self) -> tuple[int, int, str | None]:
        """(files, refused files, the last load time) without reading their phases."""
        files, refused, last = next(self.conn.execute(
            "SELECT count(*), count(CASE WHEN status <> '' THEN 1 END), max(loaded_at) "
            "FROM workflow_files"))
        return int(files), int(refused), last

    def file_versions(self) -> dict[str, tuple[str, str | None]]:
        """Each stored file's hash and when its phases were loaded, by key: what tells
        that another process changed its rows (flowlord/workflow_sync.py). Read from
        the table alone: `files()` counts every file's phases too."""
        return {f: (h, t) for f, h, t in self.conn.execute(
            "SELECT file_path, file_hash, loaded_at FROM workflow_files")}

    def files(self) -> list[tuple[str, str, str, str | None, str, int, int, int]]:
        """file_summary rows: path, status, hash, loaded_at, last_modified, counts."""
        return list(self.conn.execute(
            "SELECT file_path, status, file_hash, loaded_at, last_modified, phases, errors, "
            "warnings FROM file_summary ORDER BY file_path"))

    # --- phases -------------------------------------------------------------------------

    def phases(self, *, severity: str | None = None, file_path: str | None = None,
               task: str | None = None, topic: str | None = None) -> list[Phase]:
        """Stored phases in file order (files sorted by key), optionally filtered."""
        where, args = [], []
        if severity:
            where.append("severity = ?")
            args.append(severity)
        if file_path is not None:
            where.append("file_path = ?")
            args.append(file_path)
        if task is not None:
            where.append("task = ?")
            args.append(task)
        if topic is not None:
            where.append("(task = ? OR task >= ? AND task < ?)")  # topic, topic:…
            args.extend([topic, topic + ":", topic + ";"])
        sql = f"SELECT {PHASE_COLUMNS} FROM workflow_phases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_new(Phase, r) for r in self.conn.execute(
            sql + " ORDER BY file_path, position", args)]

    def phases_and_plan(self) -> tuple[list[Phase], list[str | None]]:
        """Every stored phase in file order, and beside each its stored plan (next_fire,
        UTC text or None), read in one statement: one snapshot."""
        rows = self.conn.execute(f"SELECT {PHASE_COLUMNS}, next_fire FROM workflow_phases "
                                 "ORDER BY file_path, position").fetchall()
        return [_new(Phase, r[:-1]) for r in rows], [r[-1] for r in rows]  # type: ignore[misc]

    def severity_counts(self) -> dict[str, int]:
        """How many stored phases are ok, warning and error."""
        counts = dict.fromkeys(("warning", "error"), 0)
        # one statement, one snapshot; the broken ones through their partial index
        counts.update(self.conn.execute(
            "SELECT 'all', count(*) FROM workflow_phases UNION ALL "
            "SELECT severity, count(*) FROM workflow_phases WHERE severity <> 'ok' "
            "GROUP BY severity"))
        return {"ok": counts.pop("all") - counts["warning"] - counts["error"], **counts}

    def file_phases(self) -> list[Phase]:
        """Phases that may have a `files=` rule (the caller parses the rule to be sure)."""
        return [_phase(r) for r in self.conn.execute(
            f"SELECT {PHASE_COLUMNS} FROM workflow_phases WHERE rule LIKE '%files=%' "
            "AND severity <> 'error' ORDER BY file_path, position")]

    def dependents(self, file_path: str, topic: str) -> list[Phase]:
        """Phases of one file whose dependsOn names `topic` or `topic:<job>`."""
        rows = self.conn.execute(
            f"SELECT {PHASE_COLUMNS} FROM workflow_phases WHERE file_path = ? "
            "AND (depends_on = ? OR depends_on >= ? AND depends_on < ?) ORDER BY position",
            (file_path, topic, topic + ":", topic + ";"))
        return [_phase(r) for r in rows]

    def edges(self, file_path: str | None = None) -> list[tuple[str, str, str]]:
        """(file, parent, child) from the phase_edges view, of one file or of all."""
        where = "WHERE file_path = ? " if file_path is not None else ""
        return list(self.conn.execute(
            f"SELECT file_path, parent, child FROM phase_edges {where}"
            "ORDER BY file_path, parent, child", (file_path,) if file_path is not None else ()))

    # --- integrity ----------------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    def foreign_key_problems(self) -> list[str]:
        return [f"{table} row {rowid} points at a missing {parent}"
                for table, rowid, parent, _ in self.conn.execute("PRAGMA foreign_key_check")]

    def remove_orphans(self) -> int:
        """Rows whose parent row is gone (edits made with foreign keys off), settled as
        their foreign key's ON DELETE says: a reference that may be NULL is cleared (a
        child keeps its history when its parent task went), any other row is deleted
        (with what cascades from it). Call inside write_txn; returns how many rows."""
        actions: dict[tuple[str, int], tuple[str, list[str]]] = {}  # (table, fk id) → …
        fixed = 0
        for table, rowid, _, fkid in list(self.conn.execute("PRAGMA foreign_key_check")):
            if rowid is None:  # a WITHOUT ROWID table: none of ours has foreign keys
                continue
            if (table, fkid) not in actions:
                rows = [r for r in self.conn.execute(f'PRAGMA foreign_key_list("{table}")')
                        if r[0] == fkid]  # (id, seq, parent, from, to, on update, on delete…)
                actions[table, fkid] = (rows[0][6], [r[3] for r in rows])
            on_delete, columns = actions[table, fkid]
            if on_delete == "SET NULL":
                cleared = ", ".join(f'"{c}" = NULL' for c in columns)
                self.conn.execute(f'UPDATE "{table}" SET {cleared} WHERE rowid = ?', (rowid,))
            else:
                self.conn.execute(f'DELETE FROM "{table}" WHERE rowid = ?', (rowid,))
            fixed += self.conn.changes()
        return fixed

    def orphan_phases(self) -> list[tuple[str, str]]:
        """Phases whose file row is gone (left by edits made with foreign keys off)."""
        return list(self.conn.execute(
            "SELECT p.file_path, p.task FROM workflow_phases AS p "
            "WHERE NOT EXISTS (SELECT 1 FROM workflow_files AS f "
            "WHERE f.file_path = p.file_path) ORDER BY 1, 2"))
