"""Helpers the test modules share: paths, the real commands and the daemon in their own
processes, waiting, reading a database, the HTTP API. Plain functions and context
managers only; the pytest fixtures are in conftest.py. No test module imports another."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import apsw

from flowlord.bus.inprocess import InProcessBus
from flowlord.clock import FakeClock
from flowlord.config import Config
from flowlord.daemon import Daemon
from flowlord.store import Store

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT.parent / "shared" / "fixtures" / "flowlord-upstream"
# a copy inside the project, so a clone tests without ../shared
FIXTURES = Path(__file__).resolve().parent / "data" / "upstream"

# sleeps 0-200 ms, fails about a third of the time: random, but the same for the same
# info and attempt, so every run of the test sees the same failures
FLAKY = ("import json, os, random, sys, time\n"
         "task = json.loads(os.environ['FLOWLORD_TASK'])\n"
         "rng = random.Random(os.environ['FLOWLORD_TASK_INFO'] + task.get('meta', ''))\n"
         "time.sleep(rng.random() * 0.2)\n"
         "sys.exit(1 if rng.random() < 1 / 3 else 0)")


# --- time -------------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def at(text: str) -> datetime:
    """An ISO 8601 time; a trailing Z is UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.05)


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process."""
    full_env = {k: v for k, v in os.environ.items() if k != "FLOWLORD_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "flowlord", *args], cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=120)


@contextlib.contextmanager
def daemon(tmp_path: Path, wf: Path, db: Path, stderr: int | IO[str] = subprocess.DEVNULL,
           args: Sequence[str] = (), env: dict[str, str] | None = None,
           ) -> Iterator[subprocess.Popen[str]]:
    """`flowlord run` on `wf`, notifying the socket of the notify_socket fixture;
    killed at the end if the test did not stop it."""
    full_env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("FLOWLORD_CONFIG", None)
    with subprocess.Popen([sys.executable, "-m", "flowlord", "run", "-w", str(wf),
                           "--db", str(db), *args], env=full_env, stderr=stderr,
                          text=True) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def messages_until(sock: socket.socket, wanted: str) -> list[str]:
    """The systemd notifications read from `sock` up to and including `wanted`."""
    seen: list[str] = []
    while wanted not in seen:
        seen += sock.recv(4096).decode().split("\n")
    return seen


@contextlib.contextmanager
def workers(url: str, topic: str, *command: str, count: int = 1, concurrency: int = 1,
            claim_idle: str = "1m") -> Iterator[list[subprocess.Popen[str]]]:
    """`count` `flowlord worker` processes for a topic on the redis bus at `url`,
    killed at the end if still running."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "flowlord", "worker", "--bus", url, "--topic", topic,
         "--concurrency", str(concurrency), "--claim-idle", claim_idle, "--grace", "2s",
         "--", *command], stderr=subprocess.DEVNULL, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def backload(wf: Path, db: Path, task: str, hours: int) -> None:
    """`flowlord refresh`, then `flowlord backload` of `hours` hourly tasks from
    2026-01-01T00Z."""
    done = run_cli("refresh", "-w", str(wf), "--db", str(db))
    assert done.returncode == 0, done.stderr
    done = run_cli("backload", task, "--from", "2026-01-01T00:00:00Z", "--to",
                   f"2026-01-{1 + (hours - 1) // 24:02d}T{(hours - 1) % 24:02d}:00:00Z",
                   "--by", "hour", "-w", str(wf), "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert f"{hours} step{'s' if hours > 1 else ''}: {hours} new" in done.stdout


# --- configuration files ----------------------------------------------------------------


def worker_table(topic: str, *argv: str, concurrency: int = 1) -> str:
    """A `[workers.<topic>]` table of a config file: local workers running `argv`."""
    args = ", ".join(f'"{a}"' for a in argv).replace("\n", "\\n")
    return f"[workers.{topic}]\ncommand = [{args}]\nconcurrency = {concurrency}\n"


def daemon_config(tmp_path: Path, tables: str) -> Path:
    """tmp_path/flowlord.toml: UTC, a 5 s shutdown grace and `tables` (worker_table's)."""
    path = tmp_path / "flowlord.toml"
    path.write_text(f'timezone = "UTC"\nshutdown_grace = "5s"\n{tables}')
    return path


def redis_config(tmp_path: Path, url: str, node: str = "") -> list[str]:
    """The README's config for a redis bus: no lease setting, the node named or not;
    as the `-c` arguments of a command."""
    path = tmp_path / "flowlord.toml"
    named = f'node = "{node}"\n' if node else ""
    path.write_text(f'timezone = "UTC"\n[bus]\nurl = "{url}"\n{named}')
    return ["-c", str(path)]


# --- reading a database -----------------------------------------------------------------


def _read(db: Path, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(5000)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def query(db: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows of a database a daemon may still be creating: [] before the file or the
    table exists."""
    if not db.exists():  # the daemon has not started yet
        return []
    try:
        return _read(db, sql, args)
    except apsw.SQLError as e:  # the daemon has not created the tables yet
        if "no such table" not in str(e):
            raise
        return []


def query_config_db(cfg: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of the flowlord.db next to the config file `cfg`; a missing database or
    table is an error."""
    return _read(cfg.parent / "flowlord.db", sql, params)


def count(db: Path, sql: str) -> int:
    """A count(*) query; 0 before the daemon has made its tables."""
    rows = query(db, sql)
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


def unfinished(db: Path) -> int:
    """Tasks not ended yet; -1 before the daemon has made its tables."""
    rows = query(db, "SELECT count(*) FROM tasks WHERE ended IS NULL")
    return int(rows[0][0]) if rows else -1  # type: ignore[call-overload]


def chains(db: Path) -> dict[int, list[tuple[int, str]]]:
    """Each root work task (attempt 0) → the results of its attempts, in order."""
    rows = query(db, "SELECT task_no, parent_no, attempt, result FROM tasks "
                     "WHERE type = 'work' ORDER BY task_no")
    root_of: dict[int, int] = {}
    found: dict[int, list[tuple[int, str]]] = {}
    for no, parent, attempt, result in rows:
        root = int(no) if attempt == 0 else root_of[int(parent)]  # type: ignore[call-overload]
        root_of[int(no)] = root  # type: ignore[call-overload]
        found.setdefault(root, []).append((int(attempt), str(result)))  # type: ignore[call-overload]
    return found


def store_rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    """Rows through an open Store's own connection."""
    return [tuple(r) for r in store.conn.execute(sql)]


# --- the HTTP API -----------------------------------------------------------------------


def get(base: str, path: str) -> tuple[int, Any]:
    """(status, JSON body); a page of the dashboard (or its stylesheet) comes back as text."""
    try:
        with urllib.request.urlopen(base + path, timeout=10) as answer:
            return answer.status, _body(answer)
    except urllib.error.HTTPError as e:
        with e:  # an error answer is a response too: closed here
            return e.code, _body(e)


def _body(answer: Any) -> Any:
    data = answer.read()
    if answer.headers["Content-Type"].startswith("application/json"):
        return json.loads(data)
    return data.decode()


def answers(base: str) -> bool:
    """Whether the HTTP server at `base` answers /healthz with 200."""
    try:
        return get(base, "/healthz")[0] == 200
    except OSError:
        return False


# --- the daemon in-process ----------------------------------------------------------------


@contextlib.contextmanager
def stepped(tmp_path: Path, wf: Path, clock: FakeClock, bus: Any = None,
            **settings: Any) -> Iterator[Daemon]:
    """A started daemon on `wf` and tmp_path/f.db, closed at the end."""
    config = Config(workflows=str(wf), db=str(tmp_path / "f.db"), timezone="UTC", **settings)
    d = Daemon(config, clock=clock, bus=bus if bus is not None else InProcessBus())
    d.open()
    try:
        d.start()
        yield d
    finally:
        d.close()


def turn(d: Daemon, clock: FakeClock, seconds: float = 0.0) -> float:
    """One turn of the loop, `seconds` after the last one."""
    clock.advance(seconds)
    return d.tick(clock.now(), clock.monotonic())
