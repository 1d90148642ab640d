"""Run statistics from history (`flowlord stats`, `/api/stats`): per phase, runs and
results, run time (started → ended) and wait (created → started) percentiles, in
seconds; task times are kept to the millisecond, so short tasks have real durations."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowlord.bus.local import LocalBus
from flowlord.cli import main
from flowlord.clock import FakeClock, rfc3339_ms
from flowlord.config import Config
from flowlord.errors import BadRequest
from flowlord.store import Store, reads, write_txn
from flowlord.web.api import Api
from tests.helpers import query, stepped, turn, utc


def history(store: Store, runs: list[tuple[str, str, str, str, str]]) -> None:
    """Tasks of phase `tick` in a.toml: (created, started, ended, result, msg)."""
    with write_txn(store.conn):
        store.conn.execute("INSERT OR IGNORE INTO workflow_files (file_path, file_hash, "
                           "loaded_at) VALUES ('a.toml', '', '')")
        store.conn.execute("INSERT OR IGNORE INTO workflow_phases (file_path, task, "
                           "position) VALUES ('a.toml', 'tick', 0)")
        store.conn.execute("INSERT INTO fires (file_path, phase, scheduled_for, fired_at, "
                           "source) VALUES ('a.toml', 'tick', '2026-12-01T00:00:00Z', '', "
                           "'cron')")
        store.conn.executemany(
            "INSERT INTO tasks (id, type, created, started, ended, result, msg, file_path, "
            "phase) VALUES ('x', 'tick', ?, ?, ?, ?, ?, 'a.toml', 'tick')", runs)


def test_stats_per_phase_from_history(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "f.db"
    store = Store(str(db))
    # twenty runs of 0.1 s to 2.0 s, each having waited 0.05 s; two failed; one cancelled
    runs = [(f"2099-01-01T00:00:{i:02d}.000Z", f"2099-01-01T00:00:{i:02d}.050Z",
             f"2099-01-01T00:00:{i + (i * 100 + 50) // 1000:02d}."
             f"{(i * 100 + 50) % 1000:03d}Z", "error" if i in (3, 7) else "complete", "")
            for i in range(1, 21)]
    runs.append(("2099-01-01T00:01:00.000Z", "2099-01-01T00:09:00.000Z",
                 "2099-01-01T00:09:00.000Z", "error", "cancelled by bob"))
    history(store, runs)
    [row] = reads.stats(store)
    store.close()
    assert row == {"file": "a.toml", "task": "tick", "runs": 20, "complete": 18, "error": 2,
                   "run_p50": 1.0, "run_p95": 1.9, "run_max": 2.0, "wait_p50": 0.05,
                   "wait_p95": 0.05}
    assert main(["stats", "--db", str(db), "--since", "2098-01-01T00:00:00Z", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [row]
    assert main(["stats", "--db", str(db), "--type", "other"]) == 0
    assert capsys.readouterr().out == ""
    api = Api(Config(db=str(db)), lambda: True, lambda: "leader")
    assert api.answer("/api/stats", {"type": ["tick"]}) == (200, [row])
    assert api.answer("/api/stats", {"since": ["2100-01-01T00:00:00Z"]}) == (200, [])
    # a page of the stored phases: a phase with no run gives no row, a later one does
    store = Store(str(db))
    with write_txn(store.conn):
        store.conn.execute("INSERT INTO workflow_files (file_path, file_hash, loaded_at) "
                           "VALUES ('b.toml', '', '')")
        store.conn.executemany("INSERT INTO workflow_phases (file_path, task, position) "
                               "VALUES ('b.toml', ?, ?)", [("idle", 0), ("tick", 1)])
        store.conn.execute("INSERT INTO tasks (id, type, created, started, ended, result, "
                           "file_path, phase) VALUES ('y', 'tick', '2099-01-01T00:00:00Z', "
                           "'2099-01-01T00:00:00Z', '2099-01-01T00:00:01Z', 'complete', "
                           "'b.toml', 'tick')")
    store.close()
    assert [r["file"] for r in api.answer("/api/stats", {})[1]] == ["a.toml", "b.toml"]
    assert api.answer("/api/stats", {"limit": ["1"]}) == (200, [row])
    assert [(r["file"], r["runs"]) for r in api.answer(
        "/api/stats", {"offset": ["1"], "limit": ["2"]})[1]] == [("b.toml", 1)]
    assert [r["task"] for r in api.answer("/api/stats", {"file": ["b.toml"]})[1]] == ["tick"]


def test_the_stats_views_agree_with_flowlord_stats_and_debians_sqlite3_reads_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "f.db"
    store = Store(str(db))
    now = datetime.now(UTC)
    # seven runs of 0.5 s to 3.5 s in the last hour, one failed; one of 40 days ago
    runs = [(rfc3339_ms(now - timedelta(minutes=50 - i)),
             rfc3339_ms(now - timedelta(minutes=50 - i) + timedelta(seconds=i / 4)),
             rfc3339_ms(now - timedelta(minutes=50 - i) + timedelta(seconds=i / 4 + i / 2)),
             "error" if i == 2 else "complete", "") for i in range(1, 8)]
    runs.append((rfc3339_ms(now - timedelta(days=40)), rfc3339_ms(now - timedelta(days=40)),
                 rfc3339_ms(now - timedelta(days=40)), "complete", ""))
    history(store, runs)
    with write_txn(store.conn):  # a task of no phase counts for its topic only
        store.conn.execute("INSERT INTO tasks (id, type, created, started, ended, result) "
                           "VALUES ('y', 'tick', ?, ?, ?, 'complete')",
                           (rfc3339_ms(now),) * 3)
    since = rfc3339_ms(now - timedelta(days=30))
    [phase] = reads.stats(store, since=since)
    [topic] = reads.stats(store, since=since, by="topic")
    store.close()
    assert (phase["runs"], phase["error"], phase["run_p50"], phase["run_max"]) == (
        7, 1, 2.0, 3.5)
    assert (topic["topic"], topic["runs"], topic["complete"]) == ("tick", 8, 7)
    figures = ", ".join(reads.STATS_FIGURES)
    assert query(db, f"SELECT file_path, phase, {figures} FROM phase_stats") == [
        tuple(phase.values())]
    assert query(db, f"SELECT topic, {figures} FROM topic_stats") == [tuple(topic.values())]
    shell = subprocess.run(["sqlite3", "-readonly", str(db),
                            "SELECT runs, run_p95, wait_p50 FROM phase_stats"],
                           capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == f"7|{phase['run_p95']}|{phase['wait_p50']}"
    assert main(["stats", "--db", str(db), "--by", "topic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [topic]
    api = Api(Config(db=str(db)), lambda: True, lambda: "leader")
    assert api.answer("/api/stats", {"by": ["topic"]}) == (200, [topic])
    with pytest.raises(BadRequest, match="by is phase or topic"):
        api.answer("/api/stats", {"by": ["host"]})
    with pytest.raises(BadRequest, match="file is for by=phase"):
        api.answer("/api/stats", {"by": ["topic"], "file": ["a.toml"]})
    assert main(["stats", "--db", str(db), "--by", "topic", "--file", "a.toml"]) == 2
    assert api.answer("/api/stats", {"by": ["topic"], "offset": ["1"]}) == (200, [])


def test_a_task_running_far_past_its_phases_usual_time_gets_one_slow_alert(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\n')
    clock = FakeClock(utc(2099, 1, 1, 1))
    with stepped(tmp_path, wf, clock, bus=LocalBus({})) as d:
        # ten runs of 1 to 2 s, then one that started now and goes on
        usual = [(f"2099-01-01T00:00:{i:02d}.000Z", f"2099-01-01T00:00:{i:02d}.000Z",
                  f"2099-01-01T00:00:{i + 1 + i % 2:02d}.000Z", "complete", "")
                 for i in range(10)]
        history(d.store, [*usual, ("2099-01-01T01:00:00.000Z", "2099-01-01T01:00:00.000Z",
                                   None, None, "")])  # type: ignore[list-item]
        turn(d, clock, 5.0)  # 5 s: not three times its usual 2 s yet (p95)
        turn(d, clock, 61.0)
        turn(d, clock, 61.0)  # looked at again: still one alert
        alerts = query(tmp_path / "f.db", "SELECT task_no, kind, message FROM alerts")
    assert alerts == [(11, "slow", "running for 66 s, 33.0 times its phase's usual 2.0 s "
                                   "(p95)")]


def test_a_phase_without_ten_runs_is_never_slow(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "tick"\n')
    clock = FakeClock(utc(2099, 1, 1, 1))
    with stepped(tmp_path, wf, clock, bus=LocalBus({})) as d:
        history(d.store, [("2099-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z",
                           "2099-01-01T00:00:01.000Z", "complete", ""),
                          ("2099-01-01T01:00:00.000Z", "2099-01-01T01:00:00.000Z",
                           None, None, "")])  # type: ignore[list-item]
        turn(d, clock, 3600.0)
    assert query(tmp_path / "f.db", "SELECT count(*) FROM alerts") == [(0,)]
