"""`flowlord trigger`, `backload` and `tasks` end to end (README.md: A tour, Running
tasks, Debugging with sqlite3): the real command in its own process, its effects
checked in the database itself."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import apsw
import pytest

from tests.helpers import query_config_db, run_cli

pytestmark = pytest.mark.slow

Done = subprocess.CompletedProcess[str]
# `report:daily` four hours back: a fire at 12:00Z renders the data of 08:00Z
REPORT = """
[[phase]]
task = "report:daily"
rule = "cron=0 * * * *&offset=-4h"
template = "{yyyy}-{mm}-{dd}T{hh}"
"""
LOAD = '[[phase]]\ntask = "load"\nrule = "cron=0 6 * * *"\ntemplate = "{yyyy}{mm}{dd}"\n'
TASK_KEYS = {"type", "job", "info", "meta", "id", "created", "started", "ended", "result", "msg"}
# the keys of /api/tasks: the workflow file is `file` in both (flowlord.store.reads)
COLUMNS = {"task_no", "id", "type", "job", "info", "meta", "created", "started", "ended",
           "result", "msg", "file", "phase", "attempt", "scheduled_for", "parent_no", "due_at",
           "no_children", "wait_seconds", "run_seconds", "waiting"}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # task times: ms


def setup(tmp_path: Path, wf: Path, files: dict[str, str], zone: str = "UTC") -> Path:
    """Workflow files and a config naming the zone, loaded with `flowlord refresh`."""
    for key, text in files.items():
        (wf / key).parent.mkdir(parents=True, exist_ok=True)
        (wf / key).write_text(text)
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(f'timezone = "{zone}"\nworkflows = "{wf.name}"\ndb = "flowlord.db"\n')
    done = run_cli("refresh", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    return cfg


def cli(cfg: Path, *args: str) -> Done:
    return run_cli(*args, "-c", str(cfg))


def ok(done: Done) -> Done:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def counts(cfg: Path) -> tuple[object, object]:
    """(fires, tasks), after checking that no slot fired twice and no task lacks its fire."""
    assert query_config_db(cfg, "SELECT file_path, phase, scheduled_for FROM fires "
                                "GROUP BY 1, 2, 3 HAVING count(*) > 1") == []
    assert query_config_db(cfg, "SELECT task_no FROM tasks AS t WHERE NOT EXISTS "
                                "(SELECT 1 FROM fires AS f WHERE f.file_path = t.file_path "
                                "AND f.phase = t.phase "
                                "AND f.scheduled_for = t.scheduled_for)") == []
    return (query_config_db(cfg, "SELECT count(*) FROM fires")[0][0],
            query_config_db(cfg, "SELECT count(*) FROM tasks")[0][0])


def refused(done: Done, status: int) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def json_lines(text: str) -> list[dict[str, str]]:
    tasks = [json.loads(line) for line in text.splitlines()]
    for t in tasks:
        assert set(t) <= TASK_KEYS and {"type", "info", "id", "created"} <= set(t), t
        assert RFC3339_UTC.fullmatch(t["created"]) and not t.get("result")
    assert len({t["id"] for t in tasks}) == len(tasks)
    return tasks


# --- trigger ----------------------------------------------------------------------------


def test_trigger_records_the_slot_and_renders_slot_plus_offset(tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": REPORT})
    ok(cli(cfg, "trigger", "report:daily", "--time", "2026-03-10T12:00:00Z"))
    assert query_config_db(
        cfg, "SELECT file_path, phase, scheduled_for, source, error FROM fires") == [
        ("a.toml", "report:daily", "2026-03-10T12:00:00Z", "trigger", "")]
    [(type_, job, info, meta, attempt, started, result, file_path, phase, slot, created,
      id_)] = query_config_db(cfg, "SELECT type, job, info, meta, attempt, started, result, "
                                   "file_path, phase, scheduled_for, created, id FROM tasks")
    assert (type_, job, info) == ("report", "daily", "2026-03-10T08")
    assert meta == "workflow=a.toml&cron=2026-03-10T08&job=daily"
    assert (attempt, started, result) == (0, None, None)
    assert (file_path, phase, slot) == ("a.toml", "report:daily", "2026-03-10T12:00:00Z")
    assert RFC3339_UTC.fullmatch(str(created)) and id_


def test_trigger_time_without_offset_is_in_the_configured_zone_and_a_slot_fires_once(
        tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": REPORT}, zone="America/New_York")
    ok(cli(cfg, "trigger", "report:daily", "--time", "2026-07-01T09:00"))  # EDT: 13:00Z
    assert query_config_db(cfg, "SELECT scheduled_for, info FROM tasks") == [
        ("2026-07-01T13:00:00Z", "2026-07-01T05")]  # 09:00 EDT less 4 hours
    again = ok(cli(cfg, "trigger", "report:daily", "--time", "2026-07-01T15:00:00+02:00"))
    assert again.stderr.strip() and again.stdout == ""  # the same instant: said, not done
    assert counts(cfg) == (1, 1)


def test_trigger_without_time_fires_now(tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": LOAD})
    before = datetime.now(UTC).replace(microsecond=0)
    ok(cli(cfg, "trigger", "load"))
    after = datetime.now(UTC)
    [(slot, info, meta)] = query_config_db(cfg, "SELECT scheduled_for, info, meta FROM tasks")
    fired = datetime.fromisoformat(str(slot).replace("Z", "+00:00"))
    assert before <= fired <= after
    assert info == fired.strftime("%Y%m%d")  # no job: no job= in meta
    assert meta == f"workflow=a.toml&cron={fired:%Y-%m-%dT%H}"


def test_first_file_key_wins_with_a_warning_and_workflow_picks_another(
        tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"b.toml": REPORT, "a/z.toml": REPORT})
    first = ok(cli(cfg, "trigger", "report", "--time", "2026-03-10T12:00:00Z"))
    assert "warning" in first.stderr and "a/z.toml" in first.stderr
    chosen = ok(cli(cfg, "trigger", "report", "--time", "2026-03-10T12:00:00Z",
                    "--workflow", "b.toml"))
    assert chosen.stderr == ""
    ok(cli(cfg, "backload", "report:daily", "--workflow", "b.toml", "--from",
           "2026-03-11T00:00Z", "--to", "2026-03-11T01:00Z", "--by", "hour"))
    assert query_config_db(cfg, "SELECT file_path, count(*) FROM fires GROUP BY 1 ORDER BY 1") == [
        ("a/z.toml", 1), ("b.toml", 3)]
    metas = query_config_db(cfg, "SELECT file_path, meta FROM tasks")
    assert all(dict(parse_qsl(str(m)))["workflow"] == f for f, m in metas)


# --- dry runs ----------------------------------------------------------------------------


def test_dry_runs_print_task_json_lines_and_write_nothing(tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": REPORT})
    one = json_lines(ok(cli(cfg, "trigger", "report:daily", "--time", "2026-03-10T12:00:00Z",
                            "--dry-run")).stdout)
    assert [(t["type"], t["job"], t["info"]) for t in one] == [
        ("report", "daily", "2026-03-10T08")]
    assert one[0]["meta"] == "workflow=a.toml&cron=2026-03-10T08&job=daily"
    days = json_lines(ok(cli(cfg, "backload", "report", "--from", "2026-03-10T00:00Z",
                             "--to", "2026-03-12T00:00Z", "--by", "day", "--dry-run")).stdout)
    assert [t["info"] for t in days] == ["2026-03-10T00", "2026-03-11T00", "2026-03-12T00"]
    assert counts(cfg) == (0, 0)


def test_a_dry_run_with_no_task_prints_no_line(tmp_path: Path, wf: Path) -> None:
    # a meta-file without rows and one instant: Range step 2 builds no task
    (wf / "empty.json").write_text("\n")
    cfg = setup(tmp_path, wf, {"e.toml": '[[phase]]\ntask = "e"\n'
                               'rule = "cron=0 0 * * *&meta-file=empty.json"\n'})
    assert ok(cli(cfg, "trigger", "e", "--dry-run")).stdout == ""
    assert ok(cli(cfg, "backload", "e", "--from", "2026-01-01T00:00Z", "--to",
                  "2026-01-01T00:00Z", "--dry-run")).stdout == ""


# --- backload ----------------------------------------------------------------------------


def test_backload_renders_each_step_without_offset_and_ledgers_it_less_offset(
        tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": REPORT})
    done = ok(cli(cfg, "backload", "report:daily", "--from", "2026-03-10T00:00Z",
                  "--to", "2026-03-10T02:00Z", "--by", "hour"))
    assert len(done.stdout.splitlines()) == 1  # the summary
    rows = query_config_db(cfg, "SELECT f.scheduled_for, f.source, t.info, t.meta, t.attempt, "
                                "t.started FROM fires AS f JOIN tasks AS t "
                                "USING (file_path, phase, scheduled_for) ORDER BY 1")
    assert [r[:3] for r in rows] == [
        ("2026-03-10T04:00:00Z", "backload", "2026-03-10T00"),
        ("2026-03-10T05:00:00Z", "backload", "2026-03-10T01"),
        ("2026-03-10T06:00:00Z", "backload", "2026-03-10T02")]
    assert dict(parse_qsl(str(rows[0][3]))) == {
        "workflow": "a.toml", "cron": "2026-03-10T00", "job": "daily"}
    assert {r[4:] for r in rows} == {(0, None)}
    # the cron fire at 05:00Z builds 01:00Z, which the backload made already
    again = ok(cli(cfg, "trigger", "report:daily", "--time", "2026-03-10T05:00:00Z"))
    assert again.stderr.strip()
    assert counts(cfg) == (3, 3)


def test_backload_is_idempotent_and_an_overlap_adds_only_new_steps(
        tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": LOAD})
    span = ("--from", "2026-01-01T06:00Z", "--to", "2026-01-03T06:00Z")
    ok(cli(cfg, "backload", "load", *span))
    assert counts(cfg) == (3, 3)
    assert len(ok(cli(cfg, "backload", "load", *span)).stdout.splitlines()) == 1
    assert counts(cfg) == (3, 3)
    ok(cli(cfg, "backload", "load", "--from", "2026-01-02T06:00Z", "--to", "2026-01-05T06:00Z"))
    assert counts(cfg) == (5, 5)
    assert [r[0] for r in query_config_db(cfg, "SELECT info FROM tasks ORDER BY info")] == [
        "20260101", "20260102", "20260103", "20260104", "20260105"]


@pytest.mark.parametrize(("rule", "by", "steps"), [
    ("cron=0 0 * * *", [], 3),  # no by: a day
    ("cron=0 * * * *&by=hour", [], 49),
    ("cron=0 0 * * *&by=week", [], 1),
    ("cron=0 0 * * *&by=week", ["--by", "hour"], 49),  # --by wins over the rule
])
def test_backload_step_is_the_rules_by_unless_given(tmp_path: Path, wf: Path, rule: str,
                                                     by: list[str], steps: int) -> None:
    cfg = setup(tmp_path, wf, {"s.toml": f'[[phase]]\ntask = "s"\nrule = "{rule}"\n'
                               'template = "{yyyy}{mm}{dd}{hh}"\n'})
    out = ok(cli(cfg, "backload", "s", "--from", "2026-01-01T00:00Z", "--to",
                 "2026-01-03T00:00Z", *by, "--dry-run")).stdout
    assert len(json_lines(out)) == steps


def test_backload_by_hour_over_fall_back_has_five_steps(tmp_path: Path, wf: Path) -> None:
    hourly = '[[phase]]\ntask = "h"\nrule = "cron=0 * * * *"\ntemplate = "{yyyy}-{mm}-{dd}T{hh}"\n'
    cfg = setup(tmp_path, wf, {"h.toml": hourly}, zone="America/New_York")
    ok(cli(cfg, "backload", "h", "--from", "2026-11-01T00:00", "--to", "2026-11-01T03:00",
           "--by", "hour"))
    rows = query_config_db(cfg, "SELECT scheduled_for, info, meta FROM tasks "
                                "ORDER BY scheduled_for")
    # 00:00 EDT is 04:00Z, 03:00 EST is 08:00Z; 01:00 comes twice (EDT, then EST)
    assert [(r[0], r[1]) for r in rows] == [
        ("2026-11-01T04:00:00Z", "2026-11-01T00"), ("2026-11-01T05:00:00Z", "2026-11-01T01"),
        ("2026-11-01T06:00:00Z", "2026-11-01T01"), ("2026-11-01T07:00:00Z", "2026-11-01T02"),
        ("2026-11-01T08:00:00Z", "2026-11-01T03")]
    assert [dict(parse_qsl(str(r[2])))["cron"] for r in rows] == [r[1] for r in rows]
    assert counts(cfg) == (5, 5)


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["trigger", "nosuch"], "nosuch"),
    (["backload", "nosuch", "--from", "2026-01-01", "--to", "2026-01-02"], "nosuch"),
    (["trigger", "broken"], "no valid rule found: cron=nope"),
    (["backload", "broken", "--from", "2026-01-01", "--to", "2026-01-02"],
     "no valid rule found: cron=nope"),
    (["trigger", "load", "--workflow", "other.toml"], "other.toml"),
    (["trigger", "load", "--time", "yesterday"], "yesterday"),
    (["backload", "load", "--to", "2026-01-02"], "--from"),
    (["backload", "load", "--from", "2026-01-01", "--to", "2026-01-02", "--by", "year"],
     "year"),
    (["tasks", "--result", "done"], "done"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, wf: Path, args: list[str],
                                           says: str) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": LOAD + '[[phase]]\ntask = "broken"\n'
                               'rule = "cron=nope"\n'})
    assert says in refused(cli(cfg, *args), 2)
    assert counts(cfg) == (0, 0)


@pytest.mark.parametrize("args", [
    ["trigger", "batch", "--time", "2026-01-01T00:00Z"],
    ["backload", "batch", "--from", "2026-01-01", "--to", "2026-01-02"],
    ["trigger", "batch", "--dry-run"],
])
def test_a_missing_meta_file_exits_1_and_writes_nothing(tmp_path: Path, wf: Path,
                                                        args: list[str]) -> None:
    cfg = setup(tmp_path, wf, {"m.toml": '[[phase]]\ntask = "batch"\n'
                               'rule = "cron=0 0 * * *&meta-file=gone/*.json"\n'
                               'template = "{meta:x}"\n'})
    assert "no files found for" in refused(cli(cfg, *args), 1)
    assert counts(cfg) == (0, 0)


# --- tasks -------------------------------------------------------------------------------


def test_tasks_lists_newest_first_with_type_result_and_limit(tmp_path: Path, wf: Path) -> None:
    cfg = setup(tmp_path, wf, {"a.toml": REPORT + LOAD})
    assert json.loads(ok(cli(cfg, "tasks", "--json")).stdout) == []
    ok(cli(cfg, "backload", "report", "--from", "2026-03-10T00:00Z", "--to",
           "2026-03-10T02:00Z", "--by", "hour"))
    ok(cli(cfg, "trigger", "load", "--time", "2026-03-10T06:00:00Z"))
    db = apsw.Connection(str(tmp_path / "flowlord.db"))  # a worker finishes the oldest
    db.execute("UPDATE tasks SET created = '2026-03-10T06:00:00.000Z', started = "
               "'2026-03-10T06:01:00.250Z', ended = '2026-03-10T06:02:00.250Z', result = "
               "'complete', msg = 'wrote 3 rows' || char(10) || 'done' WHERE task_no = 1")
    db.close()

    def listed(*args: str) -> list[dict[str, object]]:
        records: list[dict[str, object]] = json.loads(
            ok(cli(cfg, "tasks", "--json", *args)).stdout)
        assert all(set(r) == COLUMNS for r in records)
        return records

    every = listed()
    assert [r["task_no"] for r in every] == [4, 3, 2, 1]
    assert [r["type"] for r in every] == ["load", "report", "report", "report"]
    assert [r["info"] for r in listed("--type", "load")] == ["20260310"]
    assert [r["task_no"] for r in listed("--result", "none")] == [4, 3, 2]
    done = listed("--result", "complete")
    assert [(r["task_no"], r["result"], r["info"]) for r in done] == [
        (1, "complete", "2026-03-10T00")]
    assert listed("--result", "error") == []
    assert listed("--limit", "2") == every[:2]
    assert listed("--type", "report", "--result", "none", "--limit", "1") == [every[1]]
    assert (every[-1]["wait_seconds"], every[-1]["run_seconds"]) == (60.25, 60.0)
    assert (every[0]["wait_seconds"], every[0]["run_seconds"]) == (None, None)
    assert [r["task_no"] for r in listed("--phase", "load")] == [4]
    assert [r["task_no"] for r in listed("--id", str(every[1]["id"]))] == [3]
    assert [r["task_no"] for r in listed("--since", "2026-03-10T06:30:00Z")] == [4, 3, 2]
    assert listed("--job", "nothing") == []
    header, *text = ok(cli(cfg, "tasks", "--limit", "4")).stdout.splitlines()
    assert header.split("\t") == ["task_no", "created", "task", "state", "wait", "run",
                                   "info", "id", "msg"]
    assert len(text) == 4 and all(str(every[i]["id"]) in text[i] for i in range(4))
    assert text[0].split("\t")[3:6] == ["waiting: no worker for the topic",
                                         text[0].split("\t")[4], "-"]
    assert text[0].split("\t")[4].endswith("…")  # waiting so far
    assert text[3].split("\t")[3:6] == ["complete", "1 min 00 s", "1 min 00 s"]
    assert text[3].split("\t")[8] == "wrote 3 rows done"  # the message, on its line
