"""The SQL of the dashboard's pictures of time: a phase's recent runs and hourly counts,
the runs of a window (the timeline), and the files that arrived (README.md, HTTP API
and dashboard). Functions of a Store (a read-only one will do) returning plain rows;
`flowlord.web.charts` draws them.

Every query is steered to an index, as `flowlord.store.reads` steers its listings:

- a phase's tasks through its own indexes: those ended by when they ended
  (`tasks_ended_by_phase`), the unfinished ones (`tasks_unfinished_by_phase`);
- the runs of a span of the timeline through `tasks_by_start` (migration 13,
  `started`), and the runs still going through `tasks_running`, read once for their
  shape and fire marks, once for their bars (flowlord/web/timeline.py reads a window
  span by span, from `LONGEST_RUN_HOURS` before its start, and keeps the settled ones);
  the fires' tasks still waiting through `tasks_unfinished`;
- arrived files by their number, their tasks through `tasks_by_file`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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
# file; start and end are seconds (since the epoch as `runs_bars` reads them, from the
# window's start as the timeline draws them), clipped to the window (a run still going
# ends `now`). One run (runs = 1: its task_no, result, and its task's id, type, job and
# times for the bar's tooltip and link), or the runs of a row shorter than the grain
# that start in one slot of it (task_no the largest, result and the task's columns
# None), counted by state.
WindowRun = tuple[int, str, float, float, str | None, int, int, int, int, int, int,
                  str | None, str | None, str | None, str | None, str | None]
STATE_COLUMNS = ("complete", "warn", "alert", "error", "running")
EPOCH_JULIAN_DAY = 2440587.5  # 1970-01-01: the timeline's times are seconds since then


class Runs(NamedTuple):
    """Where the timeline reads runs from: those that ended, begun in [lo, hi) (times
    as stored) and ended at `after` or later ('': whenever); or, `running`, those still
    going, begun before `hi`. Their starts and ends are clipped to [clip_lo, clip_hi]
    (seconds since the epoch); a run still going ends at `now`. A run's fire mark
    counts when its task was created and began at `since` or later."""

    lo: str
    hi: str
    after: str = ""
    clip_lo: float = 0.0
    clip_hi: float = 1e12
    now: str = ""
    since: str = ""
    running: bool = False


class Shape(NamedTuple):
    """What runs there are, to choose the grain (flowlord/web/timeline.py): by row, how
    many, and how many are at least each width long; the latest end; the fire marks
    of the runs, (row, slot of `per` seconds since the epoch)."""

    rows: dict[str, tuple[int, ...]]  # row → (runs, at least widths[0] long, …)
    last_end: float
    marks: set[tuple[str, int]]


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


def runs_shape(store: Store, runs: Runs, lane: str, file: str | None,
               widths: Sequence[float], per: float) -> Shape:
    """The shape of these runs (`Shape`): one reading of them, materialized for the
    counts by row and the fire marks."""
    names = _names(runs, file, per=per)
    for k, width in enumerate(widths):
        names[f"w{k}"] = width
    wide = "".join(f", sum(e - b >= :w{k})" for k in range(len(widths)))
    pad = ", NULL" * (len(widths) + 1)
    rows: dict[str, tuple[int, ...]] = {}
    marks: set[tuple[str, int]] = set()
    last_end = 0.0
    for row in store.conn.execute(
            _runs_cte(runs, lane, file, materialized=True)
            + f"SELECT 0, lane, max(e), count(*){wide} FROM w GROUP BY lane UNION ALL "
            f"SELECT DISTINCT 1, lane, {_MARK_SLOT}{pad} FROM w WHERE fired", names):
        if row[0] == 0:
            rows[row[1]] = row[3:]
            last_end = max(last_end, row[2])
        else:
            marks.add((row[1], row[2]))
    return Shape(rows, last_end, marks)


def runs_bars(store: Store, runs: Runs, lane: str, file: str | None, grain: float
              ) -> list[tuple[int, WindowRun]]:
    """These runs' bars (`WindowRun`, times in seconds since the epoch), each with its
    key in its row: a run at least `grain` long (every run when it is 0) is a bar of
    its own (key: -task_no, with its task's columns), the shorter ones of a row are
    merged by the slot of `grain` seconds since the epoch they began in (key: the
    slot; a slot of one run also gets its task's columns, for when it stays alone)."""
    sums = ", ".join(f"sum(result = '{s}')" if s != "running" else "sum(result IS NULL)"
                     for s in STATE_COLUMNS)
    return [(row[0], row[1:]) for row in store.conn.execute(
        _runs_cte(runs, lane, file)
        + "SELECT g.*, t.id, t.type, t.job, t.started, t.ended FROM (SELECT CASE WHEN "
        ":grain = 0 OR e - b >= :grain THEN -task_no ELSE CAST(b / :grain AS INTEGER) END "
        f"AS k, max(task_no) AS task_no, lane, min(b), max(e), max(result), count(*) AS n, "
        f"{sums} FROM w GROUP BY lane, k) AS g LEFT JOIN tasks AS t ON g.n = 1 "
        "AND t.task_no = g.task_no", _names(runs, file, grain=grain))]


def waiting_marks(store: Store, lane: str, file: str | None, since: str, end: str,
                  per: float) -> set[tuple[str, int]]:
    """The fire marks of tasks not ended (waiting or running) that fires created in
    [since, end), through tasks_unfinished: (row, slot of `per` seconds since the
    epoch)."""
    of_file = "" if file is None else "AND file_path = :file "
    return set(store.conn.execute(
        f"SELECT DISTINCT {lane}, {_MARK_SLOT} FROM tasks INDEXED BY tasks_unfinished "
        f"WHERE ended IS NULL AND created < :end AND created >= :since {_FIRED}{of_file}",
        {"since": since, "end": end, "per": per, "file": file}))


def started_counts(store: Store, spans: Sequence[tuple[str, str]]) -> list[int]:
    """How many tasks began in each [lo, hi), whatever their file: what a kept reading
    of those runs is checked against (a deleted task, or one whose start a worker
    moved there, changes it). Through tasks_by_start alone, one count a span."""
    if not spans:
        return []
    values = ", ".join("(?, ?)" for _ in spans)
    return [n for n, in store.conn.execute(
        f"WITH s(lo, hi) AS (VALUES {values}) SELECT (SELECT count(*) FROM tasks INDEXED "
        "BY tasks_by_start WHERE started >= lo AND started < hi) FROM s",
        [v for span in spans for v in span])]


def running_starts(store: Store) -> list[str]:
    """When each task still running began, through tasks_running."""
    return [started for started, in store.conn.execute(
        "SELECT started FROM tasks INDEXED BY tasks_running WHERE started IS NOT NULL "
        "AND ended IS NULL")]


@contextlib.contextmanager
def read_snapshot(store: Store) -> Iterator[None]:
    """One read transaction: what the statements inside read is one state of the
    database, whatever the daemon commits meanwhile."""
    store.conn.execute("BEGIN")
    try:
        yield
    finally:
        store.conn.execute("COMMIT")


def _runs_cte(runs: Runs, lane: str, file: str | None, materialized: bool = False) -> str:
    """`runs` as a CTE `w` (task_no, lane, result; b, e: its start and end in seconds
    since the epoch, clipped; fired: whether its fire mark counts; created)."""
    of_file = "" if file is None else "AND file_path = :file "
    where = ("INDEXED BY tasks_running WHERE started IS NOT NULL AND ended IS NULL "
             "AND started < :hi " if runs.running else
             "INDEXED BY tasks_by_start WHERE started IS NOT NULL AND started >= :lo AND "
             "started < :hi AND ended >= :after ")
    return (f"WITH w AS {'MATERIALIZED ' if materialized else ''}(SELECT task_no, "
            f"{lane} AS lane, result, created, "
            f"max((julianday(started) - {EPOCH_JULIAN_DAY}) * 86400, :clip_lo) AS b, "
            f"min((julianday(coalesce(ended, :now)) - {EPOCH_JULIAN_DAY}) * 86400, "
            ":clip_hi) AS e, "
            f"(started >= :since AND created >= :since {_FIRED}) AS fired FROM tasks "
            + where + of_file + ") ")


# a task a fire created (not a child; a retry's parent is the task it retries)
_FIRED = "AND scheduled_for IS NOT NULL AND parent_no IS NULL "
_MARK_SLOT = f"CAST((julianday(created) - {EPOCH_JULIAN_DAY}) * 86400 / :per AS INTEGER)"


def _names(runs: Runs, file: str | None, **more: object) -> dict[str, object]:
    return {**runs._asdict(), "file": file, **more}


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
