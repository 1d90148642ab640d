"""Pause and resume: a paused phase creates no tasks, and each of its slots due while
paused is a ledger row with the pause as its reason, so catch-up never revives it; a
paused topic keeps its tasks waiting; pauses survive restarts and end by themselves
at their `until`. Driven in-process, turn by turn, with the real daemon code."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowlord.bus.inprocess import InProcessBus
from flowlord.cli import main
from flowlord.clock import FakeClock, rfc3339
from flowlord.config import Config
from flowlord.loader import Loader
from flowlord.operate import pause
from flowlord.operations import Action, unix_actor
from flowlord.store import Store, write_txn
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard
from flowlord.web.sessions import Session
from tests.helpers import query, stepped, turn

TICK = ('[[phase]]\ntask = "tick"\nrule = "cron=*/10 * * * * *&catchup=all"\n'
        'template = "t={TS}"\n\n[[phase]]\ntask = "after"\ndependsOn = "tick"\n')


class Times:
    """The commands stamp pauses with the real time: each test's fake clock starts a
    little after it (read when the test starts), 5 s past a multiple of 10 s, so that
    each turn of 10 s meets one slot."""

    def __init__(self) -> None:
        self.base = datetime.fromtimestamp((int(time.time()) // 10 + 2) * 10, UTC)
        self.start = self.base + timedelta(seconds=5)

    def slot(self, n: int) -> str:
        """The n-th slot after the base: `*/10` fires at the base plus 10 n seconds."""
        return rfc3339(self.base + timedelta(seconds=10 * n))


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fires(db: Path) -> list[tuple[object, ...]]:
    """(slot, error, tasks) of each tick slot."""
    return query(db, "SELECT f.scheduled_for, f.error, (SELECT count(*) FROM tasks AS t "
                     "WHERE t.file_path = f.file_path AND t.phase = f.phase "
                     "AND t.scheduled_for = f.scheduled_for) FROM fires AS f "
                     "WHERE f.phase = 'tick' ORDER BY 1")


def test_paused_slots_are_rows_with_their_reason_across_a_restart_and_never_get_tasks(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(TICK)
    times = Times()
    slot = times.slot
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    common = ("-w", str(wf), "--db", str(db))
    me = unix_actor()
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock, 10.0)  # slot 1 fires
        assert cli(capsys, "pause", "tick", "--reason", "db maintenance", *common)[1] == (
            "paused a.toml: tick\n")
        turn(d, clock, 10.0)  # slot 2: paused
        code, out, _ = cli(capsys, "phases", *common)
        assert f"paused by {me}: db maintenance" in out
    clock.advance(24.0)  # down while paused: slots 3 and 4 are caught up at start
    with stepped(tmp_path, wf, clock) as d:
        turn(d, clock)
        assert cli(capsys, "resume", "tick", *common)[1] == "1 pause ended\n"
        turn(d, clock, 10.0)  # slot 5 fires again
        turn(d, clock)
    why = f"paused by {me}: db maintenance"
    assert fires(db) == [(slot(1), "", 1), (slot(2), why, 0), (slot(3), why, 0),
                         (slot(4), why, 0), (slot(5), "", 1)]
    # the children of the slots that ran; none of the paused ones
    assert query(db, "SELECT count(*) FROM tasks WHERE type = 'after'") == [(2,)]
    assert [r[0] for r in query(db, "SELECT kind FROM actions ORDER BY action_no")] == [
        "pause", "resume"]


def test_a_pause_with_until_ends_by_itself_even_across_a_restart(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text(TICK)
    times = Times()
    slot = times.slot
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    common = ("-w", str(wf), "--db", str(db))
    with stepped(tmp_path, wf, clock) as d:
        until = (times.start + timedelta(seconds=25)).isoformat()  # slot 3
        assert cli(capsys, "pause", "--all", "--until", until, *common)[0] == 0
        turn(d, clock, 10.0)  # slot 1, paused
    clock.advance(10.0)
    with stepped(tmp_path, wf, clock) as d:  # slot 2 caught up at start, paused
        turn(d, clock, 10.0)  # slot 3 fires: the pause is over
        turn(d, clock)
    assert [(at, tasks) for at, _, tasks in fires(db)] == [
        (slot(1), 0), (slot(2), 0), (slot(3), 1)]
    assert str(fires(db)[0][1]).endswith(f"until {slot(3)}")
    # it ended by itself (in the daemon's time; the command tells the real time's)
    assert f"until {slot(3)}" in cli(capsys, "pauses", *common)[1]


def test_a_paused_topic_keeps_its_tasks_waiting_and_a_paused_phase_refuses_triggers(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "work"\ntemplate = "h={hh}"\n')
    times = Times()
    db, clock = tmp_path / "f.db", FakeClock(times.start)
    common = ("-w", str(wf), "--db", str(db))
    with stepped(tmp_path, wf, clock, bus=InProcessBus()) as d:
        cli(capsys, "pause", "--topic", "work", "--reason", "worker host down", *common)
        assert cli(capsys, "trigger", "work", "--time", "2026-12-01T05:00:00Z", *common)[0] == 0
        turn(d, clock)
        turn(d, clock)
        assert query(db, "SELECT started, result FROM tasks") == [(None, None)]
        code, out, _ = cli(capsys, "pauses", "--json", *common)
        assert '"target": "topic work"' in out and '"reason": "worker host down"' in out
        code, _, err = cli(capsys, "pause", "--topic", "work", *common)
        assert code == 1 and "already paused" in err
        cli(capsys, "resume", "--topic", "work", *common)
        turn(d, clock)
        turn(d, clock)
        assert query(db, "SELECT result FROM tasks") == [("complete",)]
        cli(capsys, "pause", "work", *common)  # the phase now: nothing new may be made
        code, _, err = cli(capsys, "trigger", "work", "--time", "2026-12-01T06:00:00Z",
                           *common)
        assert code == 2 and "is paused by" in err and "resume it first" in err
    code, _, err = cli(capsys, "pause", "--file", "nope.toml", *common)
    assert code == 1 and "no workflow file nope.toml" in err
    assert cli(capsys, "pause", *common)[0] == 1  # nothing named


def test_pause_and_resume_over_http_go_through_the_loop(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(TICK)
    past = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)  # the loop's time: all before now
    db, clock = tmp_path / "f.db", FakeClock(past)
    with stepped(tmp_path, wf, clock) as d:
        api = Api(d.config, lambda: True, lambda: "leader", {"ops": "o"}, loop=d)

        def post(path: str, body: bytes) -> Any:
            answers: list[Any] = []
            asking = threading.Thread(
                target=lambda: answers.append(api.post(path, "Bearer o", body)))
            asking.start()
            while asking.is_alive():
                turn(d, clock)
                asking.join(0.01)
            return answers[0]

        status, body = post("/api/pause", b'{"file": "a.toml", "reason": "deploy"}')
        assert status == 201 and body["target"] == "a.toml"
        [paused] = api.answer("/api/pauses", {})[1]
        assert (paused["actor"], paused["scope"], paused["reason"]) == ("ops", "file", "deploy")
        phases = api.answer("/api/phases", {})[1]
        assert all(p["paused"]["target"] == "a.toml" for p in phases)
        turn(d, clock, 10.0)  # slot 1: paused at once, by the loop's own write
        assert post("/api/resume", b'{"file": "a.toml"}') == (200, {"ended": 1,
                                                                   "target": "a.toml"})
        turn(d, clock, 10.0)
    assert fires(db) == [("2026-01-01T12:00:10Z", "paused by ops: deploy", 0),
                         ("2026-01-01T12:00:20Z", "", 1)]


def test_the_dashboard_shows_a_pause_on_the_phases_it_stops(tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "<b>tick</b>"\n\n'
                               '[[phase]]\ntask = "broken"\nrule = "cron=nope"\n')
    store = Store(str(tmp_path / "f.db"))
    Loader(str(wf), store).refresh()
    past = datetime(2026, 1, 1, tzinfo=UTC)
    pause(store, ("file", "a.toml", "", ""), None, "<i>db</i> maintenance", past,
          Action("alice", "pause", "a.toml"))
    store.close()
    pages = Dashboard(Api(Config(db=str(tmp_path / "f.db")), lambda: True, lambda: "leader"))
    listing = str(pages.answer("/phases", {})[1])
    one = str(pages.answer("/phases/a.toml/%3Cb%3Etick%3C%2Fb%3E", {})[1])
    for page in (listing, one):
        assert "<strong>paused</strong> by alice" in page
        assert "&lt;i&gt;db&lt;/i&gt; maintenance" in page and "<i>db</i>" not in page
    overview = str(pages.answer("/", {})[1])  # the broken phase, listed there, is paused
    assert "<strong>paused by alice: &lt;i&gt;db&lt;/i&gt; maintenance</strong>" in overview
    graph = str(pages.answer("/graph", {})[1])  # the graph marks both, with why
    assert graph.count('class="node warning paused"') == graph.count(
        'class="node error paused"') == 1
    assert "paused by alice: &lt;i&gt;db&lt;/i&gt; maintenance</title>" in graph


def test_the_overview_shows_a_paused_topic_and_offers_its_forms(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "f.db"))
    with write_txn(store.conn):
        store.conn.execute("INSERT INTO tasks (id, type, created) VALUES ('x', 'load', "
                           "'2026-01-01T00:00:00Z')")
    pause(store, ("topic", "", "", "load"), None, "db moves", datetime(2026, 1, 1, tzinfo=UTC),
          Action("alice", "pause", "topic load"))
    store.close()
    pages = Dashboard(Api(Config(db=str(tmp_path / "f.db")), lambda: True, lambda: "leader"))
    overview = str(pages.answer("/", {})[1])
    assert '<span class="paused">paused by alice: db moves</span>' in overview
    assert 'action="/act/pause"' not in overview  # signed out: no forms
    session = Session("bob", "csrf-token", 2**40)
    signed_in = str(pages.answer("/", {}, session)[1])
    assert '<input type="hidden" name="topic" value="load">' in signed_in
    assert "resume topic" in signed_in and "pause another topic" in signed_in
