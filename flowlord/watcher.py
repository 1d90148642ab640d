"""File events from the workflow directory, debounced into sets of paths.

Events are hints, never the truth: the loader hashes what they point at, and a
full rescan (at start, on SIGHUP, periodically) covers what inotify drops. The
watchdog thread only records paths and wakes the daemon's loop; the loop takes
them with `take_paths` once they have settled and does the work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from watchdog.events import (
    DirModifiedEvent,
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

# Reading a file is not changing it; without this, every refresh (which reads
# the files it checks) would wake the watcher again. A directory's "modified"
# comes with every entry added or removed, whose own events name the entry:
# refreshing the whole directory for it would turn each edit into a rescan.
_IGNORED = (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)
HOLD_MAX = 1.0  # seconds after the first event, paths are taken even if events go on


class _Collector(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None] | None) -> None:
        self.paths: set[str] = set()
        self.first_event = 0.0  # of the paths not yet taken
        self.last_event = 0.0
        self.changed = threading.Condition()
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _IGNORED):
            return
        with self.changed:
            first = not self.paths
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self.paths.add(path if isinstance(path, str) else path.decode())
            self.last_event = time.monotonic()
            if first:
                self.first_event = self.last_event
            self.changed.notify_all()
        if first and self.wake is not None:
            self.wake()  # the loop looks again when the paths have settled


class _OverflowAlarm(logging.Handler):
    """watchdog tells no handler that inotify dropped events; it only logs a warning
    (docs/decisions.md, The daemon: scheduling and the fire ledger). This handler turns
    that warning into a flag."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.raised = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.raised.set()


class Watcher:
    """A recursive inotify watch on `root`; `quiet` is the debounce period in seconds."""

    def __init__(self, root: str, quiet: float = 0.2,
                 wake: Callable[[], None] | None = None) -> None:
        self.root = root
        # inotify watches the real directory and names paths inside it; they are
        # given back under `root`, which may be a symlink (deployments swap one)
        self.target = os.path.realpath(root)
        self.quiet = quiet
        self._collector = _Collector(wake)  # wake: called when a first path comes in
        self._observer = Observer()
        self._overflow = _OverflowAlarm()

    def start(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        self._observer.schedule(self._collector, self.target, recursive=True)
        self._observer.start()

    def stop(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
        self._observer.stop()
        self._observer.join()

    def overflowed(self) -> bool:
        """True once after inotify dropped events: the caller must rescan everything."""
        if self._overflow.raised.is_set():
            self._overflow.raised.clear()
            return True
        return False

    def settles_in(self) -> float | None:
        """Seconds until `take_paths` gives the paths seen so far; None: there are none.
        Paths settle `quiet` seconds after the last event (an editor's save is several
        events), or HOLD_MAX after the first, so that constant writes hold nothing up."""
        c = self._collector
        with c.changed:
            if not c.paths:
                return None
            ready = min(c.last_event + self.quiet, c.first_event + max(HOLD_MAX, self.quiet))
        return max(0.0, ready - time.monotonic())

    def take_paths(self) -> set[str]:
        """The paths touched since the last take, once they have settled; else empty."""
        if self.settles_in() != 0.0:
            return set()
        with self._collector.changed:
            paths, self._collector.paths = self._collector.paths, set()
        return {self._under_root(p) for p in paths}

    def changed_paths(self, timeout: float) -> set[str]:
        """Waits up to `timeout` seconds for a first path, then until the paths settle;
        for callers with nothing else to do (tests, benchmarks). Empty when nothing
        happened."""
        deadline = time.monotonic() + timeout
        while (wait := self.settles_in()) != 0.0:
            left = deadline - time.monotonic()
            if wait is None and left <= 0:
                return set()
            with self._collector.changed:
                self._collector.changed.wait(left if wait is None else wait)
        return self.take_paths()

    def _under_root(self, path: str) -> str:
        if path == self.target or path.startswith(self.target + os.sep):
            return self.root + path[len(self.target):]
        return path
