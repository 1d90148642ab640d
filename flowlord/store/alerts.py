"""The SQL of deadlines, recoveries and the routes' cursors (flowlord/deadlines.py,
flowlord/recoveries.py, flowlord/routes.py). Alerts of a task are added by
`TaskRows.add_alert` (flowlord/store/taskrows.py); here are those of a slot, and
what the routes read. Functions of a connection: writes go inside `write_txn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import apsw

from flowlord.model import Phase
from flowlord.store.workflows import PHASE_COLUMNS, _phase


class AlertRow(NamedTuple):
    """An alert as a route reads it. A notification that is no row (`success`) has
    alert_no None."""

    alert_no: int | None
    kind: str
    type: str
    job: str
    message: str
    created: str
    file_path: str | None
    phase: str | None
    scheduled_for: str | None


_ALERT_COLUMNS = ("alert_no, kind, type, job, message, created, file_path, phase, "
                  "scheduled_for")


class SlotState(NamedTuple):
    """What the ledger and the tasks say of one slot."""

    fire_error: str | None  # None: the slot was never fired
    tasks: int  # the slot's task rows, every attempt
    done_by: bool  # every attempt chain of the slot ended complete (or warn) by the bound
    open_task: int | None  # the first task not done (unfinished, or failed for good)
    open_state: str  # 'waiting', 'running', 'error', 'alert', or '' when none
    last_task: int | None  # the slot's newest task


def deadline_phases(conn: apsw.Connection) -> list[Phase]:
    """The phases whose rule has a deadline and that are not broken."""
    return [_phase(r) for r in conn.execute(
        f"SELECT {PHASE_COLUMNS} FROM workflow_phases WHERE rule LIKE '%deadline=%' "
        "AND severity <> 'error' ORDER BY file_path, position")]


def has_fired(conn: apsw.Connection, file_path: str, phase: str) -> bool:
    """Whether the ledger has a slot of the phase (its primary key's prefix)."""
    return conn.execute("SELECT 1 FROM fires WHERE file_path = ? AND phase = ? LIMIT 1",
                        (file_path, phase)).fetchone() is not None


def first_run(conn: apsw.Connection) -> str | None:
    """When the first daemon run this database remembers started (flowlord/runs.py)."""
    (started,), = conn.execute("SELECT min(started) FROM daemon_runs")
    return None if started is None else str(started)


def late_slots(conn: apsw.Connection, file_path: str, phase: str,
               slots: Sequence[str]) -> set[str]:
    """Which of these slots already have their `late` alert."""
    found: set[str] = set()
    for slot in slots:  # one probe each of the unique index alerts_late
        if conn.execute("SELECT 1 FROM alerts WHERE file_path = ? AND phase = ? "
                        "AND scheduled_for = ? AND kind = 'late'",
                        (file_path, phase, slot)).fetchone():
            found.add(slot)
    return found


def slot_state(conn: apsw.Connection, file_path: str, phase: str, slot: str,
               bound: str) -> SlotState:
    """The fire and tasks of a slot; done_by: every last attempt completed (or warned)
    by `bound` (text of the same form as tasks.ended)."""
    fire = conn.execute("SELECT error FROM fires WHERE file_path = ? AND phase = ? "
                        "AND scheduled_for = ?", (file_path, phase, slot)).fetchone()
    rows = list(conn.execute(
        "SELECT t.task_no, t.started, t.ended, t.result, EXISTS (SELECT 1 FROM tasks AS r "
        "WHERE r.parent_no = t.task_no AND r.attempt > t.attempt) FROM tasks AS t "
        "WHERE t.file_path = ? AND t.phase = ? AND t.scheduled_for = ? ORDER BY t.task_no",
        (file_path, phase, slot)))
    last = [r for r in rows if not r[4]]  # the newest attempt of each chain
    open_task, open_state, done = None, "", bool(last)
    for task_no, started, ended, result, _ in last:
        ok = result in ("complete", "warn")
        if ok and ended <= bound:
            continue
        done = False
        if not ok and open_task is None:
            open_task = task_no
            open_state = result or ("running" if started else "waiting")
    return SlotState(None if fire is None else str(fire[0]), len(rows), done, open_task,
                     open_state, rows[-1][0] if rows else None)


def add_slot_alert(conn: apsw.Connection, kind: str, file_path: str, phase: str,
                   slot: str, topic: str, job: str, message: str, created: str,
                   task_no: int | None = None) -> bool:
    """One alert of this kind per slot (`late`, `recovered`), naming a task if given;
    False when the slot had it already."""
    conn.execute(
        "INSERT INTO alerts (task_no, kind, type, job, message, created, file_path, phase, "
        "scheduled_for) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (task_no, kind, topic, job, message, created, file_path, phase, slot))
    return conn.changes() == 1


def last_failure_kind(conn: apsw.Connection, file_path: str, phase: str) -> str | None:
    """The phase's newest alert among failed, alert and recovered: whether it is failing
    now (failed, alert) or not (recovered, or None: never failed)."""
    row = conn.execute(
        "SELECT kind FROM alerts INDEXED BY alerts_by_phase WHERE file_path = ? AND phase = ? "
        "AND kind IN ('failed', 'alert', 'recovered') ORDER BY alert_no DESC LIMIT 1",
        (file_path, phase)).fetchone()
    return None if row is None else str(row[0])


def late_alert(conn: apsw.Connection, file_path: str, phase: str, slot: str) -> bool:
    return conn.execute("SELECT 1 FROM alerts WHERE file_path = ? AND phase = ? AND "
                        "scheduled_for = ? AND kind = 'late'",
                        (file_path, phase, slot)).fetchone() is not None


# --- the routes' cursors ----------------------------------------------------------------


def route_cursor(conn: apsw.Connection, route: str, since: str) -> int:
    """The highest alert_no the route has been shown. A route never seen starts before
    the first alert no webhook has accepted, created at `since` or later (today's one
    webhook did the same: it posts what is not posted yet)."""
    row = conn.execute("SELECT through FROM route_cursors WHERE route = ?", (route,)).fetchone()
    if row is not None:
        return int(row[0])
    (first,), = conn.execute("SELECT min(alert_no) FROM alerts INDEXED BY alerts_unposted "
                             "WHERE posted_at IS NULL AND created >= ?", (since,))
    if first is not None:
        return int(first) - 1
    (newest,), = conn.execute("SELECT max(alert_no) FROM alerts")
    return int(newest or 0)


def alerts_after(conn: apsw.Connection, alert_no: int, limit: int) -> list[AlertRow]:
    """The alerts after a cursor, oldest first."""
    return [AlertRow(*r) for r in conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_no > ? ORDER BY alert_no LIMIT ?",
        (alert_no, limit))]


def set_route_cursor(conn: apsw.Connection, route: str, through: int) -> None:
    conn.execute("INSERT INTO route_cursors (route, through) VALUES (?, ?) "
                 "ON CONFLICT (route) DO UPDATE SET through = max(through, excluded.through)",
                 (route, through))


def mark_posted(conn: apsw.Connection, alert_nos: Sequence[int], posted_at: str) -> None:
    """The first acceptance by any route is the one kept."""
    conn.executemany("UPDATE alerts SET posted_at = ? WHERE alert_no = ? AND posted_at IS NULL",
                     [(posted_at, n) for n in alert_nos])


def delete_slot_alerts(conn: apsw.Connection, cutoff: str, batch: int) -> int:
    """Retention: alerts of no task created before `cutoff` (those of a task go with it)."""
    conn.execute("DELETE FROM alerts WHERE alert_no IN (SELECT alert_no FROM alerts "
                 "WHERE task_no IS NULL AND created < ? ORDER BY alert_no LIMIT ?)",
                 (cutoff, batch))
    return conn.changes()
