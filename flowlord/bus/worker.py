"""`flowlord worker`: runs the tasks of one topic from the Redis bus, on any host.

The command contract is the local workers' (flowlord/workers.py: argv, tokens,
environment, exit codes, timeouts, process groups). A message is acknowledged
only after its result is on the done stream. A worker that dies leaves its
messages pending; live workers reclaim those idle longer than `claim_idle`,
while a worker running a long task renews its claim, so it is not taken away.

Before it starts a task a worker marks it (flowlord/bus/wire.py, `run_key`), renews
the mark every second and drops it with the result: its daemon publishes again a task
whose message Redis lost only once it has seen no message, no result and no mark for
a while. A message of a task that another message's run has marked is dropped, not
run; a run whose mark another run holds now (this worker was cut off longer than its
daemon waits) is ended, and its result not posted: one run of a task at a time.

A task's stdout and stderr go back to its daemon's logs when its message asks for
it (flowlord/bus/logstream.py): capped as a local log is, sent by a thread of their
own, never holding up the task.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import FrameType
from typing import Any

from flowlord.bus import BusUnavailable
from flowlord.bus.logstream import LogSender, StreamedLog, Target
from flowlord.bus.wire import (
    BACKOFF_MAX,
    HOLD,
    RELEASE,
    RUN_MARK_EVERY,
    RUN_MARK_TTL_MS,
    TAKE_RUN,
    WORKERS_GROUP,
    Checked,
    cancel_key,
    connect,
    decode_task,
    ensure_group,
    log_target,
    mark_value,
    post_and_take,
    reply_stream,
    run_key,
    task_stream,
)
from flowlord.logs import EndedTasks
from flowlord.model import Done
from flowlord.tasklog import CappedLog
from flowlord.workers import Run, inherited_environment

STOPPED = "stopped: the worker shut down while the task ran"
CANCELLED = "stopped: its daemon ended the task"
SUPERSEDED = "stopped: another run of the task holds it"
READ_BLOCK_MS = 500  # a read waits this long for a task, then the loop looks around
# seconds between asks whether the daemons ended running tasks: not at each task read
# (a round trip for each task read)
CANCEL_CHECK_EVERY = 0.25
STOP_POST_SECONDS = 10.0  # at stop, how long a result is retried while the server is away


class RemoteWorker:
    def __init__(self, url: str, topic: str, command: Sequence[str], *, concurrency: int,
                 timeout: timedelta, claim_idle: timedelta, grace: timedelta,
                 log: Any) -> None:
        self.url = url
        self.topic = topic
        self.stream = task_stream(topic)
        self.command = tuple(command)
        self.concurrency = concurrency
        self.timeout = timeout
        self.claim_idle_ms = int(claim_idle.total_seconds() * 1000)
        self.grace = grace.total_seconds()
        self.log = log
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.environment = inherited_environment()
        self.runs: dict[str, Run] = {}  # message id → its run
        self.replies: dict[str, str] = {}  # message id → the daemon's stream (reply_to)
        self.superseded: set[str] = set()  # message ids whose runs lost their mark
        self.posted: set[str] = set()  # message ids whose results (and marks' release) went
        # a mark's renewal (HOLD sets a missing mark again: an emptied server lost it) and
        # its release with the result never cross: one renewed after its release stayed
        # behind, and a task given that number again (a new database) waited for it
        self.marking = threading.Lock()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.slot_freed = threading.Event()  # a task ended: the main loop may read again
        self.next_reclaim = 0.0  # monotonic time of the next look for abandoned messages
        self.reclaim_from = "0-0"  # where that look goes on in the pending entries
        self.client: Any = None
        self.sender: LogSender | None = None  # the tasks' output to their daemons' logs
        self.pool: ThreadPoolExecutor | None = None  # the runs' threads, once started
        self.ended = EndedTasks(log, time.monotonic)  # a line each but for those complete

    def run(self) -> int:
        """Until SIGTERM or SIGINT; BusUnavailable when the server cannot be used at start."""
        self.client = connect(self.url)
        ensure_group(self.client, self.stream, WORKERS_GROUP)
        # joined at once, not at the first read that finds a task: the daemon publishes a
        # topic's tasks only once a worker has joined it
        self.client.xgroup_createconsumer(self.stream, WORKERS_GROUP, self.consumer)
        self.sender = LogSender(connect(self.url), self.log)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.log.info("worker started", topic=self.topic, consumer=self.consumer,
                      concurrency=self.concurrency)
        self.pool = ThreadPoolExecutor(self.concurrency, "task")
        next_renewal = next_marks = next_cancels = 0.0
        backoff = 0.5
        try:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= next_marks:
                        self._renew_marks()
                        next_marks = time.monotonic() + RUN_MARK_EVERY
                    if time.monotonic() >= next_renewal:
                        self._renew_claims()
                        next_renewal = time.monotonic() + self.claim_idle_ms / 3000
                    if time.monotonic() >= next_cancels:
                        self._stop_cancelled()
                        next_cancels = time.monotonic() + CANCEL_CHECK_EVERY
                    for receipt, fields in self._next_messages():
                        self._start(receipt, fields)
                    backoff = 0.5
                except BusUnavailable as e:
                    self.log.error("redis unavailable; retrying", error=str(e))
                    # while tasks run, their marks must be back soon after the server
                    self.stopping.wait(min(backoff, RUN_MARK_EVERY) if self._free()
                                       < self.concurrency else backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    next_marks = 0.0
        finally:
            self._finish(self.pool)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _free(self) -> int:
        with self.lock:
            return self.concurrency - len(self.runs)

    def _next_messages(self) -> list[tuple[str, dict[str, str] | None]]:
        """Messages to run now, as many as there are free slots: first those a dead
        worker left idle past claim_idle, then new ones (waiting a little for them)."""
        import redis

        self.slot_freed.clear()
        free = self._free()
        if free <= 0:  # until a task ends (or a moment passes: claims need renewing)
            self.slot_freed.wait(READ_BLOCK_MS / 1000)
            return []
        try:
            if time.monotonic() >= self.next_reclaim:
                self.next_reclaim = time.monotonic() + self.claim_idle_ms / 4000
                # a scan looks at 10 × count entries from the cursor: on from where the last
                # one stopped, so abandoned messages behind live ones are reached too
                self.reclaim_from, claimed, _ = self.client.xautoclaim(
                    self.stream, WORKERS_GROUP, self.consumer, self.claim_idle_ms,
                    self.reclaim_from, count=free)
                if self.reclaim_from != "0-0":
                    self.next_reclaim = 0.0  # the scan is not through: go on next time
                if claimed:
                    self.log.warning("reclaimed tasks of a worker gone quiet",
                                     count=len(claimed))
                    return list(claimed)
            reply = self.client.xreadgroup(WORKERS_GROUP, self.consumer, {self.stream: ">"},
                                           count=free, block=READ_BLOCK_MS)
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):  # the stream was deleted: make it again
                ensure_group(self.client, self.stream, WORKERS_GROUP)
                return []
            raise BusUnavailable(str(e)) from e
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e
        return list(reply[0][1]) if reply else []

    def _start(self, receipt: str, fields: dict[str, str] | None,
               unless_stopping: bool = False, checked: Checked | None = None) -> bool:
        """Run a message's task on the pool; False when it was not started (dropped,
        or, `unless_stopping`, left for another worker: the worker is stopping).
        `checked`: what `_may_start` would answer, answered with the read (POST_AND_TAKE)."""
        try:
            stored, timeout_seconds = decode_task(fields or {})
        except (KeyError, ValueError, TypeError) as e:  # not a task: nobody can run it
            self.log.error("unreadable task message dropped", receipt=receipt, error=str(e))
            if checked is not None and checked[1]:  # the read took its mark: given back
                self._release_mark(run_key(reply_stream(fields or {}),
                                           int((fields or {})["task_no"])), receipt)
            self._acknowledge(receipt)
            return False
        timeout = (timedelta(seconds=timeout_seconds) if timeout_seconds is not None
                   else self.timeout)
        reply_to = reply_stream(fields or {})
        run = Run(stored, self.command, timeout,
                  lambda done: self._report(receipt, reply_to, done), self.environment,
                  open_log=self._log_opener(log_target(fields or {}), receipt))
        # ended before it started? marked by another message's run? (one round trip, unless
        # answered with the read; a redis error leaves the message for a later read)
        cancelled, marked = checked or self._may_start(reply_to, stored.task_no, receipt)
        if not marked:
            self.log.warning("task run from another message; this one dropped",
                             task_no=stored.task_no, receipt=receipt)
            self._acknowledge(receipt)
            return False
        with self.lock:  # the stop's wait (_finish) counts the runs under this lock
            if unless_stopping and self.stopping.is_set():
                return False  # pending, with our mark: reclaimed, and the mark taken over
            self.runs[receipt] = run
            self.replies[receipt] = reply_to
        if cancelled:
            run.stop(CANCELLED)
        assert self.pool is not None
        try:
            self.pool.submit(run.run)
        except RuntimeError:  # the pool was shut down (a stop): the message waits, reclaimed
            with self.lock:
                self.runs.pop(receipt, None)
                self.replies.pop(receipt, None)
            return False
        return True

    # The marks' scripts (flowlord/bus/wire.py) go with their script text (EVAL; the
    # server keeps them compiled): redis-py's registered scripts ask SCRIPT EXISTS before
    # every pipeline that holds one, a round trip more for each task started and ended.

    def _may_start(self, reply_to: str, task_no: int, receipt: str) -> tuple[bool, bool]:
        """(whether its daemon ended the task, whether this message's run took its mark)."""
        import redis

        try:
            with self.client.pipeline(transaction=False) as both:
                both.smismember(cancel_key(reply_to), [task_no])
                both.eval(TAKE_RUN, 1, run_key(reply_to, task_no), self._mark(receipt),
                          f"{receipt} ", RUN_MARK_TTL_MS)
                cancelled, marked = both.execute()
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e
        return bool(cancelled[0]), bool(marked)

    def _release_mark(self, key: str, receipt: str) -> None:
        """Best effort: a mark left behind is gone after RUN_MARK_TTL_MS."""
        import redis

        with contextlib.suppress(redis.RedisError, OSError):
            self.client.eval(RELEASE, 1, key, self._mark(receipt))

    def _mark(self, receipt: str) -> str:
        """The value of a run's mark: its message and this worker."""
        return mark_value(receipt, self.consumer)

    def _log_opener(self, target: Target | None, receipt: str
                    ) -> Callable[[int], CappedLog] | None:
        """What makes a run's log: sent to its daemon when the message asks for it. The
        run is named by this worker and the message: a task taken over from a worker
        that died is another run of the same log."""
        sender = self.sender
        if target is None or sender is None:
            return None
        return lambda task_no: StreamedLog(sender, target, task_no,
                                           f"{self.consumer}:{receipt}")

    def _cancelled(self, reply_to: str, task_nos: list[int]) -> set[int]:
        """Which of these tasks their daemon has ended (flowlord/bus/wire.py,
        cancel_key)."""
        import redis

        try:
            found = self.client.smismember(cancel_key(reply_to), task_nos)
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e
        return {n for n, there in zip(task_nos, found, strict=True) if there}

    def _stop_cancelled(self) -> None:
        """End the processes of running tasks their daemon has ended (a cancel, a mark);
        the result reported then changes nothing there."""
        with self.lock:
            by_daemon: dict[str, dict[int, Run]] = {}
            for receipt, run in self.runs.items():
                if not run.stop_reason:
                    by_daemon.setdefault(self.replies[receipt], {})[run.stored.task_no] = run
        for reply_to, runs in by_daemon.items():
            for task_no in self._cancelled(reply_to, list(runs)):
                self.log.warning("task ended by its daemon; stopping it", task_no=task_no)
                runs[task_no].stop(CANCELLED)

    def _report(self, receipt: str, reply_to: str, done: Done) -> None:
        """On the task's thread: the result onto the done stream, then the message
        acknowledged; retried until the server takes it (a result is never dropped).
        The same round trip reads the next message, started in this run's slot: a slot
        handed back to the main loop would cost a wakeup and a read more per task."""
        import redis

        backoff = 0.5
        give_up: float | None = None  # once stopping: the message is left for another worker
        with self.lock:
            superseded = receipt in self.superseded
        if superseded:  # another run of the task holds its mark: that one reports
            self.log.warning("task run elsewhere too; this run's result not posted",
                             task_no=done.task_no)
        following: list[tuple[str, dict[str, str] | None, Checked | None]] = []
        while True:
            try:  # one round trip (POST_AND_TAKE); the acknowledgement and the release of
                # the mark go only with the result
                with self.marking:  # no renewal of the mark crosses its release
                    # without BLOCK: an empty stream answers at once; once a message came
                    # (the post failed, and is tried again), no second one
                    reading = not following and not self.stopping.is_set()
                    taken = post_and_take(self.client, self.stream, self.consumer, receipt,
                                          None if superseded else (reply_to, done),
                                          read=reading)
                    if taken is not None:
                        following = [taken]
                    with self.lock:
                        self.posted.add(receipt)  # its mark is not to be renewed again
                break
            except (redis.RedisError, OSError) as e:
                self.log.error("cannot post a result; retrying", task_no=done.task_no,
                               error=str(e))
            if self.stopping.is_set():
                give_up = give_up or time.monotonic() + STOP_POST_SECONDS
                if time.monotonic() > give_up:
                    self.log.error("result not posted; the task will run again elsewhere",
                                   task_no=done.task_no)
                    break
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        # the next run is counted before this one is let go: meanwhile the main loop sees
        # no free slot, and reads nothing more than the concurrency
        started = False
        for next_receipt, fields, checked in following:
            with contextlib.suppress(BusUnavailable):  # the message waits, and is reclaimed
                started = self._start(next_receipt, fields, unless_stopping=True,
                                      checked=checked)
        with self.lock:
            self.runs.pop(receipt, None)
            self.replies.pop(receipt, None)
            self.superseded.discard(receipt)
            self.posted.discard(receipt)
        if not started:
            self.slot_freed.set()
        self.ended.ended(done.task_no, done.result, done.msg)
        self.ended.count()

    def _acknowledge(self, receipt: str) -> None:
        """Best effort: a message left unacknowledged is run again elsewhere, and the
        daemon records only the first result."""
        import redis

        try:
            self.client.xack(self.stream, WORKERS_GROUP, receipt)
            self.client.xdel(self.stream, receipt)
        except (redis.RedisError, OSError) as e:
            self.log.warning("cannot acknowledge a task message", receipt=receipt, error=str(e))

    def _renew_claims(self) -> None:
        """Reset the idle time of the messages this worker is running, so that no other
        worker reclaims a task that is only slow."""
        import redis

        with self.lock:
            receipts = list(self.runs)
        if not receipts:
            return
        try:
            self.client.xclaim(self.stream, WORKERS_GROUP, self.consumer, 0, receipts,
                               justid=True)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise BusUnavailable(str(e)) from e
            # an emptied server: these messages are gone (the marks say the tasks run)
            ensure_group(self.client, self.stream, WORKERS_GROUP)
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e

    def _renew_marks(self) -> None:
        """Renew the marks of the tasks this worker runs (set again when an emptied
        server lost them); a run whose mark another run of its task holds now is ended,
        and its result will not be posted."""
        import redis

        try:
            with self.marking:  # a mark released meanwhile would be set again (HOLD)
                with self.lock:
                    runs = [(receipt, self.replies[receipt], run)
                            for receipt, run in self.runs.items()
                            if receipt not in self.superseded and receipt not in self.posted]
                if not runs:
                    return
                with self.client.pipeline(transaction=False) as each:
                    for receipt, reply_to, run in runs:
                        each.eval(HOLD, 1, run_key(reply_to, run.stored.task_no),
                                  self._mark(receipt), RUN_MARK_TTL_MS)
                    kept = each.execute()
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e
        for (receipt, _, run), ours in zip(runs, kept, strict=True):
            if not ours:
                self.log.error("another run of this task holds it; ending this one",
                               task_no=run.stored.task_no)
                with self.lock:
                    self.superseded.add(receipt)
                run.stop(SUPERSEDED)

    def _finish(self, pool: ThreadPoolExecutor) -> None:
        """At stop: running tasks get the grace period, then are ended; their results
        are posted like any other."""
        deadline = time.monotonic() + self.grace
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:  # claims renewed meanwhile: no other worker takes these over
            while not run.join(min(self.claim_idle_ms / 3000, RUN_MARK_EVERY,
                                   max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
                with contextlib.suppress(BusUnavailable):
                    self._renew_marks()
                    self._renew_claims()
        for run in runs:
            if not run.join(0):
                run.stop(STOPPED)
        pool.shutdown(wait=True)
        if self.sender is not None:
            self.sender.close()
            self.sender.client.close()
        self.ended.count(now=True)
        self.log.info("worker stopped", topic=self.topic, consumer=self.consumer)
        self.client.close()
