"""The read model: what the HTTP API, the dashboard and the commands show, read in one
place. Functions of a Store (a read-only one will do) returning plain rows and dicts.

A phase and a task become a dict through one builder each (`phase_json`, `task_json`),
so a field has one name wherever it is shown: `flowlord phases --json`, `flowlord tasks
--json`, `/api/phases` and `/api/tasks` all call the workflow file `file` (README.md,
HTTP API and dashboard).
Each table is read with its one column list (`PHASE_COLUMNS`, `TASK_COLUMNS`).

The planner has no statistics, so the listings are steered to their indexes (the
partial index of broken phases, `task_filter`); `tests/test_store.py` pins the plans.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from flowlord.clock import seconds_between
from flowlord.model import Phase
from flowlord.pauses import Pauses
from flowlord.store import Store
from flowlord.store.actions import ACTION_COLUMNS
from flowlord.store.taskrows import TASK_COLUMNS, task_filter
from flowlord.store.workflows import PHASE_COLUMNS

ALL = -1  # as a LIMIT: every row
RECENT_TASKS = 10_000  # the newest tasks looked through for phases' last results
LAST_TASKS = 10  # a phase's newest tasks, shown with it

# a task's keys, in TASK_COLUMNS order; the workflow file is `file`, as everywhere
_ROW_KEYS = tuple("file" if c == "file_path" else c for c in TASK_COLUMNS.split(", "))
TASK_KEYS = (*_ROW_KEYS, "wait_seconds", "run_seconds")  # a task's JSON
ACTION_KEYS = tuple(ACTION_COLUMNS.split(", "))
ALERT_KEYS = ("alert_no", "task_no", "kind", "type", "job", "message", "created",
              "posted_at", "task_id", "file", "phase", "slot")

# a phase as stored, then the daemon's plan for it and the slot it last fired
_PHASE_SELECT = (f"SELECT {PHASE_COLUMNS}, next_fire, (SELECT max(f.scheduled_for) FROM "
                 "fires AS f WHERE f.file_path = p.file_path AND f.phase = p.task) "
                 "FROM workflow_phases AS p ")


class PhaseRow(NamedTuple):
    phase: Phase
    next_fire: str | None  # the running daemon's plan (workflow_phases.next_fire)
    last_fire: str | None  # the latest slot in the ledger, of any source


def phase_json(phase: Phase, next_fire: str | None, last_fire: str | None,
               pauses: Pauses | None = None) -> dict[str, Any]:
    """A phase as the API and `flowlord phases --json` show it; `paused`: the pause in
    force now (who, why, until), or None."""
    paused = pauses.of_phase(phase.file_path, phase.task, datetime.now(UTC)) if pauses else None
    return {"file": phase.file_path, "task": phase.task, "depends_on": phase.depends_on,
            "rule": phase.rule, "template": phase.template, "retry": phase.retry,
            "severity": phase.severity, "status": phase.status, "next_fire": next_fire,
            "last_fire": last_fire, "paused": paused.as_json() if paused else None}


def pauses_now(store: Store) -> Pauses:
    """The pauses, read now, to mark the phases they stop."""
    return Pauses.read(store, datetime.now(UTC))


def task_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """A task row (TASK_COLUMNS order) as the API and `flowlord tasks --json` show it,
    with how long it waited for a worker (created → started) and ran (started → ended),
    in seconds: null until it started, and until it ended."""
    task = dict(zip(_ROW_KEYS, row, strict=True))
    task["wait_seconds"] = seconds_between(task["created"], task["started"])
    task["run_seconds"] = seconds_between(task["started"], task["ended"])
    return task


def daemon_running(db: str) -> bool:
    """Whether a daemon runs on the database `db`: it holds an flock on `<db>.lock` for
    as long as it runs (startup.lock_database), and keeps the stored plan current.
    Looked at without creating the file, with a shared lock released at once."""
    try:
        fd = os.open(db + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # never ran here, or not ours to read: nothing says one runs
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# --- files ------------------------------------------------------------------------------


def status(store: Store) -> dict[str, Any]:
    """Counts of files (and refused ones) and of phases by severity; the last load."""
    files, refused, last_load = store.file_counts()
    return {"files": files, "refused_files": refused, "phases": store.severity_counts(),
            "last_load": last_load}


def files(store: Store, limit: int, offset: int) -> list[dict[str, Any]]:
    """A page of workflow files, each counted through the primary key of its phases."""
    rows = store.conn.execute(
        "SELECT f.file_path, f.status, f.file_hash, f.loaded_at, "
        "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path), "
        "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path "
        " AND p.severity = 'error'), "
        "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path "
        " AND p.severity = 'warning') "
        "FROM workflow_files AS f ORDER BY f.file_path LIMIT ? OFFSET ?", (limit, offset))
    return [{"file": f[0], "status": f[1], "file_hash": f[2], "loaded_at": f[3],
             "phases": f[4], "errors": f[5], "warnings": f[6]} for f in rows]


def refused_files(store: Store, limit: int = ALL) -> list[tuple[str, str]]:
    """(file, why) of the files whose latest bytes were refused, by key."""
    return list(store.conn.execute(
        "SELECT file_path, status FROM workflow_files WHERE status <> '' "
        "ORDER BY file_path LIMIT ?", (limit,)))


def file_status(store: Store, file: str) -> str | None:
    """The file's status ('' when its bytes loaded); None when there is no such file."""
    row = store.conn.execute("SELECT status FROM workflow_files WHERE file_path = ?",
                             (file,)).fetchone()
    return None if row is None else str(row[0])


def file_paths(store: Store, limit: int = ALL) -> list[str]:
    return [path for path, in store.conn.execute(
        "SELECT file_path FROM workflow_files ORDER BY file_path LIMIT ?", (limit,))]


# --- phases -----------------------------------------------------------------------------


def phase_rows(store: Store, *, severity: str | None = None, file: str | None = None,
               limit: int = ALL, offset: int = 0) -> list[PhaseRow]:
    """Stored phases in file order (files by key), with their plan and last fire."""
    where, args = [], []
    for column, value in (("severity", severity), ("file_path", file)):
        if value is not None:
            where.append(f"p.{column} = ?")
            args.append(value)
    if severity in ("warning", "error"):
        where.append("p.severity <> 'ok'")  # so the partial index of the broken serves
    sql = (_PHASE_SELECT + ("WHERE " + " AND ".join(where) + " " if where else "")
           + "ORDER BY p.file_path, p.position LIMIT ? OFFSET ?")
    return [_phase_row(r) for r in store.conn.execute(sql, (*args, limit, offset))]


def phases(store: Store, *, severity: str | None = None, file: str | None = None,
           limit: int = ALL, offset: int = 0) -> list[dict[str, Any]]:
    """A page of phases as JSON, each with its last result (see `_last_results`)."""
    pauses = pauses_now(store)
    found = [phase_json(*r, pauses) for r in phase_rows(store, severity=severity, file=file,
                                                        limit=limit, offset=offset)]
    results = _last_results(store, found)
    for p in found:
        p["last_result"] = results.get((p["file"], p["task"]))
    return found


def phase(store: Store, file: str, task: str) -> dict[str, Any] | None:
    """One phase as JSON with its last tasks and the state of each parent (`dependsOn =
    topic`: every job of it); None when there is no such phase."""
    rows = store.conn.execute(_PHASE_SELECT + "WHERE p.file_path = ? AND p.task = ?",
                              (file, task)).fetchall()
    if not rows:
        return None
    found = phase_json(*_phase_row(rows[0]), pauses_now(store))
    found["last_tasks"] = _newest_tasks(store, file, task, LAST_TASKS)
    found["parents"] = []
    for parent, severity, why in store.conn.execute(
            "SELECT e.parent, p.severity, p.status FROM phase_edges AS e "
            "JOIN workflow_phases AS p ON p.file_path = e.file_path AND p.task = e.parent "
            "WHERE e.file_path = ? AND e.child = ? ORDER BY p.position", (file, task)):
        last = _newest_tasks(store, file, parent, 1)
        found["parents"].append({
            "task": parent, "severity": severity, "status": why,
            "last_task_no": last[0]["task_no"] if last else None,
            "last_started": last[0]["started"] if last else None,
            "last_result": last[0]["result"] if last else None,
            "last_ended": last[0]["ended"] if last else None})
    return found


def phase_count(store: Store, file: str) -> int:
    (total,), = store.conn.execute(
        "SELECT count(*) FROM workflow_phases WHERE file_path = ?", (file,))
    return int(total)


def broken_phases(store: Store, limit: int) -> list[tuple[str, str, str, str]]:
    """(file, task, severity, why) from the broken_phases view."""
    return list(store.conn.execute(
        "SELECT file_path, task, severity, status FROM broken_phases LIMIT ?", (limit,)))


def next_fires(store: Store, limit: int) -> list[tuple[str, str, str]]:
    """(file, task, next fire) of the soonest planned fires."""
    return list(store.conn.execute(
        "SELECT file_path, task, next_fire FROM workflow_phases "
        "WHERE next_fire IS NOT NULL ORDER BY next_fire LIMIT ?", (limit,)))


def graph(store: Store, file: str | None = None) -> dict[str, Any]:
    """Nodes and edges of one file, or of all."""
    return {"nodes": [{"file": p.file_path, "task": p.task, "severity": p.severity}
                      for p in store.phases(file_path=file)],
            "edges": [{"from": a, "to": b, "file": f}
                      for f, a, b in store.edges(file_path=file)]}


def _phase_row(r: tuple[Any, ...]) -> PhaseRow:
    return PhaseRow(Phase(*r[:9]), r[9], r[10])


def _newest_tasks(store: Store, file: str, phase: str, limit: int) -> list[dict[str, Any]]:
    """A phase's newest tasks: its unfinished ones and the last to end, through its own
    indexes (tasks_unfinished_by_phase, tasks_ended_by_phase), whatever its topic's
    history; newest first."""
    rows: list[Any] = store.conn.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_unfinished_by_phase "
        "WHERE file_path = ? AND phase = ? AND ended IS NULL ORDER BY task_no DESC LIMIT ?",
        (file, phase, limit)).fetchall()
    rows += store.conn.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_ended_by_phase "
        "WHERE file_path = ? AND phase = ? AND ended IS NOT NULL ORDER BY ended DESC "
        "LIMIT ?", (file, phase, limit)).fetchall()
    return [task_json(r) for r in sorted(rows, key=lambda r: r[0], reverse=True)[:limit]]


def _last_results(store: Store, phases: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(file, task) → the result of the phase's newest task (None while it runs): looked
    for among the newest RECENT_TASKS tasks, then among the tasks of the phase's last
    fire (through the slot index). No index leads from a phase to its tasks (every task
    inserted would pay for one), so a child phase quiet for longer has none."""
    found: dict[tuple[str, str], Any] = {
        (f, p): result for f, p, result, _ in store.conn.execute(
            "SELECT file_path, phase, result, max(task_no) FROM tasks WHERE task_no > "
            "(SELECT max(task_no) FROM tasks) - ? AND file_path IS NOT NULL "
            "GROUP BY file_path, phase", (RECENT_TASKS,))}
    for p in phases:
        key = (p["file"], p["task"])
        if key not in found and p["last_fire"] is not None:
            for (result,) in store.conn.execute(
                    "SELECT result FROM tasks WHERE file_path = ? AND phase = ? AND "
                    "scheduled_for = ? ORDER BY task_no DESC LIMIT 1", (*key, p["last_fire"])):
                found[key] = result
    return found


# --- tasks and alerts -------------------------------------------------------------------


def tasks(store: Store, *, type: str | None = None, job: str | None = None,
          result: str | None = None, phase: str | None = None, since: str | None = None,
          id: str | None = None, before: int | None = None,
          limit: int = 100) -> list[dict[str, Any]]:
    """Tasks as JSON, newest first; `result` 'none' means unfinished; `phase` a phase's
    name; `since` the earliest creation time; `before` a task_no."""
    source, args = task_filter(type=type, job=job, result=result, phase=phase, since=since,
                               id=id, before=before)
    return [task_json(r) for r in store.conn.execute(
        f"SELECT {TASK_COLUMNS} {source} ORDER BY task_no DESC LIMIT ?", (*args, limit))]


def task(store: Store, task_no: int) -> dict[str, Any] | None:
    """One task as JSON; None when there is none."""
    row = store.task_row(task_no)
    return task_json(row) if row is not None else None


def recent_failures(store: Store, limit: int) -> list[dict[str, Any]]:
    """The newest final failures: tasks that ended in error or alert and were not
    tried again (no retry or rerun came from them, waiting or done), so a failure a
    later attempt fixed is not one. One indexed query per result (tasks_by_result, and
    tasks_by_parent for the later attempt), merged, so a million old failures cost
    nothing."""
    found = [task_json(r) for result in ("error", "alert") for r in store.conn.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_by_result WHERE result = ? "
        "AND NOT EXISTS (SELECT 1 FROM tasks AS later WHERE later.parent_no = tasks.task_no "
        "AND later.attempt > tasks.attempt) ORDER BY task_no DESC LIMIT ?", (result, limit))]
    return sorted(found, key=lambda t: t["task_no"], reverse=True)[:limit]


def lineage(store: Store, task_id: str, limit: int) -> list[dict[str, Any]]:
    """Every attempt and child sharing the id, oldest first, up to `limit`."""
    return [task_json(r) for r in store.conn.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ? ORDER BY task_no LIMIT ?",
        (task_id, limit))]


def lineage_size(store: Store, task_id: str) -> int:
    (total,), = store.conn.execute("SELECT count(*) FROM tasks WHERE id = ?", (task_id,))
    return int(total)


def fire(store: Store, file: str, phase: str, slot: str) -> tuple[str, str, str] | None:
    """(source, fired_at, error) of the fire of that slot, from the ledger."""
    return store.conn.execute(
        "SELECT source, fired_at, error FROM fires WHERE file_path = ? AND phase = ? "
        "AND scheduled_for = ?", (file, phase, slot)).fetchone()


def alerts(store: Store, *, before: int | None = None, limit: int = 100
           ) -> list[dict[str, Any]]:
    """Alerts as JSON, newest first; `before` an alert_no. A `late` slot that never
    had a task has no task_no (null) and names its file, phase and slot."""
    return [dict(zip(ALERT_KEYS, r, strict=True)) for r in store.conn.execute(
        "SELECT a.alert_no, a.task_no, a.kind, a.type, a.job, a.message, a.created, "
        "a.posted_at, t.id, a.file_path, a.phase, a.scheduled_for "
        "FROM alerts AS a LEFT JOIN tasks AS t USING (task_no) "
        "WHERE a.alert_no < ? ORDER BY a.alert_no DESC LIMIT ?",
        (before if before is not None else 2**62, limit))]


def actions(store: Store, *, before: int | None = None, limit: int = 100
            ) -> list[dict[str, Any]]:
    """The audit trail as JSON, newest first (`args` as an object); `before` an
    action_no."""
    rows = [dict(zip(ACTION_KEYS, r, strict=True)) for r in store.conn.execute(
        f"SELECT {ACTION_COLUMNS} FROM actions WHERE action_no < ? "
        "ORDER BY action_no DESC LIMIT ?", (before if before is not None else 2**62, limit))]
    for row in rows:
        row["args"] = json.loads(row["args"])
    return rows


STATS_DAYS = 30  # the history statistics read by default
STATS_FIGURES = ("runs", "complete", "error", "run_p50", "run_p95", "run_max", "wait_p50",
                 "wait_p95")
STATS_KEYS = ("file", "task", *STATS_FIGURES)  # per phase; per topic: ("topic", ...)


def stats(store: Store, *, type: str | None = None, since: str | None = None,
          by: str = "phase", file: str | None = None, limit: int | None = None,
          offset: int = 0) -> list[dict[str, Any]]:
    """Per phase (`by="phase"`: the stored phases, in file order, `limit` of them from
    `offset`, those with runs) or per topic (`by="topic"`: every task; `limit` topics
    from `offset`, `file` not used), from the
    history of ended tasks (since `since`): runs, how many completed and failed, run
    time p50/p95/max and wait (created → started) p50/p95, in seconds. The same
    figures as the `phase_stats` and `topic_stats` views (flowlord/store/views.py).
    Cancelled tasks did not run: they are left out. A phase's history is read through
    its own index (tasks_ended_by_phase), so a page of phases costs what their runs
    cost, not what the whole history does."""
    if by == "topic":
        topics = _topic_stats(store, type, since)
        return topics[offset:] if limit is None else topics[offset:offset + limit]
    where, args = [], []
    if type is not None:  # a phase's topic is its task's name before ':'
        where.append("(task = ? OR task >= ? AND task < ?)")
        args += [type, type + ":", type + ";"]
    if file is not None:
        where.append("file_path = ?")
        args.append(file)
    phases: list[Any] = store.conn.execute(
        "SELECT file_path, task FROM workflow_phases "
        + ("WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY file_path, position LIMIT ? OFFSET ?",
        (*args, -1 if limit is None else limit, offset)).fetchall()
    rows = []
    for file_path, task in phases:
        runs: list[Any] = store.conn.execute(
            "SELECT result, (julianday(ended) - julianday(started)) * 86400, "
            "(julianday(started) - julianday(created)) * 86400 FROM tasks "
            "INDEXED BY tasks_ended_by_phase WHERE file_path = ? AND phase = ? "
            "AND ended IS NOT NULL AND ended >= ? AND msg NOT LIKE 'cancelled by %'",
            (file_path, task, since or "")).fetchall()
        if runs:
            rows.append(_figures(STATS_KEYS, (file_path, task), runs))
    return rows


def _topic_stats(store: Store, type: str | None, since: str | None
                 ) -> list[dict[str, Any]]:
    where = ["ended IS NOT NULL", "msg NOT LIKE 'cancelled by %'"]
    args: list[object] = []
    if type is not None:
        where.append("type = ?")
        args.append(type)
    if since is not None:
        where.append("ended >= ?")
        args.append(since)
    grouped: dict[str, list[tuple[str, float, float]]] = {}
    for topic, result, run, wait in store.conn.execute(
            "SELECT type, result, (julianday(ended) - julianday(started)) * 86400, "
            "(julianday(started) - julianday(created)) * 86400 FROM tasks WHERE "
            + " AND ".join(where), args):
        grouped.setdefault(topic, []).append((result, run, wait))
    return [_figures(("topic", *STATS_FIGURES), (topic,), runs)
            for topic, runs in sorted(grouped.items())]


def _figures(keys: Sequence[str], names: tuple[str, ...],
             runs: Sequence[tuple[str, float | None, float | None]]) -> dict[str, Any]:
    """A row of statistics: `names`, then the figures of `runs` (result, run, wait)."""
    run_times = sorted(max(0.0, r or 0.0) for _, r, _ in runs)
    waits = sorted(max(0.0, w or 0.0) for _, _, w in runs)
    return dict(zip(keys, (
        *names, len(runs), sum(1 for r, _, _ in runs if r == "complete"),
        sum(1 for r, _, _ in runs if r == "error"), _rank(run_times, 50),
        _rank(run_times, 95), round(run_times[-1], 3), _rank(waits, 50),
        _rank(waits, 95)), strict=True))


def nearest_rank(ordered: list[float], percent: int) -> float:
    """The nearest-rank percentile of sorted values."""
    return ordered[max(0, -(-len(ordered) * percent // 100) - 1)]


def _rank(ordered: list[float], percent: int) -> float:
    """The nearest-rank percentile, in seconds to the millisecond."""
    return round(nearest_rank(ordered, percent), 3)
