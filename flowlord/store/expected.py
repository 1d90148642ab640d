"""The SQL of the agenda's expectations (flowlord/agenda.py): each phase's run p50 over
a window of history, in one statement. The figure is `run_p50` of `reads.stats` (the
nearest rank of the ended, not cancelled runs, negative ones as 0), ranked inside
SQLite with window functions, so 100,000 phases cost one pass over their tasks rather
than a query each; tests/test_agenda.py holds the two to the same numbers."""

from __future__ import annotations

from typing import Any

from flowlord.store import Store

_P50 = """
SELECT file_path, phase, run FROM (
    SELECT file_path, phase, run,
           row_number() OVER (PARTITION BY file_path, phase ORDER BY run) AS k,
           count(*) OVER (PARTITION BY file_path, phase) AS n
      FROM (SELECT file_path, phase,
                   max(0.0, (julianday(ended) - julianday(started)) * 86400) AS run
              FROM tasks
             WHERE ended IS NOT NULL AND ended >= ? AND file_path IS NOT NULL
               AND msg NOT LIKE 'cancelled by %'))
 WHERE k = (n * 50 + 99) / 100
"""


def run_p50s(store: Store, since: str) -> dict[tuple[str, str], float]:
    """(file, phase) → the nearest-rank p50 of its run times, in seconds to the
    millisecond, of the tasks ended since `since`."""
    return {(file, phase): round(run, 3)
            for file, phase, run in store.conn.execute(_P50, (since,))}


def agenda_inputs(store: Store) -> tuple[Any, ...]:
    """What an agenda was computed from, cheaply (flowlord/agenda_cache.py): the
    workflow files (how many, the latest load) and the pauses (how many, the latest,
    how many ended)."""
    files = store.conn.execute(
        "SELECT count(*), max(loaded_at) FROM workflow_files").fetchone()
    pauses = store.conn.execute(
        "SELECT count(*), max(pause_no), count(ended) FROM pauses").fetchone()
    return tuple(files or ()) + tuple(pauses or ())
