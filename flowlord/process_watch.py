"""The local bus's processes, started and minded by one thread (docs/decisions.md,
Performance of the task loop).

A pooled thread per running task held the interpreter lock for its own Popen and
poll, and passed it back and forth with the daemon's loop: more threads, more CPU per
task, the more so the higher the concurrency. One thread starts every task when its
topic has a free slot (its `concurrency`) and waits on one poll for all their pipes
and pidfds, and for a pipe of its own that `submit` and `close` write to.

Each process is minded as `Run.run` minds one (flowlord/workers.py: `Minding`), so the
local bus and `flowlord worker` share the command contract.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping

from flowlord.model import Done
from flowlord.workers import Minding, Poll, Run


class ProcessWatch:
    def __init__(self, concurrency: Mapping[str, int],
                 handed_over: Callable[[], None] = lambda: None) -> None:
        self.concurrency = dict(concurrency)  # per topic, how many run at once
        # called once a turn of the thread in which results were handed over: the bus
        # wakes the daemon's loop once for all of them
        self.handed_over = handed_over
        self._handed = False
        self._waiting: dict[str, collections.deque[Run]] = {
            topic: collections.deque() for topic in concurrency}
        self._running: dict[str, set[Run]] = {topic: set() for topic in concurrency}
        self._lock = threading.Lock()  # over _waiting, _running's slots, _closing, the thread
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._poll = Poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.add(self._wake_r, None)
        self._woken = False  # a byte is in the pipe already: no second write needed

    def submit(self, run: Run) -> None:
        """Start `run` when its topic has a free slot, in the order submitted."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the processes' watch is closed")
            self._waiting[run.stored.task.type].append(run)
            if self._thread is None:  # set once started: a start that failed is tried again
                thread = threading.Thread(target=self._loop, name="tasks", daemon=True)
                thread.start()
                self._thread = thread
        self._wake()

    def waiting(self, topic: str) -> int:
        """How many of the topic's runs wait for a slot."""
        return len(self._waiting[topic])

    def take_waiting(self) -> list[Run]:
        """The runs that wait for a slot, which now never start (the bus gives them back);
        those a free slot takes stay, as they would have started at once."""
        taken = []
        with self._lock:
            for topic, queue in self._waiting.items():
                keep = max(0, self.concurrency[topic] - len(self._running[topic]))
                while len(queue) > keep:
                    taken.append(queue.pop())
        return taken[::-1]

    def close(self) -> None:
        """The thread ends once no process is left to mind (it is a daemon thread: one
        left minding a process that never ends does not hold up the exit)."""
        with self._lock:
            self._closing = True
            if self._thread is None and not self._closed:  # never started: nothing to mind
                self._close_wake()
        self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            with self._lock, contextlib.suppress(BlockingIOError):  # full: it wakes anyway
                if not self._closed:
                    os.write(self._wake_w, b"w")

    def _close_wake(self) -> None:  # under the lock: a late _wake never writes to a reused fd
        self._closed = True
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        # only once the pipe is empty: a _wake that saw the flag still set is followed by
        # this turn's look at what waits; one that wrote meanwhile left a byte (a spare turn)
        self._woken = False

    def _loop(self) -> None:
        failed: dict[Minding, Exception] = {}
        while True:
            try:
                if self._turn(failed):
                    return
            except Exception as e:  # ours, not a run's: what runs may be half minded
                for runs in self._running.values():
                    for run in list(runs):
                        self._release(run, run.abandon(e))

    def _turn(self, failed: dict[Minding, Exception]) -> bool:
        """Start what may start, wait for what the processes do, mind them; True once
        closed and nothing is left to mind."""
        self._start_waiting()
        if self._handed:  # after the next tasks started: they run while the loop records
            self._handed = False
            self.handed_over()
        with self._lock:
            running = [run for runs in self._running.values() for run in runs]
            if self._closing and not running and not any(self._waiting.values()):
                self._close_wake()
                return True
        now = time.monotonic()
        until = min((run.minding.next_check(now) for run in running
                     if run.minding is not None), default=math.inf)
        for minding, fd in self._poll.wait(until, self._drain_wake):
            try:
                minding.ready(fd, time.monotonic())
            except Exception as e:  # that run's own: its result says so (_check)
                failed[minding] = e
        now = time.monotonic()
        for run in running:
            self._check(run, now, failed)
        return False

    def _start_waiting(self) -> None:
        """Start what waits, as far as each topic's slots go (a slot is taken under the
        lock, as `take_waiting` counts them)."""
        for topic, queue in self._waiting.items():
            running = self._running[topic]
            while True:
                with self._lock:
                    if not queue or len(running) >= self.concurrency[topic]:
                        break
                    run = queue.popleft()
                    running.add(run)
                done = run.start(self._poll)
                if done is not None:
                    self._release(run, done)

    def _check(self, run: Run, now: float, failed: dict[Minding, Exception]) -> None:
        """Its timeout and exit checked when due; its result handed over once done, or
        once minding it failed (`failed`: what `ready` raised, of this turn)."""
        minding = run.minding
        assert minding is not None
        try:
            if failed and minding in failed:
                raise failed.pop(minding)
            if not minding.done and now >= minding.next_check(now):
                minding.check(now)
            if not minding.done:
                return
            done = run.finish()
        except Exception as e:  # a result must come back, or the task stays running
            done = run.abandon(e)
        self._release(run, done)

    def _release(self, run: Run, done: Done) -> None:
        """Its slot freed, its result handed over."""
        with self._lock:
            self._running[run.stored.task.type].discard(run)
        run.hand_over(done)
        self._handed = True
