"""The daemon's log, as a person reads it (flowlord/logs.py, flowlord/notices.py): the
journal's format only when stderr is the journal, a time on every other line; a
warning once when a phase becomes an error, a file is refused or a topic's tasks wait
without a worker; a line for every operator action, with its actor."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from flowlord import logs
from flowlord.operations import unix_actor
from tests.helpers import daemon, run_cli, wait_for

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _say(stream_path: Path) -> list[str]:
    with open(stream_path, "w") as stream:
        logs.configure(stream)
        log = logs.get("t")
        log.info("workflows changed", changes="+a.toml")
        log.warning("dir gone", path="/x y")
    return stream_path.read_text().splitlines()


def test_the_journal_gets_priorities_and_no_time(tmp_path: Path, reset: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    path.touch()
    st = os.stat(path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert _say(path) == ['<6>event="workflows changed" changes=+a.toml',
                          '<4>event="dir gone" path="/x y"']


def test_anything_else_gets_a_time_and_no_priority(tmp_path: Path, reset: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.touch()
    st = os.stat(other)  # the journal is another file: a child's redirected stderr
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    first, second = _say(tmp_path / "terminal")
    assert re.fullmatch(f"{TIME} workflows changed changes=\\+a.toml", first)
    assert re.fullmatch(f'{TIME} WARNING dir gone path="/x y"', second)


def _lines(path: Path, pattern: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if re.search(pattern, line)]


@pytest.mark.slow
def test_the_daemon_under_the_journal_writes_priorities(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    err = tmp_path / "stderr"
    with open(err, "w") as stream:
        st = os.fstat(stream.fileno())
        with daemon(tmp_path, wf, tmp_path / "f.db", stderr=stream,
                    env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}):
            wait_for(lambda: bool(_lines(err, "workflows changed")), 30)
    assert _lines(err, "workflows changed") == ['<6>event="workflows changed" changes=+a.toml']
    assert all(line.startswith("<") for line in err.read_text().splitlines())


@pytest.mark.slow
def test_warnings_once_per_change_and_every_action_with_its_actor(tmp_path: Path,
                                                                 wf: Path) -> None:
    (wf / "jobs.toml").write_text(
        '[[phase]]\ntask = "orphan:job"\nrule = "cron=0 0 * * *"\n\n'
        '[[phase]]\ntask = "broken"\nrule = "cron=bad"\n')
    (wf / "refused.toml").write_text('[[phase]]\ntask = "r"\nrule = "cron=0 0 * * *"\n')
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(f'workflows = "{wf}"\ndb = "{tmp_path / "f.db"}"\ntimezone = "UTC"\n'
                   '[workers.heartbeat]\ncommand = ["true"]\n')
    err = tmp_path / "stderr"
    common = ("-c", str(cfg))

    def cli(*args: str) -> None:
        done = run_cli(*args, *common)
        assert done.returncode == 0, (args, done.stderr)

    with open(err, "w") as stream, daemon(tmp_path, wf, tmp_path / "f.db", stderr=stream,
                                          args=common) as proc:
        wait_for(lambda: bool(_lines(err, "phase is an error")), 30)
        (wf / "refused.toml").write_text("[[phase]\n")  # its last good phase stays
        wait_for(lambda: bool(_lines(err, "workflow file refused")), 30)
        cli("trigger", "orphan:job", "--time", "2026-11-20T00:00:00Z")  # task 1
        wait_for(lambda: bool(_lines(err, "tasks wait for a topic without a worker")), 30)
        cli("backload", "orphan:job", "--from", "2026-11-01", "--to", "2026-11-02")  # 2, 3
        cli("cancel", "1")
        cli("rerun", "1")  # task 4
        cli("mark", "4", "complete", "--msg", "by hand")
        cli("drop", "--type", "orphan")
        cli("pause", "--topic", "orphan", "--reason", "maintenance")
        cli("resume", "--topic", "orphan")
        cli("notify", "/nowhere/x.csv")
        (wf / "c.toml").write_text('[[phase]]\ntask = "c"\nrule = "cron=0 0 * * *"\n')
        wait_for(lambda: bool(_lines(err, r"workflows changed changes=\+c.toml")), 30)
        cli("refresh")  # the last action: told after the checks that followed c.toml
        wait_for(lambda: bool(_lines(err, "kind=refresh")), 30)
        assert proc.poll() is None
    actor = unix_actor()
    told = _lines(err, r" action ")
    kinds = [re.search(r"kind=(\w+)", line).group(1) for line in told]  # type: ignore[union-attr]
    assert kinds == ["trigger", "backload", "cancel", "rerun", "mark", "drop", "pause",
                     "resume", "notify", "refresh"]
    assert all(f"actor={actor} " in line and "outcome=done" in line for line in told), told
    assert 'time=2026-11-20T00:00:00Z' in told[0] and "tasks=1" in told[2]
    assert all(re.match(TIME + " ", line) for line in err.read_text().splitlines())
    # each warning once, though the daemon looked again and again
    [broken] = _lines(err, "phase is an error")
    assert "WARNING" in broken and "phase=broken" in broken and "cron=bad" in broken
    [refused] = _lines(err, "workflow file refused")
    assert "WARNING" in refused and "file=refused.toml" in refused
    [idle] = _lines(err, "tasks wait for a topic without a worker")
    assert "WARNING" in idle and "topic=orphan" in idle and "[workers.orphan]" in idle
    # the drop left no task waiting for it: said once too
    assert len(_lines(err, "no task waits any more")) == 1


def test_ended_tasks_get_a_line_each_unless_complete_and_those_a_count_now_and_then(
        ) -> None:
    """The daemon's results and `flowlord worker`'s runs (logs.EndedTasks): a burst of
    completed tasks is one line every COMPLETED_LOG_EVERY seconds, not one each."""
    lines: list[tuple[str, dict[str, object]]] = []

    class Log:
        def info(self, event: str, **values: object) -> None:
            lines.append((event, values))

        warning = info

    clock = [100.0]
    ended = logs.EndedTasks(Log(), lambda: clock[0])
    for no in range(3):
        ended.ended(no, "complete", "")
    ended.ended(3, "error", "exit status 1: " + "x" * 300)
    ended.count()
    assert lines == [("task ended", {"task_no": 3, "result": "error",
                                     "msg": ("exit status 1: " + "x" * 300)[:200]}),
                     ("tasks completed", {"count": 3})]
    ended.ended(4, "complete", "")
    clock[0] += logs.COMPLETED_LOG_EVERY - 0.5
    ended.count()  # not yet due
    assert len(lines) == 2
    clock[0] += 0.5
    ended.count()
    assert lines[2:] == [("tasks completed", {"count": 1})]
    ended.ended(5, "complete", "")
    ended.count()  # due again only in COMPLETED_LOG_EVERY
    ended.count(now=True)  # a stop: said at once
    assert lines[3:] == [("tasks completed", {"count": 1})]
    ended.count(now=True)  # nothing left to count
    assert len(lines) == 4
