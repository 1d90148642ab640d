"""Running one task's command as a process (README.md, Running tasks).

argv only, never a shell: `{info} {type} {job} {id} {meta}` are replaced inside
each argument, so a value with spaces, quotes or `$(…)` stays one literal
argument. The task also travels in the environment. The process leads its own
process group, so a timeout or a stop ends whatever it started too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from flowlord.clock import utc_now_ms
from flowlord.durations import format_duration
from flowlord.executables import executable, forget
from flowlord.model import Done, StoredTask, Task
from flowlord.tasklog import DEFAULT_MAX_BYTES, CappedLog, TaskLog, log_path

STDERR_TAIL_BYTES = 4096  # the end of stderr kept for `msg`; the rest is read and dropped
KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL
WATCH_TICK_MS = 50  # between looks at a process that writes nothing
LINGER = 1.0  # seconds stderr is read after the command exited
_TOKEN = re.compile(r"\{(info|type|job|id|meta)\}")


def argv_for(command: Sequence[str], task: Task) -> list[str]:
    """The command with the task's values put into each argument (one pass: a value
    that itself contains `{info}` is not replaced again)."""
    values = {"info": task.info, "type": task.type, "job": task.job, "id": task.id,
              "meta": task.meta}
    return [_TOKEN.sub(lambda m: values[m.group(1)], arg) if "{" in arg else arg
            for arg in command]


# systemd's variables are for the daemon: a worker that used them would speak for it
_DAEMON_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                "LISTEN_FDNAMES")


def inherited_environment() -> dict[str, str]:
    """The daemon's environment without systemd's variables: read once per bus, as
    reading os.environ costs more than spawning a short task."""
    return {k: v for k, v in os.environ.items() if k not in _DAEMON_ONLY}


def topic_environment(env: Mapping[str, str], inherit: bool = True,
                      inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """A topic's environment, before the task's own variables: the daemon's (without
    systemd's variables, `inherited` when given) unless `[workers.<topic>] inherit_env =
    false`, then the topic's `env` table over it. Without PATH, a command is looked up in
    /bin and /usr/bin (os.defpath)."""
    base = (dict(inherited) if inherited is not None else inherited_environment()) \
        if inherit else {}
    return {**base, **env}


def environment(task: Task, inherited: dict[str, str] | None = None) -> dict[str, str]:
    """A task's environment: its topic's (`inherited`; None: the daemon's), then the
    task's own variables, which win."""
    if inherited is None:
        inherited = inherited_environment()
    return {**inherited, "FLOWLORD_TASK": task.to_json(), "FLOWLORD_TASK_ID": task.id,
            "FLOWLORD_TASK_TYPE": task.type, "FLOWLORD_TASK_JOB": task.job,
            "FLOWLORD_TASK_INFO": task.info}



class Run:
    """One task's process; `run()` (on a worker thread) waits for it and hands the
    result to `on_done`."""

    def __init__(self, stored: StoredTask, command: Sequence[str], timeout: timedelta,
                 on_done: Callable[[Done], None],
                 inherited: dict[str, str] | None = None, log_dir: str | None = None,
                 log_max_bytes: int = DEFAULT_MAX_BYTES,
                 open_log: Callable[[int], CappedLog] | None = None) -> None:
        self.stored = stored
        self.log_dir = log_dir  # where its log goes (flowlord/tasklog.py); None: no log
        self.log_max_bytes = log_max_bytes
        # or, when given, what makes its log instead of a file here (`flowlord worker`:
        # the redis bus, flowlord/bus/logstream.py)
        self.open_log = open_log
        self.log: CappedLog | None = None
        self.inherited = inherited  # the environment's base (None: read os.environ)
        self.argv = argv_for(command, stored.task)
        self.timeout = timeout
        self.on_done = on_done
        self.stop_reason = ""  # set by stop(): the daemon ended the task
        self.started = ""  # when the process started; "" while it waits for a thread
        self.cancelled = False  # set by cancel(): it is not to start at all
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ended = threading.Event()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the result to be handed over; False when `timeout` passed first."""
        return self._ended.wait(timeout)

    def cancel(self) -> bool:
        """Keep a task that waits for a thread from starting; False when it has started."""
        with self._lock:
            if not self.started:
                self.cancelled = True
            return self.cancelled

    def stop(self, reason: str) -> None:
        """End the process group now (SIGTERM, then SIGKILL)."""
        with self._lock:
            self.stop_reason = reason
            proc = self._proc
        if proc is not None:
            _signal_group(proc.pid, signal.SIGTERM)
            threading.Timer(KILL_AFTER, _signal_group, (proc.pid, signal.SIGKILL)).start()

    def run(self) -> None:
        try:
            done = self._execute()
        except Exception as e:  # a result must come back, or the task stays running
            done = Done(self.stored.task_no, "error", f"internal error: {type(e).__name__}: {e}",
                        utc_now_ms())
        try:
            self.on_done(done)
        finally:
            self._ended.set()

    def _execute(self) -> Done:
        no = self.stored.task_no
        with self._lock:
            if self.cancelled:
                return Done(no, "", "", "", ran=False)
            if self.stop_reason:  # stopped while it waited for a worker thread
                return Done(no, "error", self.stop_reason, utc_now_ms())
            self.started = utc_now_ms()
        if self.open_log is not None:
            self.log = self.open_log(no)
        elif self.log_dir is not None:  # made at its first output; on a full disk, given up
            self.log = TaskLog(log_path(self.log_dir, no), self.log_max_bytes)
        env = environment(self.stored.task, self.inherited)
        try:
            proc = subprocess.Popen(self.argv, executable=executable(self.argv[0], env.get("PATH")),
                                    stdin=_devnull(),
                                    stdout=subprocess.PIPE if self.log else _devnull(),
                                    stderr=subprocess.PIPE, env=env,
                                    start_new_session=True, close_fds=True)
        except (OSError, ValueError) as e:  # no such program, a NUL in a value, …
            forget(self.argv[0], env.get("PATH"))
            if self.log is not None:
                self._log(f"cannot start {self.argv[0]!r}: {e}\n".encode())
                with contextlib.suppress(OSError, AttributeError):
                    self.log.close()
            return Done(no, "error", f"cannot start {self.argv[0]!r}: {e}", utc_now_ms(),
                        self.started)
        with self._lock:
            self._proc = proc
            stopped = self.stop_reason
        if stopped:
            _signal_group(proc.pid, signal.SIGKILL)
        tail, timed_out = self._watch(proc)
        return Done(no, *self._result(proc.returncode, timed_out, tail), utc_now_ms(), self.started)

    def _watch(self, proc: subprocess.Popen[bytes]) -> tuple[bytes, bool]:
        """Mind the process until it has exited, reading its stderr (keeping the tail)
        and, with a log, its stdout too (both go to the log as they come).

        At the timeout its group gets SIGTERM, then SIGKILL. Once the command has exited,
        what it left in its group is killed; its pipes are read for LINGER seconds more,
        in case something that escaped the group still holds them open. A command that
        closes or redirects its own output is still watched until it exits. One thread,
        and no polling of a short task: its exit closes its pipes at once.
        """
        assert proc.stderr is not None
        err = proc.stderr.fileno()
        pipes = {f.fileno(): f for f in (proc.stdout, proc.stderr) if f is not None}
        tail: collections.deque[bytes] = collections.deque()
        size = 0
        deadline = time.monotonic() + self.timeout.total_seconds()
        kill_at: float | None = None  # after the timeout's SIGTERM
        exited_at: float | None = None
        poller = select.poll()  # not select(): descriptors above 1024 are fine
        for fd in pipes:
            poller.register(fd, select.POLLIN | select.POLLHUP)
        # Once its pipes are closed, the process is waited for through a pidfd, readable
        # when it exits: its pipes close a moment before it can be reaped, and about one
        # `true` in seven was not yet reapable then, which proc.wait(timeout) met with a
        # sleep of a millisecond (bench/tasks.py, whole loop). Without pidfds, as before.
        pidfd = _pidfd(proc.pid)
        exit_poller = None
        if pidfd is not None:
            exit_poller = select.poll()
            exit_poller.register(pidfd, select.POLLIN)
        try:
            while True:
                if pipes:
                    for fd, _ in poller.poll(WATCH_TICK_MS):
                        chunk = os.read(fd, 65536)
                        if not chunk:  # closed: the command (and what it started) is done
                            poller.unregister(fd)
                            pipes.pop(fd).close()
                            continue
                        if self.log is not None:
                            self._log(chunk)
                        if fd == err:
                            tail.append(chunk)
                            size += len(chunk)
                            while size - len(tail[0]) >= STDERR_TAIL_BYTES:
                                size -= len(tail.popleft())
                elif exit_poller is not None:  # woken the moment it exits
                    exit_poller.poll(WATCH_TICK_MS)
                else:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=WATCH_TICK_MS / 1000)
                now = time.monotonic()
                if proc.poll() is not None:
                    if exited_at is None:
                        exited_at = now
                        _signal_group(proc.pid, signal.SIGKILL)  # leftovers hold the pipes
                    if not pipes or now - exited_at > LINGER:
                        break
                elif kill_at is None and now >= deadline:
                    _signal_group(proc.pid, signal.SIGTERM)
                    kill_at = now + KILL_AFTER
                elif kill_at is not None and now >= kill_at:
                    _signal_group(proc.pid, signal.SIGKILL)
        finally:
            for f in pipes.values():
                f.close()
            if pidfd is not None:
                os.close(pidfd)
            if self.log is not None:
                with contextlib.suppress(OSError):
                    self.log.close()
        return b"".join(tail)[-STDERR_TAIL_BYTES:], kill_at is not None

    def _log(self, chunk: bytes) -> None:
        """Output to the task's log; a log that cannot be written (a full disk) is given
        up, never the watch over the process (its timeout, its exit, its stderr)."""
        assert self.log is not None
        try:
            self.log.write(chunk)
        except OSError:
            with contextlib.suppress(OSError):
                self.log.close()
            self.log = None

    def _result(self, code: int, timed_out: bool, stderr: bytes) -> tuple[str, str]:
        text = stderr.decode("utf-8", "replace").strip()
        if self.stop_reason:
            return "error", self.stop_reason
        if timed_out:
            return "error", f"timeout after {format_duration(self.timeout)}"
        if code == 0:
            return "complete", ""
        what = f"killed by {_signal_name(-code)}" if code < 0 else f"exit status {code}"
        return "error", f"{what}: {text}" if text else what


def _pidfd(pid: int) -> int | None:
    """A pidfd of our own child (not reaped yet, so its pid cannot have been reused), or
    None where there are none (Linux before 5.3, another system, a sandbox refusing)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


@functools.cache
def _devnull() -> int:
    """/dev/null, opened once (Popen's DEVNULL opens it for every process); never
    inherited: each child gets it as its stdin and stdout only."""
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
