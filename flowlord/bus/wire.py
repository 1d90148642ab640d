"""The wire format of the redis bus, shared by the daemon's bus (flowlord/bus/redis.py)
and `flowlord worker` (flowlord/bus/worker.py): the names of the streams and keys, the
Lua scripts both sides run, how to connect, and how a task and a result are encoded in
a stream entry (README.md, Beyond one machine: the redis bus).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from flowlord.bus import BusUnavailable
from flowlord.bus.logstream import Target
from flowlord.model import Done, StoredTask, Task

PREFIX = "flowlord"
DONE_STREAM = f"{PREFIX}:done"
LOG_STREAM = f"{PREFIX}:logs"  # + the node: a daemon's tasks' output (logstream.py)
WORKERS_GROUP = "workers"
DAEMON_GROUP = "daemon"
COMMAND_TIMEOUT = 2.0  # seconds a command may take: a dead server costs the loop no more
BACKOFF_MAX = 10.0  # seconds between reconnection attempts, at most
MAX_TIMEOUT_SECONDS = 10 * 365 * 86400.0  # a task message's timeout must be below this
RUN_MARK_EVERY = 1.0  # seconds between a worker's renewals of its marks (run_key)
RUN_MARK_TTL_MS = 10_000  # a mark not renewed for this long is gone (its worker died)

# a worker takes the mark of a task it is about to start (KEYS[1] the mark, ARGV[1] its
# value "<message id> <worker>", ARGV[2] "<message id> ", ARGV[3] the time to live in ms):
# 1 when the task was unmarked, or marked by this same message (taken over from a worker
# gone quiet, as XAUTOCLAIM did), else 0: another message of the task is being run
TAKE_RUN = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1]
        or string.sub(held, 1, string.len(ARGV[2])) == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    return 1
end
return 0
"""
# holds a key for us (ARGV[1] our value, ARGV[2] the ttl in ms): 1 when it was free or
# already ours, else 0. A worker renews a run's mark with it (set again when an emptied
# server lost it; 0: another run of the task holds it now); the daemon, its node name
# (flowlord/standby.py)
HOLD = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
# deletes a key only while it still holds our value (a run's mark with its result; the
# lease and the node name at a daemon's stop)
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def task_stream(topic: str) -> str:
    return f"{PREFIX}:tasks:{topic}"


def cancel_key(reply_to: str) -> str:
    """The set of task numbers (of the daemon reading `reply_to`) whose processes must
    end: a worker looks before it starts a task and while it runs one, so a worker that
    is busy, or down and replaced, cannot miss it."""
    return f"{PREFIX}:cancel:{reply_to}"


def run_key(reply_to: str, task_no: int) -> str:
    """A worker's mark on a task it runs (of the daemon reading `reply_to`): the task's
    message id and the worker, renewed while it runs (TAKE_RUN, HOLD, RELEASE)."""
    return f"{PREFIX}:run:{reply_to}:{task_no}"


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
        raise BusUnavailable(f"redis at {where(url)} is version {version}: flowlord needs "
                             "7.0 or later (XAUTOCLAIM, SET … NX GET)")
    return client


def ping(client: Any, url: str) -> None:
    import redis

    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise BusUnavailable(f"redis at {where(url)} refused the credentials: {e}") from None
    except redis.ResponseError as e:  # NOAUTH, WRONGPASS on some versions
        raise BusUnavailable(f"redis at {where(url)} refused us: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BusUnavailable(f"cannot reach redis at {where(url)}: {e}") from None


def where(url: str) -> str:
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


LOOK_PAGE = 1000  # stream entries read at once by task_numbers


def publish(client: Any, tasks: Sequence[tuple[StoredTask, float | None]], reply_to: str,
            log: Target | None) -> list[Any]:
    """A message each on its topic's stream (encode_task), in one round trip: for each,
    its entry's id, or the error the server answered (a full server refuses some)."""
    with client.pipeline(transaction=False) as each:
        for stored, timeout_seconds in tasks:
            each.xadd(task_stream(stored.task.type),
                      encode_task(stored, timeout_seconds, reply_to, log))
        return list(each.execute(raise_on_error=False))


def task_numbers(client: Any, stream: str, reply_to: str | None) -> set[int]:
    """The task numbers of a stream's entries (of a topic's stream, only those whose
    results go to `reply_to`: other daemons share it)."""
    found: set[int] = set()
    start = "-"
    while True:
        page = client.xrange(stream, start, "+", count=LOOK_PAGE)
        for _, fields in page:
            if reply_to is None or reply_stream(fields or {}) == reply_to:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    found.add(int(fields["task_no"]))
        if len(page) < LOOK_PAGE:
            return found
        start = "(" + page[-1][0]
