"""The bus contract, run against every implementation (local; redis with `flowlord worker`
processes and a real redis-server), with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from flowlord import logs
from flowlord.bus import Bus
from flowlord.bus.local import STOPPED, LocalBus
from flowlord.bus.redis import RedisBus
from flowlord.bus.worker import STOPPED as WORKER_STOPPED
from flowlord.config import WorkerConfig
from flowlord.durations import format_duration
from flowlord.model import Done, StoredTask, Task
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

PY = sys.executable
HOSTILE = "a b 'c' \"d\" ;rm -rf /tmp/x $(touch /tmp/owned) `id`\n--flag"


def worker(*argv: str, concurrency: int = 2, timeout: float = 30) -> WorkerConfig:
    return WorkerConfig(argv, concurrency, timedelta(seconds=timeout))


def stored(no: int, topic: str = "t", info: str = "i", meta: str = "m=1") -> StoredTask:
    return StoredTask(no, Task(type=topic, job="j", info=info, meta=meta, id=f"id-{no}",
                               created="2026-11-23T00:00:00Z"))


class RedisHarness:
    """The redis bus with `flowlord worker` processes for its topics: the same contract
    as the local bus, which runs its workers itself. Closing it stops the workers
    (SIGTERM, with WORKER_GRACE) and collects the results they post."""

    def __init__(self, server: RedisServer, workers: dict[str, WorkerConfig]) -> None:
        self.bus = RedisBus(server.url, logs.get("test"), in_flight=4)
        self.bus.start()
        self.procs = [subprocess.Popen(
            [PY, "-m", "flowlord", "worker", "--bus", server.url, "--topic", topic,
             "--concurrency", str(w.concurrency), "--timeout", format_duration(w.timeout),
             "--grace", WORKER_GRACE, "--", *w.command],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for topic, w in workers.items()]
        end = time.monotonic() + 30
        while not all(self.bus.capacity(topic) for topic in workers):  # the workers are up
            assert time.monotonic() < end, "the workers did not start"
            time.sleep(0.05)

    def open_topics(self) -> list[str] | None:
        return self.bus.open_topics()

    def capacity(self, topic: str) -> int:
        return self.bus.capacity(topic)

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        self.bus.send(tasks)

    def receive(self, wait: float) -> list[Done]:
        return self.bus.receive(wait)

    def ack(self, done: Done) -> None:
        self.bus.ack(done)

    def close(self, grace: float) -> list[Done]:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        found: list[Done] = []
        end = time.monotonic() + 30
        while any(self.bus.outstanding.values()) and time.monotonic() < end:
            found += self.bus.receive(0.2)
        for proc in self.procs:
            proc.wait(30)
        self.bus.close(grace)
        return found


WORKER_GRACE = "2s"  # the remote workers' grace at stop: what the tests below close with


@pytest.fixture(params=["local", "redis"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[Callable[..., Bus]]:
    made: list[Bus] = []
    # the server is set up first, so that it is stopped after the buses
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    def make(**workers: WorkerConfig) -> Bus:
        bus: Bus = LocalBus(workers) if server is None else RedisHarness(server, workers)
        made.append(bus)
        return bus
    yield make
    for bus in made:
        bus.close(0)


def results(bus: Bus, n: int, seconds: float = 30) -> list[Done]:
    found: list[Done] = []
    end = time.monotonic() + seconds
    while len(found) < n:
        assert time.monotonic() < end, f"only {len(found)} of {n} results"
        found += bus.receive(0.5)
    return sorted(found, key=lambda d: d.task_no)


def test_exit_status_decides_the_result(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(ok=worker("true"), bad=worker(PY, "-c", "import sys; "
                                                 "sys.stderr.write('boom\\n'); sys.exit(3)"))
    bus.send([(stored(1, "ok"), None)])
    bus.send([(stored(2, "bad"), None)])
    done = results(bus, 2)
    assert [(d.task_no, d.result, d.msg) for d in done] == [
        (1, "complete", ""), (2, "error", "exit status 3: boom")]


def test_capacity_runs_no_more_than_the_concurrency_at_once_and_unknown_topics_get_none(
        make_bus: Callable[..., Bus], tmp_path: Path) -> None:
    gate, log = tmp_path / "go", tmp_path / "log"
    # each task logs its start and end (one short append each: atomic), waiting at the gate
    wait = (f"import os, time\nlog = {str(log)!r}\n"
            "def note(w):\n    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
            "    os.write(fd, w.encode()); os.close(fd)\n"
            f"note('s')\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\nnote('e')")
    bus = make_bus(t=worker(PY, "-c", wait, concurrency=2))
    room = bus.capacity("t")
    assert room >= 2 and bus.capacity("nobody") == 0
    assert bus.open_topics() in (["t"], None)
    for no in range(1, room + 1):
        bus.send([(stored(no), None)])
        assert bus.capacity("t") == room - no
    assert bus.open_topics() in ([], None)  # full: nothing to claim for it (or ask capacity)
    end = time.monotonic() + 30
    while not log.exists() or log.read_text().count("s") < 2:
        assert time.monotonic() < end, "the first two tasks did not start"
        time.sleep(0.01)
    gate.touch()
    assert [d.result for d in results(bus, room)] == ["complete"] * room
    running, most = 0, 0
    for event in log.read_text():
        running += 1 if event == "s" else -1
        most = max(most, running)
    assert most == 2
    assert bus.capacity("t") == room


def test_values_arrive_as_literal_single_arguments_and_in_the_environment(
        make_bus: Callable[..., Bus], tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    script = ("import json, os, sys\n"
              f"json.dump({{'argv': sys.argv[1:], 'env': {{k: v for k, v in os.environ.items() "
              f"if k.startswith('FLOWLORD_TASK')}}}}, open({str(out)!r}, 'w'))")
    bus = make_bus(t=worker(PY, "-c", script, "{info}", "--x={meta}", "{type}:{job}:{id}",
                            "{unknown}"))
    task = stored(7, info=HOSTILE, meta="k={info}")
    bus.send([(task, None)])
    assert results(bus, 1)[0].result == "complete"
    seen = json.loads(out.read_text())
    assert seen["argv"] == [HOSTILE, "--x=k={info}", "t:j:id-7", "{unknown}"]
    assert seen["env"]["FLOWLORD_TASK_INFO"] == HOSTILE
    assert (seen["env"]["FLOWLORD_TASK_ID"], seen["env"]["FLOWLORD_TASK_TYPE"],
            seen["env"]["FLOWLORD_TASK_JOB"]) == ("id-7", "t", "j")
    assert json.loads(seen["env"]["FLOWLORD_TASK"])["info"] == HOSTILE
    assert not os.path.exists("/tmp/owned")


def test_systemd_variables_of_the_daemon_do_not_reach_workers(
        make_bus: Callable[..., Bus], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("FLOWLORD_KEEP", "yes")
    out = tmp_path / "env.json"
    script = f"import json, os\njson.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    bus = make_bus(t=worker(PY, "-c", script))
    bus.send([(stored(1), None)])
    assert results(bus, 1)[0].result == "complete"
    seen = json.loads(out.read_text())
    assert "NOTIFY_SOCKET" not in seen and "WATCHDOG_USEC" not in seen
    assert seen["FLOWLORD_KEEP"] == "yes"


def test_a_timeout_ends_the_whole_process_group(make_bus: Callable[..., Bus],
                                                tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    script = ("import os, signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(60)")
    bus = make_bus(t=worker(PY, "-c", script, timeout=60))
    bus.send([(stored(1), 1.0)])  # the phase's timeout= wins over the worker's
    [done] = results(bus, 1)
    assert (done.result, done.msg) == ("error", "timeout after 1s")
    grandchild = int(pid_file.read_text())
    end = time.monotonic() + 10
    while _alive(grandchild):
        assert time.monotonic() < end, "the grandchild survived the timeout"
        time.sleep(0.05)


def test_a_grandchild_left_behind_does_not_hold_the_result(make_bus: Callable[..., Bus]) -> None:
    script = ("import subprocess, sys\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])")
    bus = make_bus(t=worker(PY, "-c", script))
    bus.send([(stored(1), None)])
    assert results(bus, 1, seconds=15)[0].result == "complete"


def test_huge_output_keeps_only_the_tail_of_stderr(make_bus: Callable[..., Bus]) -> None:
    script = ("import sys\nchunk = 'x' * 1023 + '\\n'\n"
              "for _ in range(25 * 1024):\n    sys.stdout.write(chunk); sys.stderr.write(chunk)\n"
              "sys.stderr.write('the end'); sys.exit(1)")
    bus = make_bus(t=worker(PY, "-c", script))
    bus.send([(stored(1), None)])
    [done] = results(bus, 1, seconds=60)
    assert done.result == "error" and done.msg.endswith("the end")
    assert len(done.msg) < 5000


def test_a_missing_program_is_an_error_not_a_crash(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(t=worker("/nonexistent/program"))
    bus.send([(stored(1), None)])
    [done] = results(bus, 1)
    assert done.result == "error" and "cannot start '/nonexistent/program'" in done.msg


def test_close_waits_for_the_grace_then_ends_the_rest(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(quick=worker(PY, "-c", "import time; time.sleep(0.3)"),
                   slow=worker(PY, "-c", "import time; time.sleep(60)"))
    bus.send([(stored(1, "quick"), None)])
    bus.send([(stored(2, "slow"), None)])
    done = sorted(bus.close(2.0), key=lambda d: d.task_no)
    assert [(d.task_no, d.result) for d in done] == [(1, "complete"), (2, "error")]
    assert done[0].msg == "" and done[1].msg in (STOPPED, WORKER_STOPPED)


def test_the_local_bus_gives_back_the_tasks_that_never_started_when_closed() -> None:
    bus = LocalBus({"slow": worker(PY, "-c", "import time; time.sleep(60)", concurrency=1)})
    sent = bus.capacity("slow")
    for no in range(1, sent + 1):
        bus.send([(stored(no, "slow"), None)])
    done = sorted(bus.close(0.5), key=lambda d: d.task_no)
    ran = [d for d in done if d.ran]
    assert [(d.task_no, d.result, d.msg) for d in ran] == [(1, "error", STOPPED)]
    assert [d.task_no for d in done if not d.ran] == list(range(2, sent + 1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone


def test_a_command_that_redirects_its_stderr_runs_to_its_end(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(t=worker("sh", "-c", "exec 2>/dev/null; sleep 0.5; exit 0"))
    bus.send([(stored(1), None)])
    assert [(d.result, d.msg) for d in results(bus, 1)] == [("complete", "")]


def test_a_command_writing_stderr_without_pause_still_times_out(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(t=worker(PY, "-c", "import sys\nwhile True: sys.stderr.write('x' * 100)"))
    bus.send([(stored(1), 1.0)])
    [done] = results(bus, 1, seconds=20)
    assert (done.result, done.msg) == ("error", "timeout after 1s")


def test_a_grandchild_that_left_the_group_does_not_hold_the_result(
        make_bus: Callable[..., Bus]) -> None:
    # setsid: out of the task's process group, with the task's stderr still open
    script = ("import subprocess, sys\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
              " start_new_session=True)")
    bus = make_bus(t=worker(PY, "-c", script))
    bus.send([(stored(1), None)])
    assert results(bus, 1, seconds=15)[0].result == "complete"


def test_a_real_time_signal_is_named_by_number(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(t=worker(PY, "-c", "import os, signal; os.kill(os.getpid(), 40)"))
    bus.send([(stored(1), None)])
    [done] = results(bus, 1)
    assert (done.result, done.msg) == ("error", "killed by signal 40")


def test_the_local_bus_lets_results_gather_only_while_every_busy_topic_has_a_next_task(
        ) -> None:
    """`gathering()`: a result came back and no worker would idle meanwhile (each topic
    with tasks has one waiting for a slot after the one it runs)."""
    command = worker("sh", "-c", 'test "{info}" = quick || exec sleep 60', concurrency=1)
    bus = LocalBus({"t": command, "u": command})

    def send(no: int, topic: str, info: str) -> None:
        bus.send([(stored(no, topic, info), None)])

    def until(condition: Callable[[], bool]) -> None:
        end = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < end
            time.sleep(0.01)
    try:
        assert not bus.gathering()  # nothing sent
        send(1, "t", "quick")
        until(lambda: not bus.results.empty())
        assert not bus.gathering()  # a result, but t's thread has nothing after it
        send(2, "t", "slow")
        send(3, "t", "slow")
        until(lambda: bool(bus.runs[2].started))
        assert bus.gathering()  # 3 waits behind 2
        send(4, "u", "slow")
        until(lambda: bool(bus.runs[4].started))
        assert not bus.gathering()  # u's thread has nothing after 4
        send(5, "u", "slow")
        assert bus.gathering()
        assert [d.task_no for d in bus.receive(0)] == [1]
        assert not bus.gathering()  # no result to gather with
    finally:
        bus.close(0)


# What subprocess.Popen did for a task and flowlord/spawn.py now does itself.

def test_a_task_inherits_no_descriptor_of_the_process_that_starts_it(
        make_bus: Callable[..., Bus]) -> None:
    kept_read, kept_write = os.pipe()
    os.set_inheritable(kept_read, True)  # as a library's descriptor (watchdog's inotify)
    os.set_inheritable(kept_write, True)
    script = ("import os, sys\n"
              "sys.stderr.write(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)))\n"
              "sys.exit(1)")
    try:
        bus = make_bus(t=worker(PY, "-c", script))
        bus.send([(stored(1), None)])
        [done] = results(bus, 1)
    finally:
        os.close(kept_read)
        os.close(kept_write)
    # 0-2, and the descriptor the listing itself opened
    assert done.result == "error" and done.msg == "exit status 1: 0 1 2 3"


def test_a_task_starts_with_sigpipe_and_sigxfsz_at_their_defaults(
        make_bus: Callable[..., Bus]) -> None:
    """Python ignores SIGPIPE: a child that kept it ignored would not end when the
    reader of its pipe does (`yes | head -1` would run on)."""
    bus = make_bus(t=worker("sh", "-c", "grep SigIgn /proc/$$/status >&2; exit 1"))
    bus.send([(stored(1), None)])
    [done] = results(bus, 1)
    ignored = int(done.msg.rsplit(None, 1)[-1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))


def test_a_command_is_looked_up_on_the_path_of_its_topic(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "only-here").write_text("#!/bin/sh\necho found >&2\nexit 3\n")
    (tools / "only-here").chmod(0o755)
    (tools / "not-runnable").write_text("#!/bin/sh\n")
    bus = LocalBus({
        "t": WorkerConfig(("only-here",), env={"PATH": f"/nonexistent:{tools}"}),
        "u": WorkerConfig(("only-here",)),  # the daemon's PATH: not there
        "v": WorkerConfig(("not-runnable",), env={"PATH": str(tools)})})
    try:
        for no, topic in enumerate(("t", "u", "v"), 1):
            bus.send([(stored(no, topic), None)])
        done = results(bus, 3)
    finally:
        bus.close(0)
    assert [(d.result, d.msg) for d in done] == [
        ("error", "exit status 3: found"),
        ("error", "cannot start 'only-here': [Errno 2] No such file or directory: 'only-here'"),
        ("error", "cannot start 'not-runnable': [Errno 13] Permission denied: 'not-runnable'")]


def test_the_redis_bus_lets_results_gather_only_while_many_more_tasks_are_out(
        redis_server: RedisServer) -> None:
    """`gathering()` of the redis bus: results came back while at least GATHER_BEHIND
    more tasks are published and unfinished (its workers have messages waiting)."""
    from flowlord.bus import redis as redis_bus
    from flowlord.bus.wire import DONE_STREAM, connect, encode_done

    bus = RedisBus(redis_server.url, logs.get("test"))
    bus.start()
    client = connect(redis_server.url)

    def result_of(no: int) -> None:  # as a worker posts it, then until the bus has it
        client.xadd(DONE_STREAM, encode_done(Done(no, "complete", "", "2026-11-23T00:00:01Z")))
        end = time.monotonic() + 30
        while bus.results.empty():
            assert time.monotonic() < end, "the result did not arrive"
            time.sleep(0.01)
    try:
        behind = redis_bus.GATHER_BEHIND
        bus.send([(stored(no), None) for no in range(1, behind + 1)])
        assert not bus.gathering()  # nothing came back
        result_of(1)
        assert not bus.gathering()  # one back, behind - 1 still out
        bus.send([(stored(behind + 1), None)])
        assert bus.gathering()  # one back, behind still out
        assert [d.task_no for d in bus.receive(0)] == [1]
        assert not bus.gathering()  # nothing left to gather with
    finally:
        bus.close(0)
        client.close()


def test_no_mark_of_a_run_stays_behind_its_result(redis_server: RedisServer) -> None:
    """A worker renews its runs' marks every second while results release them: a
    renewal that crossed a release set the mark again, and a task given the same number
    later (a new database on the same redis) was dropped as run elsewhere until the mark
    expired. Many short tasks across renewals; then no mark is left."""
    harness = RedisHarness(redis_server, {"t": worker("true", concurrency=4)})
    n = 1500
    try:
        for first in range(1, n + 1, 100):
            harness.send([(stored(no), None) for no in range(first, min(first + 100, n + 1))])
        assert len(results(harness, n, seconds=120)) == n
    finally:
        harness.close(0)
    client = redis_server.client()
    assert list(client.scan_iter("flowlord:run:*")) == []


def test_the_redis_bus_counts_as_sent_only_the_tasks_the_server_took(
        redis_server: RedisServer) -> None:
    """One pipeline publishes a turn's tasks; a task the server refuses (here its topic's
    key is not a stream) is not counted as sent, the others are (BusUnavailable names
    them): only the refused one is published again."""
    from flowlord.bus import BusUnavailable
    from flowlord.bus.wire import task_stream

    redis_server.client().set(task_stream("bad"), "not a stream")
    bus = RedisBus(redis_server.url, logs.get("test"))
    try:
        with pytest.raises(BusUnavailable) as refused:
            bus.send([(stored(1), None), (stored(2, "bad"), None), (stored(3), None)])
        assert refused.value.handed_over == {1, 3}
        assert sorted(bus.running()) == [1, 3]
        assert redis_server.client().xlen(task_stream("t")) == 2
    finally:
        bus.close(0)


def test_the_redis_bus_reads_results_on_after_the_server_was_emptied(
        redis_server: RedisServer) -> None:
    """Its consumer group is made at the start and again when the server answers that
    it is gone (FLUSHALL, a restart without persistence): no outage is reported."""
    from flowlord.bus.wire import DONE_STREAM, encode_done

    said: list[str] = []

    class Log:  # what the bus tells its log
        def error(self, event: str, **_: object) -> None:
            said.append(event)

        warning = info = exception = error

    bus = RedisBus(redis_server.url, Log())
    bus.start()
    client = redis_server.client()
    try:
        client.flushall()
        end = time.monotonic() + 30
        while bus.results.empty():
            assert time.monotonic() < end, "no result read after the flush"
            client.xadd(DONE_STREAM, encode_done(Done(1, "complete", "", "2026-11-23T00:00:01Z")))
            time.sleep(0.2)
        assert "redis unavailable; tasks wait in the database" not in said
    finally:
        bus.close(0)


def test_a_command_with_a_nul_byte_is_an_error_that_says_so() -> None:
    bus = LocalBus({"t": WorkerConfig(("tr\0ue",))})
    try:
        bus.send([(stored(1), None)])
        [done] = results(bus, 1)
    finally:
        bus.close(0)
    assert done.result == "error" and "embedded null byte" in done.msg


def test_a_task_a_free_slot_was_about_to_start_goes_back_at_a_close_without_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent while its slot was free, not started yet when the daemon stops at once: it
    never ran, so it goes back unrun, not as an error that says it ran."""
    from flowlord.workers import Run
    cancelled, start, cancel = threading.Event(), Run.start, Run.cancel

    def late(self: Run, poll: object) -> object:
        assert cancelled.wait(30)  # the thread starts it only once the close has acted
        return start(self, poll)  # type: ignore[arg-type]

    def cancel_and_tell(self: Run) -> bool:
        answer = cancel(self)
        cancelled.set()
        return answer
    monkeypatch.setattr(Run, "start", late)
    monkeypatch.setattr(Run, "cancel", cancel_and_tell)
    bus = LocalBus({"t": worker(PY, "-c", "import time; time.sleep(60)", concurrency=1)})
    bus.send([(stored(1), None)])
    done = bus.close(0)
    assert [(d.task_no, d.ran, d.result) for d in done] == [(1, False, "")]
