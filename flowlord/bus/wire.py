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

# A worker's result and its next task in one round trip (flowlord/bus/worker.py,
# `_report`; docs/decisions.md, Performance of the task loop). KEYS[1] the topic's
# stream; ARGV: 1 the workers' group, 2 the worker (consumer), 3 the finished message,
# 4 "1" to post the result and release its run's mark (else "": another run holds it),
# 5 the result's stream, 6 the finished run's mark and 7 its value, 8 "1" to read a next
# message, 9 a mark's time to live in ms, 10 DONE_STREAM, 11 RUN_PREFIX, 12 CANCEL_PREFIX,
# 13… the result's fields. As the pipeline it replaced did, in order: XADD the result,
# RELEASE the mark, XACK and XDEL the message (an error there ends the script: the
# worker posts again, and its daemon records only the first result), then XREADGROUP
# COUNT 1 (an error there counts as no message: the worker's own read deals with it).
# For a message read, and only when its task number is written as flowlord writes it,
# what `_may_start` asks is answered here too: whether the task is cancelled, and
# whether TAKE_RUN took its mark for this message. Returns {} without a next message,
# {id, fields} when that was not answered, else {id, fields, cancelled, marked}.
POST_AND_TAKE = """
if ARGV[4] == '1' then
    redis.call('XADD', ARGV[5], '*', unpack(ARGV, 13))
    if redis.call('GET', ARGV[6]) == ARGV[7] then
        redis.call('DEL', ARGV[6])
    end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if ARGV[8] ~= '1' then
    return {}
end
local read = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', '1',
                         'STREAMS', KEYS[1], '>')
if type(read) ~= 'table' or read.err or not read[1] or not read[1][2][1] then
    return {}
end
local id, fields = read[1][2][1][1], read[1][2][1][2]
local task_no, reply_to = nil, nil
for i = 1, #fields - 1, 2 do  -- of a field given twice, the last: as the worker reads it
    if fields[i] == 'task_no' then task_no = fields[i + 1] end
    if fields[i] == 'reply_to' then reply_to = fields[i + 1] end
end
if task_no == nil or not (task_no == '0' or string.match(task_no, '^[1-9][0-9]*$'))
        or #task_no > 15 then
    return {id, fields}
end
if reply_to == nil or string.sub(reply_to, 1, #ARGV[10]) ~= ARGV[10] then
    reply_to = ARGV[10]
end
local cancelled = redis.call('SISMEMBER', ARGV[12] .. reply_to, task_no)
local mark = ARGV[11] .. reply_to .. ':' .. task_no
local value = id .. ' ' .. ARGV[2]
local held = redis.call('GET', mark)
if held == false or held == value or string.sub(held, 1, #id + 1) == id .. ' ' then
    redis.call('SET', mark, value, 'PX', ARGV[9])
    return {id, fields, cancelled, 1}
end
return {id, fields, cancelled, 0}
"""
RUN_PREFIX = f"{PREFIX}:run:"
CANCEL_PREFIX = f"{PREFIX}:cancel:"
Checked = tuple[bool, bool]  # (its daemon ended the task, this message's run took its mark)


def task_stream(topic: str) -> str:
    return f"{PREFIX}:tasks:{topic}"


def cancel_key(reply_to: str) -> str:
    """The set of task numbers (of the daemon reading `reply_to`) whose processes must
    end: a worker looks before it starts a task and while it runs one, so a worker that
    is busy, or down and replaced, cannot miss it."""
    return f"{CANCEL_PREFIX}{reply_to}"


def run_key(reply_to: str, task_no: int) -> str:
    """A worker's mark on a task it runs (of the daemon reading `reply_to`): the task's
    message id and the worker, renewed while it runs (TAKE_RUN, HOLD, RELEASE)."""
    return f"{RUN_PREFIX}{reply_to}:{task_no}"


def mark_value(receipt: str, consumer: str) -> str:
    """The value of a run's mark: its message and the worker running it (TAKE_RUN, and
    POST_AND_TAKE, which makes it too)."""
    return f"{receipt} {consumer}"


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


def post_and_take(client: Any, stream: str, consumer: str, receipt: str,
                  result: tuple[str, Done] | None, *, read: bool
                  ) -> tuple[str, dict[str, str], Checked | None] | None:
    """POST_AND_TAKE: the result of the message `receipt` posted to its stream (None:
    another run of the task posts it), the message acknowledged and deleted, and with
    `read` the topic's next message for `consumer`: its id, its fields, and whether its
    task is cancelled and this message's run took its mark (None when the script left
    that to `_may_start`). None without a next message. Any error of the post raises."""
    reply_to, done = result if result is not None else (DONE_STREAM, None)
    fields = encode_done(done) if done is not None else {}
    reply = client.eval(
        POST_AND_TAKE, 1, stream, WORKERS_GROUP, consumer, receipt,
        "1" if done is not None else "", reply_to,
        run_key(reply_to, done.task_no) if done is not None else "",
        mark_value(receipt, consumer), "1" if read else "", RUN_MARK_TTL_MS, DONE_STREAM,
        RUN_PREFIX, CANCEL_PREFIX, *(x for pair in fields.items() for x in pair))
    if not reply:
        return None
    flat = reply[1]
    checked = (bool(reply[2]), bool(reply[3])) if len(reply) == 4 else None
    return reply[0], dict(zip(flat[::2], flat[1::2], strict=True)), checked


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
