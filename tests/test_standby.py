"""The lease and the slot claims of flowlord/standby.py, against a real redis-server."""

from __future__ import annotations

import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from flowlord import logs
from flowlord.config import ConfigError, load_config
from flowlord.model import Fire, Task
from flowlord.standby import Leadership, NodeInUse, this_process
from tests.redis_server import RedisServer

LEASE = timedelta(seconds=30)


def fire(slot: str = "2026-01-01T00:00:00Z") -> Fire:
    return Fire("a.toml", "tick", slot, "cron", [Task(type="tick", id="x")])


@pytest.mark.slow
def test_one_node_leads_and_hands_the_lease_over_at_a_clean_stop(
        redis_server: RedisServer) -> None:
    a = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
    b = Leadership(redis_server.client(), "b", LEASE, logs.get("test"))
    assert a.tick(0.0) is True and a.role == "leader"
    assert b.tick(0.0) is False and b.role == "standby"
    assert a.tick(20.0) is True  # renewed: still ours
    a.release()
    assert b.tick(30.0) is True and a.tick(40.0) is False


@pytest.mark.slow
def test_a_leader_that_cannot_renew_steps_down_before_its_lease_runs_out(
        redis_server: RedisServer) -> None:
    a = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
    assert a.tick(0.0) is True
    redis_server.kill()
    assert a.tick(11.0) is True  # not renewed, but the lease still holds
    assert a.tick(28.0) is False  # 90 % of it gone: another may take it soon


@pytest.mark.slow
def test_a_slot_is_fired_by_the_first_claim_only(redis_server: RedisServer) -> None:
    a = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
    b = Leadership(redis_server.client(), "b", LEASE, logs.get("test"))
    assert a.claim([fire()]) == [fire()]
    assert a.claim([fire()]) == [fire()]  # ours already: a restart may record it
    [elsewhere] = b.claim([fire()]) or []
    assert (elsewhere.tasks, elsewhere.error) == ((), "fired by flowlord a")
    # a standby records what others claimed as fired there, what it claimed itself (while
    # it led) with its tasks, and holds the rest
    assert b.settle([fire(), fire("2026-01-01T00:00:01Z")]) == (
        [elsewhere], [fire("2026-01-01T00:00:01Z")])
    assert a.settle([fire()]) == ([fire()], [])


@pytest.mark.slow
def test_redis_away_means_no_claim_and_no_answer(redis_server: RedisServer) -> None:
    a = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
    redis_server.kill()
    assert a.claim([fire()]) is None
    assert a.settle([fire()]) is None


def test_a_lease_needs_a_redis_bus(tmp_path: Path) -> None:
    path = tmp_path / "flowlord.toml"
    path.write_text('[bus]\nlease = "10s"\n')
    with pytest.raises(ConfigError, match="bus.lease needs a redis bus.url"):
        load_config(str(path))


@pytest.mark.slow
def test_a_node_name_is_held_by_one_live_daemon(redis_server: RedisServer) -> None:
    def daemon_as(me: str) -> Leadership:
        leadership = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
        leadership.me = me  # who holds the name: host and pid
        return leadership

    with subprocess.Popen(["sleep", "60"]) as alive:  # a live daemon of this host
        try:
            first = daemon_as(f"{socket.gethostname()} {alive.pid}")
            first.hold_node()
            first.hold_node()  # renewing our own hold is fine
            for second in (daemon_as("elsewhere 1"), daemon_as(this_process())):
                with pytest.raises(NodeInUse, match=r"bus.node 'a' is in use by another "
                                                    rf"flowlord run \(host .+, pid {alive.pid}\)"):
                    second.hold_node()
        finally:
            alive.kill()
    # its process is gone (a crash, then a restart within the lease): taken at once
    restarted = daemon_as(this_process())
    restarted.hold_node()
    assert redis_server.client().get("flowlord:node:a") == this_process()
    restarted.release()  # a clean stop frees the name at once
    daemon_as("elsewhere 1").hold_node()
    # a holder on another host is not ours to judge: its hold must run out
    with pytest.raises(NodeInUse, match=r"host elsewhere, pid 1\)"):
        daemon_as(this_process()).hold_node()


@pytest.mark.slow
def test_a_leader_whose_node_name_was_taken_stands_by(redis_server: RedisServer) -> None:
    a = Leadership(redis_server.client(), "a", LEASE, logs.get("test"))
    a.hold_node()
    assert a.tick(0.0) is True
    redis_server.client().set("flowlord:node:a", "elsewhere 1")  # ours ran out, then taken
    assert a.tick(20.0) is False
