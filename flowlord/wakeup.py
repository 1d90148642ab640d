"""How the daemon's loop is woken early: one pipe it waits on.

Threads (file events, task results, HTTP requests with a command) write a byte to
it; so does the interpreter itself when a signal arrives (`signal.set_wakeup_fd`),
before the Python handler runs. Writing to a pipe is safe from any thread and from
a signal handler; setting a `threading.Event` is not safe from a handler: its lock
is not re-entrant, so a signal landing while the main thread waits on that Event
can hang the daemon for good.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable


class Wakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals = False
        self._closed = False
        self._lock = threading.Lock()  # a late wake() never writes to a reused descriptor

    def wake(self) -> None:
        """End the loop's wait now (from any thread, not a signal handler). A full pipe
        is already a wake-up; after close() it does nothing."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write, b"\0")

    def on_signals(self) -> None:
        """Signals wake the wait too (call from the main thread)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._signals = True

    def wait(self, timeout: float) -> None:
        """Until woken or `timeout` seconds pass; what woke it is consumed."""
        ready, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 4096):
                    pass

    def linger(self, seconds: float, still: Callable[[], bool]) -> None:
        """Wait on, woken or not, for up to `seconds` while `still()` holds."""
        deadline = time.monotonic() + seconds
        while still() and (left := deadline - time.monotonic()) > 0:
            self.wait(left)

    def close(self) -> None:
        if self._signals:
            signal.set_wakeup_fd(-1)
        with self._lock:
            self._closed = True
            os.close(self._read)
            os.close(self._write)
