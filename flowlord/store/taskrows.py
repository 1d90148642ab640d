"""The SQL of fires, tasks, alerts and file messages: the half of the Store that the
scheduler and the task loop use. Mixed into `flowlord.store.Store`, which owns the
connection; every write method expects to run inside `write_txn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw

from flowlord.model import NewTask, StoredTask, Task
from flowlord.store.alerts import delete_slot_alerts

# The columns a task row is read with, everywhere (the scheduler's StoredTask, the read
# model's task JSON): one list for the table.
TASK_COLUMNS = ("task_no, id, type, job, info, meta, created, started, ended, result, msg, "
                "file_path, phase, attempt, scheduled_for, parent_no, due_at, no_children")


RESULT = 9  # where `result` is in a row of TASK_COLUMNS
CLAIM_SCAN = 10_000  # waiting tasks of a topic read per page where phases limit theirs
CHUNK = 500  # task numbers per statement, within SQLite's limit of parameters


def stored_task(r: Sequence[Any], started: str | None = None) -> StoredTask:
    """A row in TASK_COLUMNS order, as the task loop sees it (a claimed task has no result);
    `started`, when given, instead of the row's (a row read before it was claimed)."""
    task = Task(type=r[2], job=r[3], info=r[4], meta=r[5], id=r[1], created=r[6],
                started=(r[7] if started is None else started) or "")
    return StoredTask(r[0], task, r[11], r[12], r[13], r[14], bool(r[17]))


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def task_filter(*, type: str | None = None, job: str | None = None,
                result: str | None = None, phase: str | None = None,
                since: str | None = None, id: str | None = None,
                before: int | None = None) -> tuple[str, list[object]]:
    """`FROM tasks … WHERE …` of a task listing (newest first), and its arguments; a
    `result` of 'none' means unfinished. The planner has no statistics, so filters are
    steered: unfinished tasks (few) go through tasks_unfinished, and a topic's tasks
    through tasks_by_type, never tasks_by_result ('complete' is most rows); a job's
    through tasks_by_job (which holds only tasks with a job: the filter says so, or the
    planner could not use it). With a failure result too, the topic's tasks are read
    until enough failed: fast unless a big topic has almost no failures (a `+` before a
    column keeps it off its index)."""
    where: list[str] = []
    args: list[object] = []
    index = ""
    if result == "none":
        index = "INDEXED BY tasks_unfinished "
        where.append("ended IS NULL")  # the same as result IS NULL (a CHECK), and indexed
    elif result is not None:
        where.append("+result = ?" if type is not None else "result = ?")
        args.append(result)
    if type is not None:
        where.append("type = ?")
        args.append(type)
    if job:
        if not index:
            index = "INDEXED BY tasks_by_job "
        where.append("job = ? AND job <> ''")
        args.append(job)
    elif job is not None:
        where.append("job = ''")
    if phase is not None:
        where.append("phase = ?")
        args.append(phase)
    if id is not None:
        where.append("id = ?")  # tasks_by_id
        args.append(id)
    if since is not None:  # task numbers grow with creation: the newest come first
        where.append("created >= ?")
        args.append(since)
    if before is not None:
        where.append("task_no < ?")
        args.append(before)
    return "FROM tasks " + index + ("WHERE " + " AND ".join(where) if where else ""), args


class TaskRows:
    conn: apsw.Connection

    # --- fires and tasks ---------------------------------------------------------------

    # --- running tasks -----------------------------------------------------------------
    # INDEXED BY: tasks_by_type would answer `type = ?` too, by reading every finished
    # task of the topic; without statistics the planner may take it, so the queue's
    # queries name the partial indexes that hold only unfinished tasks.

    def ready_topics(self, now: str) -> list[str]:
        """Topics with a task waiting whose due time has come."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT type FROM tasks INDEXED BY tasks_queue WHERE started IS NULL "
            "AND (due_at IS NULL OR due_at <= ?)", (now,))]

    def has_ready(self, topic: str, now: str) -> bool:
        """Whether a task of `topic` waits whose due time has come (the queue index)."""
        return self.conn.execute(
            "SELECT 1 FROM tasks INDEXED BY tasks_queue WHERE started IS NULL AND type = ? "
            "AND (due_at IS NULL OR due_at <= ?) LIMIT 1", (topic, now)).fetchone() is not None

    def next_due(self, now: str) -> str | None:
        """The earliest due time of a waiting task that is not due yet."""
        row = self.conn.execute("SELECT min(due_at) FROM tasks WHERE started IS NULL "
                                "AND due_at > ?", (now,)).fetchone()
        return row[0] if row else None

    def claim(self, topic: str, limit: int, now: str) -> list[StoredTask]:
        """Mark up to `limit` due tasks of a topic started, oldest first; call inside
        write_txn. Only a task still waiting can be claimed, so none runs twice.
        `now` has milliseconds, as every task time has."""
        rows = self.conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_queue "
            "WHERE started IS NULL AND type = ? AND (due_at IS NULL OR due_at <= ?) "
            "ORDER BY task_no LIMIT ?", (topic, now, limit)).fetchall()
        return self._mark_started(rows, now)

    def _mark_started(self, rows: Sequence[Sequence[Any]], now: str) -> list[StoredTask]:
        """Mark these waiting tasks (rows in TASK_COLUMNS order, read in this write
        transaction) started at `now`; they as claimed, by number.

        A read, then an UPDATE without RETURNING: with the table's indexes (13 since
        migration 21), an UPDATE … RETURNING of a task row cost about three times as
        much as a read and an UPDATE (25 µs against 7 µs per row), the largest part of
        recording results in bench/tasks.py. The transaction holds the write lock, so
        the rows read are the rows updated; the UPDATE keeps `started IS NULL` anyway."""
        for i in range(0, len(rows), CHUNK):
            chunk = [r[0] for r in rows[i:i + CHUNK]]
            self.conn.execute(f"UPDATE tasks SET started = ? WHERE task_no IN "
                              f"({_marks(len(chunk))}) AND started IS NULL", (now, *chunk))
        return sorted((stored_task(r, now) for r in rows), key=lambda t: t.task_no)

    def claim_limited(self, topic: str, limit: int, now: str,
                      limits: dict[tuple[str, str], tuple[int | None, bool]]
                      ) -> list[StoredTask]:
        """`claim`, for a topic where some phases limit their own tasks: `limits` maps
        (file, phase) to (max_active, queue). A phase with max_active N never has more
        than N running; a queued phase runs its unfinished tasks one at a time in slot
        order (a waiting retry of an earlier slot holds the later ones). The other
        tasks of the topic are claimed as ever, oldest first. Call inside write_txn."""
        running: dict[tuple[str, str], int] = {}
        head: dict[tuple[str, str], int | None] = {}  # a queued phase's next task in order

        def count(key: tuple[str, str], queue: bool) -> None:
            # only for the phases whose tasks wait now: a topic may have thousands of
            # limited phases, and a claim must not read each one's tasks every turn
            unfinished = self.phase_unfinished(*key)
            running[key] = sum(1 for _, started in unfinished if started)
            head[key] = unfinished[0][0] if queue and unfinished else None
        chosen: list[int] = []
        after = -1  # the waiting tasks are read a page at a time, until enough are chosen
        while len(chosen) < limit:
            page: list[Any] = self.conn.execute(
                "SELECT task_no, file_path, phase FROM tasks INDEXED BY tasks_queue "
                "WHERE started IS NULL AND type = ? AND (due_at IS NULL OR due_at <= ?) "
                "AND task_no > ? ORDER BY task_no LIMIT ?",
                (topic, now, after, CLAIM_SCAN)).fetchall()
            for task_no, file_path, phase in page:
                key = (file_path, phase)
                if key in limits:
                    most, queue = limits[key]
                    if key not in running:
                        count(key, queue)
                    if queue and (running[key] or head.get(key) != task_no):
                        continue
                    if most is not None and running[key] >= most:
                        continue
                    running[key] += 1
                chosen.append(task_no)
                if len(chosen) == limit:
                    break
            if len(page) < CLAIM_SCAN:
                break
            after = page[-1][0]
        rows: list[Any] = []
        for i in range(0, len(chosen), CHUNK):
            chunk = chosen[i:i + CHUNK]
            rows += self.conn.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_no IN ({_marks(len(chunk))}) "
                "AND started IS NULL", chunk)
        return self._mark_started(rows, now)

    def phase_unfinished(self, file_path: str, phase: str) -> list[tuple[int, bool]]:
        """(task_no, started) of a phase's unfinished tasks, in slot order (a task of
        no slot by its number)."""
        return [(n, bool(started)) for n, started in self.conn.execute(
            "SELECT task_no, started IS NOT NULL FROM tasks INDEXED BY "
            "tasks_unfinished_by_phase WHERE file_path = ? AND phase = ? AND ended IS NULL "
            "ORDER BY coalesce(scheduled_for, ''), task_no", (file_path, phase))]

    def finish(self, task_no: int, ended: str, result: str, msg: str,
               started: str = "") -> StoredTask | None:
        """Record a running task's result (and when its process started, if known: the
        claim may have come a little earlier); the task, or None when it was not running
        (already recorded). Call inside write_txn."""
        return self.finish_many([(task_no, ended, result, msg, started)]).get(task_no)

    def finish_many(self, results: Sequence[tuple[int, str, str, str, str]]
                    ) -> dict[int, StoredTask]:
        """`finish` for many results, (task_no, ended, result, msg, started) each: the
        tasks recorded, by number. Of two results of one task only the first counts; a
        task not running (already recorded, never claimed) is left out. Call inside
        write_txn.

        The running rows are read, then updated by number without RETURNING (see
        `_mark_started`: RETURNING cost more than the rest of the result's recording).
        `started` is written only when it says something new, as each write of it
        moves the task in tasks_by_start."""
        first: dict[int, tuple[int, str, str, str, str]] = {}
        for r in results:
            first.setdefault(r[0], r)
        numbers = list(first)
        found: dict[int, StoredTask] = {}
        moved, kept = [], []  # (started,) ended, result, msg, task_no
        for i in range(0, len(numbers), CHUNK):
            chunk = numbers[i:i + CHUNK]
            for row in self.conn.execute(
                    f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_no IN ({_marks(len(chunk))}) "
                    "AND started IS NOT NULL AND ended IS NULL", chunk):
                task_no, ended, result, msg, started = first[row[0]]
                if started and started != row[7]:
                    moved.append((started, ended, result, msg, task_no))
                else:
                    kept.append((ended, result, msg, task_no))
                    started = row[7]
                found[task_no] = stored_task(row, started)
        if moved:
            self.conn.executemany(
                "UPDATE tasks SET started = ?, ended = ?, result = ?, msg = ? "
                "WHERE task_no = ? AND started IS NOT NULL AND ended IS NULL", moved)
        if kept:
            self.conn.executemany(
                "UPDATE tasks SET ended = ?, result = ?, msg = ? "
                "WHERE task_no = ? AND started IS NOT NULL AND ended IS NULL", kept)
        return {n: found[n] for n in numbers if n in found}  # in the order given

    def unpublished(self) -> list[StoredTask]:
        """Tasks claimed for the redis bus whose publication was not recorded."""
        return [stored_task(r) for r in self.conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE started IS NOT NULL AND ended IS NULL "
            "AND published_at IS NULL ORDER BY task_no")]

    def mark_published(self, task_nos: Sequence[int], when: str) -> None:
        """Call inside write_txn."""
        self.conn.executemany("UPDATE tasks SET published_at = ? WHERE task_no = ?",
                              [(when, no) for no in task_nos])

    def unclaim(self, task_no: int) -> None:
        """A claimed task that never started goes back to the queue; inside write_txn."""
        self.conn.execute("UPDATE tasks SET started = NULL WHERE task_no = ? AND ended IS NULL",
                          (task_no,))

    def running(self) -> list[StoredTask]:
        """Tasks started and not ended: after a restart, those the last run left behind."""
        return [stored_task(r) for r in self.conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE started IS NOT NULL AND ended IS NULL "
            "ORDER BY task_no")]

    # --- operator actions on tasks (flowlord/operations.py) --------------------------

    def task_row(self, task_no: int) -> tuple[Any, ...] | None:
        """One task row, in TASK_COLUMNS order."""
        return self.conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_no = ?",
                                 (task_no,)).fetchone()

    def failed_last_attempts(self, type: str | None, since: str | None,
                             limit: int) -> list[int]:
        """Tasks that failed and were not tried again (no later attempt: a retry or a
        rerun has the next attempt number; a child starts at 0), oldest first; not the
        cancelled ones, which were meant to end."""
        where, args = ["t.result = 'error'", "t.msg NOT LIKE 'cancelled by %'"], []
        if type is not None:
            where.append("t.type = ?")
            args.append(type)
        if since is not None:
            where.append("t.ended >= ?")
            args.append(since)
        return [r[0] for r in self.conn.execute(
            "SELECT t.task_no FROM tasks AS t WHERE " + " AND ".join(where) + " AND NOT "
            "EXISTS (SELECT 1 FROM tasks AS r WHERE r.parent_no = t.task_no "
            "AND r.attempt > t.attempt) ORDER BY t.task_no LIMIT ?", (*args, limit))]

    def slot_last_attempts(self, file_path: str, phase: str, slots: Sequence[str],
                           failed_only: bool) -> list[int]:
        """The ended last attempts of the tasks of these slots of a phase (all, or only
        those that failed), oldest first: what `backload --reprocess` runs again."""
        marks = ", ".join("?" * len(slots))
        failed = "AND t.result = 'error' " if failed_only else ""
        return [r[0] for r in self.conn.execute(
            "SELECT t.task_no FROM tasks AS t WHERE t.file_path = ? AND t.phase = ? "
            f"AND t.scheduled_for IS NOT NULL AND t.scheduled_for IN ({marks}) "
            f"AND t.ended IS NOT NULL {failed}AND NOT EXISTS (SELECT 1 FROM tasks AS r "
            "WHERE r.parent_no = t.task_no AND r.attempt > t.attempt) ORDER BY t.task_no",
            (file_path, phase, *slots))] if slots else []

    def recent_run_times(self, type: str, file_path: str, phase: str, limit: int
                         ) -> list[float]:
        """Run times (seconds) of a phase's newest completed tasks, at most `limit`
        (through the topic's index, newest first)."""
        return [r[0] for r in self.conn.execute(
            "SELECT (julianday(ended) - julianday(started)) * 86400 FROM tasks "
            "INDEXED BY tasks_by_type WHERE type = ? AND file_path = ? AND phase = ? "
            "AND result = 'complete' ORDER BY task_no DESC LIMIT ?",
            (type, file_path, phase, limit))]

    def waiting_task_nos(self, type: str, job: str | None) -> list[int]:
        """The tasks of a topic (and job) that wait for a worker."""
        sql = ("SELECT task_no FROM tasks INDEXED BY tasks_queue WHERE started IS NULL "
               "AND type = ?")
        args: list[object] = [type]
        if job is not None:
            sql += " AND job = ?"
            args.append(job)
        return [r[0] for r in self.conn.execute(sql + " ORDER BY task_no", args)]

    def end_now(self, task_no: int, ended: str, result: str, msg: str) -> bool:
        """End an unfinished task with this result (a waiting one counts as started now);
        False when it had ended. No retry, no alert: the caller decides what follows.
        Call inside write_txn."""
        self.conn.execute(
            "UPDATE tasks SET started = coalesce(started, ?), ended = ?, result = ?, msg = ? "
            "WHERE task_no = ? AND ended IS NULL", (ended, ended, result, msg, task_no))
        return self.conn.changes() == 1

    def set_result(self, task_no: int, result: str, msg: str) -> bool:
        """Record another result for a finished task (`flowlord mark`); False when it
        has not ended. Call inside write_txn."""
        self.conn.execute("UPDATE tasks SET result = ?, msg = ? WHERE task_no = ? "
                          "AND ended IS NOT NULL", (result, msg, task_no))
        return self.conn.changes() == 1

    def missing_tasks(self, task_nos: Sequence[int]) -> list[int]:
        """Which of these task numbers have no row."""
        found: set[int] = set()
        for i in range(0, len(task_nos), 500):
            chunk = task_nos[i:i + 500]
            found.update(r[0] for r in self.conn.execute(
                f"SELECT task_no FROM tasks WHERE task_no IN ({', '.join('?' * len(chunk))})",
                list(chunk)))
        return [n for n in task_nos if n not in found]

    def ended_among(self, task_nos: Sequence[int]) -> list[int]:
        """Which of these tasks have ended (a cancel or a mark by another process)."""
        ended: list[int] = []
        for i in range(0, len(task_nos), 500):  # within SQLite's limit of parameters
            chunk = task_nos[i:i + 500]
            ended += [r[0] for r in self.conn.execute(
                f"SELECT task_no FROM tasks WHERE task_no IN ({', '.join('?' * len(chunk))}) "
                "AND ended IS NOT NULL", list(chunk))]
        return ended

    def has_followers(self, task_no: int) -> bool:
        """Whether a task points at this one: its children, or its next attempt."""
        return self.conn.execute("SELECT 1 FROM tasks WHERE parent_no = ? LIMIT 1",
                                 (task_no,)).fetchone() is not None

    def add_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert children, retries and file tasks; call inside write_txn."""
        self.conn.executemany(
            "INSERT INTO tasks (id, type, job, info, meta, created, file_path, phase, attempt, "
            "scheduled_for, due_at, parent_no, file_no, no_children) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)

    def queue_depths(self) -> list[tuple[str, int, int]]:
        """(topic, waiting, running) of the unfinished tasks."""
        return list(self.conn.execute(
            "SELECT type, sum(started IS NULL), sum(started IS NOT NULL) FROM tasks "
            "INDEXED BY tasks_unfinished "
            "WHERE ended IS NULL GROUP BY type ORDER BY type"))

    def add_file_message(self, path: str, received: str, source: str) -> int:
        """Record an arrived file; its number for its tasks. Call inside write_txn."""
        self.conn.execute("INSERT INTO file_messages (path, received, source) VALUES (?, ?, ?)",
                          (path, received, source))
        return self.conn.last_insert_rowid()


    def add_alert(self, task_no: int, kind: str, task: Task, message: str, created: str) -> bool:
        """One alert per task and kind, naming the task's phase and slot (a `recovered`
        one per slot too); False when it was raised before."""
        self.conn.execute(
            "INSERT INTO alerts (task_no, kind, type, job, message, created, file_path, "
            "phase, scheduled_for) SELECT ?, ?, ?, ?, ?, ?, file_path, phase, scheduled_for "
            "FROM tasks WHERE task_no = ? ON CONFLICT DO NOTHING",
            (task_no, kind, task.type, task.job, message, created, task_no))
        return self.conn.changes() == 1

    def overdue(self, cutoff: str) -> list[StoredTask]:
        """Unfinished tasks created before `cutoff` without an `incomplete` alert."""
        return [stored_task(r) for r in self.conn.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks AS t WHERE ended IS NULL AND created < ? "
            "AND NOT EXISTS (SELECT 1 FROM alerts AS a WHERE a.task_no = t.task_no "
            "AND a.kind = 'incomplete') ORDER BY created", (cutoff,))]

    def delete_history(self, cutoff: str, batch: int,
                       deleted_tasks: list[int] | None = None) -> int:
        """Delete up to `batch` finished tasks that ended before `cutoff` (their alerts go
        with them; their numbers are added to `deleted_tasks`), else up to `batch` fires,
        else file messages, before it that no task needs, else alerts of no task (a
        `late` slot); call inside write_txn.
        Returns how many rows went: 0 when nothing is left to delete."""
        gone = [r[0] for r in self.conn.execute(
            "DELETE FROM tasks WHERE task_no IN (SELECT task_no FROM tasks "
            "WHERE ended IS NOT NULL AND ended < ? ORDER BY task_no LIMIT ?) "
            "RETURNING task_no", (cutoff, batch))]
        if gone:
            if deleted_tasks is not None:
                deleted_tasks += gone
            return len(gone)
        self.conn.execute(
            "DELETE FROM fires WHERE (file_path, phase, scheduled_for) IN ("
            "SELECT f.file_path, f.phase, f.scheduled_for FROM fires AS f "
            "WHERE f.fired_at < ? AND NOT EXISTS (SELECT 1 FROM tasks AS t "
            "WHERE t.file_path = f.file_path AND t.phase = f.phase "
            "AND t.scheduled_for = f.scheduled_for) LIMIT ?)", (cutoff, batch))
        if deleted := self.conn.changes():
            return deleted
        self.conn.execute(
            "DELETE FROM file_messages WHERE file_no IN (SELECT m.file_no FROM file_messages "
            "AS m WHERE m.received < ? AND NOT EXISTS (SELECT 1 FROM tasks AS t "
            "WHERE t.file_no = m.file_no) LIMIT ?)", (cutoff, batch))
        if deleted := self.conn.changes():
            return deleted
        return delete_slot_alerts(self.conn, cutoff, batch)  # a `late` slot of no task

