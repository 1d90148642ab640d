"""The real daemon running tasks on local workers: results, retries, children, alerts,
and every task accounted for after a SIGKILL."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from flowlord.clock import utc_now_ms
from flowlord.model import NewTask
from flowlord.store import Store, write_txn
from tests.helpers import (
    FLAKY,
    backload,
    chains,
    daemon,
    daemon_config,
    messages_until,
    query,
    run_cli,
    unfinished,
    wait_for,
    worker_table,
)

pytestmark = pytest.mark.slow


def test_tasks_end_exactly_once_with_retries_children_and_alerts(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "work"\nrule = "retry_delay=10ms"\nretry = 2\n'
        'template = "?d={dd}&h={hh}"\n\n'
        '[[phase]]\ntask = "after"\ndependsOn = "work"\ntemplate = "after {meta:cron}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 200)
    cfg = daemon_config(tmp_path,
                        worker_table("work", sys.executable, "-c", FLAKY, concurrency=8)
                        + worker_table("after", "true", concurrency=4))
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
        messages_until(notify_socket, "READY=1")
        wait_for(lambda: query(db, "SELECT count(*) FROM tasks WHERE type = 'work'"
                                   " AND result IS NULL") == [(0,)]
                 and unfinished(db) == 0, seconds=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    found = chains(db)
    assert len(found) == 200
    failed_roots = set()
    for root, attempts in found.items():
        assert [a for a, _ in attempts] == list(range(len(attempts)))  # 0, 1, 2 in order
        results = [r for _, r in attempts]
        assert all(r == "error" for r in results[:-1])  # retried only after an error
        assert results[-1] == "complete" or (len(results) == 3 and results[-1] == "error")
        if results[-1] == "error":
            failed_roots.add(root)
    assert 0 < len(failed_roots) < 30  # (1/3)^3 of 200 fail for good: about 7
    # one `failed` alert per chain that ran out of retries, on its last attempt
    alerted = query(db, "SELECT t.task_no, t.attempt FROM alerts AS a "
                        "JOIN tasks AS t USING (task_no) WHERE a.kind = 'failed'")
    assert len(alerted) == len(failed_roots) and {a for _, a in alerted} == {2}
    # one child per completed work task, with its parent's id and time; no orphans
    children = query(db, "SELECT c.info, c.id = p.id, p.result, c.result FROM tasks AS c "
                         "JOIN tasks AS p ON p.task_no = c.parent_no WHERE c.type = 'after'")
    assert len(children) == 200 - len(failed_roots)
    assert all(same and parent == "complete" and mine == "complete"
               for _, same, parent, mine in children)
    assert all(str(info).startswith("after 2026-01-") for info, *_ in children)
    assert query(db, "SELECT count(*) FROM tasks WHERE type = 'after' AND parent_no IS NULL") \
        == [(0,)]
    assert query(db, "PRAGMA foreign_key_check") == []
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    listed = run_cli("tasks", "--db", str(db), "--result", "error", "--limit", "1000")
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) - 1 == sum(  # less its header
        r == "error" for attempts in found.values() for _, r in attempts)


def test_sigkill_with_tasks_running_leaves_none_running_or_lost(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\nretry = 1\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 50)
    marker = tmp_path / "slow"
    # the first run's workers take long; once the marker is gone, they are quick
    script = f"import os, time\nif os.path.exists({str(marker)!r}): time.sleep(3)"
    cfg = daemon_config(tmp_path,
                        worker_table("work", sys.executable, "-c", script, concurrency=50))
    marker.touch()
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
        wait_for(lambda: query(db, "SELECT count(*) FROM running_tasks") == [(50,)])
        proc.kill()
        proc.wait(timeout=10)
    marker.unlink()
    assert query(db, "SELECT count(*) FROM tasks WHERE ended IS NULL AND started IS NOT NULL") \
        == [(50,)]
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
        wait_for(lambda: unfinished(db) == 0, seconds=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    rows = query(db, "SELECT attempt, result, msg FROM tasks ORDER BY task_no")
    assert len(rows) == 100
    assert rows[:50] == [(0, "error", "error: the daemon restarted while the task ran")] * 50
    assert {r[:2] for r in rows[50:]} == {(1, "complete")}
    assert query(db, "PRAGMA foreign_key_check") == []


def test_alerts_reach_the_webhook_batched_and_retried(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    posts: list[tuple[int, dict[str, object]]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = 500 if not posts else 200  # the first post fails
            posts.append((status, body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (wf / "a.toml").write_text('[[phase]]\ntask = "bad"\nrule = "cron=* * * * * *"\n')
        db = tmp_path / "f.db"
        cfg = daemon_config(tmp_path, worker_table("bad", "false", concurrency=4)
                            + f'[alerts]\nwebhook = "http://127.0.0.1:{server.server_port}/hook"\n'
                            'webhook_interval = "1s"\n')
        with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
            wait_for(lambda: any(status == 200 for status, _ in posts))
            wait_for(lambda: query(db, "SELECT count(*) FROM alerts WHERE posted_at IS NOT NULL")
                     [0][0] >= 1)  # type: ignore[operator]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert posts[0][0] == 500 and posts[1][0] == 200
    first = posts[0][1]
    assert str(first["text"]).startswith("flowlord: ") and "failed bad: " in str(
        first["attachments"][0]["text"])  # type: ignore[index]
    # what was accepted is marked and not posted again (a post still in flight at the stop
    # may be accepted without being marked: it is sent again after a restart)
    accepted = [int(str(body["text"]).split()[1]) for status, body in posts if status == 200]
    posted = int(query(db, "SELECT count(*) FROM alerts WHERE posted_at IS NOT NULL")
                 [0][0])  # type: ignore[call-overload]
    assert sum(accepted[:-1]) <= posted <= sum(accepted)


def test_sigterm_gives_running_tasks_the_grace_then_records_them_and_their_retries(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\nretry = 1\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 3)
    cfg = daemon_config(tmp_path, worker_table("work", "sleep", "60", concurrency=3)).read_text()
    (tmp_path / "flowlord.toml").write_text(cfg.replace('shutdown_grace = "5s"',
                                                        'shutdown_grace = "1s"'))
    with daemon(tmp_path, wf, db, args=["-c", str(tmp_path / "flowlord.toml")]) as proc:
        wait_for(lambda: query(db, "SELECT count(*) FROM running_tasks") == [(3,)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    rows = query(db, "SELECT attempt, result, msg, due_at IS NOT NULL FROM tasks "
                     "ORDER BY task_no")
    assert rows[:3] == [(0, "error", "stopped: the daemon shut down while the task ran", 0)] * 3
    assert rows[3:] == [(1, None, "", 1)] * 3  # their retries wait for the next start
    assert query(db, "SELECT count(*) FROM running_tasks") == [(0,)]


def test_a_task_unfinished_past_task_ttl_gets_one_incomplete_alert(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "nobody"\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "nobody", 2)  # no worker for this topic: they wait
    cfg = daemon_config(tmp_path, '[alerts]\ntask_ttl = "1s"\n')
    created = time.monotonic()
    wait_for(lambda: time.monotonic() > created + 2)  # let them grow older than task_ttl
    for _ in range(2):  # a restart checks again: still one alert per task
        with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
            messages_until(notify_socket, "READY=1")
            wait_for(lambda: query(db, "SELECT count(*) FROM alerts") == [(2,)])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert query(db, "SELECT kind, type, message FROM alerts") == [
        ("incomplete", "nobody", "unfinished after 1s")] * 2


def test_tasks_lists_retries_with_their_attempt(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\nretry = 1\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 1)
    store = Store(str(db))
    try:
        with write_txn(store.conn):
            [task] = store.claim("work", 1, utc_now_ms())
            store.finish(task.task_no, "2026-11-23T00:00:00Z", "error", "boom")
            store.add_tasks([NewTask.of(task.task, task.file_path, task.phase, 1,
                                     task.scheduled_for, parent_no=task.task_no)])
    finally:
        store.close()
    header, *lines = run_cli("tasks", "--db", str(db)).stdout.splitlines()
    states = [line.split("\t")[3] for line in lines]
    assert header.startswith("task_no\t") and states[1] == "error"
    assert states[0].startswith("waiting: ") and states[0].endswith(" (attempt 1)")
