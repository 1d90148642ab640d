"""Task logs: each attempt's stdout and stderr, in the order they came, in a file of its
own under `[logs] dir` (`<task_no>.log`), capped at `[logs] max_bytes`.

A log is written on the task's own thread as its output comes, never by the daemon's
loop, and its memory is bounded: the first half of the cap goes to the file at once,
the last half is kept in memory as it goes by, and when the task ends the file gets a
line saying how much was cut, then that tail. A task that printed nothing has no log
(the file is made at its first output). Retention deletes a log with its task;
`flowlord doctor` reports logs without a task (and `--fix` removes them).

The cap is `CappedLog`, apart from the file: a `flowlord worker` caps its tasks'
output with it too, and sends it to the daemon, which appends it to the same files
(flowlord/bus/logstream.py).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from typing import BinaryIO

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_NAME = re.compile(r"([0-9]+)\.log")


def log_path(directory: str, task_no: int) -> str:
    return os.path.join(directory, f"{task_no}.log")


def cut_line(cut: int) -> bytes:
    """The line that stands where a capped log's middle was cut."""
    return (f"\n[flowlord: {cut} bytes of output cut here, to keep the log under its "
            f"cap]\n").encode()


class CappedLog:
    """Output capped at `max_bytes` as it comes: the first half is passed on at once
    (`_out`), the last half kept in memory; `close()` passes on the line saying how much
    was cut, then the tail. One thread writes it. The subclasses say where it goes: a
    file here (TaskLog), the redis bus for `flowlord worker` (flowlord/bus/logstream.py)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.head_left = max_bytes // 2  # bytes that still go straight out
        self.tail_max = max_bytes - max_bytes // 2
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.cut = 0  # bytes dropped between the head and the tail
        self.written = False  # any output at all: a silent task has no log

    def _out(self, data: bytes) -> None:
        raise NotImplementedError

    def write(self, chunk: bytes) -> None:
        self.written = True
        if self.head_left > 0:
            head, chunk = chunk[:self.head_left], chunk[self.head_left:]
            self._out(head)
            self.head_left -= len(head)
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= self.tail_max:  # whole chunks out
            self.cut += len(self.tail[0])
            self.tail_size -= len(self.tail.popleft())
        if self.tail_size > self.tail_max:  # then the front of the oldest one
            extra = self.tail_size - self.tail_max
            self.tail[0] = self.tail[0][extra:]
            self.tail_size -= extra
            self.cut += extra

    def close(self) -> None:
        """The cut line (when something was cut) and the tail, passed on."""
        if self.cut:
            self._out(cut_line(self.cut))
        while self.tail:
            self._out(self.tail.popleft())
        self.tail_size = 0


class TaskLog(CappedLog):
    """The log of one attempt, written to its file as its output comes."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(max_bytes)
        self.path = path
        self.file: BinaryIO | None = None  # made at the first output: a silent task has none

    def _out(self, data: bytes) -> None:
        if self.file is None:
            self.file = _create(self.path)
        self.file.write(data)

    def close(self) -> None:
        if not self.written:
            return
        super().close()
        if self.file is not None:
            self.file.close()


def _create(path: str) -> BinaryIO:
    """The log file, new (a task number is never reused), readable by the group; its
    directory made again when it is gone (made only then: a look at it for every task
    cost the loop as much as the file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o640)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, flags, 0o640)
    return os.fdopen(fd, "wb", buffering=0)  # unbuffered: `flowlord logs --follow` sees it


def writable_dir(path: str) -> str:
    """`path`, made if missing; OSError when it cannot be made or written to."""
    os.makedirs(path, mode=0o750, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(13, "cannot write to the directory", path)
    return path


def read_log(directory: str, task_no: int, tail_lines: int | None = None) -> bytes | None:
    """A task's log (its last `tail_lines` lines); None when it has none."""
    try:
        with open(log_path(directory, task_no), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
    return data


def logged_task_nos(directory: str) -> list[int]:
    """The task numbers that have a log in `directory`."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(int(m[1]) for name in os.listdir(directory)
                      if (m := _NAME.fullmatch(name)))
    return []


def remove_logs(directory: str, task_nos: list[int]) -> int:
    """Delete these tasks' logs; how many there were."""
    removed = 0
    for task_no in task_nos:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path(directory, task_no))
            removed += 1
    return removed


def read_log_end(directory: str, task_no: int, max_bytes: int) -> tuple[bytes, int] | None:
    """The last `max_bytes` of a task's log, from the start of a line when the cut falls
    inside one, and the log's whole size; None when it has none. Reads no more than
    that, however long the log (the dashboard shows a running task's log every few
    seconds)."""
    try:
        with open(log_path(directory, task_no), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= max_bytes:
                return f.read(), size
            f.seek(size - max_bytes)
            end = f.read(max_bytes)
    except FileNotFoundError:
        return None
    newline = end.find(b"\n")
    return (end[newline + 1:] if 0 <= newline < len(end) - 1 else end), size

