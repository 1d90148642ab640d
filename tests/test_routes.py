"""Routed notifications against real local HTTP servers (flowlord/routes.py,
flowlord/webhook.py): each alert reaches each matching route once, a route whose server
hangs delays no other, `success` only where asked; and deadlines with the real daemon
and real workers, across a stop."""

from __future__ import annotations

import http.server
import json
import re
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowlord.bus.inprocess import InProcessBus
from flowlord.clock import FakeClock, parse_iso
from flowlord.config import Route
from flowlord.model import StoredTask
from tests.helpers import (
    daemon,
    daemon_config,
    messages_until,
    query,
    stepped,
    turn,
    wait_for,
    worker_table,
)

pytestmark = pytest.mark.slow


class Posts:
    """What one path of a server was posted: each body."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, object]]] = {}
        self.lock = threading.Lock()

    def of(self, path: str) -> list[dict[str, object]]:
        with self.lock:
            return list(self.bodies.get(path, []))

    def counts(self, path: str) -> Counter[str]:
        """(kind key) → how many, summed over the posts' count lines."""
        found: Counter[str] = Counter()
        for body in self.of(path):
            text = str(body["attachments"][0]["text"])  # type: ignore[index]
            for line in text.split("\n\n")[0].splitlines():
                m = re.fullmatch(r"(\S+ \S+): (\d+)", line)
                assert m, line
                found[m.group(1)] += int(m.group(2))
        return found


@contextmanager
def hook_server() -> Iterator[tuple[str, Posts]]:
    posts = Posts()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with posts.lock:
                posts.bodies.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", posts
    finally:
        server.shutdown()
        server.server_close()


def outcome(stored: StoredTask) -> tuple[str, str]:
    return ("complete", "") if stored.task.type == "fine" else ("error", "boom")


def test_each_alert_reaches_each_matching_route_once_and_a_hung_route_delays_none(
        tmp_path: Path, wf: Path) -> None:
    every = 'rule = "cron=0,10,20 0 0 1 1 *"\n'  # three slots in all
    (wf / "a.toml").write_text(f'[[phase]]\ntask = "bad"\n{every}')
    (wf / "b.toml").write_text(f'[[phase]]\ntask = "badly"\n{every}\n'
                               f'[[phase]]\ntask = "fine"\n{every}')
    hung = socket.socket()  # accepts connections, never answers: its post waits 10 s
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    clock = FakeClock(datetime(2098, 12, 31, 23, 59, 55, tzinfo=UTC))
    try:
        with hook_server() as (base, posts):
            routes = (Route(f"{base}/topics", ("failed",), topics=("bad*",)),
                      Route(f"{base}/files", ("failed", "success"), files=("b.toml",)),
                      Route(f"http://127.0.0.1:{hung.getsockname()[1]}/hung", ("failed",)))
            with stepped(tmp_path, wf, clock, bus=InProcessBus(outcome), routes=routes,
                         webhook_interval=timedelta(seconds=1)) as d:
                hung_sender = d.routes.senders[2]
                for _ in range(3):  # three slots: 3 failed bad, 3 failed badly, 3 fine
                    turn(d, clock, 10.0)
                assert hung_sender.in_flight is not None  # its first post hangs

                def delivered() -> bool:
                    turn(d, clock, 1.0)
                    return (posts.counts("/topics") == {"failed bad": 3, "failed badly": 3}
                            and posts.counts("/files") == {"failed badly": 3,
                                                           "success fine": 3})
                wait_for(delivered)
                for _ in range(5):  # more looks post nothing again
                    turn(d, clock, 1.0)
                assert hung_sender.in_flight is not None  # still waiting on its server

                def recorded() -> bool:  # a post's outcome is written at a turn after it
                    turn(d, clock, 1.0)
                    return bool(query(tmp_path / "f.db", "SELECT count(*) = count(posted_at) "
                                      "FROM alerts")[0][0])
                wait_for(recorded)
    finally:
        hung.close()
    assert posts.counts("/topics") == {"failed bad": 3, "failed badly": 3}
    assert posts.counts("/files") == {"failed badly": 3, "success fine": 3}
    db = tmp_path / "f.db"
    # posted_at: accepted by some route; success is no row
    assert query(db, "SELECT kind, count(*), count(posted_at) FROM alerts GROUP BY kind") == [
        ("failed", 6, 6)]
    cursors = dict(query(db, "SELECT route, through FROM route_cursors"))
    assert sorted(cursors.values()) == [6, 6]  # the hung route never got through


def test_deadline_with_the_real_daemon_late_once_per_slot_and_across_a_stop(
        tmp_path: Path, wf: Path, notify_socket: socket.socket) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\n'
                               'rule = "cron=*/10 * * * * *&deadline=2s"\n')
    db = tmp_path / "f.db"
    with hook_server() as (base, posts):
        cfg = daemon_config(tmp_path, worker_table("work", "sleep", "5", concurrency=2)
                            + '[alerts]\nwebhook_interval = "1s"\n\n[[alerts.route]]\n'
                            f'webhook = "{base}/late"\nkinds = ["late", "recovered"]\n')

        def late() -> list[tuple[object, ...]]:
            return query(db, "SELECT scheduled_for, task_no, message FROM alerts "
                             "WHERE kind = 'late' ORDER BY scheduled_for")

        with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
            messages_until(notify_socket, "READY=1")
            wait_for(lambda: len(late()) >= 2 and query(
                db, "SELECT count(*) FROM alerts WHERE kind = 'recovered'")[0][0] >= 1,
                seconds=60)
            wait_for(lambda: posts.counts("/late")["late work"] >= 2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        stopped = datetime.now(UTC)
        # every slot that fired and was due 2 s before the stop has exactly one `late`
        fired = [str(r[0]) for r in query(db, "SELECT scheduled_for FROM fires")]
        alerted = [str(r[0]) for r in late()]
        assert len(alerted) == len(set(alerted))
        assert {s for s in fired if (stopped - parse_iso(s)).total_seconds() > 4} <= set(
            alerted)
        assert all("task " in str(r[2]) and " running" in str(r[2]) for r in late())
        assert posts.counts("/late")["late work"] <= len(alerted)
        # down across a slot: it is late once the daemon is back, and only once
        wait_for(lambda: (datetime.now(UTC) - stopped).total_seconds() > 13)
        for _ in range(2):
            with daemon(tmp_path, wf, db, args=["-c", str(cfg)]) as proc:
                messages_until(notify_socket, "READY=1")  # its start looked back
                wait_for(lambda: any("never fired" in str(r[2]) for r in late()), seconds=30)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
        missed = [r for r in late() if "never fired" in str(r[2])]
        assert missed and all(r[1] is None for r in missed)
        slots = [r[0] for r in late()]
        assert len(slots) == len(set(slots))  # one late per slot, ever
