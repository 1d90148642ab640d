"""Benchmark of the scheduling policy's cost to firing: fire lateness of 10,000 phases
with `overlap=skip` and `max_active=1` beside the same phases without them, measured in
one run.

    python bench/policy.py [--phases N] [--seconds S] [--quick]

Two rounds on the same generated files, each a fresh database and a fresh daemon:
N phases in files of ten, phase i due once a minute at second i mod 60 (N/60 fires in
each second), all on one topic whose local worker runs `true` 8 at a time. Without
the policy, and with `overlap=skip&max_active=1` on every phase, so every slot asks
whether an earlier task of its phase is unfinished and every claim counts the
phase's running tasks (flowlord/overlap.py, store.claim_limited). Lateness is a fire's
recorded time less its slot, over every fire of the S seconds that begin 5 s after
READY=1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import apsw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from daemon import parse_time, percentile, wait  # noqa: E402

TARGET_RATIO = 1.5  # lateness p99 with the policy / without it
PHASES_PER_FILE = 10
POLICY = "&overlap=skip&max_active=1"


def generate(wf: Path, phases: int, rule_suffix: str) -> None:
    for f in range(phases // PHASES_PER_FILE):
        d = wf / f"d{f // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"w{f}.toml").write_text("".join(
            f'[[phase]]\ntask = "work:w{f}-{i}"\n'
            f'rule = "cron={(f * PHASES_PER_FILE + i) % 60} * * * * *{rule_suffix}"\n\n'
            for i in range(PHASES_PER_FILE)))


def one_round(tmp: Path, phases: int, seconds: float, rule_suffix: str) -> list[float]:
    """Lateness in seconds of every fire of `seconds` after the first full minute."""
    wf, db = tmp / "wf", tmp / "f.db"
    generate(wf, phases, rule_suffix)
    config = tmp / "flowlord.toml"
    config.write_text(f'workflows = "{wf}"\ndb = "{db}"\ntimezone = "UTC"\n'
                      f'catchup = "none"\n\n[workers.work]\ncommand = ["true"]\n'
                      f"concurrency = 8\n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp / "notify.sock"))
    sock.settimeout(600)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "PYTHONPATH": str(ROOT)}
    with (tmp / "daemon.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flowlord", "run", "-c", str(config)],
                                env=env, stderr=log)
        try:
            while "READY=1" not in sock.recv(65536).decode().split("\n"):
                pass
            start = time.time() // 1 + 5  # the first seconds after READY=1 left out
            end = start + seconds
            time.sleep(max(0.0, end - time.time()))
            conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
            first = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            last = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            due = (phases * seconds) // 60
            try:
                wait(lambda: conn.execute(
                    "SELECT count(*) FROM fires WHERE scheduled_for >= ? AND scheduled_for < ?",
                    (first, last)).fetchone()[0] >= due, 60, poll=0.1)
                rows = conn.execute(
                    "SELECT scheduled_for, fired_at FROM fires "
                    "WHERE scheduled_for >= ? AND scheduled_for < ?", (first, last)).fetchall()
            finally:
                conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            sock.close()
    for path in (tmp / "notify.sock", db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(wf)], check=True)
    return [(parse_time(fired) - parse_time(slot)).total_seconds() for slot, fired in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=60, help="of fires measured")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.phases, args.seconds = 600, 10
    figures = {}
    with tempfile.TemporaryDirectory(prefix="flowlord-bench-") as name:
        for label, suffix in (("without", ""), ("with", POLICY)):
            late = one_round(Path(name), args.phases, args.seconds, suffix)
            figures[label] = (statistics.median(late), percentile(late, 99), len(late))
    (w50, w99, wn), (p50, p99, pn) = figures["without"], figures["with"]
    ratio = p99 / w99 if w99 > 0 else float("inf")
    print(f"fire lateness of {args.phases:,} phases ({args.phases // 60} due each second), "
          f"{args.seconds} s: without the policy p50 {w50 * 1000:.0f} ms, "
          f"p99 {w99 * 1000:.0f} ms ({wn:,} fires); with overlap=skip and max_active=1 "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({pn:,} fires); "
          f"ratio {ratio:.2f} (target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
