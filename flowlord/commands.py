"""Requests that change the database, from threads that must not write: the daemon's
loop is the only writer in its process, so an HTTP request that records fires or
asks for a rescan puts a command here, wakes the loop, and waits for the outcome.

The loop applies the queued commands once per turn. A command the database was
too busy for (locked by another process) stays queued for the next turn. A
request that waits longer than its timeout withdraws its command, if the loop
has not begun it, and answers that the daemon is busy: a command is applied
completely or not at all, never after its requester gave up. This is the path
every operator action (trigger, backload, refresh, and the coming rerun, cancel,
pause) takes into a running daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import apsw

T = TypeVar("T")

QUEUED, RUNNING, DONE, WITHDRAWN = "queued", "running", "done", "withdrawn"
POLL = 0.1  # seconds between a waiting request's looks at its deadline


class DaemonBusy(Exception):
    """The loop did not get to the command in time; nothing was changed."""


@dataclass
class Command(Generic[T]):
    kind: str  # what is asked: trigger, backload, refresh…
    actor: str  # who asks: a token's name, a user
    apply: Callable[[], T]  # runs on the loop, with its store
    state: str = QUEUED
    result: T | None = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class Commands:
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._queue: list[Command[Any]] = []

    def ask(self, kind: str, actor: str, apply: Callable[[], T], timeout: float) -> T:
        """Have the loop run `apply` and return its result (or raise its error);
        DaemonBusy when it was not done within `timeout` seconds (a command the loop
        began and put back, the database being locked, is withdrawn too)."""
        command = Command(kind, actor, apply)
        with self._lock:
            self._queue.append(command)
        self._wake()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if command.finished.wait(min(POLL, left) if left > 0 else POLL):
                break
            if time.monotonic() < deadline:
                continue
            with self._lock:
                if command.state == QUEUED:
                    command.state = WITHDRAWN
                    self._queue.remove(command)
                    raise DaemonBusy(f"the daemon did not get to the {kind} within "
                                     f"{timeout:g} s; nothing was changed: try again")
            # running now: it ends within one write's busy timeout, and is the answer
        if command.error is not None:
            raise command.error
        return command.result  # type: ignore[return-value]

    def fail_queued(self) -> None:
        """At the daemon's stop: every queued command is answered, none applied."""
        with self._lock:
            queued, self._queue = self._queue, []
            for command in queued:
                command.state = WITHDRAWN
                command.error = DaemonBusy(f"the daemon stopped before the {command.kind}; "
                                           "nothing was changed")
                command.finished.set()

    def apply_queued(self, log: Any) -> None:
        """On the loop: run every queued command, in order. One the database is locked
        for stays queued, and so do the ones after it (order is kept)."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                command = self._queue[0]
                command.state = RUNNING
            try:
                command.result = command.apply()
            except apsw.BusyError:
                with self._lock:
                    command.state = QUEUED
                return
            except Exception as e:  # the requester hears why; the loop goes on
                command.error = e
            with self._lock:
                self._queue.pop(0)
                command.state = DONE
            log.info("action applied", kind=command.kind, actor=command.actor,
                     error=str(command.error) if command.error else "")
            command.finished.set()

    @property
    def waiting(self) -> bool:
        with self._lock:
            return bool(self._queue)
