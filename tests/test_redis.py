"""The redis bus with real processes: the daemon, `flowlord worker`s and a real
redis-server, killed and restarted (issue 5's reliability tests)."""

from __future__ import annotations

import signal
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import (
    FLAKY,
    backload,
    chains,
    count,
    daemon,
    messages_until,
    query,
    redis_config,
    run_cli,
    unfinished,
    wait_for,
    workers,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


def test_a_worker_with_a_wrong_password_or_a_closed_port_exits_2_with_one_line(
        tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="right")
    server.start()
    try:
        wrong = server.url.replace(":right@", ":wrong@")
        for url in (wrong, f"redis://127.0.0.1:{server.port}/0",
                    f"redis://127.0.0.1:{RedisServer(tmp_path / 'other').port}/0"):
            done = run_cli("worker", "--bus", url, "--topic", "t", "--", "true")
            assert done.returncode == 2, (url, done.stderr)
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("flowlord: worker: "), done.stderr
            assert "right" not in lines[0] and "wrong" not in lines[0]  # no password shown
    finally:
        server.kill()


def test_the_daemon_refuses_an_unreachable_bus_with_one_line(tmp_path: Path, wf: Path) -> None:
    port = RedisServer(tmp_path / "none").port
    done = run_cli("run", *redis_config(tmp_path, f"redis://127.0.0.1:{port}/0"),
                   "-w", str(wf), "--db", str(tmp_path / "f.db"))
    assert done.returncode == 2
    assert done.stderr.startswith("flowlord: bus.url: cannot reach redis") and \
        len(done.stderr.splitlines()) == 1, done.stderr


def test_500_tasks_through_three_workers_one_killed_all_accounted_for(
        tmp_path: Path, wf: Path, redis_server: RedisServer) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\nrule = "retry_delay=10ms"\n'
                               'retry = 2\ntemplate = "?d={dd}&h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "work", 500)
    config = redis_config(tmp_path, redis_server.url)
    with workers(redis_server.url, "work", sys.executable, "-c", FLAKY, count=3,
                 concurrency=4, claim_idle="2s") as procs, \
            daemon(tmp_path, wf, db, args=config):
        wait_for(lambda: len(query(db, "SELECT 1 FROM tasks WHERE ended IS NOT NULL")) >= 100,
                 120)
        procs[0].kill()  # its tasks stay pending in the stream, to be reclaimed
        wait_for(lambda: unfinished(db) == 0 and len(chains(db)) == 500, 240)
    found = chains(db)
    for attempts in found.values():
        assert [a for a, _ in attempts] == list(range(len(attempts)))  # one row per attempt
        assert all(r == "error" for _, r in attempts[:-1])
        assert attempts[-1][1] == "complete" or len(attempts) == 3
    assert query(db, "SELECT count(*) FROM tasks WHERE result IS NULL OR ended IS NULL") == [
        (0,)]
    assert query(db, "SELECT count(*) FROM tasks WHERE published_at IS NULL") == [(0,)]
    failed = sum(1 for a in found.values() if a[-1][1] == "error")
    assert query(db, "SELECT count(*) FROM alerts WHERE kind = 'failed'") == [(failed,)]


def test_a_slow_task_is_not_taken_from_a_live_worker(
        tmp_path: Path, wf: Path, redis_server: RedisServer) -> None:
    runs = tmp_path / "runs"
    script = f"import time\nopen({str(runs)!r}, 'a').write('x')\ntime.sleep(4)"
    (wf / "a.toml").write_text('[[phase]]\ntask = "slow"\ntemplate = "?h={hh}"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "slow", 1)
    with workers(redis_server.url, "slow", sys.executable, "-c", script, count=2,
                 claim_idle="1s"), daemon(tmp_path, wf, db,
                                          args=redis_config(tmp_path, redis_server.url)):
        wait_for(lambda: unfinished(db) == 0, 60)
    assert runs.read_text() == "x"  # idle 4 s past a 1 s claim_idle: renewed, never reclaimed
    assert query(db, "SELECT result FROM tasks") == [("complete",)]


def test_a_redis_outage_loses_nothing_and_is_logged_once(
        tmp_path: Path, wf: Path) -> None:
    server = RedisServer(tmp_path / "redis", persist=True)
    server.start()
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\nrule = "cron=@every 1s"\n'
                               'template = "?t={TS}"\n')
    db = tmp_path / "f.db"
    log = tmp_path / "daemon.log"
    fires = "SELECT count(*) FROM fires"
    try:
        with workers(server.url, "tick", "true"), log.open("w") as err, \
                daemon(tmp_path, wf, db, stderr=err, args=redis_config(tmp_path, server.url)):
            wait_for(lambda: count(db, "SELECT count(*) FROM tasks "
                                       "WHERE result = 'complete'") >= 3, 60)
            server.kill()
            wait_for(lambda: "redis unavailable" in log.read_text(), 30)
            # due slots wait in memory while nobody can claim them in redis
            server.start()
            after = count(db, fires)
            wait_for(lambda: count(db, fires) >= after + 3, 60)
            # every task fired, before, during and after the outage, completes
            done = count(db, fires)
            wait_for(lambda: count(db, "SELECT count(*) FROM tasks WHERE result = 'complete' "
                                       f"AND task_no <= {done}") == done, 90)
            assert count(db, "SELECT count(*) FROM tasks WHERE result <> 'complete'") == 0
        slots = [str(r[0]) for r in query(db, "SELECT scheduled_for FROM fires "
                                              "ORDER BY scheduled_for")]
        assert slots == every_second(slots[0], slots[-1])  # none lost during the outage
        assert log.read_text().count("redis unavailable") == 1
        assert "redis available again" in log.read_text()
    finally:
        server.kill()


def standby_config(directory: Path, url: str, node: str) -> list[str]:
    path = directory / "flowlord.toml"
    path.write_text(f'timezone = "UTC"\n[bus]\nurl = "{url}"\nlease = "2s"\nnode = "{node}"\n')
    return ["-c", str(path)]


def own_slots(db: Path) -> list[str]:
    """The slots this database fired itself (with tasks), not those recorded as fired
    by another daemon."""
    return [str(r[0]) for r in query(db, "SELECT f.scheduled_for FROM fires AS f WHERE "
                                         "f.error = '' AND EXISTS (SELECT 1 FROM tasks AS t "
                                         "WHERE t.file_path = f.file_path AND t.phase = f.phase "
                                         "AND t.scheduled_for = f.scheduled_for)")]


def test_a_standby_takes_over_without_firing_a_slot_twice_or_missing_one(
        tmp_path: Path, redis_server: RedisServer) -> None:
    homes = {node: tmp_path / node for node in ("a", "b")}
    for home in homes.values():
        (home / "wf").mkdir(parents=True)
        (home / "wf" / "tick.toml").write_text(
            '[[phase]]\ntask = "tick"\nrule = "cron=@every 1s&catchup=all"\n'
            'template = "?t={TS}"\n')
    dbs = {node: home / "f.db" for node, home in homes.items()}
    log = tmp_path / "b.log"
    status = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # b's systemd notifications
    status.bind(str(homes["b"] / "notify.sock"))
    status.settimeout(30)
    with status, workers(redis_server.url, "tick", "true", concurrency=4), \
            daemon(homes["a"], homes["a"] / "wf", dbs["a"],
                   args=standby_config(homes["a"], redis_server.url, "a")) as leader:
        wait_for(lambda: len(own_slots(dbs["a"])) >= 2, 30)  # a leads
        with log.open("w") as err, daemon(homes["b"], homes["b"] / "wf", dbs["b"], stderr=err,
                                          args=standby_config(homes["b"], redis_server.url,
                                                              "b")) as standby:
            # b stands by: it records a's slots as fired there, and fires none itself
            wait_for(lambda: count(dbs["b"], "SELECT count(*) FROM fires "
                                             "WHERE error = 'fired by flowlord a'") >= 2, 30)
            assert own_slots(dbs["b"]) == []
            assert any(m.endswith("; standby") for m in messages_until(status, "READY=1"))
            leader.kill()
            wait_for(lambda: len(own_slots(dbs["b"])) >= 3, 30)  # b took over
            seen: list[str] = []
            while not any(m.endswith("; leader") for m in seen):  # STATUS= says so
                seen += status.recv(4096).decode().split("\n")
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(30) == 0
    assert "role=leader" in log.read_text()
    a, b = own_slots(dbs["a"]), own_slots(dbs["b"])
    assert not set(a) & set(b), "a slot fired by both daemons"
    fired = sorted(a + b)
    assert fired == every_second(fired[0], fired[-1])  # none twice, none missing


def every_second(first: str, last: str) -> list[str]:
    """Every whole second from `first` to `last`, as the ledger writes slots."""
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (first, last))
    return [(start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for i in range(int((end - start).total_seconds()) + 1)]


def test_two_daemons_on_one_redis_without_a_lease_setting_never_both_fire(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """The two-host config minus any lease setting: the lease is on anyway, and a third
    daemon reusing a live daemon's node name is refused."""
    homes = {node: tmp_path / node for node in ("a", "b", "c")}
    for home in homes.values():
        (home / "wf").mkdir(parents=True)
        (home / "wf" / "tick.toml").write_text(
            '[[phase]]\ntask = "tick"\nrule = "cron=@every 1s"\ntemplate = "?t={TS}"\n')
    dbs = {node: home / "f.db" for node, home in homes.items()}
    with workers(redis_server.url, "tick", "true", concurrency=4), \
            daemon(homes["a"], homes["a"] / "wf", dbs["a"],
                   args=redis_config(homes["a"], redis_server.url, "a")), \
            daemon(homes["b"], homes["b"] / "wf", dbs["b"],
                   args=redis_config(homes["b"], redis_server.url, "b")):
        # both run: each records every slot, one of them with tasks
        wait_for(lambda: all(count(dbs[n], "SELECT count(*) FROM fires") >= 5 for n in "ab"),
                 60)
        reused = run_cli("run", *redis_config(homes["c"], redis_server.url, "a"),
                         "-w", str(homes["c"] / "wf"), "--db", str(dbs["c"]))
        assert reused.returncode == 2
        assert reused.stderr.startswith("flowlord: bus.node 'a' is in use by another "
                                        "flowlord run"), reused.stderr
        assert len(reused.stderr.splitlines()) == 1
    a, b = own_slots(dbs["a"]), own_slots(dbs["b"])
    assert a or b
    assert not set(a) & set(b), "a slot fired by both daemons"
    tasks = [str(r[0]) for n in "ab" for r in query(dbs[n], "SELECT scheduled_for FROM tasks")]
    assert sorted(tasks) == sorted(set(tasks))  # one task per slot across both databases
