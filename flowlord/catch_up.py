"""No lost files: the files that arrived in the `files=` directories while this database
was not recording them (the daemon down, or standing by) start their phases when it
records again, once (docs/decisions.md, No lost files).

`watched_dirs` (flowlord/store/watched.py) says, per directory, until when this
database recorded what arrived there: brought forward by the leader while it watches
the directory (every WATCHED_EVERY seconds, never by a standby), and set to the time
of the first watch for a directory it never watched (the files already there are
known, not arrived: they start nothing). A mark of the leader's says MARGIN before
the time it is written, for the events still on their way. At start and at a
takeover, a directory is listed once its watch has run for QUIET seconds, on a
thread of its own (`Scan`): a file whose change time (the later of mtime and ctime:
a rename sets ctime, so a file moved in counts) lies after watched_until, and before
the watch began, is an arrival, unless this database recorded its path since it
changed (less MARGIN).

With a redis bus several daemons each keep a database; the leader records. Each
arrival is claimed in Redis by its path and change time before it is recorded (as a
slot is, flowlord/standby.py), and the leader publishes how far it watched each
directory: a standby that takes over lists from there and skips what the old leader
recorded after it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flowlord.clock import parse_iso, rfc3339_ms

QUIET = 1.0  # seconds a directory is watched before it is listed: the two overlap
# seconds a standby keeps the paths it dropped: those changed less than QUIET before a
# takeover are not listed (a file still being written must count when it is closed)
KEEP_DROPPED = 3.0
MARGIN = timedelta(seconds=5)  # a mark says "recorded up to this long ago": events on
# their way (MOVED_IN_AFTER, flowlord/arrivals.py), the clock of a file server
WATCHED_EVERY = timedelta(seconds=10)  # how often the leader brings watched_until forward
SCAN_BATCH = 500  # caught-up files recorded per turn of the loop (one transaction)
CLAIM_PREFIX = "flowlord:arrived:"
CLAIM_TTL = 86400  # seconds: a takeover lists from the last published watch, seconds ago
WATCHED_KEY = "flowlord:files-watched"  # directory → until when the leader recorded
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def changed_ns(st: os.stat_result) -> int:
    """When a file last changed: written (mtime) or renamed, moved in (ctime)."""
    return max(st.st_mtime_ns, st.st_ctime_ns)


def ns_of(t: datetime) -> int:
    """An aware time as nanoseconds since the epoch, as `os.stat` gives them."""
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def changed_files(directory: str, recursive: bool, since_ns: int | None, until_ns: int,
                  wanted: Callable[[str], bool],
                  stopping: Callable[[], bool] = lambda: False,
                  ) -> tuple[list[tuple[str, int]], int]:
    """The files under `directory` (below it too when `recursive`) that `wanted` takes and
    that changed after `since_ns` and at or before `until_ns`, oldest first, with their
    change times; and how many files `wanted` takes in all. None for `since_ns`: count
    only. A directory that cannot be read is skipped (its watch says why)."""
    found: list[tuple[str, int]] = []
    total = 0
    pending = [directory]
    while pending and not stopping():
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(entry.path)
                    continue
                if not entry.is_file() or not wanted(entry.path):
                    continue
                changed = changed_ns(entry.stat(follow_symlinks=False))
            except OSError:  # gone meanwhile
                continue
            total += 1
            if since_ns is not None and since_ns < changed <= until_ns:
                found.append((entry.path, changed))
    found.sort(key=lambda f: (f[1], f[0]))
    return found, total


@dataclass
class Scan:
    """One listing of the directories to catch up, on a thread of its own: the loop
    takes `found` once `done`. `since` is None for a directory watched for the first
    time (only counted, for the log)."""

    since: dict[str, datetime | None]  # directory → after when
    recursive: dict[str, bool]
    until: datetime
    wanted: Callable[[str], bool]
    wake: Callable[[], None]
    found: list[tuple[str, int]] = field(default_factory=list)  # (path, changed_ns)
    counts: dict[str, int] = field(default_factory=dict)  # directory → files wanted there
    done: bool = False
    stopped: bool = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="files-catch-up", daemon=True).start()

    def stop(self) -> None:
        self.stopped = True

    def _run(self) -> None:
        until = ns_of(self.until)
        seen: set[str] = set()
        try:
            for directory, since in sorted(self.since.items()):
                found, self.counts[directory] = changed_files(
                    directory, self.recursive[directory],
                    None if since is None else ns_of(since), until, self.wanted,
                    lambda: self.stopped)
                for path, changed in found:  # nested directories: each path once
                    if path not in seen:
                        seen.add(path)
                        self.found.append((path, changed))
            self.found.sort(key=lambda f: (f[1], f[0]))
        finally:
            self.done = True
            self.wake()


def start_of(*times: str | None) -> datetime | None:
    """The latest of these stored times: the catch-up lists the changes after it."""
    known = [parse_iso(t) for t in times if t]
    return max(known) if known else None


class ArrivalClaims:
    """With a redis bus: each arrival claimed before it is recorded, so that a file two
    daemons see is started by one; and how far the leader watched each directory."""

    def __init__(self, client: Any, node: str, log: Any) -> None:
        self.client = client
        self.node = node
        self.log = log

    def claim(self, arrivals: Sequence[tuple[str, int | None]]) -> list[str] | None:
        """The daemon that holds each arrival (this one, unless another claimed it
        first); None when Redis cannot be asked (they wait). A file gone already is
        not claimed: no listing can find it."""
        import redis

        keyed = [(i, CLAIM_PREFIX + json.dumps([path, changed]))
                 for i, (path, changed) in enumerate(arrivals) if changed is not None]
        owners = [self.node] * len(arrivals)
        if not keyed:
            return owners
        try:
            with self.client.pipeline(transaction=False) as ask:
                for _, key in keyed:
                    ask.set(key, self.node, nx=True, ex=CLAIM_TTL, get=True)
                answers = ask.execute()
        except (redis.RedisError, OSError) as e:
            self.log.warning("cannot claim arrived files in redis; they wait", error=str(e))
            return None
        for (i, _), owner in zip(keyed, answers, strict=True):
            owners[i] = owner or self.node
        return owners

    def watched(self, directories: Sequence[str]) -> dict[str, str]:
        """Until when the leaders recorded arrivals there ({} when Redis cannot say)."""
        import redis

        if not directories:
            return {}
        try:
            values = self.client.hmget(WATCHED_KEY, list(directories))
        except (redis.RedisError, OSError) as e:
            self.log.warning("cannot read in redis how far files were watched", error=str(e))
            return {}
        return {d: v for d, v in zip(directories, values, strict=True) if v}

    def mark(self, directories: Sequence[str], until: datetime) -> None:
        import redis

        if not directories:
            return
        try:
            self.client.hset(WATCHED_KEY, mapping={d: rfc3339_ms(until) for d in directories})
        except (redis.RedisError, OSError) as e:  # the next mark tries again
            self.log.warning("cannot write in redis how far files were watched", error=str(e))
