"""Python's cycle collector, paused while many long-lived objects are made.

A start over 100,000 phases (the load, the ledger's plan) and an agenda over them
make hundreds of thousands of objects that all live on and form no cycle; each full
collection their allocations set off walks every object of the process for nothing
(a fifth of a warm start; 0.4 s of an agenda's 1.5 s, measured with gc.callbacks in
bench/daemon.py). `paused()` turns the collector off meanwhile. It is counted across
threads (the loop's start, the CLI, the HTTP side's agenda and its background
refresh), so the collector comes back when the last pause ends, and only if it ran
when the first began. Cycles made meanwhile are collected afterwards: nothing is lost.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0  # pauses under way now, in any thread
_was_enabled = False  # whether the collector ran when the first of them began


@contextmanager
def paused() -> Iterator[None]:
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
