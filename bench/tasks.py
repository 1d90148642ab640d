"""Benchmark of running tasks: the whole loop against the bare cost of spawning, and
result handling in-process, each beside its target, measured in one run.

    python bench/tasks.py [--tasks N] [--results N] [--quick] [--part PART]

(--part loop, logs or inprocess runs that part alone: 2 and 1, 3, or 4 below.)

1. the limit: `true` spawned N times by 4 and by 16 threads (subprocess, no daemon);
2. the whole loop: N tasks backloaded, then `flowlord run` with a `true` worker at
   concurrency 4 and 16, from the first start to the last result committed (polled
   every 5 ms);
3. task logs: the whole loop at concurrency 4 with a worker that prints 1 KiB per task,
   its output kept as the task's log (logs on) and the same worker writing it to
   /dev/null itself (logs off: nothing to capture), beside the bare spawn time;
4. results handled in-process: the dispatcher records N results from a bus that
   completes every task at once (no process), without children and with 10 each;
   beside each round, its limit: the same rows (the results' updates, the children
   flowlord made) written raw into a database set up the same way, in one transaction.

The machine is shared, so each figure is the median of three rounds; all three are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import apsw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowlord import logs  # noqa: E402
from flowlord.bus.inprocess import InProcessBus  # noqa: E402
from flowlord.clock import utc_now_ms  # noqa: E402
from flowlord.dispatch import Dispatcher  # noqa: E402
from flowlord.loader import Loader  # noqa: E402
from flowlord.model import Fire, StoredTask, Task  # noqa: E402
from flowlord.store import Store, write_txn  # noqa: E402
from flowlord.tasks import Context  # noqa: E402

TARGET_LOOP_RATIO = 2.0  # whole loop within 2x the bare spawn time
TARGET_CAPTURE_COST = 0.15  # keeping 1 KiB of output per task costs at most 15 %
TARGET_RESULTS = 5000.0  # results handled per second in-process
# the second round of speed (the goals): the whole loop at concurrency 4 within
# 1.4 x the spawn time, and results with 10 children each at 8,000/s
GOAL_LOOP_RATIO = 1.4
GOAL_RESULTS_WITH_CHILDREN = 8000.0
CHILDREN = 10
PRINT_1K = 'printf "%1024s" x'  # a shell builtin: one process, as `true` is
LOGS_ON = ["sh", "-c", PRINT_1K]
LOGS_OFF = ["sh", "-c", PRINT_1K + " >/dev/null"]
ROUNDS = 3  # each figure is the median of this many rounds (the machine is shared)


def spawn_limit(n: int, threads: int) -> float:
    """Seconds to run `true` n times from `threads` threads."""
    jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        jobs.put(i)

    def work() -> None:
        while True:
            try:
                jobs.get_nowait()
            except queue.Empty:
                return
            subprocess.run(["true"], start_new_session=True, stderr=subprocess.PIPE)
    started = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - started


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(5000)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def whole_loop(tmp: Path, n: int, concurrency: int, bus_url: str | None = None,
               command: tuple[str, ...] = ("true",)) -> float:
    """Seconds from the first task started to the last result committed, the tasks
    running `command`. With a redis `bus_url`, the tasks run on `concurrency`
    `flowlord worker` processes instead."""
    run = tmp / f"loop{concurrency}{'-redis' if bus_url else ''}-{len(command)}"
    wf = run / "wf"
    wf.mkdir(parents=True)
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\ntemplate = "?t={TS}"\n')
    db = run / "f.db"
    config = run / "flowlord.toml"
    bus = (f'[bus]\nurl = "{bus_url}"\n' if bus_url else
           f'[workers.work]\ncommand = {json.dumps(list(command))}\n'
           f'concurrency = {concurrency}\n')
    config.write_text(f'workflows = "{wf}"\ndb = "{db}"\ntimezone = "UTC"\n{bus}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flowlord = [sys.executable, "-m", "flowlord", "-c", str(config)]
    subprocess.run([*flowlord, "refresh"], check=True, capture_output=True, env=env)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=n - 1)
    subprocess.run([*flowlord, "backload", "work", "--from", start.isoformat(), "--to",
                    end.isoformat(), "--by", "hour"], check=True, capture_output=True, env=env)
    workers = [subprocess.Popen([*flowlord, "worker", "--topic", "work", "--", "true"], env=env,
                                stderr=subprocess.DEVNULL)
               for _ in range(concurrency if bus_url else 0)]
    try:
        with subprocess.Popen([*flowlord, "run"], env=env, stderr=subprocess.DEVNULL) as proc:
            try:
                deadline = time.monotonic() + 600
                first = wait_until(db, "SELECT EXISTS (SELECT 1 FROM tasks "
                                       "WHERE started IS NOT NULL)", deadline)
                last = wait_until(db, "SELECT NOT EXISTS (SELECT 1 FROM tasks "
                                      "WHERE ended IS NULL)", deadline)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    return last - first


def wait_until(db: Path, sql: str, deadline: float) -> float:
    """The moment (monotonic) a query first answers true, polled every 5 ms on one
    connection, through an index: a poll that opened the database each time and read
    every task took a share of a core from the loop it measures."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(5000)
    try:
        while not conn.execute(sql).get:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the tasks did not finish in time")
            time.sleep(0.005)
        return time.monotonic()
    finally:
        conn.close()


NEW_TASK_COLUMNS = ("id, type, job, info, meta, created, file_path, phase, attempt, "
                    "scheduled_for, due_at, parent_no, file_no, no_children")


def claimed_parents(directory: Path, n: int, fan_out: int) -> tuple[Loader, list[StoredTask]]:
    """A database of its own with a workflow whose phase `parent` has `fan_out` child
    phases, and n tasks of `parent` claimed (each a different data hour, as a backload
    has: no cache can help)."""
    wf = directory / "wf"
    wf.mkdir(parents=True)
    children = "".join(f'[[phase]]\ntask = "child{i}"\ndependsOn = "parent"\n'
                       f'template = "?t={{yyyy}}-{{mm}}-{{dd}}T{{hh}}&k={{meta:k}}"\n\n'
                       for i in range(fan_out))
    (wf / "a.toml").write_text('[[phase]]\ntask = "parent"\ntemplate = "?t={TS}"\n\n'
                               + children)
    loader = Loader(str(wf), Store(str(directory / "f.db")))
    loader.refresh()
    tasks = [Task(type="parent", info=f"?n={i}", meta=f"workflow=a.toml&cron={hour(i)}&k={i}",
                  id=f"id{i}", created="2026-01-01T00:00:00Z") for i in range(n)]
    with write_txn(loader.store.conn):
        loader.store.record_fires([Fire("a.toml", "parent", "2026-01-01T00:00:00Z", "backload",
                                        tasks)], utc_now_ms())
    with write_txn(loader.store.conn):
        claimed = loader.store.claim("parent", n, utc_now_ms())
    return loader, claimed


def in_process(tmp: Path, n: int, fan_out: int) -> tuple[float, int, float]:
    """Seconds to record n results, each starting `fan_out` children; children created;
    and the limit measured beside it: seconds to write the same rows raw into a database
    set up the same way (each result an UPDATE, each child an INSERT of the row flowlord
    made, all made beforehand; one transaction, committed)."""
    loader, claimed = claimed_parents(tmp / "flowlord", n, fan_out)
    bus = InProcessBus()
    dispatcher = Dispatcher(loader, bus, Context(ZoneInfo("UTC"), loader.root, datetime.now(UTC)),
                            timedelta(hours=4), logs.get("bench"))
    bus.send([(stored, None) for stored in claimed])
    started = time.perf_counter()
    dispatcher.turn(claim=False)
    seconds = time.perf_counter() - started
    made = list(loader.store.conn.execute(
        f"SELECT {NEW_TASK_COLUMNS} FROM tasks WHERE parent_no IS NOT NULL ORDER BY task_no"))
    loader.close()
    raw, claimed = claimed_parents(tmp / "raw", n, fan_out)
    ended = [(utc_now_ms(), stored.task_no) for stored in claimed]
    conn = raw.store.conn
    started = time.perf_counter()
    with write_txn(conn):
        conn.executemany("UPDATE tasks SET ended = ?, result = 'complete' WHERE task_no = ?",
                         ended)
        conn.executemany(f"INSERT INTO tasks ({NEW_TASK_COLUMNS}) "
                         f"VALUES ({', '.join('?' * 14)})", made)
    limit = time.perf_counter() - started
    raw.close()
    return seconds, len(made), limit


def goal(met: bool, what: str) -> str:
    """A line of the second round of speed's goals, met or not."""
    return f"{'PASS' if met else 'FAIL'}  goal {what}"


def hour(i: int) -> str:
    """A different data hour for each parent, as a backload has: no cache can help."""
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i)).strftime("%Y-%m-%dT%H")


def print_logs(tasks: int, rounds_logs: list[tuple[float, float, float]]) -> None:
    on, off, limit = sorted(rounds_logs, key=lambda r: r[0] / r[1])[ROUNDS // 2]
    print(f"task logs, a worker printing 1 KiB per task, concurrency 4: {tasks} "
          f"tasks with logs on {tasks / on:.0f}/s, off {tasks / off:.0f}/s; "
          f"limit: spawning `true` alone {tasks / limit:.0f}/s; capture costs "
          f"{(1 - off / on) * 100:.0f} % of throughput, the median of "
          f"{' '.join(f'{(1 - b / a) * 100:.0f}' for a, b, _ in rounds_logs)} % "
          f"(target <= {TARGET_CAPTURE_COST * 100:.0f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--part", choices=("all", "loop", "logs", "inprocess"), default="all",
                        help="one part alone (the whole loop with its limit, task logs, or "
                             "results handled in-process)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.results = 100, 500
    logs.configure()
    with tempfile.TemporaryDirectory(prefix="flowlord-bench-") as name:
        tmp = Path(name)
        for concurrency in (4, 16) if args.part in ("all", "loop") else ():
            rounds = []  # each round measures the limit and the loop back to back
            for n in range(ROUNDS):
                limit = spawn_limit(args.tasks, concurrency)
                rounds.append((whole_loop(tmp / f"round{n}", args.tasks, concurrency), limit))
            loop, limit = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
            print(f"whole loop, `true` worker, concurrency {concurrency}: {args.tasks} tasks in "
                  f"{loop:.2f} s ({args.tasks / loop:.0f}/s); limit: spawning `true` alone "
                  f"{limit:.2f} s ({args.tasks / limit:.0f}/s); ratio {loop / limit:.2f}, the "
                  f"median of {' '.join(f'{a / b:.2f}' for a, b in rounds)} "
                  f"(target <= {TARGET_LOOP_RATIO:.0f})")
            if concurrency == 4:
                print(goal(loop / limit <= GOAL_LOOP_RATIO, f"whole loop at concurrency 4 <= "
                           f"{GOAL_LOOP_RATIO} x the spawn time: {loop / limit:.2f}"))
        rounds_logs = []  # each round: the limit, then logs off and on, back to back
        for n in range(ROUNDS if args.part in ("all", "logs") else 0):
            limit = spawn_limit(args.tasks, 4)
            off = whole_loop(tmp / f"logs-off{n}", args.tasks, 4, command=tuple(LOGS_OFF))
            on = whole_loop(tmp / f"logs-on{n}", args.tasks, 4, command=tuple(LOGS_ON))
            rounds_logs.append((on, off, limit))
        if rounds_logs:
            print_logs(args.tasks, rounds_logs)
        for fan_out in (0, CHILDREN) if args.part in ("all", "inprocess") else ():
            print_in_process(args.results, fan_out, [
                in_process(tmp / f"inproc{fan_out}-{n}", args.results, fan_out)
                for n in range(ROUNDS)])


def print_in_process(results: int, fan_out: int,
                     rounds: list[tuple[float, int, float]]) -> None:
    """Results handled in-process: the rate of the median round, and beside it the median
    of the limits and the median of each round's ratio to its own limit."""
    middle = len(rounds) // 2
    seconds, made, _ = sorted(rounds)[middle]
    limit = sorted(r[2] for r in rounds)[middle]
    ratios = [r[0] / r[2] for r in rounds]
    rate = results / seconds
    print(f"results handled in-process, {fan_out} children each: {results} results and "
          f"{made} children in {seconds:.2f} s: {rate:.0f} results/s, "
          f"{(results + made) / seconds:.0f} rows/s, the median of "
          f"{' '.join(f'{results / r[0]:.0f}' for r in rounds)} (target >= "
          f"{TARGET_RESULTS:.0f} results/s, ratio {rate / TARGET_RESULTS:.2f}); limit: the "
          f"same rows written raw {limit:.2f} s (median); each round against its own limit "
          f"{' '.join(f'{r:.2f}' for r in ratios)} x, the median "
          f"{sorted(ratios)[middle]:.2f} x")
    if fan_out:
        print(goal(rate >= GOAL_RESULTS_WITH_CHILDREN, f"results with {fan_out} children "
                   f"each >= {GOAL_RESULTS_WITH_CHILDREN:.0f}/s: {rate:.0f}/s"))


if __name__ == "__main__":
    main()
