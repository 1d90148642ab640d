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
import math
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
LONGEST_POLL_MS = 60_000  # a timeout of days is waited for a minute at a time
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
    """One task's process. `run()` starts it and minds it on the calling thread (the
    pool of `flowlord worker`); the local bus minds all of its processes on one thread
    instead (flowlord/process_watch.py), through `start`, the `minding` and `finish`.
    Either way the result goes to `on_done`."""

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
        self.started = ""  # when the process started; "" while it waits for a slot
        self.cancelled = False  # set by cancel(): it is not to start at all
        self.minding: Minding | None = None  # its process, once started
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        # held until the result is handed over: a lock, as an Event (a Condition and its
        # lock) cost the loop more to make than a task's claim
        self._ended = threading.Lock()
        self._ended.acquire()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the result to be handed over; False when `timeout` passed first."""
        if not self._ended.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        self._ended.release()
        return True

    def cancel(self) -> bool:
        """Keep a task that waits for a slot from starting; False when it has started."""
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
        """Start the process, mind it here until it has exited, hand the result over."""
        poll = Poll()
        done = self.start(poll)
        minding = self.minding
        while done is None:
            assert minding is not None
            try:
                for owner, fd in poll.wait(minding.next_check(time.monotonic())):
                    owner.ready(fd, time.monotonic())
                minding.check(time.monotonic())
                if minding.done:
                    done = self.finish()
            except Exception as e:  # a result must come back, or the task stays running
                done = self.abandon(e)
        self.hand_over(done)

    def start(self, poll: Poll) -> Done | None:
        """Start the process, its descriptors minded through `poll`; None once it runs,
        else its result (cancelled, stopped while it waited, a command that cannot start)."""
        try:
            return self._start(poll)
        except Exception as e:
            return self.abandon(e)

    def finish(self) -> Done:
        """The result of a process whose minding is done."""
        assert self.minding is not None and self._proc is not None
        try:
            tail, timed_out = self.minding.close()
        finally:
            self._close_log()
        return Done(self.stored.task_no, *self._result(self._proc.returncode, timed_out, tail),
                    utc_now_ms(), self.started)

    def abandon(self, error: Exception) -> Done:
        """The result when minding the task failed in our own code: an error that says
        so. What it started is ended, its descriptors closed."""
        if self.minding is not None:
            with contextlib.suppress(Exception):
                self.minding.close()
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # reaped, not left a zombie
                self._proc.wait(LINGER)
        self._close_log()
        return Done(self.stored.task_no, "error",
                    f"internal error: {type(error).__name__}: {error}", utc_now_ms(),
                    self.started)

    def hand_over(self, done: Done) -> None:
        try:
            self.on_done(done)
        finally:
            self._ended.release()

    def _start(self, poll: Poll) -> Done | None:
        no = self.stored.task_no
        with self._lock:
            if self.cancelled:
                return Done(no, "", "", "", ran=False)
            if self.stop_reason:  # stopped while it waited for a slot
                return Done(no, "error", self.stop_reason, utc_now_ms())
            self.started = utc_now_ms()
        if self.open_log is not None:
            self.log = self.open_log(no)
        elif self.log_dir is not None:  # made at its first output; on a full disk, given up
            self.log = TaskLog(log_path(self.log_dir, no), self.log_max_bytes)
        env = environment(self.stored.task, self.inherited)
        # its pipes' read ends stay bare descriptors: Popen's PIPE would wrap each in a
        # buffered file the poll never uses, a cost the task loop measured (docs/decisions.md,
        # Performance of the task loop)
        err = out = None
        child_ends = []  # the child's ends, closed here once it has them
        try:
            err, err_w = os.pipe2(os.O_CLOEXEC)
            child_ends.append(err_w)
            stdout = _devnull()
            if self.log:
                out, stdout = os.pipe2(os.O_CLOEXEC)
                child_ends.append(stdout)
            proc = subprocess.Popen(self.argv, executable=executable(self.argv[0], env.get("PATH")),
                                    stdin=_devnull(), stdout=stdout, stderr=err_w, env=env,
                                    start_new_session=True, close_fds=True)
        except (OSError, ValueError) as e:  # no such program, a NUL in a value, no fds left, …
            _close(err, out)
            forget(self.argv[0], env.get("PATH"))
            self._log(f"cannot start {self.argv[0]!r}: {e}\n".encode())
            self._close_log()
            return Done(no, "error", f"cannot start {self.argv[0]!r}: {e}", utc_now_ms(),
                        self.started)
        except BaseException:  # ours (abandon): the read ends go with it
            _close(err, out)
            raise
        finally:
            _close(*child_ends)
        with self._lock:
            self._proc = proc
            stopped = self.stop_reason
        if stopped:
            _signal_group(proc.pid, signal.SIGKILL)
        assert err is not None
        self.minding = Minding(proc, out, err, self.timeout.total_seconds(), poll, self._log)
        return None

    def _log(self, chunk: bytes) -> None:
        """Output to the task's log; a log that cannot be written (a full disk) is given
        up, never the watch over the process (its timeout, its exit, its stderr)."""
        if self.log is None:
            return
        try:
            self.log.write(chunk)
        except OSError:
            self._close_log()

    def _close_log(self) -> None:
        if self.log is not None:
            with contextlib.suppress(OSError, AttributeError):
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


class Poll:
    """poll(2) over the descriptors of processes minded on one thread, each event handed
    to the process it belongs to (not select(): descriptors above 1024 are fine). A
    descriptor leaves it before it is closed: another thread may get its number next."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._owners: dict[int, Minding | None] = {}

    def add(self, fd: int, owner: Minding | None) -> None:
        """Watch `fd` for input (its owner None: the caller's own, `wait` skips it)."""
        self._poll.register(fd, select.POLLIN | select.POLLHUP)
        self._owners[fd] = owner

    def remove(self, fd: int) -> None:
        self._poll.unregister(fd)
        del self._owners[fd]

    def wait(self, until: float, woken: Callable[[], None] = lambda: None
             ) -> list[tuple[Minding, int]]:
        """The descriptors that became ready before `until` (monotonic), with their
        processes; `woken` is called when an ownerless one was among them."""
        ms = -1 if until == math.inf else min(  # poll() takes at most 2**31 - 1 ms
            max(0, math.ceil((until - time.monotonic()) * 1000)), LONGEST_POLL_MS)
        ready = []
        for fd, _ in self._poll.poll(ms):
            owner = self._owners.get(fd)
            if owner is not None:
                ready.append((owner, fd))
            elif fd in self._owners:
                woken()
        return ready


class Minding:
    """A started process, watched until it has exited: its stderr read as it comes (the
    tail kept), its output to `write_log`, its timeout (SIGTERM to its group, then
    SIGKILL), and what it left in its group killed once it has exited.

    Its pipes are read until they close; once the command has exited, for LINGER seconds
    more at most, in case something that escaped the group still holds them open. A
    command that closes or redirects its own output is still watched until it exits:
    its exit is seen through a pidfd, readable when it can be reaped (its pipes close a
    moment before that), or where there are no pidfds by looking every WATCH_TICK_MS.
    The owner of the poll calls `ready(fd)` for each of its descriptors that is, and
    `check(now)` by `next_check()`; `done` says when `close()` may be called.
    """

    def __init__(self, proc: subprocess.Popen[bytes], out: int | None, err: int,
                 timeout: float, poll: Poll, write_log: Callable[[bytes], None]) -> None:
        self.proc = proc
        self.poll = poll
        self.write_log = write_log
        self.err = err  # the read ends of its stderr and (with a log) its stdout
        # stdout first: of output on both at once, what it printed is logged first
        self.pipes = [err] if out is None else [out, err]
        self.tail: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.deadline = time.monotonic() + timeout
        self.kill_at: float | None = None  # after the timeout's SIGTERM
        self.timed_out = False
        self.exited_at: float | None = None
        self.done = False
        self.next_look = self.deadline  # without a pidfd: when its exit is looked for next
        for fd in self.pipes:
            poll.add(fd, self)
        self.pidfd = _pidfd(proc.pid)
        if self.pidfd is not None:
            poll.add(self.pidfd, self)
        else:
            self.next_look = time.monotonic() + WATCH_TICK_MS / 1000

    def ready(self, fd: int, now: float) -> None:
        if fd == self.pidfd:
            self._drop_pidfd()
            if self.proc.poll() is not None:
                self._exited(now)
            else:  # not reapable after all: looked for now and then from here on
                self.next_look = now + WATCH_TICK_MS / 1000
            return
        if fd not in self.pipes:
            return
        chunk = os.read(fd, 65536)
        if not chunk:  # closed: the command (and what it started) is done with it
            self.poll.remove(fd)
            self.pipes.remove(fd)
            os.close(fd)
            if self.exited_at is not None and not self.pipes:
                self.done = True
            return
        self.write_log(chunk)
        if fd == self.err:
            self.tail.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.tail[0]) >= STDERR_TAIL_BYTES:
                self.size -= len(self.tail.popleft())

    def next_check(self, now: float) -> float:
        """When `check` is due next (monotonic; inf: only when a descriptor is ready)."""
        if self.done:
            return math.inf
        if self.exited_at is not None:
            return self.exited_at + LINGER
        when = self.kill_at if self.kill_at is not None else self.deadline
        if self.pidfd is None:  # its exit is not announced: look now and then
            return min(when, self.next_look)
        return when

    def check(self, now: float) -> None:
        if self.exited_at is None and self.pidfd is None:
            self.next_look = now + WATCH_TICK_MS / 1000
            if self.proc.poll() is not None:
                self._exited(now)
        if self.exited_at is not None:
            if not self.pipes or now - self.exited_at >= LINGER:
                self.done = True
        elif self.kill_at is None and now >= self.deadline:
            _signal_group(self.proc.pid, signal.SIGTERM)
            self.timed_out = True
            self.kill_at = now + KILL_AFTER
        elif self.kill_at is not None and now >= self.kill_at:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.kill_at = now + WATCH_TICK_MS / 1000  # again, until it has exited

    def close(self) -> tuple[bytes, bool]:
        """Its descriptors closed; the end of its stderr, and whether it timed out."""
        for fd in self.pipes:
            self.poll.remove(fd)
            os.close(fd)
        self.pipes.clear()
        self._drop_pidfd()
        self.done = True
        return b"".join(self.tail)[-STDERR_TAIL_BYTES:], self.timed_out

    def _exited(self, now: float) -> None:
        self.exited_at = now
        _signal_group(self.proc.pid, signal.SIGKILL)  # leftovers would hold the pipes
        if not self.pipes:
            self.done = True

    def _drop_pidfd(self) -> None:
        if self.pidfd is not None:  # readable for good once it has exited
            self.poll.remove(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


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


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
