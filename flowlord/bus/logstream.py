"""Task logs over the redis bus: a `flowlord worker`'s task output, streamed back to its
daemon and written where local tasks' logs go (`<[logs] dir>/<task_no>.log`), so every
log is readable on the scheduler's host after the worker's host is gone.

The worker side (`LogSender`, `StreamedLog`): the task's stdout and stderr are read
interleaved by the same code as a local task's (flowlord/workers.py, `Run`) and capped
by the same code as a local log (flowlord/tasklog.py, `CappedLog`): the head goes out
as it comes, the tail waits in memory, and at the end the cut line and the tail go
out. So at most `[logs] max_bytes` of an attempt is ever sent. Each chunk (64 KiB at
most) goes into a bounded queue that one thread per worker empties into the daemon's
stream, `flowlord:logs:<node>`, with `XADD … MAXLEN ~ [bus] log_stream_max`: Redis
holds at most about that many entries whatever the tasks print. The task's thread
never waits for Redis: when the queue is full (Redis slow or away), a chunk is
dropped and counted. Only at the end, once the process has exited, does it wait a
little (FLUSH_WAIT) for the tail and the end marker to leave, before the result is
posted.

Each entry names its task (`task_no`), the run (`run`: the worker and message that
ran it, so a task taken over from a worker that died is told apart) and the byte
offset of its data in the attempt's output (`at`); the last one says `end`. The
daemon side (`LogAppender`, on the redis bus's log thread, never the daemon's loop)
appends each entry to the task's log file; an offset past what it wrote is output
lost on the way (trimmed before it was read, or dropped by the worker), and the log
gets a line saying how many bytes. Where each log is (run, offset) is kept in a
Redis hash beside the stream, so a daemon that restarts reads on from where it
stopped: entries written while it was down are in its consumer group, and an end
that came meanwhile still finishes its log.

The worker learns where to send and the caps from the task message (`log_to`,
`log_max`, `log_keep`, flowlord/bus/wire.py `encode_task`): the daemon's config is
the only one, and a message of a daemon that does not ask for logs gets none.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowlord.tasklog import CappedLog, log_path

CHUNK = 64 * 1024  # bytes of output in one stream entry, at most
QUEUE_CHUNKS = 64  # chunks waiting for the sender, at most (4 MiB), across a worker's tasks
BATCH = 64  # entries sent in one round trip, at most
FLUSH_WAIT = 5.0  # seconds a task's end waits for its tail and end marker to be sent
SLACK = 4096  # bytes past `[logs] max_bytes` the daemon writes for a run (the cut line)
RUNS_KEPT = 10_000  # logs in progress remembered (a worker that died never ends its own)


def lost_line(count: int) -> bytes:
    return (f"\n[flowlord: {count} bytes of output lost on the way from the worker (the "
            f"log stream was trimmed before they were read, or redis was away)]\n").encode()


AGAIN_LINE = (b"\n[flowlord: the worker running this task stopped before its log ended; "
              b"another worker took the task over, and what it printed follows]\n")


# --- the worker's side ------------------------------------------------------------------


@dataclass
class Entry:
    """One stream entry to send: `data` is the attempt's output from byte `at`."""
    stream: str
    keep: int  # the stream's MAXLEN (approximate)
    task_no: int
    run: str
    at: int
    data: bytes
    end: bool = False
    sent: list[threading.Event] = field(default_factory=list)  # set once sent (or dropped)

    def fields(self) -> dict[str, str | bytes]:
        found: dict[str, str | bytes] = {"task_no": str(self.task_no), "run": self.run,
                                         "at": str(self.at), "data": self.data}
        if self.end:
            found["end"] = "1"
        return found

    def follows(self, other: Entry) -> bool:
        """Whether this entry goes on where `other` stops, in one stream entry."""
        return (not other.end and (self.stream, self.task_no, self.run) == (
            other.stream, other.task_no, other.run) and self.at == other.at + len(other.data)
            and len(self.data) + len(other.data) <= CHUNK)


def coalesce(entries: Iterable[Entry]) -> list[Entry]:
    """Consecutive small chunks of one run joined into entries of CHUNK bytes at most:
    fewer entries, so a stream of `keep` entries holds more output."""
    merged: list[Entry] = []
    for entry in entries:
        if merged and entry.follows(merged[-1]):
            last = merged[-1]
            last.data += entry.data
            last.end = entry.end
            last.sent += entry.sent
        else:
            merged.append(entry)
    return merged


class LogSender:
    """One per `flowlord worker`: a thread that sends its tasks' output, fed through a
    bounded queue so that no task ever waits for Redis."""

    def __init__(self, client: Any, log: Any) -> None:
        self.client = client  # a connection of its own: a slow send delays no result
        self.log = log
        self.queue: queue.Queue[Entry | None] = queue.Queue(QUEUE_CHUNKS)
        self.dropped = 0  # bytes dropped since the last line that said so
        self._lock = threading.Lock()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="log-sender", daemon=True)
        self._thread.start()

    def offer(self, entry: Entry, wait: float = 0.0) -> None:
        """Queue `entry`, waiting up to `wait` seconds for room; else drop it (counted)."""
        try:
            if wait > 0:
                self.queue.put(entry, timeout=wait)
            else:
                self.queue.put_nowait(entry)
        except queue.Full:
            self._dropped([entry])

    def close(self, wait: float = FLUSH_WAIT) -> None:
        """Send what is queued (within `wait` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=wait)
        self._thread.join(wait)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BATCH:
                    more = self.queue.get_nowait()
                    if more is None:
                        self._send(batch)
                        return
                    batch.append(more)
            self._send(batch)

    def _send(self, batch: list[Entry]) -> None:
        import redis

        entries = coalesce(batch)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(entry.stream, entry.fields(), maxlen=entry.keep,
                              approximate=True)
                pipe.execute()
        except (redis.RedisError, OSError) as e:
            if not self._failing:
                self.log.warning("cannot send task output to the daemon; dropping it",
                                 error=str(e))
            self._failing = True
            self._dropped(entries)
            return
        finally:
            for entry in entries:
                for sent in entry.sent:
                    sent.set()
        if self._failing or self.dropped:
            with self._lock:
                dropped, self.dropped = self.dropped, 0
            self.log.warning("task output sent again", dropped_bytes=dropped)
            self._failing = False

    def _dropped(self, entries: list[Entry]) -> None:
        with self._lock:
            self.dropped += sum(len(e.data) for e in entries)
        for entry in entries:
            for sent in entry.sent:
                sent.set()


@dataclass(frozen=True)
class Target:
    """Where a task message asks its output to go (flowlord/bus/wire.py, log_target)."""
    stream: str
    max_bytes: int  # the daemon's `[logs] max_bytes`
    keep: int  # the daemon's `[bus] log_stream_max`


class StreamedLog(CappedLog):
    """One attempt's log, sent through `sender` as it comes (flowlord/tasklog.py's cap)."""

    def __init__(self, sender: LogSender, target: Target, task_no: int, run: str) -> None:
        super().__init__(target.max_bytes)
        self.sender = sender
        self.target = target
        self.task_no = task_no
        self.run = run
        self.at = 0  # bytes of output passed on so far (sent or dropped)
        self.deadline: float | None = None  # set at close: from then on a put may wait

    def _wait(self) -> float:
        return 0.0 if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def _out(self, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            piece = data[start:start + CHUNK]
            self.sender.offer(self._entry(piece), self._wait())
            self.at += len(piece)

    def _entry(self, data: bytes, end: bool = False) -> Entry:
        return Entry(self.target.stream, self.target.keep, self.task_no, self.run, self.at,
                     data, end)

    def close(self) -> None:
        """After the process exited: the cut line and the tail, then the end marker,
        waiting up to FLUSH_WAIT for them to be sent (the result goes after them)."""
        if not self.written:
            return
        self.deadline = time.monotonic() + FLUSH_WAIT
        super().close()
        end = self._entry(b"", end=True)
        sent = threading.Event()
        end.sent.append(sent)
        self.sender.offer(end, self._wait())
        sent.wait(self._wait())


# --- the daemon's side ------------------------------------------------------------------


class LogAppender:
    """Entries of the daemon's log stream → `<directory>/<task_no>.log`, with a line for
    output lost on the way; one thread calls it (flowlord/bus/redis.py, the log reader).
    `runs` (task_no → (run, offset written up to)) is what the stream's hash held."""

    def __init__(self, directory: str, max_bytes: int, log: Any,
                 runs: Mapping[int, tuple[str, int]] | None = None) -> None:
        self.directory = directory
        self.limit = max_bytes + SLACK  # a worker sends at most max_bytes: a defence only
        self.log = log
        self.runs: dict[int, tuple[str, int]] = dict(runs or {})

    def take(self, entries: Iterable[tuple[Any, Mapping[bytes, bytes] | None]]
             ) -> tuple[dict[int, tuple[str, int]], list[int]]:
        """Append the entries to their logs; (the runs changed, the task_nos whose logs
        ended or were forgotten), for the hash beside the stream."""
        parts: dict[int, list[bytes]] = {}
        changed: dict[int, tuple[str, int]] = {}
        gone: list[int] = []
        for receipt, fields in entries:
            if fields is None:  # trimmed while pending: its offset shows in the next one
                continue
            try:
                task_no = int(fields[b"task_no"])
                run = fields[b"run"].decode()
                at = int(fields[b"at"])
                data = fields.get(b"data", b"")
            except (KeyError, ValueError, UnicodeDecodeError) as e:
                self.log.error("unreadable log entry dropped", receipt=str(receipt),
                               error=str(e))
                continue
            parts.setdefault(task_no, []).extend(self._place(task_no, run, at, data))
            if b"end" in fields:
                self.runs.pop(task_no, None)
                changed.pop(task_no, None)
                gone.append(task_no)
            else:
                changed[task_no] = self.runs[task_no]
        while len(self.runs) > RUNS_KEPT:  # the oldest first: dicts keep their order
            oldest = next(iter(self.runs))
            del self.runs[oldest]
            changed.pop(oldest, None)
            gone.append(oldest)
        for task_no, pieces in parts.items():
            self._append(task_no, b"".join(pieces))
        return changed, gone

    def _place(self, task_no: int, run: str, at: int, data: bytes) -> list[bytes]:
        """What goes into the log for an entry: its data, after the line for a gap."""
        out: list[bytes] = []
        known = self.runs.pop(task_no, None)  # put back last: the newest at the end
        expected = 0
        if known is not None and known[0] == run:
            expected = known[1]
        elif known is not None:  # the same task, run again by another worker
            out.append(AGAIN_LINE)
        if at < expected:  # read twice (a restart before its acknowledgement)
            skip = min(len(data), expected - at)
            data, at = data[skip:], at + skip
        if at > expected and expected < self.limit:
            out.append(lost_line(at - expected))
        out.append(data[:max(0, self.limit - at)])
        self.runs[task_no] = (run, max(expected, at + len(data)))
        return out

    def _append(self, task_no: int, data: bytes) -> None:
        if not data:
            return
        try:
            fd = os.open(log_path(self.directory, task_no),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:  # a full disk: this output is lost, the next may fit
            self.log.error("cannot write a task log", task_no=task_no, error=str(e))


def encode_runs(runs: Mapping[int, tuple[str, int]]) -> dict[str, str]:
    return {str(no): f"{run} {at}" for no, (run, at) in runs.items()}


def decode_runs(stored: Mapping[Any, Any]) -> dict[int, tuple[str, int]]:
    runs: dict[int, tuple[str, int]] = {}
    for no, value in stored.items():
        text = value.decode() if isinstance(value, bytes) else str(value)
        run, _, at = text.rpartition(" ")
        with contextlib.suppress(ValueError):
            runs[int(no)] = (run, int(at))
    return runs
