"""The local bus's one thread that starts and minds every process
(flowlord/process_watch.py), with real processes: slots per topic, the order of
starts, a failure of our own code in one run, the thread's end."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from flowlord import process_watch, workers
from flowlord.model import Done, StoredTask, Task
from flowlord.process_watch import ProcessWatch
from flowlord.workers import Minding, Run

pytestmark = pytest.mark.slow
PY = sys.executable


def run(no: int, topic: str, command: list[str], results: queue.SimpleQueue[Done],
        timeout: float = 30) -> Run:
    task = Task(type=topic, job="", info=f"i{no}", meta="", id=f"id-{no}",
                created="2026-11-23T00:00:00Z")
    return Run(StoredTask(no, task), command, timedelta(seconds=timeout), results.put)


def collect(results: queue.SimpleQueue[Done], n: int) -> list[Done]:
    return sorted((results.get(timeout=30) for _ in range(n)), key=lambda d: d.task_no)


def held_until(path: str) -> list[str]:
    """A command that runs until `path` exists (a minute at most: a failed test leaves
    no process behind for long)."""
    return [PY, "-c", "import os, sys, time\nend = time.monotonic() + 60\n"
            "while not os.path.exists(sys.argv[1]) and time.monotonic() < end: "
            "time.sleep(0.01)", path]


def wait_for(condition: object, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "the condition was not met in time"
        time.sleep(0.01)


def test_each_topic_runs_its_concurrency_at_once_in_the_order_submitted(
        tmp_path: Path) -> None:
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    order = tmp_path / "order"
    # each task notes its start, then holds its slot until its own file appears
    hold = [PY, "-c", "import os, sys, time\nend = time.monotonic() + 60\n"
            f"open({str(order)!r}, 'a').write(os.environ['FLOWLORD_TASK_ID'] + ' ')\n"
            f"while not os.path.exists({str(tmp_path)!r} + '/go-' + "
            "os.environ['FLOWLORD_TASK_ID']) and time.monotonic() < end: time.sleep(0.01)"]
    watch = ProcessWatch({"one": 1, "two": 2})
    for no in (1, 2, 3):
        watch.submit(run(no, "one", hold, results))
    for no in (4, 5, 6):
        watch.submit(run(no, "two", hold, results))

    def started() -> list[str]:
        return order.read_text().split() if order.exists() else []
    wait_for(lambda: len(started()) == 3)
    assert sorted(started()) == ["id-1", "id-4", "id-5"]  # one of `one`, two of `two`
    assert watch.waiting("one") == 2 and watch.waiting("two") == 1
    for no in (1, 4):
        (tmp_path / f"go-id-{no}").touch()
    wait_for(lambda: len(started()) == 5)
    assert sorted(started()[3:]) == ["id-2", "id-6"]  # the next of each, in order
    for no in (2, 3, 5, 6):
        (tmp_path / f"go-id-{no}").touch()
    done = collect(results, 6)
    assert [(d.task_no, d.result) for d in done] == [(n, "complete") for n in range(1, 7)]
    assert started()[-1] == "id-3"
    watch.close()


def test_a_failure_of_our_own_while_minding_one_process_ends_only_that_task(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    ready = Minding.ready

    def failing(self: Minding, fd: int, now: float) -> None:
        if self.proc.args[-1] == "bad":  # type: ignore[index]
            raise RuntimeError("broken")
        ready(self, fd, now)
    monkeypatch.setattr(Minding, "ready", failing)
    watch = ProcessWatch({"t": 2})
    gate = tmp_path / "go"
    # task 2 runs on past task 1's failure: that failure must leave it alone
    watch.submit(run(1, "t", [PY, "-c", "print('x')", "bad"], results))
    watch.submit(run(2, "t", [*held_until(str(gate)), "good"], results))
    first = results.get(timeout=30)
    assert (first.task_no, first.result) == (1, "error")
    assert first.msg == "internal error: RuntimeError: broken"
    gate.touch()
    watch.submit(run(3, "t", [PY, "-c", "pass", "good"], results))
    assert [(d.task_no, d.result) for d in collect(results, 2)] == [(2, "complete"),
                                                                   (3, "complete")]
    watch.close()


# run in a fresh interpreter: in pytest's own process, threads other tests left
# finishing may open a file between the two listings of /proc/self/fd, and whether
# /dev/null is open yet depends on which tests ran first
FD_CHECK = """
import os, queue, shutil, sys, tempfile, threading, time
from datetime import timedelta
from flowlord.model import StoredTask, Task
from flowlord.process_watch import ProcessWatch
from flowlord.workers import Run, _devnull

_devnull()  # opened once for good, by whichever process comes first
before = set(os.listdir("/proc/self/fd"))
results = queue.SimpleQueue()
task = Task(type="t", job="", info="", meta="", id="id-1", created="2026-11-23T00:00:00Z")
logs = tempfile.mkdtemp()
watch = ProcessWatch({"t": 1})
watch.submit(Run(StoredTask(1, task), [sys.executable, "-c", "import time; time.sleep(0.3)"],
                 timedelta(seconds=30), results.put))
watch.submit(Run(StoredTask(2, task), ["sh", "-c", "echo out; echo err >&2; exit 3"],
                 timedelta(seconds=30), results.put, log_dir=logs))  # its stdout piped too
watch.submit(Run(StoredTask(3, task), ["/no/such/program"], timedelta(seconds=30),
                 results.put, log_dir=logs))  # its pipes made, then it cannot start
watch.close()
print([results.get(timeout=30).result for _ in range(3)])  # what ran is minded to its end
end = time.monotonic() + 30
while any(t.name == "tasks" and t.is_alive() for t in threading.enumerate()):
    assert time.monotonic() < end, "the thread did not end"
    time.sleep(0.01)
print(sorted(set(os.listdir("/proc/self/fd")) - before))
unused = ProcessWatch({"t": 1})  # never given a run: no thread, and its pipe closed
unused.close()
print(sorted(set(os.listdir("/proc/self/fd")) - before))
shutil.rmtree(logs)
"""


def test_the_thread_ends_after_close_once_its_processes_have_ended_and_leaves_no_fd(
        ) -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([PY, "-c", FD_CHECK], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["['complete', 'error', 'error']", "[]", "[]", ""]


# a failure of our own while a process starts (here Popen itself raising, the one fake):
# the task ends in an internal error and the pipes made for it are closed
FAILED_START = """
import os, subprocess
from datetime import timedelta
from flowlord.model import StoredTask, Task
from flowlord.workers import Poll, Run, _devnull

def broken(*args, **kwargs):
    raise RuntimeError("broken")

_devnull()
before = set(os.listdir("/proc/self/fd"))
subprocess.Popen = broken
done = Run(StoredTask(1, Task(type="t", id="x")), ["true"], timedelta(seconds=30),
           print, log_dir="unused").start(Poll())  # with a log: both pipes made
print(done.result, done.msg)
print(sorted(set(os.listdir("/proc/self/fd")) - before))
"""


def test_a_start_that_fails_in_our_own_code_leaves_no_fd() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([PY, "-c", FAILED_START], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["error internal error: RuntimeError: broken", "[]", ""]


def test_take_waiting_leaves_the_runs_a_free_slot_takes(tmp_path: Path) -> None:
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    gate = tmp_path / "go"
    hold = held_until(str(gate))
    watch = ProcessWatch({"t": 2})
    first = run(1, "t", hold, results)
    watch.submit(first)
    wait_for(lambda: bool(first.started))
    for no in (2, 3, 4):  # the second slot takes task 2, started by now or not
        watch.submit(run(no, "t", hold, results))
    taken = watch.take_waiting()
    assert [r.stored.task_no for r in taken] == [3, 4]
    gate.touch()
    watch.submit(run(5, "t", [PY, "-c", "pass"], results))
    assert [(d.task_no, d.result) for d in collect(results, 3)] == [
        (1, "complete"), (2, "complete"), (5, "complete")]
    watch.close()


def test_a_submit_during_the_threads_read_of_its_wake_pipe_is_not_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving forced: the loop submits while the watch thread drains its wake
    pipe (the read releases the interpreter lock). Every later submit must still start."""
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    watch = ProcessWatch({"t": 1})
    watch.submit(run(1, "t", ["true"], results))
    assert collect(results, 1)[0].result == "complete"
    in_read, submitted = threading.Event(), threading.Event()
    armed = [True]
    real_read = os.read

    class Os:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def read(self, fd: int, n: int) -> bytes:
            if armed[0] and fd == watch._wake_r:
                armed[0] = False
                in_read.set()
                assert submitted.wait(30)
            return real_read(fd, n)
    monkeypatch.setattr(process_watch, "os", Os())
    watch.submit(run(2, "t", ["true"], results))
    assert in_read.wait(30)
    watch.submit(run(3, "t", ["true"], results))
    submitted.set()
    assert [d.task_no for d in collect(results, 2)] == [2, 3]
    watch.submit(run(4, "t", ["true"], results))  # after a drain that saw task 3's wake
    assert collect(results, 1)[0].task_no == 4
    watch.close()


def test_a_timeout_of_weeks_is_waited_for_in_bounded_polls() -> None:
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    watch = ProcessWatch({"t": 1})
    watch.submit(run(1, "t", ["true"], results, timeout=30 * 86400))  # poll() ms overflow
    watch.submit(run(2, "t", ["true"], results))
    assert [(d.task_no, d.result) for d in collect(results, 2)] == [(1, "complete"),
                                                                    (2, "complete")]
    watch.close()


def test_without_pidfds_an_exit_is_seen_long_before_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "_pidfd", lambda pid: None)  # an old kernel, a sandbox
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    watch = ProcessWatch({"t": 2})
    # `true` closes its pipes before it can be reaped; `exec 2>&-` closes stderr early
    # (with an hour's timeout: an exit seen only at the deadline is no result in `collect`)
    watch.submit(run(1, "t", ["true"], results, timeout=3600))
    watch.submit(run(2, "t", ["sh", "-c", "exec 2>&-; sleep 0.2"], results, timeout=3600))
    assert [(d.task_no, d.result) for d in collect(results, 2)] == [(1, "complete"),
                                                                   (2, "complete")]
    watch.close()


def test_a_failure_of_the_threads_own_ends_what_runs_and_the_thread_goes_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    results: queue.SimpleQueue[Done] = queue.SimpleQueue()
    watch = ProcessWatch({"t": 1})
    first = run(1, "t", held_until(str(tmp_path / "never")), results)
    watch.submit(first)
    wait_for(lambda: bool(first.started))
    wait = workers.Poll.wait

    def broken(self: workers.Poll, until: float, woken: object = None) -> object:
        monkeypatch.setattr(workers.Poll, "wait", wait)  # once
        raise OSError("poll broke")
    monkeypatch.setattr(workers.Poll, "wait", broken)
    watch.submit(run(2, "t", ["true"], results))  # wakes the thread into the broken poll
    done = collect(results, 2)
    assert [(d.task_no, d.result) for d in done] == [(1, "error"), (2, "complete")]
    assert done[0].msg == "internal error: OSError: poll broke"
    watch.close()
