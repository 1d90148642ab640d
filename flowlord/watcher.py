"""File events from the workflow directory, settled into sets of paths.

Events are hints, never the truth: the loader hashes what they point at, and a
full rescan (at start, on SIGHUP, periodically) covers what inotify drops. The
watchdog thread only records paths and wakes the daemon's loop; the loop takes
them with `take_paths` once they have settled and does the work.

A path settles by what its last event says (docs/decisions.md, The house):

* definitive: the file was closed after writing (`IN_CLOSE_WRITE`), moved in,
  out or within the tree, deleted, or only its attributes changed: its bytes are
  whole, so it is taken as soon as events pause for GATHER (a burst, such as a
  `git checkout` of 1,000 files, or an editor's rename-then-write save, lands in
  one refresh), or GATHER_MAX after the first such path;
* still being written (created or modified, not closed yet; a directory made):
  it waits for its close, or `quiet` seconds without an event of its own (a
  writer that never closes: `mmap`, a link), or HOLD_MAX after its first event,
  so that constant writes hold nothing up. A half-written file is not loaded
  while its writer holds it open, as with the debounce before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

# Reading a file is not changing it; without this, every refresh (which reads
# the files it checks) would wake the watcher again. A directory's "modified"
# comes with every entry added or removed, whose own events name the entry:
# refreshing the whole directory for it would turn each edit into a rescan.
_IGNORED = (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)
# Every other kind is asked for, and only those: inotify then sends no IN_OPEN and
# IN_CLOSE_NOWRITE at all. A cold load reads 10,000 files, and the watchdog threads
# turning 20,000 such events into objects only to drop them took 0.5 s of its CPU.
_WATCHED = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent,
            DirDeletedEvent, FileMovedEvent, DirMovedEvent, FileClosedEvent, FileAttribEvent,
            DirAttribEvent]
_DEFINITIVE = (FileClosedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
               DirMovedEvent)
_ATTRIBUTES = (FileAttribEvent, DirAttribEvent)  # chmod, touch: definitive unless written
QUIET = 0.2  # seconds without an event before a path still being written is taken
HOLD_MAX = 1.0  # seconds after a path's first event, it is taken even if events go on
GATHER = 0.005  # seconds of pause in the events before definitive paths are taken
GATHER_MAX = 0.1  # seconds after the first definitive path, it is taken even if events go on


@dataclass(slots=True)
class _Seen:
    first: float  # monotonic time of the path's first event not yet taken
    last: float
    writing: bool  # open for writing as far as its events tell: wait for its close


class _Collector(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None] | None) -> None:
        self.paths: dict[str, _Seen] = {}
        self.first_whole = 0.0  # when the first definitive path not yet taken came; 0: none
        self.last_event = 0.0
        self.changed = threading.Condition()
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _IGNORED):
            return
        src, dest = _text(event.src_path), _text(getattr(event, "dest_path", ""))
        with self.changed:
            now = time.monotonic()
            wake = not self.paths  # the loop looks again when the paths have settled
            if isinstance(event, _DEFINITIVE):
                # a file renamed while its writer still holds it open is still written
                moved_writing = bool(src) and src in self.paths and self.paths[src].writing
                if src:
                    self._saw(src, now, False)
                if dest:
                    self._saw(dest, now, moved_writing and isinstance(event, FileMovedEvent))
            elif isinstance(event, _ATTRIBUTES):  # `cp -p` sets them before its close
                seen = self.paths.get(src)
                self._saw(src, now, seen is not None and seen.writing)
            else:  # created or modified: its writer may hold it open
                self._saw(src, now, True)
            self.last_event = now
            if not self.first_whole and any(not self.paths[p].writing for p in (src, dest)
                                            if p):
                self.first_whole = now
                wake = True  # sooner than the loop planned: a path is whole
            self.changed.notify_all()
        if wake and self.wake is not None:
            self.wake()

    def _saw(self, path: str, now: float, writing: bool) -> None:
        seen = self.paths.get(path)
        if seen is None:
            self.paths[path] = _Seen(now, now, writing)
        else:
            seen.last, seen.writing = now, writing

    def ready_at(self, seen: _Seen, quiet: float) -> float:
        """When a path may be taken (monotonic); call with `changed` held."""
        if not seen.writing:
            return min(self.last_event + GATHER, self.first_whole + GATHER_MAX)
        return min(seen.last + quiet, seen.first + max(HOLD_MAX, quiet))


def _text(path: str | bytes) -> str:
    return path if isinstance(path, str) else path.decode()


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
    """A recursive inotify watch on `root`; `quiet`: seconds without an event before a
    path still being written is taken (definitive paths need none)."""

    def __init__(self, root: str, quiet: float = QUIET,
                 wake: Callable[[], None] | None = None) -> None:
        self.root = root
        # inotify watches the real directory and names paths inside it; they are
        # given back under `root`, which may be a symlink (deployments swap one)
        self.target = os.path.realpath(root)
        self.quiet = quiet
        self._collector = _Collector(wake)  # wake: when paths may settle sooner than planned
        # full events: a file moved in from outside is a move (definitive), not a creation
        self._observer = InotifyObserver(generate_full_events=True)
        self._overflow = _OverflowAlarm()

    def start(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        self._observer.schedule(self._collector, self.target, recursive=True,
                                event_filter=_WATCHED)
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
        """Seconds until `take_paths` gives some of the paths seen so far; None: there
        are none."""
        c = self._collector
        with c.changed:
            if not c.paths:
                return None
            ready = min(c.ready_at(seen, self.quiet) for seen in c.paths.values())
        return max(0.0, ready - time.monotonic())

    def take_paths(self) -> set[str]:
        """The paths touched since they were last taken that have settled; else empty."""
        c = self._collector
        with c.changed:
            now = time.monotonic()
            taken = [p for p, seen in c.paths.items() if c.ready_at(seen, self.quiet) <= now]
            for path in taken:
                del c.paths[path]
            if not any(not seen.writing for seen in c.paths.values()):
                c.first_whole = 0.0
        return {self._under_root(p) for p in taken}

    def changed_paths(self, timeout: float) -> set[str]:
        """Waits up to `timeout` seconds for a first path, then until the paths settle;
        for callers with nothing else to do (tests, benchmarks). Empty when nothing
        happened."""
        deadline = time.monotonic() + timeout
        while True:
            wait = self.settles_in()
            if wait == 0.0 and (paths := self.take_paths()):
                return paths
            left = deadline - time.monotonic()
            if wait is None and left <= 0:
                return set()
            with self._collector.changed:
                self._collector.changed.wait(left if wait is None else max(wait, 0.001))

    def _under_root(self, path: str) -> str:
        if path == self.target or path.startswith(self.target + os.sep):
            return self.root + path[len(self.target):]
        return path
