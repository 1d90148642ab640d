"""The Redis bus: tasks travel to `flowlord worker` processes on any host (README.md,
Beyond one machine: the redis bus).

Each topic is a stream (`flowlord:tasks:<topic>`) read by the consumer group
`workers`; results come back on `flowlord:done`, read by the daemon's group
`daemon`. The database stays the source of truth: a task is published after its
row commits, a result is acknowledged only after it is stored, and recording a
result is idempotent, so a message delivered twice records nothing twice.

With a logs directory, the tasks' output comes back too, on `flowlord:logs:<node>`
(flowlord/bus/logstream.py): a second reader thread appends it to the task logs, so
the daemon's loop never writes a log.

Redis can lose a published message (a server without `appendfsync always` that
crashes, a failover to a replica). A third thread looks, every few seconds and when
the server is back, for tasks sent and unfinished whose message is nowhere: not in
their topic's stream (waiting, or pending with a worker), no result on the done
stream, and no worker's mark that it runs them (`run_key`: set by the worker before
it starts a task, renewed every second, dropped with the result in one
transaction). A task missing at every look for LOST_AFTER seconds is published
again. The grace lets a worker that runs a task whose message an emptied server no
longer has mark it again first; the mark is taken with a Lua script, so a second
message of a task some worker runs is dropped, never run beside it (docs/decisions.md,
Lost messages).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flowlord.bus import BusUnavailable, drain
from flowlord.bus.logstream import LogAppender, Target, decode_runs, encode_runs
from flowlord.bus.wire import (
    BACKOFF_MAX,
    COMMAND_TIMEOUT,
    DAEMON_GROUP,
    DONE_STREAM,
    WORKERS_GROUP,
    cancel_key,
    connect,
    decode_done,
    ensure_group,
    log_runs_key,
    log_stream,
    ping,
    publish,
    run_key,
    task_numbers,
    task_stream,
    where,
)
from flowlord.model import Done, StoredTask

LOG_READ_COUNT = 64  # log entries read at once (64 KiB each at most)
DAEMON_CONSUMER = "daemon"  # one name across restarts: its unacknowledged results come back
IN_FLIGHT = 1000  # tasks of a topic published and not yet finished, at most
GATHER_BEHIND = 100  # tasks still in flight past which results may gather (gathering)
READ_BLOCK_MS = 1000  # a blocking read returns at least this often (to notice close)
CANCEL_KEPT = 7 * 86400  # seconds a cancel notice is kept (renewed by each new one)
WORKERS_SEEN_FOR = 1.0  # seconds a topic without workers is not asked about again
LOOK_EVERY = 5.0  # seconds between looks for tasks whose message redis lost
# seconds a task must be missing, at every look, before it is published again: well past
# the time a worker running it needs to mark it again once an emptied server is back
# (its backoff is 1 s while it runs tasks, a command gives up after 2 s)
LOST_AFTER = 15.0


class RedisBus:
    """The daemon's side: publishes claimed tasks, and reads results on a thread of its
    own that wakes the daemon's loop. While the server is away nothing is claimed:
    tasks wait in the database and are published when it is back."""

    remote = True  # tasks run elsewhere: a restart must not record them as errors

    def __init__(self, url: str, log: Any, wake: Callable[[], None] | None = None,
                 in_flight: int = IN_FLIGHT, done_stream: str = DONE_STREAM,
                 log_dir: str | None = None, log_max_bytes: int = 10 * 1024 * 1024,
                 log_stream_max: int = 512, lost_after: float = LOST_AFTER) -> None:
        self.url = url
        self.done_stream = done_stream  # several daemons on one redis: one each
        # with a logs directory, the workers send tasks' output to this stream
        self.log_target = (Target(log_stream(done_stream), log_max_bytes, log_stream_max)
                           if log_dir is not None else None)
        self.log_dir = log_dir
        self.log = log
        self.wake = wake
        self.in_flight = in_flight
        self.lost_after = lost_after
        self.client = connect(url)
        # the reader blocks in its reads: a connection of its own, with a longer timeout
        self.reader_client = connect(url, READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT)
        self.watch_client = connect(url)  # the looks for lost messages (their own thread)
        self.available = True
        self._state = threading.Lock()  # guards `available` across the threads
        # what was sent and has no result yet, shared with the look's thread (`_books`)
        self._books = threading.Lock()
        self.outstanding: dict[str, set[int]] = {}  # topic → task_nos sent, no result yet
        self._sent: dict[int, tuple[StoredTask, float | None]] = {}  # task_no → its message
        self._ended: set[int] = set()  # sent, then ended by an operator: never sent again
        self._workers_seen: dict[str, tuple[float, bool]] = {}  # topic → (ask again at, found)
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._acked: list[str] = []  # receipts of stored results, dropped at the next turn
        self._closed = threading.Event()
        self._look_now = threading.Event()  # the server is back: look for lost messages
        self._readers: list[threading.Thread] = []
        if self.log_target is not None:  # bytes, read by a connection of its own
            self.log_client = connect(url, READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT, False)
            self.appender: LogAppender | None = None  # made by its thread, from the hash

    def start(self) -> None:
        """Start the threads: the results reader, the task logs' writer, the looks for
        lost messages. Called once the daemon holds its node: the results and logs
        streams are the node's, and a daemon refused its node must read nothing of
        theirs (what it read, it could not acknowledge)."""
        self._readers.append(threading.Thread(
            target=self._follow, args=(self.reader_client, self.done_stream, self._take),
            name="redis-results", daemon=True))
        if self.log_target is not None:
            self._readers.append(threading.Thread(
                target=self._follow, args=(self.log_client, self.log_target.stream,
                                           self._write_logs, LOG_READ_COUNT),
                name="redis-logs", daemon=True))
        self._readers.append(threading.Thread(target=self._watch, name="redis-lost",
                                              daemon=True))
        for thread in self._readers:
            thread.start()

    def adopt(self, sent: list[tuple[StoredTask, float | None]]) -> None:
        """Tasks an earlier run of the daemon published and that have not ended (with
        their timeouts): counted as in flight, ended like the ones sent by this run,
        and published again should Redis have lost them."""
        with self._books:
            for stored, timeout_seconds in sent:
                self.outstanding.setdefault(stored.task.type, set()).add(stored.task_no)
                self._sent[stored.task_no] = (stored, timeout_seconds)

    def open_topics(self) -> list[str] | None:
        return None if self.available else []

    def capacity(self, topic: str) -> int:
        """0 while the server is away or no worker has joined the topic: its tasks wait
        in the database, where they count toward the unfinished-task alert."""
        if not self.available or not self._has_workers(topic):
            return 0
        return max(0, self.in_flight - len(self.outstanding.get(topic, ())))

    def _has_workers(self, topic: str) -> bool:
        """Whether a worker has joined the topic (its group has a consumer); asked again
        after WORKERS_SEEN_FOR seconds while none has."""
        import redis

        seen = self._workers_seen.get(topic)
        if seen is not None and (seen[1] or time.monotonic() < seen[0]):
            return seen[1]
        try:
            groups = self.client.xinfo_groups(task_stream(topic))
        except redis.ResponseError:  # no such stream: nobody ever asked for the topic
            groups = []
        except (redis.RedisError, OSError) as e:
            self._lost(e)
            return False
        found = any(g["name"] == WORKERS_GROUP and g["consumers"] > 0 for g in groups)
        self._workers_seen[topic] = (time.monotonic() + WORKERS_SEEN_FOR, found)
        return found

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        """One pipeline for the turn's tasks (an XADD each was a round trip each, a
        quarter of the loop's time). Those the server refused are published again
        later; when the connection failed, all are (one that got through may then run
        twice, and only its first result is recorded)."""
        import redis

        try:
            answers = publish(self.client, tasks, self.done_stream, self.log_target)
        except (redis.RedisError, OSError) as e:
            self._lost(e)
            raise BusUnavailable(f"cannot publish to redis at {where(self.url)}: {e}") from e
        went = [task for task, answer in zip(tasks, answers, strict=True)
                if not isinstance(answer, Exception)]
        with self._books:
            for stored, timeout_seconds in went:
                self.outstanding.setdefault(stored.task.type, set()).add(stored.task_no)
                self._sent[stored.task_no] = (stored, timeout_seconds)
        refused = next((a for a in answers if isinstance(a, Exception)), None)
        if refused is not None:
            self._lost(refused)
            raise BusUnavailable(f"cannot publish to redis at {where(self.url)}: {refused}",
                                 frozenset(stored.task_no for stored, _ in went))

    def receive(self, wait: float) -> list[Done]:
        self._drop_acked()  # the last turn's: one round trip for all of them
        found = drain(self.results, wait)
        with self._books:
            for done in found:
                self._forget(done.task_no)
        return found

    def _forget(self, task_no: int) -> None:
        """Under `_books`: a task no longer in flight (its result came, or it ended and
        its message is gone)."""
        sent = self._sent.pop(task_no, None)
        if sent is not None:
            self.outstanding[sent[0].task.type].discard(task_no)
        self._ended.discard(task_no)

    def gathering(self) -> bool:
        """Results came while many more tasks than those are published and unfinished:
        the workers (elsewhere, how many unknown) have messages in their streams and
        need nothing from the loop meanwhile; a turn per result cost more than the
        result."""
        with self._books:
            unfinished = len(self._sent)
        waiting = self.results.qsize()
        return waiting > 0 and unfinished - waiting >= GATHER_BEHIND

    def running(self) -> list[int]:
        with self._books:
            return list(self._sent)

    def stop(self, task_no: int, reason: str) -> bool:
        """A notice for the worker that runs it (or will: a message not yet taken)."""
        import redis

        try:
            with self.client.pipeline(transaction=False) as both:
                both.sadd(cancel_key(self.done_stream), task_no)
                both.expire(cancel_key(self.done_stream), CANCEL_KEPT)
                both.execute()
        except (redis.RedisError, OSError) as e:
            self._lost(e)
            return False
        with self._books:
            if task_no in self._sent:
                self._ended.add(task_no)
        return True

    def ack(self, done: Done) -> None:
        """The result is stored: its message is dropped, with the others of the turn, at
        the next `receive` (or `close`). When that fails the message stays pending and
        comes back at the next start, where recording it changes nothing."""
        if done.receipt:
            self._acked.append(done.receipt)

    def _drop_acked(self) -> None:
        receipts, self._acked = self._acked, []
        self._drop(receipts)

    def _drop(self, receipts: list[str]) -> None:
        """Acknowledge and delete these result messages (from any thread)."""
        import redis

        if not receipts or not self.available:  # pending, it is read again when back
            return
        try:
            with self.client.pipeline(transaction=False) as both:
                both.xack(self.done_stream, DAEMON_GROUP, *receipts)
                both.xdel(self.done_stream, *receipts)
                both.execute()
        except (redis.RedisError, OSError) as e:
            self._lost(e)

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        """Remote tasks keep running; their results wait in the stream for the next start."""
        self._drop_acked()
        self._closed.set()
        self._look_now.set()
        for reader in self._readers:
            reader.join(READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT + 1)
        self.client.close()
        self.reader_client.close()
        self.watch_client.close()
        if self.log_target is not None:
            self.log_client.close()
        return []

    # --- the result reader (its own thread) ------------------------------------------

    def _lost(self, e: Exception) -> None:
        with self._state:  # both threads notice an outage: it is logged once
            was, self.available = self.available, False
        if was:
            self.log.error("redis unavailable; tasks wait in the database", url=where(self.url),
                           error=str(e))

    def _follow(self, client: Any, stream: str,
                take: Callable[[list[tuple[Any, Any]]], None], count: int = 1000) -> None:
        """Read `stream` in the daemon's group until close, handing each batch to `take`:
        first what was delivered before and never acknowledged (at a start, after an
        outage), then new entries. One thread each: the results, the task logs."""
        import redis

        backoff = 0.5
        after: Any = "0"  # first what was delivered to us before and never stored
        # the group is made at the start and after a failure (an emptied server answers
        # NOGROUP), not before each read: that was a round trip and an error reply more
        # for each read, and a read often brings one result
        grouped = False
        while not self._closed.is_set():
            try:
                if not self.available:
                    ping(client, self.url)
                    self._back()
                if not grouped:
                    ensure_group(client, stream, DAEMON_GROUP)
                    grouped = True
                reply = client.xreadgroup(DAEMON_GROUP, DAEMON_CONSUMER, {stream: after or ">"},
                                          count=count, block=None if after else READ_BLOCK_MS)
                entries = reply[0][1] if reply else []
                take(entries)
                backoff = 0.5
            except (redis.RedisError, BusUnavailable, OSError) as e:
                after = "0"  # what was read but not yet stored comes again
                grouped = False
                if isinstance(e, redis.ResponseError) and any(
                        code in str(e) for code in ("NOGROUP", "UNBLOCKED")):
                    continue  # an emptied server: it answers; the group is made again
                self._lost(e)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if after:  # reading the backlog: on from its last entry, then new ones
                after = entries[-1][0] if entries else None

    def _back(self) -> None:
        with self._state:  # both readers notice the server is back: it is logged once
            was, self.available = self.available, True
        if not was:
            self.log.info("redis available again", url=where(self.url))
            self._look_now.set()
            self._wake()

    def _take(self, entries: list[tuple[str, Mapping[str, str] | None]]) -> None:
        for receipt, fields in entries:
            try:
                self.results.put(decode_done(fields or {}, receipt))
            except (KeyError, ValueError) as e:  # not ours to store: dropped, loudly
                self.log.error("unreadable result message dropped", receipt=receipt,
                               error=str(e))
                self._drop([receipt])
        if entries:
            self._wake()

    def _write_logs(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        """On the log thread: the entries into their logs, then acknowledged and deleted
        with where each log is now (the hash a restart reads on from). A failure leaves
        them pending, read again after the outage; what was written already is not
        written twice."""
        assert self.log_target is not None and self.log_dir is not None
        runs_key = log_runs_key(self.done_stream)
        if self.appender is None:
            self.appender = LogAppender(self.log_dir, self.log_target.max_bytes, self.log,
                                        decode_runs(self.log_client.hgetall(runs_key)))
        if not entries:
            return
        changed, gone = self.appender.take(entries)
        ids = [receipt for receipt, _ in entries]
        with self.log_client.pipeline(transaction=False) as pipe:
            if changed:
                pipe.hset(runs_key, mapping=encode_runs(changed))
            if gone:
                pipe.hdel(runs_key, *gone)
            pipe.xack(self.log_target.stream, DAEMON_GROUP, *ids)
            pipe.xdel(self.log_target.stream, *ids)
            pipe.execute()

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    # --- the looks for lost messages (their own thread) ----------------------------------

    def _watch(self) -> None:
        """Every LOOK_EVERY seconds, and at once when the server is back: which tasks in
        flight are missing from Redis, and which have been missing long enough to be
        published again. A look that fails, or a server that restarted, starts the
        count again: only looks at the server as it is now can say a task is lost."""
        import redis

        missing_since: dict[int, float] = {}  # task_no → when a look first missed it
        server = ""  # the run_id of the server the looks saw
        while not self._closed.is_set():
            self._look_now.wait(LOOK_EVERY)
            self._look_now.clear()
            if self._closed.is_set():
                return
            if not self.available:
                missing_since.clear()
                continue
            try:
                server = self._look(missing_since, server)
            except (redis.RedisError, OSError) as e:
                missing_since.clear()
                self.log.warning("cannot look for lost task messages", error=str(e))

    def _look(self, missing_since: dict[int, float], server: str) -> str:
        """One look; the server's run_id. What holds a task, read in this order so that a
        task moving along (message → a worker's mark → its result, the last two in one
        transaction) is seen somewhere: the workers' marks, the topics' streams (entries
        waiting or pending with a worker), the results not yet stored."""
        client = self.watch_client
        run_id = str(client.info("server").get("run_id", ""))
        if run_id != server:  # another server (restarted empty?): count from now
            missing_since.clear()
        with self._books:
            sent = {n: stored.task.type for n, (stored, _) in self._sent.items()}
        missing: set[int] = set()
        numbers = sorted(sent)
        for i in range(0, len(numbers), 500):
            chunk = numbers[i:i + 500]
            marks = client.mget([run_key(self.done_stream, n) for n in chunk])
            missing.update(n for n, mark in zip(chunk, marks, strict=True) if mark is None)
        for topic in sorted(set(sent.values())):
            if missing:
                missing -= task_numbers(client, task_stream(topic), self.done_stream)
        if missing:
            missing -= task_numbers(client, self.done_stream, None)
        for n in list(missing_since):
            if n not in missing:
                del missing_since[n]
        now = time.monotonic()
        lost = [n for n in sorted(missing)
                if now - missing_since.setdefault(n, now) >= self.lost_after]
        if lost:
            self._send_again(client, lost)
            for n in lost:
                del missing_since[n]
        return run_id

    def _send_again(self, client: Any, lost: list[int]) -> None:
        """Publish again the tasks still in flight; one an operator ended is forgotten."""
        again: list[tuple[StoredTask, float | None]] = []
        with self._books:
            for n in lost:
                if n in self._ended:
                    self._forget(n)
                elif n in self._sent:
                    again.append(self._sent[n])
        if not again:
            return
        refused = [a for a in publish(client, again, self.done_stream, self.log_target)
                   if isinstance(a, Exception)]
        if refused:  # the next look tries again
            raise refused[0]
        self.log.warning("tasks whose message redis lost; published again", count=len(again),
                         task_nos=" ".join(str(s.task_no) for s, _ in again[:50]))
