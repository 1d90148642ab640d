"""Messages Redis loses (flowlord/bus/redis.py, the looks for lost messages): a real
redis-server restarted empty under load, a real daemon and real `flowlord worker`s;
and a daemon refused its node name, which must read nothing of the live one's."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from flowlord import logs
from flowlord.bus.wire import DAEMON_GROUP, encode_done
from flowlord.clock import utc_now_ms
from flowlord.config import Config, ConfigError
from flowlord.model import Done
from flowlord.standby import Leadership
from flowlord.startup import open_bus
from flowlord.store import Store, write_txn
from tests.helpers import backload, count, daemon, query, redis_config, unfinished, wait_for
from tests.helpers import workers as worker_procs
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

LONG = "?d=01&h=10"  # the task that runs across the restart, until the test releases it

# each run writes a line when it starts and one when it ends (the monotonic clock is the
# machine's, the same in every process), so runs of one task can be checked for overlap
TASK = """import os, sys, time
info = os.environ['FLOWLORD_TASK_INFO']
runs, release, long = sys.argv[1:4]
def note(what):
    with open(runs, 'a') as f:
        f.write(f'{what} {info} {os.getpid()} {time.monotonic_ns()}\\n')
note('start')
if info == long:
    while not os.path.exists(release):
        time.sleep(0.05)
else:
    time.sleep(0.2)
note('end')
"""


def runs_of(path: Path) -> dict[str, list[tuple[int, int | None]]]:
    """Each task's runs (by its info): (start, end or None), by start."""
    starts: dict[tuple[str, str], int] = {}
    ends: dict[tuple[str, str], int] = {}
    for line in path.read_text().splitlines():
        what, info, pid, when = line.split(" ")
        (starts if what == "start" else ends)[info, pid] = int(when)
    found: dict[str, list[tuple[int, int | None]]] = {}
    for (info, pid), start in starts.items():
        found.setdefault(info, []).append((start, ends.get((info, pid))))
    return {info: sorted(runs) for info, runs in found.items()}


def test_a_redis_restarted_empty_under_load_ends_every_task_once_never_two_runs_at_once(
        tmp_path: Path, wf: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # no persistence: a restart starts empty
    server.start()
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "work"\ntemplate = "?d={dd}&h={hh}"\n\n'
        '[[phase]]\ntask = "after"\ndependsOn = "work"\ntemplate = "?d={dd}&h={hh}"\n')
    db = tmp_path / "f.db"
    runs, release, log = tmp_path / "runs", tmp_path / "release", tmp_path / "daemon.log"
    backload(wf, db, "work", 200)
    ended = "SELECT count(*) FROM tasks WHERE type = 'work' AND ended IS NOT NULL"
    try:
        with worker_procs(server.url, "work", sys.executable, "-c", TASK, str(runs),
                          str(release), LONG, count=2, concurrency=2), \
                worker_procs(server.url, "after", "true"), log.open("w") as err, \
                daemon(tmp_path, wf, db, stderr=err, args=redis_config(tmp_path, server.url)):
            wait_for(lambda: count(db, ended) >= 40 and runs.exists()
                     and f"start {LONG} " in runs.read_text(), 60)
            server.kill()  # the streams, their groups, the results not yet read: gone
            server.start()
            # the tasks whose messages were lost are published again, once the looks
            # have missed them for a while; the long one runs on, marked by its worker
            wait_for(lambda: count(db, ended) == 199 and unfinished(db) == 1, 120)
            assert "published again" in log.read_text()
            assert len(runs_of(runs)[LONG]) == 1  # never run beside itself
            release.touch()
            wait_for(lambda: unfinished(db) == 0 and count(
                db, "SELECT count(*) FROM tasks WHERE type = 'after'") == 200, 60)
    finally:
        server.kill()
    # every task ended once, complete, and had its result's effects once: one child each
    assert query(db, "SELECT type, result, count(*) FROM tasks GROUP BY type, result "
                     "ORDER BY type") == [("after", "complete", 200), ("work", "complete", 200)]
    parents = [r[0] for r in query(db, "SELECT parent_no FROM tasks WHERE type = 'after'")]
    assert len(set(parents)) == 200
    assert query(db, "SELECT count(*) FROM alerts") == [(0,)]
    # every task ran, none twice at once; a task ran again only after its run ended (its
    # result was lost with the server before the daemon read it)
    found = runs_of(runs)
    infos = {str(r[0]) for r in query(db, "SELECT info FROM tasks WHERE type = 'work'")}
    assert set(found) == infos
    for info, attempts in found.items():
        for (_, end), (start, _) in zip(attempts, attempts[1:], strict=False):
            assert end is not None and end < start, f"{info} ran twice at once"
        assert all(end is not None for _, end in attempts)
    assert len(found[LONG]) == 1
    twice = Counter(len(a) for a in found.values())
    assert sum(n for runs, n in twice.items() if runs > 1) <= 10, twice  # lost results only


def test_at_the_next_start_a_task_never_published_is_published_and_a_lost_one_again(
        tmp_path: Path, wf: Path, redis_server: RedisServer) -> None:
    """What a daemon that died between committing a claim and publishing leaves behind
    (published at start), and a task the database says was published that Redis does
    not hold (the server restarted empty while the daemon was down): published again
    once the looks have missed it for a while."""
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 2)
    store = Store(str(db))
    try:
        with write_txn(store.conn):
            first, second = store.claim("work", 2, utc_now_ms())
            store.mark_published([second.task_no], "2026-01-01T00:00:00Z")
    finally:
        store.close()
    log = tmp_path / "daemon.log"
    with worker_procs(redis_server.url, "work", "true"), log.open("w") as err, \
            daemon(tmp_path, wf, db, stderr=err,
                   args=redis_config(tmp_path, redis_server.url)):
        wait_for(lambda: query(db, "SELECT result FROM tasks WHERE task_no = ?",
                               (first.task_no,)) == [("complete",)], 30)
        wait_for(lambda: unfinished(db) == 0, 60)
    assert query(db, "SELECT result FROM tasks ORDER BY task_no") == [("complete",)] * 2
    assert f"task_nos={second.task_no}" in log.read_text()  # published again, that one only


def test_a_daemon_refused_its_node_reads_none_of_the_live_daemons_results(
        tmp_path: Path, wf: Path, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Results it read it could not acknowledge: they would stay pending under the
    consumer name both daemons use, until the live one restarts."""
    client = redis_server.client()
    client.set("flowlord:node:a", "elsewhere 1")  # a live daemon on another host holds it
    client.xadd("flowlord:done:a", encode_done(Done(1, "complete", "", "2026-01-01T00:00:00Z")))

    def pending() -> int:
        groups = client.xinfo_groups("flowlord:done:a")
        return sum(int(g["pending"]) for g in groups if g["name"] == DAEMON_GROUP)

    hold_node = Leadership.hold_node

    def slow_hold_node(self: Leadership) -> None:
        """Time for a reader started before the hold to read (3 s at most)."""
        end = time.monotonic() + 3
        while pending() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        hold_node(self)

    monkeypatch.setattr(Leadership, "hold_node", slow_hold_node)
    config = Config(workflows=str(wf), db=str(tmp_path / "f.db"), bus_url=redis_server.url,
                    bus_node="a")
    with pytest.raises(ConfigError, match="bus.node 'a' is in use"):
        open_bus(config, logs.get("flowlord.daemon"), lambda: None)
    assert pending() == 0
    assert client.xlen("flowlord:done:a") == 1  # the live daemon's to read
