"""The views: named queries over the tables of store/schema.py.

Most are for a person at sqlite3 (README.md, Debugging with sqlite3); a few are
also read by the code (`phase_edges` by store/workflows.py and store/reads.py,
`file_summary` by store/workflows.py, `broken_phases` by store/reads.py). Each
constant is the views part of one migration in store/schema.py, which appends it
in its place: a view is created with the tables it reads. Like a migration, a
released constant is never edited: a changed view is a new migration that drops
it and creates it again, and, as there, nothing newer than SQLite 3.40.
"""

# migration 1: the workflow files and their phases
WORKFLOW_VIEWS = """
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
    """

# migration 2: the fire ledger, the plan, and tasks
LEDGER_VIEWS = """
    -- when each phase fires next and last fired
    CREATE VIEW phase_schedule AS
    SELECT p.file_path, p.task, p.rule, p.severity, p.next_fire,
           (SELECT max(f.scheduled_for) FROM fires AS f
             WHERE f.file_path = p.file_path AND f.phase = p.task) AS last_fired
      FROM workflow_phases AS p
     ORDER BY p.next_fire IS NULL, p.next_fire, p.file_path, p.position;

    -- fires that created no task, and why
    CREATE VIEW failed_fires AS
    SELECT file_path, phase, scheduled_for, fired_at, source, error
      FROM fires WHERE error <> '' ORDER BY scheduled_for DESC;

    -- tasks not finished: waiting for a worker or running, oldest first, with their age
    CREATE VIEW unfinished_tasks AS
    SELECT task_no, id, type, job, info, created, started, file_path, phase, scheduled_for,
           CASE WHEN started IS NULL THEN 'waiting' ELSE 'running' END AS state,
           CAST(round((julianday('now') - julianday(created)) * 86400) AS INTEGER)
             AS age_seconds
      FROM tasks WHERE ended IS NULL ORDER BY task_no;

    -- tasks that ended in error or alert, newest first
    CREATE VIEW failed_tasks AS
    SELECT task_no, id, type, job, info, meta, created, started, ended, result, msg,
           file_path, phase, attempt, scheduled_for
      FROM tasks WHERE result IN ('error', 'alert') ORDER BY task_no DESC;
    """

# migration 3: arrived files, running tasks, retries
RUNNING_VIEWS = """
    -- files that arrived, newest first, with the tasks they started ('' when none matched)
    CREATE VIEW file_arrivals AS
    SELECT m.file_no, m.path, m.received, m.source, count(t.task_no) AS tasks,
           coalesce(group_concat(t.type || CASE WHEN t.job <> '' THEN ':' || t.job ELSE '' END,
                                 ' '), '') AS started
      FROM file_messages AS m LEFT JOIN tasks AS t ON t.file_no = m.file_no
     GROUP BY m.file_no ORDER BY m.file_no DESC;

    -- tasks running now, oldest first
    CREATE VIEW running_tasks AS
    SELECT task_no, id, type, job, info, started, attempt, file_path, phase,
           CAST(round((julianday('now') - julianday(started)) * 86400) AS INTEGER)
             AS running_seconds
      FROM tasks WHERE started IS NOT NULL AND ended IS NULL ORDER BY task_no;

    -- retries waiting for their due time
    CREATE VIEW pending_retries AS
    SELECT task_no, id, type, job, info, attempt, due_at, parent_no
      FROM tasks WHERE started IS NULL AND due_at IS NOT NULL ORDER BY due_at;
    """

# migration 13: run statistics a person can query with sqlite3 (README.md, Debugging
# with sqlite3): each ended task's run and wait time, and per phase and per topic over the
# last 30 days the figures `flowlord stats` prints (nearest-rank percentiles, computed
# with window functions; cancelled tasks did not run and are left out)
STATS_VIEWS = """
    CREATE VIEW task_times AS
    SELECT task_no, id, type, job, file_path, phase, attempt, result, created, started,
           ended,
           round(max(0, (julianday(ended) - julianday(started)) * 86400), 3) AS run_seconds,
           round(max(0, (julianday(started) - julianday(created)) * 86400), 3)
             AS wait_seconds
      FROM tasks WHERE ended IS NOT NULL AND msg NOT LIKE 'cancelled by %';

    CREATE VIEW phase_stats AS
    WITH recent AS (
        SELECT file_path, phase, result, run_seconds, wait_seconds,
               count(*) OVER w AS n,
               row_number() OVER (w ORDER BY run_seconds) AS run_rank,
               row_number() OVER (w ORDER BY wait_seconds) AS wait_rank
          FROM task_times
         WHERE file_path IS NOT NULL AND ended >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')
        WINDOW w AS (PARTITION BY file_path, phase))
    SELECT file_path, phase, count(*) AS runs,
           sum(result = 'complete') AS complete, sum(result = 'error') AS error,
           max(CASE WHEN run_rank = (n * 50 + 99) / 100 THEN run_seconds END) AS run_p50,
           max(CASE WHEN run_rank = (n * 95 + 99) / 100 THEN run_seconds END) AS run_p95,
           max(run_seconds) AS run_max,
           max(CASE WHEN wait_rank = (n * 50 + 99) / 100 THEN wait_seconds END) AS wait_p50,
           max(CASE WHEN wait_rank = (n * 95 + 99) / 100 THEN wait_seconds END) AS wait_p95
      FROM recent GROUP BY file_path, phase ORDER BY file_path, phase;

    CREATE VIEW topic_stats AS
    WITH recent AS (
        SELECT type, result, run_seconds, wait_seconds,
               count(*) OVER w AS n,
               row_number() OVER (w ORDER BY run_seconds) AS run_rank,
               row_number() OVER (w ORDER BY wait_seconds) AS wait_rank
          FROM task_times
         WHERE ended >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days')
        WINDOW w AS (PARTITION BY type))
    SELECT type AS topic, count(*) AS runs,
           sum(result = 'complete') AS complete, sum(result = 'error') AS error,
           max(CASE WHEN run_rank = (n * 50 + 99) / 100 THEN run_seconds END) AS run_p50,
           max(CASE WHEN run_rank = (n * 95 + 99) / 100 THEN run_seconds END) AS run_p95,
           max(run_seconds) AS run_max,
           max(CASE WHEN wait_rank = (n * 50 + 99) / 100 THEN wait_seconds END) AS wait_p50,
           max(CASE WHEN wait_rank = (n * 95 + 99) / 100 THEN wait_seconds END) AS wait_p95
      FROM recent GROUP BY type ORDER BY type;
    """

# migration 19: windows of time for a person at sqlite3 (README.md, Debugging with
# sqlite3). Task times are text to the millisecond with a T and a Z
# (2026-11-23T14:05:00.123Z): the bound is written the same way, as
# datetime('now', '-1 hour') gives '2026-11-23 13:05:00', which sorts after every time
# of that day
TIME_WINDOW_VIEWS = """
    CREATE VIEW tasks_last_hour AS
    SELECT task_no, id, type, job, info, file_path, phase, attempt, created, started,
           ended, result, msg
      FROM tasks WHERE created >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour');

    CREATE VIEW tasks_last_day AS
    SELECT task_no, id, type, job, info, file_path, phase, attempt, created, started,
           ended, result, msg
      FROM tasks WHERE created >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day');

    -- since midnight UTC
    CREATE VIEW tasks_today AS
    SELECT task_no, id, type, job, info, file_path, phase, attempt, created, started,
           ended, result, msg
      FROM tasks WHERE created >= strftime('%Y-%m-%dT00:00:00.000Z', 'now');
    """
