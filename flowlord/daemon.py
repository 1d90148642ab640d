"""`flowlord run`: keep the database in step with the workflow directory.

File events drive targeted refreshes; a full rescan runs at start, on SIGHUP and
every `rescan` period, because inotify drops events on overflow. Signals only
set flags; this loop is the only code that writes to the database.
Scheduling and running tasks come next (issues 3 and 4).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

from flowlord import logs
from flowlord.config import Config
from flowlord.loader import Loader, LoaderError
from flowlord.sdnotify import notify, watchdog_interval
from flowlord.store import Store
from flowlord.watcher import Watcher

TICK = 1.0  # longest wait for file events: bounds how late a signal is seen


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.rescan = threading.Event()
        self.watcher: Watcher | None = None
        self.log = logs.get("flowlord.daemon")

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        (self.rescan if signum == signal.SIGHUP else self.stop).set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        loader = Loader(self.config.workflows, Store(self.config.db))
        try:
            self._watch(loader)
            self._refresh(loader, None)  # a failure here is fatal: bad path or database
            notify("READY=1", self._status(loader))
            self._loop(loader)
        finally:
            notify("STOPPING=1")
            if self.watcher:
                self.watcher.stop()
            loader.close()
        self.log.info("stopped")
        return 0

    def _watch(self, loader: Loader) -> None:
        """Watch the directory the workflow path names now. Deployments swap a symlink
        to a new directory; inotify would keep watching the old one."""
        target = os.path.realpath(loader.root)
        if self.watcher and self.watcher.target == target:
            return
        if self.watcher:
            self.watcher.stop()
            self.log.info("watching a new directory", path=target)
        self.watcher = Watcher(loader.root) if os.path.isdir(target) else None
        if self.watcher:
            try:
                self.watcher.start()
            except OSError as e:  # e.g. the inotify watch limit: the rescans remain
                self.log.warning("cannot watch; relying on periodic rescans", error=str(e))
                self.watcher = None

    def _loop(self, loader: Loader) -> None:
        ping_every = watchdog_interval()
        next_rescan = time.monotonic() + self.config.rescan.total_seconds()
        next_ping = time.monotonic()
        while not self.stop.is_set():
            wait = max(0.0, min(TICK, next_rescan - time.monotonic()))
            paths = self.watcher.changed_paths(wait) if self.watcher else set()
            if not self.watcher:
                self.stop.wait(wait)
            try:
                if self.rescan.is_set() or time.monotonic() >= next_rescan:
                    self.rescan.clear()
                    next_rescan = time.monotonic() + self.config.rescan.total_seconds()
                    self._refresh(loader, None)
                    self._watch(loader)
                elif paths:
                    self._refresh(loader, paths)
            except LoaderError as e:  # e.g. the directory is gone for a moment: try again
                self.log.error("refresh failed", error=str(e))
                next_rescan = time.monotonic() + TICK
            # pinged from this loop only, so a stuck loop gets restarted by systemd
            if ping_every and time.monotonic() >= next_ping:
                notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every

    def _refresh(self, loader: Loader, paths: set[str] | None) -> None:
        changes = loader.refresh(paths)
        for problem in loader.problems:
            self.log.warning(problem)
        if changes:
            self.log.info("workflows changed", changes=" ".join(changes))
            notify(self._status(loader))

    def _status(self, loader: Loader) -> str:
        phases = loader.store.phases()
        errors = sum(p.severity == "error" for p in phases)
        return f"STATUS={len(phases) - errors} valid phases, {errors} invalid"


def run(config: Config) -> int:
    logs.configure()
    return Daemon(config).run()
