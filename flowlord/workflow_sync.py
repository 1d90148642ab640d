"""The workflow directory → rows → the schedule, kept in step while the daemon runs.

File events (settled by flowlord/watcher.py) name the paths to refresh; a full
rescan runs at start, on SIGHUP, every `rescan` and when inotify dropped events,
because events are hints and the directory is the truth. Other processes
(`flowlord refresh`) may write workflow rows too: a change of `PRAGMA
data_version` makes the files whose rows differ be rescheduled. Each refresh
reschedules the phases of the files it changed, in the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import apsw

from flowlord import metrics
from flowlord.clock import rfc3339_ms
from flowlord.file_triggers import FileTriggers
from flowlord.ledger import Ledger
from flowlord.loader import Loader, LoaderError
from flowlord.watcher import Watcher

FOLLOW_EVERY = 0.1  # seconds between looks for other writers: not on every task result
RESCAN_SOON = 1.0  # seconds before a rescan after a refresh failed


class WorkflowSync:
    def __init__(self, loader: Loader, ledger: Ledger, file_triggers: FileTriggers, *,
                 rescan_every: float, monotonic: float, log: Any, wake: Callable[[], None],
                 changed: Callable[[], None], rescheduled: Callable[[], None]) -> None:
        self.loader = loader
        self.store = loader.store
        self.ledger = ledger
        self.file_triggers = file_triggers
        self.rescan_every = rescan_every
        self.log = log
        self.wake = wake  # the daemon's loop: for file events
        self.changed = changed  # workflow files changed (the status line)
        self.rescheduled = rescheduled  # phases changed (cached lookups are stale)
        self.watcher: Watcher | None = None
        self.resync = False  # a refresh failed half-way: compare every phase next time
        self.scheduled = False  # the ledger has scheduled the stored phases
        self.data_version = -1  # PRAGMA data_version when other writers were last checked
        self.synced: dict[str, tuple[str, str | None]] = {}  # file → (hash, loaded_at) then
        self.next_follow = monotonic  # the next look for other writers
        self.next_rescan = monotonic + rescan_every
        self.last_rescan: str | None = None  # when the last full rescan ended (UTC)

    def settles_in(self) -> float | None:
        """Seconds until file events are ready to be refreshed; None: there are none."""
        return self.watcher.settles_in() if self.watcher else None

    def stop(self) -> None:
        if self.watcher:
            self.watcher.stop()

    def turn(self, now: datetime, monotonic: float, rescan: bool) -> None:
        """A full rescan when asked (`rescan`: SIGHUP), due, or when inotify dropped
        events; else the paths file events named, once settled. Then the rows other
        processes wrote."""
        paths = self.watcher.take_paths() if self.watcher else set()
        try:
            if (rescan or monotonic >= self.next_rescan
                    or (self.watcher and self.watcher.overflowed())):
                self.next_rescan = monotonic + self.rescan_every
                self.rescan(now)
            elif paths:
                metrics.WATCH_EVENTS.inc(len(paths))
                self._refresh(paths, now)
        except LoaderError as e:  # the directory is gone for a moment, the database locked
            self.log.error("refresh failed; rescanning soon", error=str(e))
            self.next_rescan = monotonic + RESCAN_SOON
            self.resync = True
        self._follow_other_writers(now, monotonic)

    def rescan(self, now: datetime) -> list[str]:
        """A full rescan of the workflow path; the changes (`+key`, `~key`, `-key`)."""
        metrics.RESCANS.inc()
        self._watch()  # first: what changes during the rescan is seen
        try:
            changes = self._refresh(None, now)
        except LoaderError:
            self.resync = True  # it may have committed some files: compare all next time
            self.next_rescan = 0.0  # and rescan on the next turn
            raise
        self.last_rescan = rfc3339_ms(now)
        self.file_triggers.follow(self.store)  # a directory may exist now
        return changes

    def first_load(self, now: Callable[[], datetime], stopping: Callable[[], bool],
                   wait: Callable[[float], None]) -> None:
        """The load at start: a bad path is fatal, a locked database is waited for."""
        self._watch()
        while True:
            try:
                self._refresh(None, now())
                break
            except LoaderError as e:
                if not isinstance(e.__cause__, apsw.BusyError) or stopping():
                    raise
                self.log.warning("database locked at start; waiting", error=str(e))
                wait(1.0)
        self.last_rescan = rfc3339_ms(now())

    def scheduled_now(self) -> None:
        """The ledger has scheduled every stored phase: from now on, changed files are
        rescheduled, and other writers are followed from this state."""
        self.scheduled = True
        self.file_triggers.follow(self.store)
        self.data_version = self.store.data_version()
        self.synced = self.store.file_versions()

    def _refresh(self, paths: set[str] | None, now: datetime) -> list[str]:
        with metrics.REFRESH.time():
            changes = self.loader.refresh(paths)
        for problem in self.loader.problems:
            self.log.warning("workflow problem", problem=problem)
        if changes:
            self.log.info("workflows changed", changes=" ".join(changes))
            self.changed()
        files = {change[1:] for change in changes}
        # a file whose bytes were refused is logged once by flowlord/notices.py
        if self.resync:  # an earlier refresh failed after committing some files
            files |= set(self.store.file_versions())
            files |= {file for file, _ in self.ledger.scheduler.phase_keys()}
            self.resync = False
        if files and self.scheduled:  # before the start, start() schedules everything
            self._reschedule(files, now)
        return changes

    def _reschedule(self, files: Iterable[str], now: datetime) -> None:
        by_file = {f: [p for p in self.store.phases(file_path=f) if p.severity != "error"]
                   for f in files}
        self.ledger.reschedule(by_file, now)
        # the files= phases are looked up again only when a changed file has or had one
        # (the lookup reads every phase: not for each edit of a large tree)
        if any("files=" in p.rule for f in by_file for p in by_file[f]) or \
                self.file_triggers.concerns(set(by_file)):
            self.file_triggers.follow(self.store)
        self.rescheduled()

    def _follow_other_writers(self, now: datetime, monotonic: float) -> None:
        """`flowlord refresh` (or another process) may have changed workflow rows: when the
        database changed under us, reschedule the files whose rows differ from last time."""
        if monotonic < self.next_follow:
            return
        self.next_follow = monotonic + FOLLOW_EVERY
        version = self.store.data_version()
        if version == self.data_version:
            return
        self.data_version = version
        seen = self.store.file_versions()
        changed = {f for f, state in seen.items() if self.synced.get(f) != state}
        changed |= set(self.synced) - set(seen)
        self.synced = seen
        if changed and self.scheduled:
            self._reschedule(changed, now)  # unchanged rules keep their schedule

    def _watch(self) -> None:
        """Watch the directory the workflow path names now. Deployments swap a symlink
        to a new directory; inotify would keep watching the old one."""
        target = os.path.realpath(self.loader.root)
        if self.watcher and self.watcher.target == target:
            return
        if self.watcher:
            self.watcher.stop()
            self.log.info("watching a new directory", path=target)
        self.watcher = (Watcher(self.loader.root, wake=self.wake)
                        if os.path.isdir(target) else None)
        if self.watcher:
            try:
                self.watcher.start()
            except OSError as e:  # e.g. the inotify watch limit: the rescans remain
                self.log.warning("cannot watch; relying on periodic rescans", error=str(e))
                self.watcher = None
