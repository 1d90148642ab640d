"""One job aside per key: what the HTTP side keeps (an agenda, a drawn chart) is made
again on a thread of its own while the kept one is served, never twice at once for the
same key (flowlord/agenda_cache.py, flowlord/web/agenda_chart.py).

A job that raises lets go of what it would have replaced (`failed`): the next request
then makes its own, in the open, where an error is answered and logged as any other.
No thread to be had leaves the key free, so a later request tries again.

While a job runs, the interpreter switches threads every COURTEOUS_SWITCH seconds
instead of every 5 ms: a job is seconds of Python, and a request that waits for the
interpreter after each read of the database waited up to 5 ms each time (an agenda
page took 650 ms at its p99 while the next agenda was computed, bench/http_api.py).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

COURTEOUS_SWITCH = 0.0005  # seconds (sys.setswitchinterval) while a job runs aside


class Aside:
    def __init__(self, name: str) -> None:
        self.name = name  # of the threads, as py-spy and /proc show them
        self._lock = threading.Lock()
        self._busy: set[Hashable] = set()

    def busy(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._busy

    def run(self, key: Hashable, job: Callable[[], object], failed: Callable[[], None]) -> bool:
        """`job` on a thread of its own, unless one for `key` is under way; False when
        none was started (one was under way, or no thread could be had)."""
        with self._lock:
            if key in self._busy:
                return False
            self._busy.add(key)

        def work() -> None:
            try:
                with courteous():
                    job()
            except Exception:
                failed()
            finally:
                self._free(key)

        try:
            threading.Thread(target=work, name=self.name, daemon=True).start()
        except RuntimeError:  # "can't start new thread"
            self._free(key)
            return False
        return True

    def _free(self, key: Hashable) -> None:
        with self._lock:
            self._busy.discard(key)


_running = 0  # jobs running aside, in the whole process
_usual_switch = 0.0  # the switch interval before the first of them started
_running_lock = threading.Lock()


@contextmanager
def courteous() -> Iterator[None]:
    """The switch interval at COURTEOUS_SWITCH while any job runs aside; the one before,
    once none does."""
    global _running, _usual_switch
    with _running_lock:
        if _running == 0:
            _usual_switch = sys.getswitchinterval()
            sys.setswitchinterval(COURTEOUS_SWITCH)
        _running += 1
    try:
        yield
    finally:
        with _running_lock:
            _running -= 1
            if _running == 0:
                sys.setswitchinterval(_usual_switch)
