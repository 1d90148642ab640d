"""The SQL of the agenda's expectations (flowlord/agenda.py): each phase's run p50 over
a window of history, in one statement. The figure is `run_p50` of `reads.stats` (the
nearest rank of the ended, not cancelled runs, negative ones as 0). SQLite's
`percentile_disc(run, 0.5)` is that rank (the value at index ⌊0.5·(n − 1)⌋ of the sorted
runs, which is ⌈n/2⌉ counted from 1), taken per phase as its index
(tasks_ended_by_phase) gives the rows in phase order: half the time of ranking with
window functions (row_number, count over each phase), which is kept for an SQLite built
without SQLITE_ENABLE_PERCENTILE (the apsw wheels have it). tests/test_agenda.py holds
both to the numbers `flowlord stats` shows.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import apsw

from flowlord.store import Store

_RUN = "max(0.0, (julianday(ended) - julianday(started)) * 86400)"
_SINCE = ("FROM tasks WHERE ended IS NOT NULL AND ended >= ? AND file_path IS NOT NULL "
          "AND msg NOT LIKE 'cancelled by %'")
_P50 = f"SELECT file_path, phase, percentile_disc({_RUN}, 0.5) {_SINCE} GROUP BY file_path, phase"
_P50_RANKED = f"""
SELECT file_path, phase, run FROM (
    SELECT file_path, phase, run,
           row_number() OVER (PARTITION BY file_path, phase ORDER BY run) AS k,
           count(*) OVER (PARTITION BY file_path, phase) AS n
      FROM (SELECT file_path, phase, {_RUN} AS run {_SINCE}))
 WHERE k = (n * 50 + 99) / 100
"""


def run_p50s(store: Store, since: str, *, percentile: bool | None = None
             ) -> dict[tuple[str, str], float]:
    """(file, phase) → the nearest-rank p50 of its run times, in seconds to the
    millisecond, of the tasks ended since `since`. `percentile`: whether to use
    `percentile_disc` (None: when this SQLite has it)."""
    if percentile is None:
        percentile = has_percentile()
    return {(file, phase): round(run, 3) for file, phase, run
            in store.conn.execute(_P50 if percentile else _P50_RANKED, (since,))}


@cache
def has_percentile() -> bool:
    """Whether the SQLite library under apsw (one per process) has `percentile_disc`."""
    conn = apsw.Connection(":memory:")
    try:
        conn.execute("SELECT percentile_disc(1, 0.5)").fetchall()
    except apsw.SQLError:
        return False
    finally:
        conn.close()
    return True


def agenda_inputs(store: Store) -> tuple[Any, ...]:
    """What an agenda was computed from, cheaply (flowlord/agenda_cache.py): the
    workflow files (how many, the latest load) and the pauses (how many, the latest,
    how many ended)."""
    files = store.conn.execute(
        "SELECT count(*), max(loaded_at) FROM workflow_files").fetchone()
    pauses = store.conn.execute(
        "SELECT count(*), max(pause_no), count(ended) FROM pauses").fetchone()
    return tuple(files or ()) + tuple(pauses or ())
