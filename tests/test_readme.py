"""The README is true: its tour commands and its sqlite3 queries run against a real database."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import apsw
import pytest
import redis

from flowlord.clock import utc_now, utc_now_ms
from flowlord.model import Fire
from flowlord.store import Store, alerts, write_txn
from tests.helpers import ROOT, count, free_port, wait_for

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()


def console_lines() -> list[tuple[str, int]]:
    """`$ command   # exit N` lines of the console blocks, with their expected exit status."""
    lines = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command, _, comment = line[2:].partition("  # ")
                m = re.search(r"exit (\d+)", comment)
                lines.append((command.strip(), int(m.group(1)) if m else 0))
    return lines


def sql_queries() -> list[str]:
    queries = []
    for block in re.findall(r"```sql\n(.*?)```", README, re.S):
        text = "\n".join(ln for ln in block.splitlines() if not ln.startswith("--"))
        queries += [q.strip() for q in text.split(";") if q.strip()]
    return queries


def test_tour_commands_run_as_shown(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FLOWLORD_CONFIG", None)
    env["TZ"] = "UTC"  # the machine's zone is the default schedule zone
    commands = console_lines()
    assert len(commands) >= 10
    outputs: dict[str, str] = {}
    runs: list[tuple[str, str]] = []  # the same command may be shown twice
    for command, status in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == status, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        outputs[command] = done.stdout
        runs.append((command, done.stdout))
    errors = outputs["flowlord phases --severity error"]
    assert "broken.toml" in errors
    assert "no valid rule found: cron=0 25 * * *" in errors
    assert "parent task not found: ghost" in errors
    assert outputs["flowlord next extract:hourly -n 3 --after 2026-03-08T00:00:00Z"].split() == [
        "2026-03-08T00:05:00+00:00", "2026-03-08T01:05:00+00:00", "2026-03-08T02:05:00+00:00",
    ]
    triggers = [out for c, out in runs if c.startswith("flowlord trigger report:daily")]
    assert triggers[0].endswith("1 task created\n") and triggers[1] == ""
    backloads = [out for c, out in runs if c.startswith("flowlord backload report:backfill")]
    dry = [json.loads(line) for line in backloads[0].splitlines()]
    assert [t["info"] for t in dry] == [f"?day=2026-11-0{d}" for d in range(1, 8)]
    assert "7 steps: 7 new, 0 done before; 7 tasks created" in backloads[1]
    assert "10 steps: 3 new, 7 done before; 3 tasks created" in backloads[2]
    header, *listed = outputs["flowlord tasks --limit 5"].splitlines()
    assert header.startswith("task_no\tcreated\ttask\tstate\twait\trun")
    assert len(listed) == 5 and all("\treport:backfill\twaiting: " in ln for ln in listed)


def test_sqlite3_queries_run_in_debian_sqlite3_and_apsw(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    (tmp_path / "workflows" / "broken.toml").write_text('[[phase]]\ntask = "b"\ndependsOn = "x"\n')
    (tmp_path / "workflows" / "unparsable.toml").write_text("[[phase]\n")
    db = tmp_path / "flowlord.db"
    for command in (["refresh"], ["trigger", "report:daily", "--time", "2026-11-20T11:30:00Z"],
                    ["trigger", "report:daily", "--time", "2026-11-22T11:30:00Z"]):
        subprocess.run([sys.executable, "-m", "flowlord", *command,
                        "-w", str(tmp_path / "workflows"), "--db", str(db)],
                       check=True, capture_output=True)
    store = Store(str(db))  # what the daemon records: a fire without tasks, a failed task
    with write_txn(store.conn):
        store.record_fires([Fire("reports.toml", "report:daily", "2026-11-21T11:30:00Z", "cron",
                                 (), "no files found for /data/rows.json"),
                            Fire("reports.toml", "report:daily", "2026-11-23T11:30:00Z", "cron",
                                 (), "paused by alice: db maintenance")], utc_now_ms())
        [task] = store.claim("report", 1, utc_now_ms())
        store.finish(task.task_no, utc_now(), "error", "exit status 1: no data")
        store.add_alert(task.task_no, "failed", task.task, "failed after 1 attempt", utc_now())
        alerts.add_slot_alert(store.conn, "late", "reports.toml", "report:daily",  # paused
                              "2026-11-23T11:30:00Z", "report", "daily",
                              "not complete 1h0m0s after its slot: paused by alice", utc_now())
        run = store.begin_run("scheduler-1", 4242, "0.1.0", "2026-12-02T02:00:00.000Z")
        store.seen_run(run, "2026-12-02T02:30:00.000Z")  # a daemon running at 02:18
    store.close()
    queries = sql_queries()
    assert len(queries) >= 8
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "Debian's sqlite3 is needed (.ci/run installs it)"
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    answered = 0
    for query in queries:
        done = subprocess.run([sqlite3, "-readonly", str(db), query + ";"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and not done.stderr, (query, done.stderr)
        rows = list(conn.execute(query))
        assert len(rows) == len(done.stdout.splitlines()), query
        answered += bool(rows)
    conn.close()
    assert answered == len(queries)  # every example finds something in the examples


def test_make_run_loads_the_examples_runs_the_heartbeat_and_keeps_running() -> None:
    db = ROOT / "flowlord.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    wanted = {str(p.relative_to(ROOT / "workflows")) for p in (ROOT / "workflows").rglob("*.toml")}

    def loaded() -> bool:
        if not db.exists():
            return False
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            files = {r[0] for r in conn.execute("SELECT file_path FROM workflow_files")}
            done = dict(conn.execute("SELECT type, count(*) FROM tasks "
                                     "WHERE result = 'complete' GROUP BY type"))
            return files == wanted and done.get("heartbeat", 0) > 0 and done.get("pulse", 0) > 0
        except apsw.SQLError:  # the schema is being created
            return False
        finally:
            conn.close()

    with subprocess.Popen(["make", "-s", "run"], cwd=ROOT, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + 600
            while not loaded():
                assert proc.poll() is None, "make run ended early"
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert proc.poll() is None  # the daemon keeps running
            dropped = Path("/tmp/flowlord-drop") / f"readme-test-{os.getpid()}.csv"
            dropped.write_text("a,b\nc,d\n")  # the README's file drop
            try:
                wait_for(lambda: count(db, "SELECT count(*) FROM tasks WHERE type = 'count' "
                                           f"AND info = '{dropped}' AND result = 'complete'")
                         > 0, 60)
            finally:
                dropped.unlink()
            listed = subprocess.run([str(ROOT / ".venv" / "bin" / "flowlord"), "-c",
                                     "examples/flowlord.toml", "tasks", "--type", "heartbeat"],
                                    cwd=ROOT, capture_output=True, text=True)
            assert listed.returncode == 0 and "\theartbeat\tcomplete\t" in listed.stdout
            assert "\t?at=" in listed.stdout
            # the dashboard the README points at: the example files, a fire and its children
            with urllib.request.urlopen("http://127.0.0.1:8080/files", timeout=10) as page:
                files = page.read().decode()
            assert all(f">{name}</a>" in files for name in wanted)
            conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                fired = conn.execute("SELECT id FROM tasks WHERE type = 'pulse' "
                                     "AND result = 'complete' LIMIT 1").get
            finally:
                conn.close()
            with urllib.request.urlopen(f"http://127.0.0.1:8080/tasks/{fired}",
                                        timeout=10) as page:
                lineage = page.read().decode()
            assert "Fired by <a" in lineage and "<strong>pulse</strong>" in lineage
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def test_the_redis_walkthrough_runs_as_shown(tmp_path: Path) -> None:
    """The "Beyond one machine" commands, on a free port instead of 6379: the daemon and
    two workers against a real redis-server, until the pulse tasks show as complete."""
    block = re.search(r"## Beyond one machine.*?```sh\n(.*?)```", README, re.S)
    assert block is not None
    port = str(free_port())
    lines = [line.replace("6379", port) for line in block.group(1).splitlines()]
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "examples" / "flowlord-redis.toml"
    config.write_text(config.read_text().replace("6379", port))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TZ": "UTC"}
    env.pop("FLOWLORD_CONFIG", None)
    background = [line.removesuffix("&").strip() for line in lines if line.endswith("&")]
    [last] = [line for line in lines if not line.endswith("&")]
    procs = []
    try:
        for command in background:
            procs.append(subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=tmp_path,
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            if command.startswith("redis-server"):  # the next commands need it up
                client = redis.Redis(port=int(port))
                end = time.monotonic() + 20
                while not _answers(client):
                    assert time.monotonic() < end, "redis-server did not answer"
                    time.sleep(0.05)
        deadline = time.monotonic() + 90
        while True:
            done = subprocess.run(["bash", "-c", last], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0 and "complete" in done.stdout:
                break
            assert time.monotonic() < deadline, (done.stdout, done.stderr)
            time.sleep(0.5)
        assert "pulse" in done.stdout and "Traceback" not in done.stderr
        assert all(p.poll() is None for p in procs), "a command of the walkthrough exited"
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
