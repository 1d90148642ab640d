"""Benchmark of the HTTP API and dashboard on a big database, while the daemon fires.

    python bench/http_api.py [--phases N] [--tasks N] [--requests N] [--window S] [--quick]
                             [--keep DIR] [--only WORDS]

One run, in a temporary directory removed at the end (with --keep, in DIR, kept: a
second run with the same DIR reuses its database, only the busy window written again
to end now; --only measures the latencies of the endpoints whose name holds WORDS, and
skips the actions and the lateness windows):

1. 100,000 phases (10 per file; one file in 100 has a broken phase, children hang
   under a daily cron phase) are loaded, and 1,000,000 finished task rows (with their
   fires and 10,000 alerts) are written straight into the database;
2. the daemon starts with `[http] listen` and 20 phases firing every second;
3. latency, p50 and p99 over sequential requests, of the overview page, the phases API
   (first page), two filtered task queries (a topic's errors, a topic that never ran),
   /api/stats (30 days of history), a phase's page with its charts (its recent runs
   and tasks per hour), the timeline of the last 6 hours (holding 20,000 runs of
   their own), and /metrics, each beside the same answer computed in this process without HTTP
   (the floor), one child phase ("why didn't it run?") and a filter by a job that never
   ran, and every other page and GET endpoint (the agenda's first request, which
   computes it, timed apart); each against 50 ms (the three pictures also against their
   first target, 100 ms);
4. latency of actions from request to outcome through the daemon's loop: a rerun of a
   finished task, a cancel of a waiting task, a pause (and its resume);
5. fire lateness of the 20 phases over a window with no client, then over a window
   with 20 clients polling the API (each one request a second, endpoints in turn),
   then with 20 clients posting actions (each one rerun a second), then with the 20
   clients polling back to back (a stress figure, not a target).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon import Daemon, parse_time, percentile, phase_file, query  # noqa: E402

from flowlord.config import Config  # noqa: E402
from flowlord.loader import Loader  # noqa: E402
from flowlord.store import Store, write_txn  # noqa: E402
from flowlord.web.api import Api  # noqa: E402
from flowlord.web.dashboard import Dashboard  # noqa: E402
from tests.helpers import free_port  # noqa: E402

PHASES_PER_FILE = 10
TICKERS = 20
CLIENTS = 20
TOPICS = [f"topic{i}" for i in range(20)]
TARGET_P99 = 0.050  # every endpoint, page and action
CHARTS_TARGET_P99 = 0.100  # the pictures' first target, still printed
TARGET_LATENESS_GROWTH = 0.010
TOKEN = "bench-token"


def workflow(f: int) -> str:
    """Ten phases: a daily root, children under it; file 0, 100, 200… has a bad rule."""
    text = (f'[[phase]]\ntask = "{TOPICS[f % 20]}:w{f}"\nrule = "cron=0 3 * * *"\n'
            f'template = "s3://lake/w{f}/{{yyyy}}/{{mm}}/{{dd}}.json"\n\n')
    for i in range(1, PHASES_PER_FILE):
        rule = "cron=nope" if f % 100 == 0 and i == 1 else ""
        text += (f'[[phase]]\ntask = "step{i}:w{f}"\ndependsOn = "{TOPICS[f % 20]}:w{f}"\n'
                 f'rule = "{rule}"\ntemplate = "?day={{yyyy}}-{{mm}}-{{dd}}&part={i}"\n\n')
    return text


def build(tmp: Path, phases: int, tasks: int) -> tuple[Path, Path]:
    wf, db = tmp / "wf", tmp / "f.db"
    for f in range(phases // PHASES_PER_FILE):
        d = wf / f"d{f // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"w{f}.toml").write_text(workflow(f))
    started = time.monotonic()
    loader = Loader(str(wf), Store(str(db)))
    loader.refresh()
    loader.close()
    print(f"loaded {phases:,} phases in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    write_history(db, tasks, phases // PHASES_PER_FILE)
    write_busy_window(db, BUSY_RUNS)
    print(f"wrote {tasks:,} task rows and {BUSY_RUNS:,} runs in the 6 hours before now "
          f"in {time.monotonic() - started:.1f} s")
    return wf, db


def write_busy_window(db: Path, runs: int) -> None:
    """`runs` runs of 1 s to 10 min over the 6 hours before now, of every topic (the
    timeline's busy window): the history's own runs there are a few thousand. Those
    of an earlier run (a kept database) are replaced, so the window ends now."""
    rng = random.Random(2)
    store = Store(str(db))
    end = datetime.now(UTC)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    with write_txn(store.conn):
        store.conn.execute("DELETE FROM tasks WHERE job = 'busy' AND file_path IS NULL")
        store.conn.executemany(
            "INSERT INTO tasks (id, type, job, info, created, started, ended, result, msg) "
            "VALUES (?, ?, 'busy', '', ?, ?, ?, ?, '')",
            [(str(uuid.uuid4()), TOPICS[n % 20], at.strftime(fmt), at.strftime(fmt),
              min(at + timedelta(seconds=rng.uniform(1, 600)), end).strftime(fmt),
              "error" if rng.random() < 0.05 else "complete")
             for n in range(runs)
             for at in [end - timedelta(hours=6) + timedelta(hours=6) * n / runs]])
    store.close()


def write_history(db: Path, tasks: int, files: int) -> None:
    """Finished tasks of the past 30 days: a root per fire and its children, 5 % errors,
    1 % alerts; an alert row for every hundredth task."""
    rng = random.Random(1)
    store = Store(str(db))
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / tasks
    with write_txn(store.conn):
        fires, rows, alerts = [], [], []
        for n in range(tasks):
            f = n // 10 % files
            at = (start + n * step).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            slot = at[:17] + "00Z"
            file_path = f"d{f // 100}/w{f}.toml"
            root = f"{TOPICS[f % 20]}:w{f}"
            phase = root if n % 10 == 0 else f"step{n % 10}:w{f}"
            if phase == root:
                fires.append((file_path, root, slot, at, "cron"))
            roll = rng.random()
            result = "error" if roll < 0.05 else "alert" if roll < 0.06 else "complete"
            topic, _, job = phase.partition(":")
            is_root = n % 10 == 0
            rows.append((n + 1, str(uuid.UUID(int=n // 10 + 1)), topic, job, f"?n={n}", at,
                         at, at, result, "exit status 1" if result != "complete" else "",
                         file_path, phase, slot if is_root else None,
                         None if is_root else n - n % 10 + 1))
            if n % 100 == 0:
                alerts.append((n + 1, "failed", topic, job, "failed after 1 attempt", at))
        store.conn.executemany(
            "INSERT OR IGNORE INTO fires (file_path, phase, scheduled_for, fired_at, source) "
            "VALUES (?, ?, ?, ?, ?)", fires)
        store.conn.executemany(
            "INSERT INTO tasks (task_no, id, type, job, info, created, started, ended, result, "
            "msg, file_path, phase, scheduled_for, parent_no) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        store.conn.executemany(
            "INSERT INTO alerts (task_no, kind, type, job, message, created, posted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [(*a, a[5]) for a in alerts])
    store.close()


def get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        answer.read()
        assert answer.status == 200, url
    return time.perf_counter() - started


BUSY_RUNS = 20_000  # runs in the 6 hours before now: the timeline's window
# measured, but not polled by the clients of the lateness windows (the figures of those
# windows stay comparable with those of before)
CHARTED = {
    "/api/stats": "/api/stats",
    "phase page with its charts": "/phases/d0/w7.toml/topic7:w7",
    "timeline, 6 h, 20,000 runs": "/timeline?hours=6",
}
ENDPOINTS = {
    "overview page": "/",
    "phases API, first page": "/api/phases",
    "tasks API, topic7 errors": "/api/tasks?type=topic7&result=error",
    "tasks API, a topic never run": "/api/tasks?type=ghost",
    "/metrics": "/metrics",
}
# the cases that were slow, not polled either
ONCE_SLOW = {
    # a child phase whose topic many files share: its own tasks, through its indexes
    "one phase, a child": "/api/phases/d0/w5.toml/step3:w5",
    # a job that never ran: through tasks_by_job (migration 22), not every task
    "tasks API, a job never run": "/api/tasks?job=ghost",
}
# every other page and GET endpoint, measured so that none goes unseen; `{id}` and `{no}`
# are a child task's, looked up when the database is ready
OTHERS = {
    "files page": "/files", "phases page": "/phases", "graph page": "/graph",
    "tasks page": "/tasks", "alerts page": "/alerts", "actions page": "/actions",
    "arrivals page": "/arrivals", "a task's lineage page": "/tasks/{id}",
    "an attempt's page": "/tasks/{id}/{no}", "/api/status": "/api/status",
    "/api/files": "/api/files", "/api/graph of a file": "/api/graph?file=d0/w7.toml",
    "/api/alerts": "/api/alerts", "/api/actions": "/api/actions",
    "/api/pauses": "/api/pauses", "/api/arrivals": "/api/arrivals",
    "a task's lineage, API": "/api/tasks/{id}", "/healthz": "/healthz",
    # 24 h of 100,000 phases and the 20 firing every second: 1.7 million fires; the
    # first request computes it (flowlord/agenda_cache.py), the rest are served
    "/api/agenda": "/api/agenda", "agenda page": "/agenda",
}
COMPUTED_FIRST = {"/api/agenda", "agenda page"}  # timed apart: a first request computes


def post(url: str, body: dict[str, object]) -> float:
    """A POST of an action, answered with its outcome: seconds from request to answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
        assert answer.status in (200, 201), url
    return time.perf_counter() - started


def actions(base: str, db: Path, n: int) -> dict[str, list[float]]:
    """Sequential rerun, cancel and pause requests, each applied by the daemon's loop."""
    finished = [r[0] for r in query(db, "SELECT task_no FROM tasks WHERE ended IS NOT NULL "
                                        "ORDER BY task_no LIMIT ?", (n,))]
    waiting = [r[0] for r in query(db, "SELECT task_no FROM tasks WHERE ended IS NULL "
                                       "ORDER BY task_no DESC LIMIT ?", (n,))]
    figures: dict[str, list[float]] = {"rerun": [], "cancel": [], "pause": []}
    for task_no in finished:
        figures["rerun"].append(post(f"{base}/api/tasks/{task_no}/rerun", {}))
    for task_no in waiting:
        figures["cancel"].append(post(f"{base}/api/tasks/{task_no}/cancel", {}))
    for i in range(n):
        figures["pause"].append(post(f"{base}/api/pause", {"topic": f"bench-{i}"}))
        post(f"{base}/api/resume", {"topic": f"bench-{i}"})
    return figures


def floor(db: Path, endpoints: dict[str, str]) -> dict[str, float]:
    """The same reads done directly on the database, in this process (median of 20)."""
    api = Api(Config(db=str(db)), healthy=lambda: True, role=lambda: "leader")
    dashboard = Dashboard(api)
    figures = {}
    for name, url in endpoints.items():
        path, _, text = url.partition("?")
        answer = api.answer if path.startswith("/api/") or path in ("/metrics", "/healthz") else \
            dashboard.answer
        times = []
        for _ in range(20):
            started = time.perf_counter()
            answer(path, parse_qs(text))
            times.append(time.perf_counter() - started)
        figures[name] = statistics.median(times)
    return figures


def lateness(db: Path, since: str, until: str) -> list[float]:
    return [(parse_time(fired) - parse_time(slot)).total_seconds()
            for slot, fired in query(db, "SELECT scheduled_for, fired_at FROM fires WHERE "
                                         "phase LIKE 'tick-%' AND scheduled_for >= ? AND "
                                         "scheduled_for < ?", (since, until))]


def window(db: Path, seconds: int, clients: Callable[[threading.Event], list[threading.Thread]]
           ) -> tuple[list[float], float]:
    """Fire lateness over `seconds` whole seconds while `clients` run; their requests/s."""
    stop = threading.Event()
    threads = clients(stop)
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.5)  # clients under way
    begin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    end = begin + timedelta(seconds=seconds)
    time.sleep((end - datetime.now(UTC)).total_seconds() + 1.0)
    stop.set()
    for t in threads:
        t.join()
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    rate = sum(getattr(t, "requests", 0) for t in threads) / (time.monotonic() - started)
    return lateness(db, begin.strftime(fmt), end.strftime(fmt)), rate


class ActionClient(threading.Thread):
    """Posts one rerun a second, of finished tasks in turn."""

    def __init__(self, base: str, stop: threading.Event, offset: int, task_nos: list[int]
                 ) -> None:
        super().__init__(daemon=True)
        self.base, self.stop, self.offset, self.task_nos = base, stop, offset, task_nos
        self.requests = 0

    def run(self) -> None:
        time.sleep(self.offset / CLIENTS)  # spread over the second
        while not self.stop.is_set():
            started = time.monotonic()
            task_no = self.task_nos[(self.offset * 997 + self.requests) % len(self.task_nos)]
            post(f"{self.base}/api/tasks/{task_no}/rerun", {})
            self.requests += 1
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


class Client(threading.Thread):
    def __init__(self, base: str, stop: threading.Event, interval: float, offset: int) -> None:
        super().__init__(daemon=True)
        self.base, self.stop, self.interval, self.offset = base, stop, interval, offset
        self.requests = 0

    def run(self) -> None:
        paths = list(ENDPOINTS.values())
        time.sleep(self.interval * self.offset / CLIENTS)  # spread over the second
        while not self.stop.is_set():
            started = time.monotonic()
            get(self.base + paths[(self.offset + self.requests) % len(paths)])
            self.requests += 1
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="per endpoint")
    parser.add_argument("--window", type=int, default=30, help="seconds of lateness samples")
    parser.add_argument("--quick", action="store_true", help="10,000 phases, 100,000 tasks")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build in DIR and keep it; reuse the database found there")
    parser.add_argument("--only", metavar="WORDS",
                        help="only the latencies of the endpoints whose name holds WORDS")
    args = parser.parse_args()
    if args.quick:
        args.phases, args.tasks, args.requests, args.window = 10_000, 100_000, 50, 5
    with (contextlib.nullcontext(str(args.keep)) if args.keep else
          tempfile.TemporaryDirectory(prefix="flowlord-bench-http-")) as tmp_name:
        tmp = Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        if (tmp / "f.db").exists():
            wf, db = tmp / "wf", tmp / "f.db"
            store = Store(str(db))
            with write_txn(store.conn):  # the last run's tickers' tasks (no worker takes them)
                store.conn.execute("DELETE FROM tasks WHERE file_path = 'tickers.toml'")
            store.close()
            write_busy_window(db, BUSY_RUNS)
            print(f"reusing {db}: {BUSY_RUNS:,} runs written again in the 6 hours before now")
        else:
            wf, db = build(tmp, args.phases, args.tasks)
        (tmp / "notify.sock").unlink(missing_ok=True)  # a kept directory's last run
        (wf / "tickers.toml").write_text(phase_file("tick", "cron=* * * * * *", TICKERS))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = tmp / "flowlord.toml"
        config.write_text(f'workflows = "{wf}"\ndb = "{db}"\ntimezone = "UTC"\n'
                          f'[http]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
        daemon = Daemon(tmp, config)
        try:
            print(f"daemon ready in {daemon.ready():.1f} s")
            task_no, task_id = query(db, "SELECT task_no, id FROM tasks WHERE parent_no IS "
                                         "NOT NULL ORDER BY task_no DESC LIMIT 1")[0]
            others = {name: path.format(id=task_id, no=task_no)
                      for name, path in OTHERS.items()}
            chosen = {name: path for name, path in {**ENDPOINTS, **CHARTED, **ONCE_SLOW,
                                                    **others}.items()
                      if args.only is None or args.only.lower() in name.lower()}
            direct = floor(db, chosen)
            print(f"\nlatency over {args.requests} sequential requests each, "
                  "while 20 phases fire every second:")
            print(f"{'':28} {'p50':>8} {'p99':>8} {'direct':>8}  target p99")
            for name, path in chosen.items():
                computed = get(base + path) if name in COMPUTED_FIRST else None
                times = sorted(get(base + path) for _ in range(args.requests))
                p99 = percentile(times, 99)
                first = (f" (< {CHARTS_TARGET_P99 * 1000:.0f} ms: "
                         f"{'met' if p99 < CHARTS_TARGET_P99 else 'NOT met'})"
                         if name in CHARTED else "")
                print(f"{name:28} {statistics.median(times) * 1000:6.1f}ms "
                      f"{p99 * 1000:6.1f}ms {direct[name] * 1000:6.1f}ms  "
                      f"< {TARGET_P99 * 1000:.0f} ms: {'met' if p99 < TARGET_P99 else 'NOT met'}"
                      f"{first}" + (f" (the first request, computing it: {computed:.2f} s)"
                                    if computed is not None else ""))
            if args.only is not None:
                return

            acted = actions(base, db, max(args.requests // 2, 10))
            print(f"\nactions, request to outcome through the daemon's loop "
                  f"({len(acted['rerun'])} each, sequential):")
            for name, times in acted.items():
                times.sort()
                p99 = percentile(times, 99)
                print(f"{name:28} {statistics.median(times) * 1000:6.1f}ms "
                      f"{p99 * 1000:6.1f}ms {'':8}  < {TARGET_P99 * 1000:.0f} ms: "
                      f"{'met' if p99 < TARGET_P99 else 'NOT met'}")

            quiet, _ = window(db, args.window, lambda stop: [])
            polled, polls = window(db, args.window, lambda stop: [
                Client(base, stop, 1.0, i) for i in range(CLIENTS)])
            finished = [r[0] for r in query(db, "SELECT task_no FROM tasks WHERE ended IS "
                                                "NOT NULL ORDER BY task_no LIMIT 10000")]
            posting, posts = window(db, args.window, lambda stop: [
                ActionClient(base, stop, i, finished) for i in range(CLIENTS)])
            hammered, hammers = window(db, args.window, lambda stop: [
                Client(base, stop, 0.0, i) for i in range(CLIENTS)])
            print(f"\nfire lateness of {TICKERS} phases firing every second, "
                  f"{args.window} s windows:")
            print(f"{'':34} {'fires':>6} {'p50':>8} {'p99':>8} {'requests/s':>11}")
            rows = [("no client", quiet, 0),
                    (f"{CLIENTS} clients, 1 request/s each", polled, polls),
                    (f"{CLIENTS} clients, 1 rerun/s each", posting, posts),
                    (f"{CLIENTS} clients back to back", hammered, hammers)]
            for name, late, requests in rows:
                print(f"{name:34} {len(late):6} {statistics.median(late) * 1000:6.1f}ms "
                      f"{percentile(late, 99) * 1000:6.1f}ms {requests:11.0f}")
            growth = percentile(polled, 99) - percentile(quiet, 99)
            print(f"p99 growth with {CLIENTS} polling clients: {growth * 1000:.1f} ms "
                  f"(target < {TARGET_LATENESS_GROWTH * 1000:.0f} ms: "
                  f"{'met' if growth < TARGET_LATENESS_GROWTH else 'NOT met'})")
            growth = percentile(posting, 99) - percentile(quiet, 99)
            print(f"p99 growth with {CLIENTS} clients posting actions: {growth * 1000:.1f} ms "
                  f"(target < {TARGET_LATENESS_GROWTH * 1000:.0f} ms: "
                  f"{'met' if growth < TARGET_LATENESS_GROWTH else 'NOT met'})")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
