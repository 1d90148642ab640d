"""Running one task's command as a process (CONTRACT §6).

argv only, never a shell: `{info} {type} {job} {id} {meta}` are replaced inside
each argument, so a value with spaces, quotes or `$(…)` stays one literal
argument. The task also travels in the environment. The process leads its own
process group, so a timeout or a stop ends whatever it started too.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flowlord.durations import format_duration
from flowlord.model import StoredTask, Task

STDERR_TAIL_BYTES = 4096  # the end of stderr kept for `msg`; the rest is read and dropped
KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL
_TOKEN = re.compile(r"\{(info|type|job|id|meta)\}")


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def argv_for(command: Sequence[str], task: Task) -> list[str]:
    """The command with the task's values put into each argument (one pass: a value
    that itself contains `{info}` is not replaced again)."""
    values = {"info": task.info, "type": task.type, "job": task.job, "id": task.id,
              "meta": task.meta}
    return [_TOKEN.sub(lambda m: values[m.group(1)], arg) for arg in command]


def environment(task: Task) -> dict[str, str]:
    return {**os.environ, "FLOWLORD_TASK": task.to_json(), "FLOWLORD_TASK_ID": task.id,
            "FLOWLORD_TASK_TYPE": task.type, "FLOWLORD_TASK_JOB": task.job,
            "FLOWLORD_TASK_INFO": task.info}


@dataclass(frozen=True)
class Done:
    """A finished task: what the daemon records."""

    task_no: int
    result: str  # complete | error
    msg: str
    ended: str


class Run:
    """One task's process, waited for on its own thread; `on_done` gets the result."""

    def __init__(self, stored: StoredTask, command: Sequence[str], timeout: timedelta,
                 on_done: Callable[[Done], None]) -> None:
        self.stored = stored
        self.argv = argv_for(command, stored.task)
        self.timeout = timeout
        self.on_done = on_done
        self.stop_reason = ""  # set by stop(): the daemon ended the task
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"task-{stored.task_no}")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, reason: str) -> None:
        """End the process group now (SIGTERM, then SIGKILL)."""
        with self._lock:
            self.stop_reason = reason
            proc = self._proc
        if proc is not None:
            _signal_group(proc.pid, signal.SIGTERM)
            threading.Timer(KILL_AFTER, _signal_group, (proc.pid, signal.SIGKILL)).start()

    def _run(self) -> None:
        self.on_done(self._execute())

    def _execute(self) -> Done:
        no = self.stored.task_no
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=environment(self.stored.task), start_new_session=True,
                                    close_fds=True)
        except (OSError, ValueError) as e:  # no such program, a NUL in a value, …
            return Done(no, "error", f"cannot start {self.argv[0]!r}: {e}", now_text())
        with self._lock:
            self._proc = proc
            stopped = self.stop_reason
        if stopped:
            _signal_group(proc.pid, signal.SIGKILL)
        tail: collections.deque[bytes] = collections.deque()
        reader = threading.Thread(target=_keep_tail, args=(proc, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=self.timeout.total_seconds())
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_AFTER)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # whatever the command left running in its group goes too: it holds stderr open
        _signal_group(proc.pid, signal.SIGKILL)
        reader.join(timeout=KILL_AFTER)
        return Done(no, *self._result(proc.returncode, timed_out, b"".join(tail)), now_text())

    def _result(self, code: int, timed_out: bool, stderr: bytes) -> tuple[str, str]:
        text = stderr.decode("utf-8", "replace").strip()
        if self.stop_reason:
            return "error", self.stop_reason
        if timed_out:
            return "error", f"timeout after {format_duration(self.timeout)}"
        if code == 0:
            return "complete", ""
        what = (f"killed by {signal.Signals(-code).name}" if code < 0
                else f"exit status {code}")
        return "error", f"{what}: {text}" if text else what


def _keep_tail(proc: subprocess.Popen[bytes], tail: collections.deque[bytes]) -> None:
    """Read stderr to its end, keeping only the last STDERR_TAIL_BYTES."""
    assert proc.stderr is not None
    size = 0
    with proc.stderr:
        while chunk := os.read(proc.stderr.fileno(), 65536):
            tail.append(chunk)
            size += len(chunk)
            while size - len(tail[0]) >= STDERR_TAIL_BYTES:
                size -= len(tail.popleft())
    if size > STDERR_TAIL_BYTES:
        joined = b"".join(tail)[-STDERR_TAIL_BYTES:]
        tail.clear()
        tail.append(joined)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
