"""The real `flowlord` command in its own process: outputs, --json shapes, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import apsw
import pytest

from flowlord.store.schema import SCHEMA_VERSION
from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow


def one_line_error(done: object, status: int = 2) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    err: str = done.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_check_of_the_examples_passes() -> None:
    done = run_cli("check", str(ROOT / "workflows"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 errors" in done.stdout


def test_check_json_shape_and_exit_1_on_errors(upstream: Path) -> None:
    done = run_cli("check", str(upstream), "--json")
    assert done.returncode == 1
    findings = json.loads(done.stdout)
    assert {tuple(sorted(f)) for f in findings} == {("file", "severity", "status", "task")}
    by_key = {(f["file"], f["task"]): f for f in findings}
    assert by_key[("invalid.toml", None)]["status"].startswith("parse error: ")
    assert by_key[("invalid.toml", None)]["severity"] == "error"
    assert by_key[("workflow/f1.toml", "task1:t2")] == {
        "file": "workflow/f1.toml", "task": "task1:t2", "severity": "ok", "status": ""}
    assert by_key[("workflow/f2.toml", "task1")]["severity"] == "warning"


def test_check_does_not_touch_a_database(tmp_path: Path, upstream: Path) -> None:
    run_cli("check", str(upstream / "workflow"), cwd=tmp_path)
    assert list(tmp_path.iterdir()) == [upstream]


def test_check_single_file_and_missing_path(upstream: Path) -> None:
    done = run_cli("check", str(upstream / "workflow" / "jobs.toml"))
    assert done.returncode == 0
    assert "1 file, 5 phases" in done.stdout
    one_line_error(run_cli("check", str(upstream / "nope")))


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["phases", "--severity", "fatal"], ["next"], ["next", "a", "-n", "0"],
     ["next", "a", "--after", "yesterday"], ["frobnicate"], []],
)
def test_usage_errors_are_one_line_exit_2(args: list[str]) -> None:
    one_line_error(run_cli(*args))


def test_refresh_prints_changes_and_json(tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    done = run_cli("refresh", "-w", str(upstream / "parent"), "--db", db)
    assert done.stdout.split() == ["+f1.toml", "+group/f3.toml"]
    (upstream / "parent" / "f1.toml").unlink()
    done = run_cli("refresh", "-w", str(upstream / "parent"), "--db", db, "--json")
    assert json.loads(done.stdout) == {"added": [], "changed": [], "removed": ["f1.toml"]}


def test_refresh_of_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    err = one_line_error(run_cli("refresh", "-w", str(tmp_path / "nope"),
                                 "--db", str(tmp_path / "f.db")))
    assert "workflow path not found" in err


def test_phases_text_json_and_severity_filter(tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(upstream / "workflow"), "--db", db)
    rows = json.loads(run_cli("phases", "--db", db, "--json").stdout)
    assert set(rows[0]) == {"file", "task", "depends_on", "rule", "template", "retry",
                            "severity", "status", "next_fire", "last_fire", "paused"}
    task1 = next(r for r in rows if r["task"] == "task1:t2")
    assert task1["next_fire"].endswith(":00:00Z")  # hourly at minute 0
    assert next(r for r in rows if r["task"] == "task2")["next_fire"] is None
    warnings = json.loads(run_cli("phases", "--db", db, "--json", "--severity",
                                  "warning").stdout)
    assert warnings and all(r["severity"] == "warning" for r in warnings)
    text = run_cli("phases", "--db", db).stdout
    assert "f2.toml\ttask1\twarning" in text


def test_commands_refuse_a_newer_schema_naming_both_versions(tmp_path: Path,
                                                             upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(upstream / "workflow"), "--db", db)
    conn = apsw.Connection(db)
    conn.pragma("user_version", SCHEMA_VERSION + 1)
    conn.close()
    for command in (["refresh", "-w", str(upstream / "workflow")], ["phases"], ["graph"],
                    ["doctor"], ["run", "-w", str(upstream / "workflow")]):
        err = one_line_error(run_cli(*command, "--db", db))
        assert f"version {SCHEMA_VERSION + 1}" in err and f"version {SCHEMA_VERSION})" in err


def test_graph_formats(tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(upstream / "workflow"), "--db", db)
    text = run_cli("graph", "--db", db).stdout
    assert "f1.toml:\n  task1:t2\n    task2\n      task3\n      task4\n    task5:t5\n" in text
    dot = run_cli("graph", "--db", db, "--format", "dot").stdout
    assert dot.startswith("digraph flowlord {") and "->" in dot
    mermaid = run_cli("graph", "--db", db, "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "-->" in mermaid


def test_next_reads_files_and_follows_the_zone(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "night"\nrule = "cron=CRON_TZ=America/New_York 30 2 * * *"\n'
        '[[phase]]\ntask = "night"\nrule = "cron=0 0 * * *&job=utc"\n'
        '[[phase]]\ntask = "manual"\n'
        '[[phase]]\ntask = "bad"\nrule = "cron=99 * * * *"\n')
    done = run_cli("next", "night", "-w", str(wf), "-n", "3", "--after",
                   "2025-03-08T12:00:00-05:00")
    assert done.stdout.split() == ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00",
                                   "2025-03-11T02:30:00-04:00"]
    done = run_cli("next", "night:utc", "-w", str(wf), "-n", "1", "--after",
                   "2025-03-08T12:00:00Z", env={"TZ": "UTC"})
    assert done.stdout.split() == ["2025-03-09T00:00:00+00:00"]
    one_line_error(run_cli("next", "manual", "-w", str(wf)), status=1)
    one_line_error(run_cli("next", "bad", "-w", str(wf)), status=1)
    one_line_error(run_cli("next", "ghost", "-w", str(wf)), status=2)


def test_doctor_finds_orphans_left_with_foreign_keys_off(tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(upstream / "workflow"), "--db", db)
    assert run_cli("doctor", "--db", db).returncode == 0
    conn = apsw.Connection(db)
    conn.pragma("foreign_keys", "OFF")  # what a hand edit in the sqlite3 shell does
    conn.execute("DELETE FROM workflow_files WHERE file_path = 'f1.toml'")
    conn.close()
    done = run_cli("doctor", "--db", db)
    assert done.returncode == 1
    assert "orphan phase: f1.toml: task1:t2" in done.stdout


def test_config_file_is_used_and_unknown_keys_are_named(tmp_path: Path, upstream: Path) -> None:
    shutil.copytree(upstream / "parent", tmp_path / "flows")
    (tmp_path / "flowlord.toml").write_text('workflows = "flows"\ndb = "state.db"\n')
    done = run_cli("refresh", cwd=tmp_path)
    assert done.stdout.split() == ["+f1.toml", "+group/f3.toml"]
    assert (tmp_path / "state.db").exists()
    (tmp_path / "other.toml").write_text('[bus]\nurll = "local"\n')
    err = one_line_error(run_cli("refresh", "-c", str(tmp_path / "other.toml"), cwd=tmp_path))
    assert "unknown key: bus.urll" in err
    err = one_line_error(run_cli("refresh", env={"FLOWLORD_CONFIG": str(tmp_path / "none.toml")}))
    assert "none.toml" in err


def test_refresh_while_a_shell_holds_the_write_lock_fails_cleanly(
        tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(upstream / "parent"), "--db", db)
    (upstream / "parent" / "f1.toml").write_text('[[phase]]\ntask = "x"\n')
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3
    shell = subprocess.Popen([sqlite3, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert shell.stdin and shell.stdout
    shell.stdin.write("BEGIN IMMEDIATE;\nSELECT 'locked';\n")
    shell.stdin.flush()
    assert shell.stdout.readline().strip() == "locked"
    try:
        err = one_line_error(run_cli("refresh", "-w", str(upstream / "parent"), "--db", db))
        assert "locked" in err
    finally:
        shell.stdin.write("ROLLBACK;\n.quit\n")
        shell.stdin.close()
        shell.wait(timeout=30)
        shell.stdout.close()
    done = run_cli("refresh", "-w", str(upstream / "parent"), "--db", db)
    assert done.stdout.split() == ["~f1.toml"]


def test_options_work_before_and_after_the_command(tmp_path: Path, upstream: Path) -> None:
    before = run_cli("--db", str(tmp_path / "a.db"), "-w", str(upstream / "parent"), "refresh")
    after = run_cli("refresh", "--db", str(tmp_path / "b.db"), "-w", str(upstream / "parent"))
    assert before.stdout == after.stdout == "+f1.toml\n+group/f3.toml\n"
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()


def test_refused_bytes_show_in_refresh_run_and_phases(tmp_path: Path, upstream: Path) -> None:
    db = str(tmp_path / "f.db")
    wf = upstream / "parent"
    run_cli("refresh", "-w", str(wf), "--db", db)
    (wf / "f1.toml").write_text('[[phase]]\ntask = "a"\nretry = "3"\n')
    done = run_cli("refresh", "-w", str(wf), "--db", db)
    assert done.stdout == "~f1.toml\n"
    assert "f1.toml: parse error: phase 1: retry must be an integer" in done.stderr
    errors = run_cli("phases", "--db", db, "--severity", "error")
    assert errors.stdout.startswith("f1.toml\t-\terror\tparse error: ")
    rows = json.loads(run_cli("phases", "--db", db, "--json").stdout)
    assert rows[0]["task"] is None and rows[0]["status"].startswith("parse error: ")
    assert [r["task"] for r in rows if r["file"] == "f1.toml"][1:] == [
        "task1:t2", "task2", "task3", "task4"]  # the last good phases stay
    done = run_cli("run", "--once", "-w", str(wf), "--db", db)
    assert "1 file refused" in done.stdout


def test_graph_keeps_lookalike_tasks_apart(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "x.toml").write_text(
        '[[phase]]\ntask = "a:b"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "a_b"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "q"\ndependsOn = "a:b"\n')
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(wf), "--db", db)
    dot = run_cli("graph", "--db", db, "--format", "dot").stdout
    assert dot.count("->") == 1 and "n0 -> n2;" in dot
    mermaid = run_cli("graph", "--db", db, "--format", "mermaid").stdout
    assert "n0 --> n2" in mermaid


def test_version() -> None:
    assert run_cli("--version").stdout.startswith("flowlord ")


def test_check_ignores_a_fifo_and_next_takes_the_first_key(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    (wf / "a").mkdir(parents=True)
    os.mkfifo(wf / "pipe.toml")
    (wf / "a.toml").write_text('[[phase]]\ntask = "t"\nrule = "cron=0 1 * * *"\n')
    (wf / "a" / "x.toml").write_text('[[phase]]\ntask = "t"\nrule = "cron=0 2 * * *"\n')
    done = run_cli("check", str(wf))
    assert done.returncode == 0 and "2 files, 2 phases" in done.stdout
    done = run_cli("next", "t", "-w", str(wf), "-n", "1", "--after", "2026-01-01T00:00:00Z",
                   env={"TZ": "UTC"})
    assert done.stdout.split() == ["2026-01-01T01:00:00+00:00"]
    assert "2 phases match t; using a.toml" in done.stderr


def test_graph_text_names_shared_children_once_and_survives_deep_chains(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "d.toml").write_text(
        '[[phase]]\ntask = "a:x"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "a:y"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "b"\ndependsOn = "a"\n'
        '[[phase]]\ntask = "c"\ndependsOn = "b"\n'
        + "".join(f'[[phase]]\ntask = "n{i}"\ndependsOn = "{f"n{i - 1}" if i else "c"}"\n'
                  for i in range(1500)))
    db = str(tmp_path / "f.db")
    run_cli("refresh", "-w", str(wf), "--db", db)
    done = run_cli("graph", "--db", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "d.toml:\n  a:x\n    b\n      c\n        n0\n")
    assert "  a:y\n    b  (see above)\n" in done.stdout
    assert len(done.stdout.splitlines()) == 1 + 2 + 1 + 1 + 1 + 1500


def test_refresh_of_a_missing_directory_creates_no_database(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    for command in (["refresh"], ["run", "--once"]):
        done = run_cli(*command, "-w", str(tmp_path / "nope"), "--db", str(db))
        assert (done.returncode, done.stderr) == (
            2, f"flowlord: workflow path not found: {tmp_path / 'nope'}\n")
    assert not db.exists()


def test_check_reports_what_the_daemon_would_refuse(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    f = wf / "open.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    f.chmod(0o666)
    done = run_cli("check", str(wf))
    assert done.returncode == 1
    assert "open.toml: parse error: refused: writable by any user (o+w)" in done.stdout
    config = tmp_path / "flowlord.toml"
    config.write_text("allow_world_writable = true\n")
    assert run_cli("check", str(wf), "-c", str(config)).returncode == 0


def test_doctor_fix_removes_orphans_in_one_go_and_keeps_what_it_can(tmp_path: Path,
                                                                    wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "p"\ntemplate = "?h={hh}"\n\n'
                               '[[phase]]\ntask = "c"\ndependsOn = "p"\n')
    (wf / "b.toml").write_text('[[phase]]\ntask = "q"\n')
    db = str(tmp_path / "f.db")
    assert run_cli("refresh", "-w", str(wf), "--db", db).returncode == 0
    assert run_cli("backload", "p", "--from", "2026-01-01T00:00:00Z", "--to",
                   "2026-01-01T01:00:00Z", "--by", "hour", "-w", str(wf),
                   "--db", db).returncode == 0
    conn = apsw.Connection(db)
    conn.pragma("foreign_keys", "ON")
    [(first, second)] = conn.execute("SELECT min(task_no), max(task_no) FROM tasks")
    conn.execute("INSERT INTO tasks (id, type, created, file_path, phase, parent_no) "
                 "SELECT id, 'c', created, file_path, 'c', task_no FROM tasks "
                 "WHERE task_no = ?", (first,))  # a child of the first task
    conn.pragma("foreign_keys", "OFF")  # what hand edits in the sqlite3 shell do
    conn.execute("DELETE FROM workflow_files WHERE file_path = 'b.toml'")  # q is orphaned
    conn.execute("DELETE FROM tasks WHERE task_no = ?", (first,))  # the child's parent
    conn.execute("DELETE FROM fires WHERE scheduled_for = '2026-01-01T01:00:00Z'")  # 2nd's
    conn.close()
    before = run_cli("doctor", "--db", db)
    assert before.returncode == 1 and "orphan phase: b.toml: q" in before.stdout
    done = run_cli("doctor", "--fix", "--db", db)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == f"{db}: ok"
    assert "removed or cleared 3 orphan rows" in done.stderr
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    assert list(conn.execute("SELECT task FROM workflow_phases ORDER BY task")) == [
        ("c",), ("p",)]
    # the child stays, without its parent; the task of the lost fire is gone
    assert list(conn.execute("SELECT type, parent_no FROM tasks")) == [("c", None)]
    assert not list(conn.execute("SELECT 1 FROM tasks WHERE task_no = ?", (second,)))
    conn.close()
