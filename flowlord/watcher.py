"""File events from the workflow directory, debounced into sets of paths.

Events are hints, never the truth: the loader hashes what they point at, and a
full rescan (at start, on SIGHUP, periodically) covers what inotify drops. The
watchdog thread only records paths; whoever calls `changed_paths` does the work.
"""

from __future__ import annotations

import logging
import os
import threading
import time

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


class _Collector(FileSystemEventHandler):
    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.woken = False  # wake() was called: return from a wait without paths
        self.last_event = 0.0
        self.changed = threading.Condition()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _IGNORED):
            return
        with self.changed:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self.paths.add(path if isinstance(path, str) else path.decode())
            self.last_event = time.monotonic()
            self.changed.notify_all()


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

    def __init__(self, root: str, quiet: float = 0.2) -> None:
        self.root = root
        # inotify watches the real directory and names paths inside it; they are
        # given back under `root`, which may be a symlink (deployments swap one)
        self.target = os.path.realpath(root)
        self.quiet = quiet
        self._collector = _Collector()
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

    def wake(self) -> None:
        """End a `changed_paths` wait early (from any thread): there is other work."""
        with self._collector.changed:
            self._collector.woken = True
            self._collector.changed.notify_all()

    def overflowed(self) -> bool:
        """True once after inotify dropped events: the caller must rescan everything."""
        if self._overflow.raised.is_set():
            self._overflow.raised.clear()
            return True
        return False

    def changed_paths(self, timeout: float) -> set[str]:
        """Paths touched since the last call: waits up to `timeout` seconds for a first
        event, then until `quiet` seconds pass without another (an editor's save is
        several events), but no longer than `quiet` past the first event or `timeout`
        past the call, whichever is later: constant writes do not hold up the caller.
        Empty when nothing happened."""
        c = self._collector
        deadline = time.monotonic() + timeout
        with c.changed:
            while not c.paths:
                left = deadline - time.monotonic()
                if left <= 0 or c.woken:
                    c.woken = False
                    return set()
                c.changed.wait(left)
            latest = max(deadline, time.monotonic() + self.quiet)
            while (calm := min(c.last_event + self.quiet, latest) - time.monotonic()) > 0:
                c.changed.wait(calm)
            paths, c.paths = c.paths, set()
        return {self._under_root(p) for p in paths}

    def _under_root(self, path: str) -> str:
        if path == self.target or path.startswith(self.target + os.sep):
            return self.root + path[len(self.target):]
        return path
