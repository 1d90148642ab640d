"""The daemon's side of `files=` phases: which phases wait for files, the watch on
their directories, and recording the files that arrived (flowlord/arrivals.py says
how a path becomes tasks). Files found while the database was locked wait here for
the next turn of the loop. At start and at a takeover, the files that arrived while
this database did not record them are caught up (flowlord/catch_up.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw

from flowlord.arrivals import ArrivalWatcher, matches, record_arrival, storable
from flowlord.catch_up import (
    KEEP_DROPPED,
    MARGIN,
    QUIET,
    SCAN_BATCH,
    WATCHED_EVERY,
    ArrivalClaims,
    Scan,
    changed_ns,
    start_of,
)
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.model import Phase
from flowlord.pauses import Pauses
from flowlord.rules import parse_rule
from flowlord.store import Store, write_txn
from flowlord.store.watched import first_watch, mark_watched, recorded_since, watched_until
from flowlord.tasks import Context


def runnable_file_phases(store: Store) -> list[Phase]:
    """The stored phases that can run and have a `files=` rule."""
    return [p for p in store.file_phases() if parse_rule(p.rule).files]


class FileTriggers:
    def __init__(self, log: Any, wake: Callable[[], None]) -> None:
        self.log = log
        self.wake = wake
        self.watch = ArrivalWatcher(log, wake)
        self.phases: list[Phase] = []
        self.arrived: list[str] = []  # not yet recorded (the database locked, Redis away)
        self.pauses = Pauses()
        self.leadership: Any = None  # with a redis bus (flowlord/standby.py): claims
        self.claims: ArrivalClaims | None = None
        self.changed: dict[str, int | None] = {}  # arrived path → its change time (claims)
        self.known: set[str] = set()  # directories with their watched_dirs row
        self.caught_up: set[str] = set()  # directories caught up while leading
        self.catching: list[str] = []  # directories whose found files are being recorded
        self.scan: Scan | None = None  # the listing under way
        self.found: list[tuple[str, int]] = []  # caught-up arrivals not yet recorded
        self.scanned: dict[str, int] = {}  # path → change time the catch-up recorded
        self.catching_since: datetime | None = None  # the earliest change listed
        self.caught_up_files = 0  # those recorded so far
        self.next_mark: datetime | None = None  # of watched_until
        self.stopped = False
        self.dropped: dict[str, float] = {}  # path → when (monotonic): the standby's last ones
        self.revived: set[str] = set()  # those of them taken up at a takeover, not recorded yet

    def follow(self, store: Store) -> None:
        """Read the `files=` phases again and watch the directories they need."""
        self.phases = runnable_file_phases(store)
        self.watch.follow(self.phases)

    def concerns(self, files: set[str]) -> bool:
        """Whether a change to these workflow files may change the `files=` phases."""
        return any(p.file_path in files for p in self.phases)

    def drop(self, store: Store, ctx: Context) -> None:
        """A standby leaves arrived files to the leader; what arrives from now on is
        caught up when it takes over. A directory it watches for the first time is
        known from now, as at a leader's first watch."""
        now = time.monotonic()
        self.dropped.update(dict.fromkeys(self.watch.arrived(), now))
        self.dropped = {p: t for p, t in self.dropped.items() if t > now - KEEP_DROPPED}
        if self.catching or self.found or (self.scan and any(self.scan.since.values())):
            self.log.warning("standing by: files not caught up are left for the takeover")
        if self.scan is not None and any(self.scan.since.values()):
            self.scan.stop()
            self.scan = None
        self.caught_up.clear()
        self.catching, self.found = [], []
        self._take_scan()
        self._catch_up(store, ctx, leading=False)

    def record(self, store: Store, ctx: Context) -> None:
        """Files closed after writing, or moved in, under the watched directories, and
        those the catch-up found: those a phase wants start its tasks, in one
        transaction."""
        self._take_scan()
        self._catch_up(store, ctx, leading=True)
        # the watch sees every file closed in those directories: keep those a phase wants;
        # after a takeover, with those it dropped last as a standby (too recent to be listed)
        dropped, self.dropped = set(self.dropped), {}
        for path in [*dropped, *self.watch.arrived()]:
            if not storable(path):
                self.log.warning("file name is not UTF-8, ignored", path=ascii(path))
            elif self._wanted(path) and path not in self.changed:
                changed = _changed(path)
                if changed is None and path in dropped:
                    continue  # gone: the leader of then may have started it (no claim)
                if changed is None or self.scanned.get(path) != changed:  # not caught up
                    self.arrived.append(path)
                    self.changed[path] = changed
                    if path in dropped:
                        self.revived.add(path)
        self._take_found(store)
        if self.arrived and not self._claimed():
            return  # Redis cannot be asked: they wait
        if self.arrived and not self._record(store, ctx):
            return  # the database is locked: they wait
        self._mark(store, ctx)

    def _wanted(self, path: str) -> bool:
        return any(matches(parse_rule(p.rule).files, path) for p in self.phases)

    def _claimed(self) -> bool:
        """With a redis bus: keep the arrivals this daemon claimed (another one that did
        started them); False when Redis cannot be asked."""
        if self.leadership is None:
            return True
        if self.claims is None:
            self.claims = ArrivalClaims(self.leadership.client, self.leadership.node, self.log)
        owners = self.claims.claim([(p, self.changed.get(p)) for p in self.arrived])
        if owners is None:
            return False
        mine = []
        for path, owner in zip(self.arrived, owners, strict=True):
            if owner == self.claims.node:
                mine.append(path)
            else:
                self.changed.pop(path, None)
                self.log.info("file started by another daemon", path=path, node=owner)
        self.arrived = mine
        return True

    def _record(self, store: Store, ctx: Context) -> bool:
        phases = []
        for phase in self.phases:  # a paused phase starts nothing: logged with why
            paused = self.pauses.of_phase(phase.file_path, phase.task, ctx.created)
            if paused is None:
                phases.append(phase)
                continue
            rule = parse_rule(phase.rule).files
            for path in self.arrived:
                if matches(rule, path):
                    self.log.warning("file not started", path=path, file=phase.file_path,
                                     phase=phase.task, why=paused.why())
        try:
            with write_txn(store.conn):
                started = [(path, record_arrival(store, phases, path, "watch", ctx))
                           for path in self.arrived]
        except apsw.BusyError:
            return False
        for path, tasks in started:
            changed = self.changed.pop(path, None)
            caught_up = changed is not None and self.scanned.get(path) == changed
            self.caught_up_files += caught_up
            seen = "catch-up" if caught_up else "standby" if path in self.revived else "watch"
            self.log.info("file arrived", path=path, tasks=len(tasks), seen=seen)
        self.revived.clear()
        self.arrived = []
        return True

    # --- the catch-up (flowlord/catch_up.py) ------------------------------------------

    def _catch_up(self, store: Store, ctx: Context, leading: bool) -> None:
        """List the watched directories not caught up yet, once their watch has run for
        QUIET seconds: for a leader, those it did not record since it last watched them;
        for anyone, those watched for the first time (counted, and known from now)."""
        if self.stopped or self.scan is not None or self.catching:
            return
        roots: dict[str, bool] = {}
        for directory, recursive in self.watch.roots:
            roots[directory] = roots.get(directory, False) or recursive
        self.caught_up &= set(roots)
        self.known &= set(roots)
        todo = sorted(d for d in roots
                      if d not in self.known or (leading and d not in self.caught_up))
        if not todo or time.monotonic() - self.watch.since < QUIET:
            return
        rows = watched_until(store.conn, todo)
        first = [d for d in todo if d not in rows]
        if first:
            try:
                with write_txn(store.conn):
                    first_watch(store.conn, first, rfc3339_ms(ctx.created))
            except apsw.BusyError:
                return  # the next turn
        self.known.update(todo)
        since: dict[str, datetime | None] = dict.fromkeys(first)
        if leading:
            self.caught_up.update(first)  # known from now: nothing to catch up
            again = [d for d in todo if d in rows]
            if again and self.leadership is not None and self.claims is None:
                self.claims = ArrivalClaims(self.leadership.client, self.leadership.node,
                                            self.log)
            shared = self.claims.watched(again) if self.claims is not None else {}
            since.update({d: start_of(rows[d], shared.get(d)) for d in again})
            self.scanned = {}
        patterns = [parse_rule(p.rule).files for p in self.phases]
        self.scan = Scan(since, {d: roots[d] for d in since},
                         until=ctx.created - timedelta(seconds=QUIET),
                         wanted=lambda path: storable(path) and any(
                             matches(pattern, path) for pattern in patterns),
                         wake=self.wake)
        self.scan.start()

    def _take_scan(self) -> None:
        """A listing that is done: the first watches said in the log, the files found
        to be recorded from this turn on."""
        scan = self.scan
        if scan is None or not scan.done:
            return
        self.scan = None
        for directory, since in sorted(scan.since.items()):
            if since is None:
                files = scan.counts.get(directory, 0)
                say = self.log.warning if files else self.log.info
                say("first watch of a files= directory: the files already there are not "
                    "started", path=directory, files=files)
        again = sorted(d for d, since in scan.since.items() if since is not None)
        if again and not scan.stopped:
            self.catching = again
            self.catching_since = min(s for s in scan.since.values() if s is not None)
            self.found = scan.found
            self.caught_up_files = 0

    def _take_found(self, store: Store) -> None:
        """A batch of the files the catch-up found (SCAN_BATCH a turn), less those this
        database recorded since they changed."""
        room = SCAN_BATCH - len(self.arrived)
        if not self.found or room <= 0:
            return
        batch, self.found = self.found[:room], self.found[room:]
        recorded = recorded_since(store.conn, [
            (path, rfc3339(_at(changed) - MARGIN)) for path, changed in batch])
        for path, changed in batch:
            if path not in recorded and path not in self.changed:
                self.arrived.append(path)
                self.changed[path] = changed
                self.scanned[path] = changed
        if self.found:
            self.wake()  # the next batch on the next turn

    def _mark(self, store: Store, ctx: Context) -> None:
        """Bring watched_until of the caught-up directories to now less MARGIN: at once
        when a catch-up is done, else every WATCHED_EVERY; never while arrivals wait."""
        now = ctx.created
        if self.catching and not self.found:
            self.log.info("files= directories caught up", paths=" ".join(self.catching),
                          since=rfc3339_ms(self.catching_since or now),
                          files=self.caught_up_files)
            self.caught_up.update(self.catching)
            self.catching = []
            self.next_mark = None
        if not self.caught_up or self.arrived:
            return
        if self.next_mark is not None and now < self.next_mark:
            return
        directories = sorted(self.caught_up & {d for d, _ in self.watch.roots})
        try:
            with write_txn(store.conn):
                mark_watched(store.conn, directories, rfc3339_ms(now - MARGIN))
        except apsw.BusyError:
            return
        if self.claims is not None:
            self.claims.mark(directories, now - MARGIN)
        self.next_mark = now + WATCHED_EVERY

    def stop(self) -> None:
        self.stopped = True
        if self.scan is not None:
            self.scan.stop()
        self.watch.stop()


def _changed(path: str) -> int | None:
    try:
        return changed_ns(os.stat(path, follow_symlinks=False))
    except OSError:  # gone already
        return None


def _at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)
