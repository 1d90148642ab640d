"""Benchmark of the redis bus, beside the local bus and the raw speed of redis-py, from
one run against a redis-server of its own.

    python bench/redis_bus.py [--tasks N] [--quick]

1. end to end: N tasks backloaded, then `flowlord run` with 4 `flowlord worker`
   processes running `true`, from the first task claimed to the last result committed;
   beside it the local bus on the same workload (concurrency 4). Target: at least 50 %
   of the local bus.
2. start latency: tasks committed one at a time at 100 a second, published by the
   dispatcher at once, run by 4 workers whose command notes when it started; from
   each commit to its command's start, p50 and p99. Target: p99 under 50 ms.
3. the limit: XADD + XREADGROUP + XACK round trips per second of redis-py, one client.

The machine is shared: figures 1 and 3 are the medians of three rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tasks import whole_loop  # noqa: E402

from flowlord import logs  # noqa: E402
from flowlord.bus.redis import RedisBus  # noqa: E402
from flowlord.clock import utc_now_ms  # noqa: E402
from flowlord.dispatch import Dispatcher  # noqa: E402
from flowlord.loader import Loader  # noqa: E402
from flowlord.model import Fire, Task  # noqa: E402
from flowlord.store import Store, write_txn  # noqa: E402
from flowlord.tasks import Context  # noqa: E402

TARGET_SHARE = 0.5  # end to end, at least half the local bus's rate
GOAL_SHARE = 0.75  # the second round of speed asks three quarters
TARGET_P99_MS = 50.0
RATE = 100  # tasks a second for the latency measure
WORKERS = 4
ROUNDS = 3


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(directory), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit("bench: redis-server did not answer") from None
            time.sleep(0.02)


def raw_round_trips(url: str, n: int) -> float:
    """Seconds for n XADD + XREADGROUP + XACK round trips, one after another."""
    client = redis.Redis.from_url(url)
    stream = f"bench:raw:{time.monotonic_ns()}"
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    started = time.perf_counter()
    for _ in range(n):
        client.xadd(stream, {"task": "{}"})
        [[_, [(receipt, _)]]] = client.xreadgroup("g", "c", {stream: ">"}, count=1)
        client.xack(stream, "g", receipt)
    seconds = time.perf_counter() - started
    client.delete(stream)
    client.close()
    return seconds


def start_latencies(tmp: Path, url: str, n: int) -> list[float]:
    """Milliseconds from each task's commit to its command's start, at RATE a second."""
    wf = tmp / "latency"
    wf.mkdir()
    (wf / "a.toml").write_text('[[phase]]\ntask = "lat"\n')
    starts = tmp / "starts"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["sh", "-c", 'echo "$1 $(date +%s%N)" >> "$0"', str(starts), "{info}"]
    workers = [subprocess.Popen([sys.executable, "-m", "flowlord", "worker", "--bus", url,
                                 "--topic", "lat", "--", *command], env=env,
                                stderr=subprocess.DEVNULL) for _ in range(WORKERS)]
    loader = Loader(str(wf), Store(str(tmp / "latency.db")))
    loader.refresh()
    bus = RedisBus(url, logs.get("bench"))
    bus.start()
    dispatcher = Dispatcher(loader, bus, Context(ZoneInfo("UTC"), str(wf), datetime.now(UTC)),
                            timedelta(hours=4), logs.get("bench"))
    committed: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while not bus.capacity("lat"):  # the workers have joined
            if time.monotonic() > deadline:
                raise SystemExit("bench: the workers did not start")
            time.sleep(0.05)
        slot = datetime(2020, 1, 1, tzinfo=UTC)
        next_at = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / RATE
            when = (slot + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            task = Task(type="lat", info=str(i), meta="workflow=a.toml", id=f"id{i}",
                        created=when)
            with write_txn(loader.store.conn):
                loader.store.record_fires([Fire("a.toml", "lat", when, "trigger", [task])],
                                          utc_now_ms())
            committed[str(i)] = time.time_ns()
            dispatcher.turn()  # claims it and publishes it at once
        deadline = time.monotonic() + 60
        while not starts.exists() or len(starts.read_text().splitlines()) < n:
            if time.monotonic() > deadline:
                raise SystemExit("bench: not every task started")
            dispatcher.turn()
            time.sleep(0.01)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        bus.close(0)
        loader.close()
    return [(int(ns) - committed[info]) / 1e6
            for info, ns in (line.split() for line in starts.read_text().splitlines())]


def median_round(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    return sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    latency_tasks = 1000
    if args.quick:
        args.tasks, latency_tasks = 100, 100
    logs.configure()
    with tempfile.TemporaryDirectory(prefix="flowlord-bench-") as name:
        tmp = Path(name)
        server, url = start_server(tmp)
        try:
            rounds = []  # (redis seconds, local seconds)
            for n in range(ROUNDS):
                rounds.append((whole_loop(tmp / f"redis{n}", args.tasks, WORKERS, url),
                               whole_loop(tmp / f"local{n}", args.tasks, WORKERS)))
            remote, local = median_round(rounds)
            share = local / remote
            print(f"end to end, `true`, {WORKERS} workers: redis {args.tasks / remote:.0f} "
                  f"tasks/s, local {args.tasks / local:.0f} tasks/s: {share:.0%} of the local "
                  f"bus, the median of {' '.join(f'{b / a:.0%}' for a, b in rounds)} (target "
                  f">= {TARGET_SHARE:.0%})")
            print(f"{'PASS' if share >= GOAL_SHARE else 'FAIL'}  goal end to end over redis "
                  f">= {GOAL_SHARE:.0%} of the local bus: {share:.0%}")
            ms = sorted(start_latencies(tmp, url, latency_tasks))
            p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
            print(f"start latency at {RATE} tasks/s, commit to command start: p50 {p50:.1f} ms, "
                  f"p99 {p99:.1f} ms (target p99 < {TARGET_P99_MS:.0f} ms, ratio "
                  f"{p99 / TARGET_P99_MS:.2f})")
            trips = sorted(raw_round_trips(url, args.tasks) for _ in range(ROUNDS))
            raw = args.tasks / trips[len(trips) // 2]
            print(f"limit: redis-py XADD + XREADGROUP + XACK, one client: {raw:.0f} round "
                  f"trips/s; redis end to end is {args.tasks / remote / raw:.2f} of it")
        finally:
            server.kill()
            server.wait(10)


if __name__ == "__main__":
    main()
