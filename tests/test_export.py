"""`flowlord export`: the stored workflows back to TOML, loaded again into the same rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import apsw
import pytest

from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow

COLUMNS = "file_path, task, depends_on, rule, template, retry, position"


def rows(db: Path, columns: str = COLUMNS) -> list[tuple[object, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(f"SELECT {columns} FROM workflow_phases ORDER BY 1, 2"))
    finally:
        conn.close()


def round_trip(tmp_path: Path, workflows: Path) -> tuple[Path, Path, Path]:
    first, second, out = tmp_path / "first.db", tmp_path / "second.db", tmp_path / "out"
    assert run_cli("refresh", "-w", str(workflows), "--db", str(first)).returncode == 0
    done = run_cli("export", "--out", str(out), "-w", str(workflows), "--db", str(first))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(list(workflows.rglob("*.toml")))
    assert run_cli("refresh", "-w", str(out), "--db", str(second)).returncode == 0
    return first, second, out


def test_the_examples_come_back_as_the_same_rows_and_pass_check(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    first, second, out = round_trip(tmp_path, tmp_path / "workflows")
    assert rows(second, "*") == rows(first, "*")  # status and severity too
    check = run_cli("check", str(out))
    assert check.returncode == 0, check.stdout


def test_the_go_flowlords_files_come_back_as_the_same_phases(tmp_path: Path,
                                                              upstream: Path) -> None:
    first, second, _ = round_trip(tmp_path, upstream / "workflow")
    assert rows(first) and rows(second) == rows(first)


def test_a_key_reaching_outside_the_output_is_refused_with_one_line(tmp_path: Path,
                                                                   wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE workflow_files SET file_path = '../../evil.toml'")  # cascades
    conn.close()
    done = run_cli("export", "--out", str(tmp_path / "out"), "--db", str(db))
    assert done.returncode == 2
    assert done.stderr.startswith("flowlord: export: workflow key outside") and \
        len(done.stderr.splitlines()) == 1
    assert not (tmp_path.parent / "evil.toml").exists()


def test_export_never_writes_over_the_workflow_files(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    done = run_cli("export", "--out", str(wf), "-w", str(wf), "--db", str(db))
    assert done.returncode == 2 and "is the workflow directory" in done.stderr
