"""Numbered migrations. Migration N leaves the database at `PRAGMA user_version = N`.

Append new migrations; never edit a released one. Everything here must stay
readable by SQLite 3.40 (Debian bookworm's `sqlite3`): no functions newer than
3.40 in CHECKs, defaults, indexes or views.

The tables, indexes and their changes are here; the views are in store/views.py,
each migration's views appended to it, so this reads as the storage itself.
"""

from flowlord.store.views import (
    LEDGER_VIEWS,
    RUNNING_VIEWS,
    STATS_VIEWS,
    TIME_WINDOW_VIEWS,
    WORKFLOW_VIEWS,
)

MIGRATIONS: tuple[str, ...] = (
    # 1: workflow files and their phases, with debugging views (README.md, Debugging with sqlite3)
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
    """ + WORKFLOW_VIEWS,

    # 2: the fire ledger, tasks, and the scheduler's plan on each phase
    """
    -- One row per fired slot of a phase: the primary key makes a second fire of the
    -- same slot impossible. No foreign key to workflow_phases: history outlives the
    -- definitions, and a file removed and put back must not fire its slots again.
    CREATE TABLE fires (
        file_path     TEXT NOT NULL,
        phase         TEXT NOT NULL,
        -- the slot (UTC): the cron time, or the time given to trigger; for backload the
        -- step's data time less the phase's offset, so it is the slot that builds it
        scheduled_for TEXT NOT NULL,
        fired_at      TEXT NOT NULL,  -- when it was recorded (UTC, milliseconds)
        source        TEXT NOT NULL
                        CHECK (source IN ('cron', 'catchup', 'trigger', 'backload')),
        -- why the fire created no task ('' when it did, or had nothing to create)
        error         TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (file_path, phase, scheduled_for)
    ) WITHOUT ROWID;

    CREATE TABLE tasks (
        task_no       INTEGER PRIMARY KEY,
        id            TEXT NOT NULL CHECK (id <> ''),
        type          TEXT NOT NULL CHECK (type <> ''),
        job           TEXT NOT NULL DEFAULT '',
        info          TEXT NOT NULL DEFAULT '',
        meta          TEXT NOT NULL DEFAULT '',
        created       TEXT NOT NULL,
        started       TEXT,
        ended         TEXT,
        result        TEXT,
        msg           TEXT NOT NULL DEFAULT '',
        file_path     TEXT,
        phase         TEXT,
        attempt       INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
        scheduled_for TEXT,
        CHECK (result IS NULL OR result IN ('complete', 'error', 'alert', 'warn')),
        CHECK ((ended IS NULL) = (result IS NULL)),
        CHECK (ended IS NULL OR started IS NOT NULL),
        CHECK ((file_path IS NULL) = (phase IS NULL)),
        -- a task of a slot exists only with the ledger row of that slot
        FOREIGN KEY (file_path, phase, scheduled_for)
            REFERENCES fires (file_path, phase, scheduled_for)
    );
    CREATE INDEX tasks_by_id ON tasks (id);
    CREATE INDEX tasks_by_slot ON tasks (file_path, phase, scheduled_for);
    CREATE INDEX tasks_waiting ON tasks (task_no) WHERE started IS NULL;
    CREATE INDEX tasks_by_result ON tasks (result, task_no) WHERE result IS NOT NULL;

    -- when the running daemon plans to fire the phase next (UTC); NULL: not scheduled
    ALTER TABLE workflow_phases ADD COLUMN next_fire TEXT;
    """ + LEDGER_VIEWS,
    # 3: running tasks: retry due times, lineage, alerts
    """
    -- a waiting task starts no earlier than due_at (a retry's delay); NULL: at once
    ALTER TABLE tasks ADD COLUMN due_at TEXT;
    -- the task this one came from: the parent of a child, the attempt before a retry
    ALTER TABLE tasks ADD COLUMN parent_no INTEGER
        REFERENCES tasks (task_no) ON DELETE SET NULL;
    CREATE INDEX tasks_by_parent ON tasks (parent_no) WHERE parent_no IS NOT NULL;
    -- the queue: a topic's waiting tasks in order, and the next retry's due time
    CREATE INDEX tasks_queue ON tasks (type, task_no) WHERE started IS NULL;
    CREATE INDEX tasks_due ON tasks (due_at) WHERE started IS NULL AND due_at IS NOT NULL;
    CREATE INDEX tasks_unfinished ON tasks (created) WHERE ended IS NULL;
    CREATE INDEX tasks_running ON tasks (task_no) WHERE started IS NOT NULL AND ended IS NULL;

    -- one row per alert event: a task failed for good, a worker reported `alert`, or a
    -- task stayed unfinished past task_ttl (once per task and kind)
    CREATE TABLE alerts (
        alert_no INTEGER PRIMARY KEY,
        task_no  INTEGER NOT NULL REFERENCES tasks (task_no) ON DELETE CASCADE,
        kind     TEXT NOT NULL CHECK (kind IN ('failed', 'alert', 'incomplete')),
        type     TEXT NOT NULL,
        job      TEXT NOT NULL DEFAULT '',
        message  TEXT NOT NULL DEFAULT '',
        created  TEXT NOT NULL,
        -- when the webhook accepted it; NULL: not sent (yet, or no webhook configured)
        posted_at TEXT,
        UNIQUE (task_no, kind)
    );
    CREATE INDEX alerts_unposted ON alerts (alert_no) WHERE posted_at IS NULL;

    -- each file that arrived for `files=` phases: seen by the daemon's watch, or reported
    -- by `flowlord notify`; its tasks point at it (tasks.file_no)
    CREATE TABLE file_messages (
        file_no  INTEGER PRIMARY KEY,
        path     TEXT NOT NULL CHECK (path <> ''),
        received TEXT NOT NULL,
        source   TEXT NOT NULL CHECK (source IN ('watch', 'notify'))
    );
    ALTER TABLE tasks ADD COLUMN file_no INTEGER
        REFERENCES file_messages (file_no) ON DELETE SET NULL;
    CREATE INDEX tasks_by_file ON tasks (file_no) WHERE file_no IS NOT NULL;
    """ + RUNNING_VIEWS,
    # 4: tasks_queue (migration 3) serves every query tasks_waiting served, and each index
    # is written by every task inserted: a burst of children pays for it
    """
    DROP INDEX tasks_waiting;
    """,
    # 5: the redis bus: a claimed task is published to its stream after its row commits
    """
    -- when the task was handed to the redis bus (NULL: not yet, or the local bus). After a
    -- crash or an outage, a claimed task without it is published again.
    ALTER TABLE tasks ADD COLUMN published_at TEXT;
    CREATE INDEX tasks_unpublished ON tasks (task_no)
        WHERE started IS NOT NULL AND ended IS NULL AND published_at IS NULL;
    """,
    # 6: fewer index writes per task. Only a fire's own tasks have a slot: children,
    # retries and file tasks (most rows in a burst) need no entry in the slot index, which
    # serves the foreign key to fires. Unpublished tasks are looked for once, at start,
    # among the running ones (tasks_running): their own index cost every claim and result.
    """
    DROP INDEX tasks_unpublished;
    DROP INDEX tasks_by_slot;
    CREATE INDEX tasks_by_slot ON tasks (file_path, phase, scheduled_for)
        WHERE scheduled_for IS NOT NULL;
    """,
    # 7: the dashboard's overview reads broken phases and the next fires among 100,000
    # phases; partial indexes hold only the rows it asks for (broken phases are few, a
    # phase without a schedule has no next_fire)
    """
    CREATE INDEX workflow_phases_broken ON workflow_phases (severity) WHERE severity <> 'ok';
    CREATE INDEX workflow_phases_by_next_fire ON workflow_phases (next_fire)
        WHERE next_fire IS NOT NULL;
    """,
    # 8: a topic's history, newest first (the API's and dashboard's ?type= filter, a
    # phase's last tasks), without reading every task. Measured by bench/tasks.py: its
    # cost per task inserted is within that benchmark's noise.
    """
    CREATE INDEX tasks_by_type ON tasks (type, task_no);
    """,
    # 9: the audit trail: one row per operator action, written before it takes effect,
    # its outcome when it was applied (README.md, Operating: rerun, cancel, mark, pause)
    """
    CREATE TABLE actions (
        action_no INTEGER PRIMARY KEY,
        requested TEXT NOT NULL,
        -- a Unix user (the CLI; SUDO_USER when set) or a token's name (HTTP)
        actor     TEXT NOT NULL CHECK (actor <> ''),
        kind      TEXT NOT NULL CHECK (kind IN ('trigger', 'backload', 'refresh', 'notify',
                                                'rerun', 'cancel', 'drop', 'mark', 'pause',
                                                'resume')),
        -- what it acts on: a phase `file: task`, a path, or '' for everything
        target    TEXT NOT NULL DEFAULT '',
        args      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(args)),
        applied   TEXT,
        outcome   TEXT CHECK (outcome IN ('done', 'failed')),
        -- what it did ('2 fires, 2 tasks created') or why it failed
        message   TEXT NOT NULL DEFAULT '',
        CHECK ((applied IS NULL) = (outcome IS NULL))
    );
    """,
    # 10: a rerun with --only: its completion creates no children (README.md, Operating)
    """
    ALTER TABLE tasks ADD COLUMN no_children INTEGER NOT NULL DEFAULT 0
        CHECK (no_children IN (0, 1));
    """,
    # 11: pauses (README.md, Operating): what is paused, by whom, why, from when until
    # when; a row stays after its end, so a slot's pause can be told after the fact
    """
    CREATE TABLE pauses (
        pause_no   INTEGER PRIMARY KEY,
        scope      TEXT NOT NULL CHECK (scope IN ('phase', 'file', 'topic', 'all')),
        file_path  TEXT,
        task       TEXT,
        topic      TEXT,
        actor      TEXT NOT NULL CHECK (actor <> ''),
        reason     TEXT NOT NULL DEFAULT '',
        since      TEXT NOT NULL,
        -- it ends by itself then; NULL: when resumed
        until      TEXT CHECK (until IS NULL OR until > since),
        -- ended by `flowlord resume` (by whom), or closed once its `until` had passed
        ended      TEXT,
        ended_by   TEXT,
        CHECK ((scope = 'phase') = (task IS NOT NULL)),
        CHECK ((scope IN ('phase', 'file')) = (file_path IS NOT NULL)),
        CHECK ((scope = 'topic') = (topic IS NOT NULL)),
        CHECK ((ended IS NULL) = (ended_by IS NULL))
    );
    -- one open pause per target
    CREATE UNIQUE INDEX pauses_open ON pauses
        (scope, coalesce(file_path, ''), coalesce(task, ''), coalesce(topic, ''))
        WHERE ended IS NULL;
    """,
    # 12: more kinds of alert: `slow` (running past its phase's usual time), and those
    # the scheduling policy raises (`late`, `recovered`, `success`). SQLite cannot change
    # a CHECK: the table is made again, its rows copied (no view or trigger names it)
    """
    CREATE TABLE alerts_new (
        alert_no INTEGER PRIMARY KEY,
        task_no  INTEGER NOT NULL REFERENCES tasks (task_no) ON DELETE CASCADE,
        kind     TEXT NOT NULL CHECK (kind IN ('failed', 'alert', 'incomplete', 'slow',
                                               'late', 'recovered', 'success')),
        type     TEXT NOT NULL,
        job      TEXT NOT NULL DEFAULT '',
        message  TEXT NOT NULL DEFAULT '',
        created  TEXT NOT NULL,
        -- when the webhook accepted it; NULL: not sent (yet, or no webhook configured)
        posted_at TEXT,
        UNIQUE (task_no, kind)
    );
    INSERT INTO alerts_new SELECT alert_no, task_no, kind, type, job, message, created,
                                  posted_at FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_new RENAME TO alerts;
    CREATE INDEX alerts_unposted ON alerts (alert_no) WHERE posted_at IS NULL;
    """,
    # 13: run statistics for sqlite3 and `flowlord stats` (store/views.py)
    STATS_VIEWS,
    # 14: the dashboard's timeline reads the runs of a window (flowlord/store/history.py)
    # by when they started. Partial: a task is written into it once, when it is claimed,
    # never when it is inserted (it has not started then), as with tasks_running.
    """
    CREATE INDEX tasks_by_start ON tasks (started) WHERE started IS NOT NULL;
    """,
    # 15: which code wrote a file's statuses (flowlord/validate.py, VALIDATOR): after an
    # upgrade, a file validated by other code is validated again though its bytes are
    # the same; '' (the rows of before): validated by an older release
    """
    ALTER TABLE workflow_files ADD COLUMN validator TEXT NOT NULL DEFAULT '';
    """,
    # 16: the history of the daemon itself (README.md, Debugging with sqlite3): a row per
    # run, and on each fire the hash of the file bytes its phase was loaded from
    """
    CREATE TABLE daemon_runs (
        run_no    INTEGER PRIMARY KEY,
        node      TEXT NOT NULL,  -- [bus] node, else the host name
        pid       INTEGER NOT NULL,
        version   TEXT NOT NULL,  -- of flowlord
        started   TEXT NOT NULL,
        -- while it runs, brought forward every few seconds: when it was last known alive
        last_seen TEXT NOT NULL CHECK (last_seen >= started),
        stopped   TEXT CHECK (stopped >= started),
        -- stopped: by a signal, cleanly; failed: by an error it reported; vanished: it
        -- never said (SIGKILL, a crash, power lost), found by the next run, which counts
        -- it stopped when it was last seen
        ended     TEXT CHECK (ended IN ('stopped', 'failed', 'vanished')),
        CHECK ((stopped IS NULL) = (ended IS NULL))
    );
    -- the hash of the bytes the stored phases were loaded from (file_hash is that of
    -- the bytes last read, which may have been refused)
    ALTER TABLE workflow_files ADD COLUMN loaded_hash TEXT;
    UPDATE workflow_files SET loaded_hash = file_hash WHERE status = '';
    -- which version of its file built the fire (NULL: recorded before this was kept)
    ALTER TABLE fires ADD COLUMN file_hash TEXT;
    """,
    # 17: the scheduling policy (flowlord/overlap.py) asks, at each fire of a phase with
    # `overlap` and at each claim of a phase with `max_active`, for the phase's
    # unfinished tasks: an index of those only (a task leaves it when it ends)
    """
    CREATE INDEX tasks_unfinished_by_phase ON tasks (file_path, phase, task_no)
        WHERE ended IS NULL;
    """,
    # 18: no lost files (flowlord/catch_up.py): per watched `files=` directory, until when
    # this database recorded what arrived there (the leader's watch, or its first watch:
    # files there before are not started); arrived paths by path, so that the catch-up
    # at start and at a takeover skips the files already recorded
    """
    CREATE TABLE watched_dirs (
        directory     TEXT PRIMARY KEY CHECK (directory <> ''),
        watched_until TEXT NOT NULL  -- UTC, to the millisecond
    );
    CREATE INDEX file_messages_by_path ON file_messages (path, received);
    """,
    # 19: windows of time for a person at sqlite3 (store/views.py)
    TIME_WINDOW_VIEWS,
    # 20: alerts that name a slot (README.md, Alerts and notifications): a `late` slot
    # may have no task at all (never fired, paused, skipped), so task_no may be NULL and
    # an alert names its phase and slot; one `late` (and one `recovered`) per slot ever.
    # Every alert names its phase when it has one, for the routes' `files` and for "the
    # first complete after a failure". AUTOINCREMENT: an alert number is never used
    # twice, so each route's cursor (route_cursors, flowlord/routes.py) stays true after
    # retention empties the table. `success` is never a row (a notification only).
    """
    CREATE TABLE alerts_new (
        alert_no INTEGER PRIMARY KEY AUTOINCREMENT,
        task_no  INTEGER REFERENCES tasks (task_no) ON DELETE CASCADE,
        kind     TEXT NOT NULL CHECK (kind IN ('failed', 'alert', 'incomplete', 'slow',
                                               'late', 'recovered')),
        type     TEXT NOT NULL,
        job      TEXT NOT NULL DEFAULT '',
        message  TEXT NOT NULL DEFAULT '',
        created  TEXT NOT NULL,
        -- when a webhook first accepted it; NULL: not sent (yet, or no route took it)
        posted_at TEXT,
        file_path     TEXT,
        phase         TEXT,
        scheduled_for TEXT,  -- the slot (UTC), for an alert about a slot
        CHECK ((file_path IS NULL) = (phase IS NULL)),
        -- an alert names a task, or a slot of a phase
        CHECK (task_no IS NOT NULL OR (phase IS NOT NULL AND scheduled_for IS NOT NULL)),
        CHECK (scheduled_for IS NULL OR phase IS NOT NULL),
        CHECK (kind <> 'late' OR scheduled_for IS NOT NULL),
        UNIQUE (task_no, kind)
    );
    INSERT INTO alerts_new (alert_no, task_no, kind, type, job, message, created, posted_at,
                            file_path, phase, scheduled_for)
    SELECT a.alert_no, a.task_no, a.kind, a.type, a.job, a.message, a.created, a.posted_at,
           t.file_path, t.phase, t.scheduled_for
      FROM alerts AS a LEFT JOIN tasks AS t USING (task_no) WHERE a.kind <> 'success';
    DROP TABLE alerts;
    ALTER TABLE alerts_new RENAME TO alerts;
    CREATE INDEX alerts_unposted ON alerts (alert_no) WHERE posted_at IS NULL;
    CREATE INDEX alerts_by_phase ON alerts (file_path, phase, alert_no)
        WHERE file_path IS NOT NULL;
    CREATE UNIQUE INDEX alerts_late ON alerts (file_path, phase, scheduled_for)
        WHERE kind = 'late';
    CREATE UNIQUE INDEX alerts_recovered ON alerts (file_path, phase, scheduled_for)
        WHERE kind = 'recovered';

    -- per [[alerts.route]] (its name, or a hash of its webhook URL): the highest
    -- alert_no its webhook has been shown; alerts after it are still to be posted
    CREATE TABLE route_cursors (
        route   TEXT PRIMARY KEY CHECK (route <> ''),
        through INTEGER NOT NULL CHECK (through >= 0)
    );
    """,
    # 21: a phase's history (flowlord stats per phase, its page's charts) through an
    # index of its own: each task enters it once, when it ends; measured by
    # bench/tasks.py (README.md, Performance)
    """
    CREATE INDEX tasks_ended_by_phase ON tasks (file_path, phase, ended)
        WHERE ended IS NOT NULL;
    """,
    # 22: a job's history, newest first (the ?job= filter of the API, the dashboard and
    # `flowlord tasks --job`), which read every task for a job that never ran. Tasks
    # without a job (most phases have none) stay out of it; bench/tasks.py measures
    # what it costs the others (README.md, Performance)
    """
    CREATE INDEX tasks_by_job ON tasks (job, task_no) WHERE job <> '';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
