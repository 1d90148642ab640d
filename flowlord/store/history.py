"""The SQL of the dashboard's pictures of time: a phase's recent runs and hourly counts,
the runs of a window (the timeline), and the files that arrived (README.md, HTTP API
and dashboard). Functions of a Store (a read-only one will do) returning plain rows;
`flowlord.web.charts` draws them.

Every query is steered to an index, as `flowlord.store.reads` steers its listings:

- a phase's tasks through its own indexes: those ended by when they ended
  (`tasks_ended_by_phase`), the unfinished ones (`tasks_unfinished_by_phase`);
- the runs of a window through `tasks_by_start` (migration 13, `started`), from
  `LONGEST_RUN_HOURS` before the window's start, and the runs still going through
  `tasks_running`, read once for the bars and the fire marks; the fires' tasks still
  waiting through `tasks_unfinished`;
- arrived files by their number, their tasks through `tasks_by_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from flowlord.store import Store

# A run that began this long before a window and ended inside it is drawn in it; one
# that ran longer and has ended is not (a worker's timeout is 1 h unless configured).
LONGEST_RUN_HOURS = 6
_CHUNK = 500  # numbers per IN (...): well under SQLite's limit of variables


class Run(NamedTuple):
    """A task of a phase, for its chart: times as stored, `seconds` its run time (to
    `now` while it runs; None when it has not started)."""

    task_no: int
    id: str
    job: str
    created: str
    started: str | None
    ended: str | None
    result: str | None
    seconds: float | None


# A bar of the timeline: (task_no, row, start, end, result, runs, complete, warn, alert,
# error, running, id, type, job, started, ended). Its row is a topic, or a phase of a
# file; start and end are seconds from the window's start (a run still going ends
# `now`). One run (runs = 1: its task_no, result, and its task's id, type, job and times
# for the bar's tooltip and link), or the runs of a row shorter than the grain that
# start in one slot of it (task_no the largest, result and the task's columns None),
# counted by state.
WindowRun = tuple[int, str, float, float, str | None, int, int, int, int, int, int,
                  str | None, str | None, str | None, str | None, str | None]
STATE_COLUMNS = ("complete", "warn", "alert", "error", "running")


class Window(NamedTuple):
    """What the timeline of a window draws, read in one statement (`window`)."""

    bars: list[WindowRun]
    fires: list[tuple[str, int]]  # (row, slot of `per_mark` seconds): a fire's mark
    grain: float  # seconds: runs shorter than this were merged (0: none was)


def recent_runs(store: Store, file: str, task: str, since: str, now: str, limit: int
                ) -> list[Run]:
    """The phase's newest `limit` runs that ended since `since`, and those running,
    newest first: through the phase's own indexes (tasks_ended_by_phase,
    tasks_unfinished_by_phase), whatever the size of the history."""
    columns = ("SELECT task_no, id, job, created, started, ended, result, "
               "(julianday(coalesce(ended, ?)) - julianday(started)) * 86400 FROM tasks ")
    rows: list[Any] = store.conn.execute(
        columns + "INDEXED BY tasks_unfinished_by_phase WHERE file_path = ? AND phase = ? "
        "AND ended IS NULL AND started IS NOT NULL", (now, file, task)).fetchall()
    rows += store.conn.execute(
        columns + "INDEXED BY tasks_ended_by_phase WHERE file_path = ? AND phase = ? "
        "AND ended IS NOT NULL AND ended >= ? ORDER BY ended DESC LIMIT ?",
        (now, file, task, since, limit)).fetchall()
    return [Run(*r) for r in sorted(rows, key=lambda r: r[0], reverse=True)[:limit]]


def hourly_counts(store: Store, file: str, task: str, since: str
                  ) -> list[tuple[str, str, int]]:
    """(hour 'YYYY-MM-DDTHH', state, tasks) of the phase's tasks created since `since`,
    by the hour they were created; the state is the result, or 'running', 'waiting'.
    Through the phase's own indexes: an ended task ended after it was created."""
    counts: dict[tuple[str, str], int] = {}
    for hour, state, n in [*store.conn.execute(
            "SELECT substr(created, 1, 13), result, count(*) FROM tasks INDEXED BY "
            "tasks_ended_by_phase WHERE file_path = ? AND phase = ? AND ended IS NOT NULL "
            "AND ended >= ? AND created >= ? GROUP BY 1, 2", (file, task, since, since)),
            *store.conn.execute(
            "SELECT substr(created, 1, 13), CASE WHEN started IS NULL THEN 'waiting' ELSE "
            "'running' END, count(*) FROM tasks INDEXED BY tasks_unfinished_by_phase "
            "WHERE file_path = ? AND phase = ? AND ended IS NULL AND created >= ? "
            "GROUP BY 1, 2", (file, task, since))]:
        counts[hour, state] = counts.get((hour, state), 0) + int(n)
    return [(hour, state, n) for (hour, state), n in sorted(counts.items())]


def _window(lane: str, file: str | None) -> str:
    """The runs that overlap [start, end) as a CTE `w` (lane, b, e: seconds from the
    start, clipped to the window; task_no, result; f: the slot of `per` seconds its task
    was created in when a fire created it in the window, else NULL): begun before :end,
    at :earliest or later (`LONGEST_RUN_HOURS` before the start) and ended at :start or
    later, through tasks_by_start; or still running, through tasks_running."""
    of_file = "" if file is None else "AND file_path = :file "
    columns = (f"SELECT task_no, {lane} AS lane, result, "
               "max((julianday(started) - :day) * 86400, 0) AS b, "
               "min((julianday(coalesce(ended, :now)) - :day) * 86400, :span) AS e, "
               f"CASE WHEN started >= :start {_FIRED}THEN {_SLOT} END AS f FROM tasks ")
    return ("WITH w AS MATERIALIZED (" + columns + "INDEXED BY tasks_by_start "
            "WHERE started IS NOT NULL AND started >= :earliest AND started < :end "
            "AND ended >= :start " + of_file
            + "UNION ALL " + columns + "INDEXED BY tasks_running WHERE started IS NOT NULL "
            "AND ended IS NULL AND started < :end " + of_file + ") ")


# a task a fire created in the window (not a child, a retry's parent is the task it
# retries): a fire's mark at the slot of `per` seconds it was created in
_FIRED = "AND scheduled_for IS NOT NULL AND parent_no IS NULL AND created >= :start "
_SLOT = "CAST((julianday(created) - :day) * 86400 / :per AS INTEGER)"


def _names(store: Store, start: str, end: str, now: str, earliest: str, file: str | None,
           **more: object) -> dict[str, object]:
    (day, span), = store.conn.execute(
        "SELECT julianday(?), (julianday(?) - julianday(?)) * 86400", (start, end, start))
    return {"start": start, "end": end, "now": now, "earliest": earliest, "file": file,
            "day": day, "span": span, **more}


def window(store: Store, start: str, end: str, now: str, earliest: str, file: str | None,
           per_mark: float, steps: Sequence[tuple[float, int]], max_bars: int) -> Window:
    """The bars and fire marks of the window's runs (see `_window`), in one statement:
    the runs are read once (through tasks_by_start and tasks_running), which was three
    reads of them before (the window's shape, its bars, its fires) and most of the
    timeline's time.

    The grain is chosen from the runs as `flowlord.web.charts.merge_width` chooses it:
    none while there are at most `max_bars` runs; else the first (seconds, slots) of
    `steps` with which the runs at least that long, and `slots` bars for each row, make
    at most `max_bars`; else the last. Each run at least the grain long is a bar of its
    own (with its task's columns); the shorter ones are grouped by row and slot of the
    grain (of their starts). Without `file`, a run's row is its topic; with it, only
    that file's runs, by phase. The fire marks: the window's tasks that fires created
    (`_FIRED`), by row and slot of `per_mark` seconds, those waiting through
    tasks_unfinished."""
    names = _names(store, start, end, now, earliest, file, per=per_mark, max=max_bars)
    for k, (seconds, slots) in enumerate(steps):
        names[f"w{k}"], names[f"s{k}"] = seconds, slots
    bars: list[WindowRun] = []
    fires: list[tuple[str, int]] = []
    grain = 0.0
    for row in store.conn.execute(_window_sql(file, len(steps)), names):
        if row[5]:
            bars.append(row[:16])
            grain = row[16]
        else:
            fires.append((row[1], row[2]))
    return Window(bars, fires, grain)


def _window_sql(file: str | None, steps: int) -> str:
    """`window`'s statement, with `steps` merge widths (:w0, :s0 …)."""
    lane = "type" if file is None else "phase"
    of_file = "" if file is None else "AND file_path = :file "
    wide = "".join(f", sum(e - b >= :w{k}) AS n{k}" for k in range(steps))
    choose = "".join(f"WHEN n{k} + lanes * :s{k} <= :max THEN :w{k} " for k in range(steps))
    sums = ", ".join(f"sum(result = '{s}')" if s != "running" else "sum(result IS NULL)"
                     for s in STATE_COLUMNS)
    return (_window(lane, file)
            + f", shape AS (SELECT count(*) AS runs, count(DISTINCT lane) AS lanes{wide} "
            "FROM w), "
            f"grain AS (SELECT CASE WHEN runs <= :max THEN 0.0 {choose}"
            f"ELSE :w{steps - 1} END AS g FROM shape), "
            f"bars AS (SELECT max(task_no) AS task_no, lane, min(b), max(e), max(result), "
            f"count(*) AS runs, {sums} FROM w GROUP BY lane, CASE WHEN e - b >= "
            "(SELECT g FROM grain) THEN -task_no ELSE CAST(b / (SELECT g FROM grain) AS "
            "INTEGER) END), "
            # the marks of the window's runs, and of its tasks waiting
            "marks AS (SELECT lane, f FROM w WHERE f IS NOT NULL UNION "
            f"SELECT {lane}, {_SLOT} FROM tasks INDEXED BY tasks_unfinished "
            f"WHERE ended IS NULL AND created < :end {_FIRED}{of_file}) "
            # a bar alone: its task's columns, looked up by task_no (a merged bar: none)
            "SELECT bars.*, t.id, t.type, t.job, t.started, t.ended, (SELECT g FROM grain) "
            "FROM bars LEFT JOIN tasks AS t ON bars.runs = 1 AND t.task_no = bars.task_no "
            "UNION ALL SELECT NULL, lane, f, NULL, NULL, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, "
            "NULL, NULL, NULL FROM marks")


def lanes_of_file(store: Store, file: str) -> list[str]:
    """The phases of a file, in file order: the rows of its timeline."""
    return [task for task, in store.conn.execute(
        "SELECT task FROM workflow_phases WHERE file_path = ? ORDER BY position", (file,))]


ARRIVAL_KEYS = ("file_no", "path", "received", "source")
ARRIVAL_TASK_KEYS = ("task_no", "id", "type", "job", "file", "phase", "created", "result")


def arrivals(store: Store, *, before: int | None = None, limit: int = 100
             ) -> list[dict[str, Any]]:
    """Files that arrived, newest first (`before` a file_no), each with the tasks it
    started (`tasks`, oldest first; none when no phase matched it)."""
    found = [dict(zip(ARRIVAL_KEYS, r, strict=True)) for r in store.conn.execute(
        "SELECT file_no, path, received, source FROM file_messages WHERE file_no < ? "
        "ORDER BY file_no DESC LIMIT ?", (before if before is not None else 2**62, limit))]
    by_no: dict[int, list[dict[str, Any]]] = {a["file_no"]: [] for a in found}
    numbers = list(by_no)
    for i in range(0, len(numbers), _CHUNK):
        chunk = numbers[i:i + _CHUNK]
        for row in store.conn.execute(
                "SELECT file_no, task_no, id, type, job, file_path, phase, created, result "
                f"FROM tasks WHERE file_no IN ({','.join('?' * len(chunk))}) "
                "ORDER BY task_no", chunk):
            by_no[row[0]].append(dict(zip(ARRIVAL_TASK_KEYS, row[1:], strict=True)))
    for a in found:
        a["tasks"] = by_no[a["file_no"]]
    return found
