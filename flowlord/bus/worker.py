"""`flowlord worker`: runs the tasks of one topic from the Redis bus, on any host.

The command contract is the local workers' (flowlord/workers.py: argv, tokens,
environment, exit codes, timeouts, process groups). A message is acknowledged
only after its result is on the done stream. A worker that dies leaves its
messages pending; live workers reclaim those idle longer than `claim_idle`,
while a worker running a long task renews its claim, so it is not taken away.

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
from flowlord.bus.redis import (
    BACKOFF_MAX,
    WORKERS_GROUP,
    cancel_key,
    connect,
    decode_task,
    encode_done,
    ensure_group,
    log_target,
    reply_stream,
    task_stream,
)
from flowlord.model import Done
from flowlord.tasklog import CappedLog
from flowlord.workers import Run, inherited_environment

STOPPED = "stopped: the worker shut down while the task ran"
CANCELLED = "stopped: its daemon ended the task"
READ_BLOCK_MS = 500  # a read waits this long for a task, then the loop looks around
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
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.slot_freed = threading.Event()  # a task ended: the main loop may read again
        self.next_reclaim = 0.0  # monotonic time of the next look for abandoned messages
        self.reclaim_from = "0-0"  # where that look goes on in the pending entries
        self.client: Any = None
        self.sender: LogSender | None = None  # the tasks' output to their daemons' logs

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
        pool = ThreadPoolExecutor(self.concurrency, "task")
        next_renewal = 0.0
        backoff = 0.5
        try:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= next_renewal:
                        self._renew_claims()
                        next_renewal = time.monotonic() + self.claim_idle_ms / 3000
                    self._stop_cancelled()
                    for receipt, fields in self._next_messages():
                        self._start(pool, receipt, fields)
                    backoff = 0.5
                except BusUnavailable as e:
                    self.log.error("redis unavailable; retrying", error=str(e))
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._finish(pool)
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

    def _start(self, pool: ThreadPoolExecutor, receipt: str,
               fields: dict[str, str] | None) -> None:
        try:
            stored, timeout_seconds = decode_task(fields or {})
        except (KeyError, ValueError, TypeError) as e:  # not a task: nobody can run it
            self.log.error("unreadable task message dropped", receipt=receipt, error=str(e))
            self._acknowledge(receipt)
            return
        timeout = (timedelta(seconds=timeout_seconds) if timeout_seconds is not None
                   else self.timeout)
        reply_to = reply_stream(fields or {})
        run = Run(stored, self.command, timeout,
                  lambda done: self._report(receipt, reply_to, done), self.environment,
                  open_log=self._log_opener(log_target(fields or {}), receipt))
        cancelled = self._cancelled(reply_to, [stored.task_no])  # ended before it started?
        with self.lock:  # (a redis error above leaves the message for a later read)
            self.runs[receipt] = run
            self.replies[receipt] = reply_to
        if cancelled:
            run.stop(CANCELLED)
        pool.submit(run.run)

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
        """Which of these tasks their daemon has ended (flowlord/bus/redis.py,
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
        acknowledged; retried until the server takes it (a result is never dropped)."""
        import redis

        backoff = 0.5
        give_up: float | None = None  # once stopping: the message is left for another worker
        while True:
            try:  # one round trip; the acknowledgement goes only with the result
                with self.client.pipeline(transaction=True) as both:
                    both.xadd(reply_to, encode_done(done))
                    both.xack(self.stream, WORKERS_GROUP, receipt)
                    both.xdel(self.stream, receipt)
                    both.execute()
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
        with self.lock:
            self.runs.pop(receipt, None)
            self.replies.pop(receipt, None)
        self.slot_freed.set()
        self.log.info("task ended", task_no=done.task_no, result=done.result,
                      msg=done.msg[:200])

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
        except (redis.RedisError, OSError) as e:
            raise BusUnavailable(str(e)) from e

    def _finish(self, pool: ThreadPoolExecutor) -> None:
        """At stop: running tasks get the grace period, then are ended; their results
        are posted like any other."""
        deadline = time.monotonic() + self.grace
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:  # claims renewed meanwhile: no other worker takes these over
            while not run.join(min(self.claim_idle_ms / 3000,
                                   max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
                with contextlib.suppress(BusUnavailable):
                    self._renew_claims()
        for run in runs:
            if not run.join(0):
                run.stop(STOPPED)
        pool.shutdown(wait=True)
        if self.sender is not None:
            self.sender.close()
            self.sender.client.close()
        self.log.info("worker stopped", topic=self.topic, consumer=self.consumer)
        self.client.close()
