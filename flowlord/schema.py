"""Numbered migrations. Migration N leaves the database at `PRAGMA user_version = N`.

Append new migrations; never edit a released one. Everything here must stay
readable by SQLite 3.40 (Debian bookworm's `sqlite3`): no functions newer than
3.40 in CHECKs, defaults, indexes or views.
"""

MIGRATIONS: tuple[str, ...] = (
    # 1: workflow files and their phases (CONTRACT §7), with debugging views
    """
    CREATE TABLE workflow_files (
        file_path     TEXT PRIMARY KEY CHECK (file_path <> ''),
        -- lowercase hex MD5 of the bytes last read; '' when they could not be read
        file_hash     TEXT NOT NULL CHECK (length(file_hash) IN (0, 32)),
        loaded_at     TEXT NOT NULL,
        -- the file's mtime (UTC, nanoseconds)
        last_modified TEXT,
        status        TEXT NOT NULL DEFAULT '',
        -- size, inode, mtime and ctime as last seen: equal means unchanged, so a rescan
        -- skips the file without reading it; NULL means read it again next time
        stat_token    TEXT
    );

    CREATE TABLE workflow_phases (
        file_path  TEXT NOT NULL REFERENCES workflow_files (file_path)
                     ON DELETE CASCADE ON UPDATE CASCADE,
        task       TEXT NOT NULL,
        depends_on TEXT NOT NULL DEFAULT '',
        rule       TEXT NOT NULL DEFAULT '',
        template   TEXT NOT NULL DEFAULT '',
        retry      INTEGER NOT NULL DEFAULT 0 CHECK (retry >= 0),
        status     TEXT NOT NULL DEFAULT '',
        severity   TEXT NOT NULL DEFAULT 'ok' CHECK (severity IN ('ok', 'warning', 'error')),
        -- index of the [[phase]] table in its file: file order for lookups and export
        position   INTEGER NOT NULL CHECK (position >= 0),
        CHECK ((severity = 'ok') = (status = '')),
        PRIMARY KEY (file_path, task),
        UNIQUE (file_path, position)
    );
    CREATE INDEX workflow_phases_by_task ON workflow_phases (task);
    CREATE INDEX workflow_phases_by_depends_on ON workflow_phases (depends_on);

    -- which phases are broken, and why (errors first)
    CREATE VIEW broken_phases AS
    SELECT file_path, task, severity, status
      FROM workflow_phases
     WHERE severity <> 'ok'
     ORDER BY severity = 'error' DESC, file_path, position;

    -- the edges of the dependency graph: `dependsOn = topic` matches every job of it
    CREATE VIEW phase_edges AS
    SELECT c.file_path, p.task AS parent, c.task AS child, c.depends_on
      FROM workflow_phases AS c
      JOIN workflow_phases AS p
        ON p.file_path = c.file_path
       AND (p.task = c.depends_on
            OR (instr(c.depends_on, ':') = 0
                AND substr(p.task, 1, instr(p.task || ':', ':') - 1) = c.depends_on))
     WHERE c.depends_on <> '';

    -- one line per workflow file
    CREATE VIEW file_summary AS
    SELECT f.file_path, f.status, f.file_hash, f.loaded_at, f.last_modified,
           count(p.task) AS phases,
           count(CASE WHEN p.severity = 'error' THEN 1 END) AS errors,
           count(CASE WHEN p.severity = 'warning' THEN 1 END) AS warnings
      FROM workflow_files AS f
      LEFT JOIN workflow_phases AS p ON p.file_path = f.file_path
     GROUP BY f.file_path;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
