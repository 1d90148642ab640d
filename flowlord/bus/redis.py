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
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flowlord.bus import BusUnavailable, drain
from flowlord.bus.logstream import LogAppender, Target, decode_runs, encode_runs
from flowlord.model import Done, StoredTask, Task

PREFIX = "flowlord"
DONE_STREAM = f"{PREFIX}:done"
LOG_STREAM = f"{PREFIX}:logs"  # + the node: a daemon's tasks' output (logstream.py)
LOG_READ_COUNT = 64  # log entries read at once (64 KiB each at most)
WORKERS_GROUP = "workers"
DAEMON_GROUP = "daemon"
DAEMON_CONSUMER = "daemon"  # one name across restarts: its unacknowledged results come back
IN_FLIGHT = 1000  # tasks of a topic published and not yet finished, at most
READ_BLOCK_MS = 1000  # a blocking read returns at least this often (to notice close)
COMMAND_TIMEOUT = 2.0  # seconds a command may take: a dead server costs the loop no more
BACKOFF_MAX = 10.0  # seconds between reconnection attempts, at most
MAX_TIMEOUT_SECONDS = 10 * 365 * 86400.0  # a task message's timeout must be below this
CANCEL_KEPT = 7 * 86400  # seconds a cancel notice is kept (renewed by each new one)
WORKERS_SEEN_FOR = 1.0  # seconds a topic without workers is not asked about again


def task_stream(topic: str) -> str:
    return f"{PREFIX}:tasks:{topic}"


def cancel_key(reply_to: str) -> str:
    """The set of task numbers (of the daemon reading `reply_to`) whose processes must
    end: a worker looks before it starts a task and while it runs one, so a worker that
    is busy, or down and replaced, cannot miss it."""
    return f"{PREFIX}:cancel:{reply_to}"


def log_stream(done_stream: str) -> str:
    """The stream of task output beside a daemon's results stream."""
    return LOG_STREAM + done_stream[len(DONE_STREAM):]


def log_runs_key(done_stream: str) -> str:
    """The hash beside a log stream: task_no → the run and offset its log is written up
    to (flowlord/bus/logstream.py)."""
    return f"{PREFIX}:log-runs" + done_stream[len(DONE_STREAM):]


def connect(url: str, timeout: float = COMMAND_TIMEOUT, decode: bool = True) -> Any:
    """A client for `url` (any URL redis-py accepts: redis://, rediss://, unix://, with
    a password), whose commands give up after `timeout` seconds; BusUnavailable when
    the URL is bad, the server does not answer, or it is older than 7.0. Without
    `decode`, replies are bytes (task output is any bytes)."""
    import redis  # an optional dependency: only this bus needs it

    try:
        client = redis.Redis.from_url(url, decode_responses=decode,
                                      socket_connect_timeout=COMMAND_TIMEOUT,
                                      socket_timeout=timeout, health_check_interval=30)
    except ValueError as e:
        raise BusUnavailable(f"bad bus url {url!r}: {e}") from None
    ping(client, url)
    version = client.info("server").get("redis_version", "0")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if tuple(int(n) for n in version.split(".")[:2] if n.isdigit()) < (7, 0):
        raise BusUnavailable(f"redis at {_where(url)} is version {version}: flowlord needs "
                             "7.0 or later (XAUTOCLAIM, SET … NX GET)")
    return client


def ping(client: Any, url: str) -> None:
    import redis

    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise BusUnavailable(f"redis at {_where(url)} refused the credentials: {e}") from None
    except redis.ResponseError as e:  # NOAUTH, WRONGPASS on some versions
        raise BusUnavailable(f"redis at {_where(url)} refused us: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BusUnavailable(f"cannot reach redis at {_where(url)}: {e}") from None


def _where(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def ensure_group(client: Any, stream: str, group: str) -> None:
    """The consumer group, created with its stream when missing; it reads from the
    stream's start, so tasks published before any worker existed are delivered."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def encode_task(stored: StoredTask, timeout_seconds: float | None,
                reply_to: str = DONE_STREAM, log: Target | None = None) -> dict[str, str]:
    """A task message: the task JSON, its row number in the daemon's database, the
    phase's timeout, the stream its result goes to (the daemon's), and with `log`
    where its output goes and the caps that apply (the daemon's config)."""
    fields = {"task_no": str(stored.task_no), "task": stored.task.to_json(),
              "timeout": "" if timeout_seconds is None else repr(timeout_seconds),
              "reply_to": reply_to}
    if log is not None:
        fields.update(log_to=log.stream, log_max=str(log.max_bytes), log_keep=str(log.keep))
    return fields


def log_target(fields: Mapping[str, str]) -> Target | None:
    """Where a task's output goes: only to a flowlord log stream, with sane caps; None
    when the message asks for none (a daemon without logs, or of an older version)."""
    stream = fields.get("log_to", "")
    try:
        target = Target(stream, int(fields["log_max"]), int(fields["log_keep"]))
    except (KeyError, ValueError):
        return None
    if (not (stream == LOG_STREAM or stream.startswith(f"{LOG_STREAM}:"))
            or not 4096 <= target.max_bytes <= 2**40
            or not 1 <= target.keep <= 1_000_000):
        return None
    return target


def reply_stream(fields: Mapping[str, str]) -> str:
    """Where a task's result goes: only to a flowlord done stream."""
    stream = fields.get("reply_to", "")
    return stream if stream.startswith(DONE_STREAM) else DONE_STREAM


def decode_task(fields: Mapping[str, str]) -> tuple[StoredTask, float | None]:
    """A task message; ValueError when it is not one."""
    data = json.loads(fields["task"])
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("the task has no type")
    task = Task(**{k: str(data.get(k, "")) for k in Task._fields if k in data})
    timeout = float(fields["timeout"]) if fields.get("timeout") else None
    if timeout is not None and not 0 < timeout < MAX_TIMEOUT_SECONDS:
        raise ValueError(f"timeout out of range: {timeout}")
    return StoredTask(int(fields["task_no"]), task), timeout


def encode_done(done: Done) -> dict[str, str]:
    return {"task_no": str(done.task_no), "result": done.result, "msg": done.msg,
            "started": done.started, "ended": done.ended}


def decode_done(fields: Mapping[str, str], receipt: str) -> Done:
    """A result message; ValueError when it is not one."""
    result = fields["result"]
    if result not in ("complete", "error", "alert", "warn"):
        raise ValueError(f"unknown result {result!r}")
    return Done(int(fields["task_no"]), result, fields.get("msg", ""), fields["ended"],
                fields.get("started", ""), receipt=receipt)


class RedisBus:
    """The daemon's side: publishes claimed tasks, and reads results on a thread of its
    own that wakes the daemon's loop. While the server is away nothing is claimed:
    tasks wait in the database and are published when it is back."""

    remote = True  # tasks run elsewhere: a restart must not record them as errors

    def __init__(self, url: str, log: Any, wake: Callable[[], None] | None = None,
                 in_flight: int = IN_FLIGHT, done_stream: str = DONE_STREAM,
                 log_dir: str | None = None, log_max_bytes: int = 10 * 1024 * 1024,
                 log_stream_max: int = 512) -> None:
        self.url = url
        self.done_stream = done_stream  # several daemons on one redis: one each
        # with a logs directory, the workers send tasks' output to this stream
        self.log_target = (Target(log_stream(done_stream), log_max_bytes, log_stream_max)
                           if log_dir is not None else None)
        self.log_dir = log_dir
        self.log = log
        self.wake = wake
        self.in_flight = in_flight
        self.client = connect(url)
        # the reader blocks in its reads: a connection of its own, with a longer timeout
        self.reader_client = connect(url, READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT)
        self.available = True
        self._state = threading.Lock()  # guards `available` across the two threads
        self.outstanding: dict[str, set[int]] = {}  # topic → task_nos sent, no result yet
        self._topic_of: dict[int, str] = {}
        self._workers_seen: dict[str, tuple[float, bool]] = {}  # topic → (ask again at, found)
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._readers = [threading.Thread(
            target=self._follow, args=(self.reader_client, self.done_stream, self._take),
            name="redis-results", daemon=True)]
        self._readers[0].start()
        if self.log_target is not None:  # bytes, read by a connection of its own
            self.log_client = connect(url, READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT, False)
            self.appender: LogAppender | None = None  # made by its thread, from the hash

    def read_logs(self) -> None:
        """Start writing the task output that comes back to the logs (its own thread);
        called once the daemon holds its node, whose log stream this is."""
        if self.log_target is None:
            return
        reader = threading.Thread(
            target=self._follow, args=(self.log_client, self.log_target.stream,
                                       self._write_logs, LOG_READ_COUNT),
            name="redis-logs", daemon=True)
        self._readers.append(reader)
        reader.start()

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

    def send(self, stored: StoredTask, timeout_seconds: float | None) -> None:
        import redis

        topic = stored.task.type
        try:
            self.client.xadd(task_stream(topic), encode_task(
                stored, timeout_seconds, self.done_stream, self.log_target))
        except (redis.RedisError, OSError) as e:
            self._lost(e)
            raise BusUnavailable(f"cannot publish to redis at {_where(self.url)}: {e}") from e
        self.outstanding.setdefault(topic, set()).add(stored.task_no)
        self._topic_of[stored.task_no] = topic

    def receive(self, wait: float) -> list[Done]:
        found = drain(self.results, wait)
        for done in found:
            topic = self._topic_of.pop(done.task_no, None)
            if topic is not None:
                self.outstanding[topic].discard(done.task_no)
        return found

    def running(self) -> list[int]:
        return list(self._topic_of)

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
        return True

    def ack(self, done: Done) -> None:
        """The result is stored: drop its message. When this fails the message stays
        pending and comes back at the next start, where recording it changes nothing."""
        import redis

        if not done.receipt or not self.available:  # pending, it is read again when back
            return
        try:
            with self.client.pipeline(transaction=False) as both:
                both.xack(self.done_stream, DAEMON_GROUP, done.receipt)
                both.xdel(self.done_stream, done.receipt)
                both.execute()
        except (redis.RedisError, OSError) as e:
            self._lost(e)

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        """Remote tasks keep running; their results wait in the stream for the next start."""
        self._closed.set()
        for reader in self._readers:
            reader.join(READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT + 1)
        self.client.close()
        self.reader_client.close()
        if self.log_target is not None:
            self.log_client.close()
        return []

    # --- the result reader (its own thread) ------------------------------------------

    def _lost(self, e: Exception) -> None:
        with self._state:  # both threads notice an outage: it is logged once
            was, self.available = self.available, False
        if was:
            self.log.error("redis unavailable; tasks wait in the database", url=_where(self.url),
                           error=str(e))

    def _follow(self, client: Any, stream: str,
                take: Callable[[list[tuple[Any, Any]]], None], count: int = 1000) -> None:
        """Read `stream` in the daemon's group until close, handing each batch to `take`:
        first what was delivered before and never acknowledged (at a start, after an
        outage), then new entries. One thread each: the results, the task logs."""
        import redis

        backoff = 0.5
        after: Any = "0"  # first what was delivered to us before and never stored
        while not self._closed.is_set():
            try:
                if not self.available:
                    ping(client, self.url)
                    self._back()
                ensure_group(client, stream, DAEMON_GROUP)
                reply = client.xreadgroup(DAEMON_GROUP, DAEMON_CONSUMER, {stream: after or ">"},
                                          count=count, block=None if after else READ_BLOCK_MS)
                entries = reply[0][1] if reply else []
                take(entries)
                backoff = 0.5
            except (redis.RedisError, BusUnavailable, OSError) as e:
                self._lost(e)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                after = "0"  # what was read but not yet stored comes again
                continue
            if after:  # reading the backlog: on from its last entry, then new ones
                after = entries[-1][0] if entries else None

    def _back(self) -> None:
        with self._state:  # both readers notice the server is back: it is logged once
            was, self.available = self.available, True
        if not was:
            self.log.info("redis available again", url=_where(self.url))
            self._wake()

    def _take(self, entries: list[tuple[str, Mapping[str, str] | None]]) -> None:
        for receipt, fields in entries:
            try:
                self.results.put(decode_done(fields or {}, receipt))
            except (KeyError, ValueError) as e:  # not ours to store: dropped, loudly
                self.log.error("unreadable result message dropped", receipt=receipt,
                               error=str(e))
                self.ack(Done(0, "error", "", "", receipt=receipt))
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
