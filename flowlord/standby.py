"""Several daemons, one Redis: a lease lets exactly one of them (the leader) fire and
dispatch; the others (standbys) keep their database in step and take over within the
lease time when the leader stops or dies.

Each fire also claims its (file, phase, slot) in Redis before it is recorded, so a
new leader never fires a slot the old one already fired: such a slot is recorded in
its ledger as fired elsewhere, with no tasks. A standby holds the slots that come due
until the leader's claim shows up (then it records them the same way), and fires the
ones still unclaimed when it becomes the leader.

With a redis bus the lease is always on, even for one daemon: two daemons that
share a Redis by mistake must not both fire. Each daemon also holds its node name
(`flowlord:node:<node>`, renewed with the lease), so a second daemon given the same
name, whose claims and results stream would be taken for the first one's, is
refused at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from flowlord.bus import BusUnavailable
from flowlord.bus.wire import HOLD, RELEASE
from flowlord.model import Fire

LEASE_KEY = "flowlord:leader"
NODE_PREFIX = "flowlord:node:"
DEFAULT_LEASE = timedelta(seconds=10)  # when the config names none
CLAIM_PREFIX = "flowlord:fired:"
CLAIM_DAYS = 40  # a claim outlives every catch-up a ledger row does not already cover
# renews the lease if it still names us; 1 when it did, 0 when another daemon holds it
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class NodeInUse(Exception):
    """Another live daemon uses this node name on the same Redis; str(e) is one line."""


def this_process() -> str:
    """Who holds a node name: the host and the process id."""
    return f"{socket.gethostname()} {os.getpid()}"


def _gone(holder: str) -> bool:
    """Whether the holder of a node name is a process of this host that no longer
    runs (a daemon killed and restarted before its hold expired), or ourselves."""
    host, _, pid = holder.rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claim_key(fire: Fire) -> str:
    return CLAIM_PREFIX + json.dumps([fire.file_path, fire.phase, fire.scheduled_for])


def fired_by(fire: Fire, node: str) -> Fire:
    """The ledger row of a slot another daemon fired: no tasks here, and why."""
    return Fire(fire.file_path, fire.phase, fire.scheduled_for, fire.source, (),
                f"fired by flowlord {node}")


class Leadership:
    def __init__(self, client: Any, node: str, lease: timedelta, log: Any) -> None:
        self.client = client
        self.node = node
        self.lease_ms = int(lease.total_seconds() * 1000)
        self.log = log
        self.leading = False
        self.valid_until = 0.0  # monotonic: our lease surely holds until then
        self.next_try = 0.0
        self._renew = client.register_script(_RENEW)
        self._hold_node = client.register_script(HOLD)  # the node name, for this process
        self._release = client.register_script(RELEASE)
        self.node_key = NODE_PREFIX + node
        self.me = this_process()

    def hold_node(self) -> None:
        """At start: take this daemon's node name, or NodeInUse when a live daemon has
        it. A holder that is a dead process of this host (a crash, then a restart
        within the lease) is replaced at once."""
        import redis

        try:
            if self._hold_node(keys=[self.node_key], args=[self.me, self.lease_ms]):
                return
            holder = self.client.get(self.node_key) or ""
            if _gone(holder):
                self.client.set(self.node_key, self.me, px=self.lease_ms)
                return
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(f"cannot take the node name in redis: {e}") from None
        host, _, pid = holder.rpartition(" ")
        raise NodeInUse(f"bus.node {self.node!r} is in use by another flowlord run (host "
                        f"{host or '?'}, pid {pid or '?'}): give each daemon its own node")

    @property
    def role(self) -> str:
        return "leader" if self.leading else "standby"

    def tick(self, monotonic: float) -> bool:
        """Renew or take the lease (a third of its time apart); whether we lead now. A
        leader that cannot renew steps down before its lease can run out, so that two
        daemons never lead at once."""
        import redis

        if monotonic >= self.next_try:
            self.next_try = monotonic + self.lease_ms / 3000
            try:
                if not self._hold_node(keys=[self.node_key], args=[self.me, self.lease_ms]):
                    # our hold ran out (a long stall) and another daemon took the name
                    self.log.error("bus.node taken by another daemon; standing by",
                                   node=self.node)
                    self._become(False)
                    return False
                if self.leading:
                    held = bool(self._renew(keys=[LEASE_KEY], args=[self.node, self.lease_ms]))
                else:
                    held = bool(self.client.set(LEASE_KEY, self.node, nx=True,
                                                px=self.lease_ms))
                if held:
                    # counted from before the request: the server's expiry is later
                    self.valid_until = monotonic + self.lease_ms / 1000 * 0.9
                self._become(held)
            except (redis.RedisError, OSError) as e:
                if self.leading and monotonic < self.valid_until:
                    return True  # the lease still holds: try again next turn
                if self.leading:
                    self.log.error("cannot renew the lease; standing by", error=str(e))
                self._become(False)
        if self.leading and monotonic >= self.valid_until:
            self._become(False)
        return self.leading

    def _become(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self.log.warning("role changed", role=self.role, node=self.node)

    def claim(self, fires: Sequence[Fire]) -> list[Fire] | None:
        """The leader's fires, each slot claimed for us first: a slot another daemon
        claimed comes back as fired elsewhere. None when Redis cannot be asked."""
        import redis

        if not fires:
            return []
        try:
            with self.client.pipeline(transaction=False) as ask:
                for fire in fires:
                    ask.set(claim_key(fire), self.node, nx=True, ex=CLAIM_DAYS * 86400,
                            get=True)
                owners = ask.execute()
        except (redis.RedisError, OSError) as e:
            self.log.warning("cannot claim slots in redis; they wait", error=str(e))
            return None
        return [fire if owner in (None, self.node) else fired_by(fire, owner)
                for fire, owner in zip(fires, owners, strict=True)]

    def settle(self, fires: Sequence[Fire]) -> tuple[list[Fire], list[Fire]] | None:
        """A standby's due fires: (those to record: as fired elsewhere when another
        daemon claimed them, with their tasks when this one did while it led; those
        nobody claimed, to hold). None when Redis cannot be asked."""
        import redis

        if not fires:
            return [], []
        try:
            owners = self.client.mget([claim_key(f) for f in fires])
        except (redis.RedisError, OSError):
            return None
        record = [f if o == self.node else fired_by(f, o)
                  for f, o in zip(fires, owners, strict=True) if o]
        held = [f for f, o in zip(fires, owners, strict=True) if not o]
        return record, held

    def release(self) -> None:
        """At a clean stop: hand the lease and the node name over at once instead of at
        their expiry."""
        import redis

        with contextlib.suppress(redis.RedisError, OSError):  # else they expire
            if self.leading:
                self._release(keys=[LEASE_KEY], args=[self.node])
            self._release(keys=[self.node_key], args=[self.me])
        self.leading = False
