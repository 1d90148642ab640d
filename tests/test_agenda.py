"""The agenda (flowlord/agenda.py, `flowlord agenda`, /api/agenda, /agenda): a
prediction of the ledger. In-process: it agrees with `flowlord next` over both DST days
of America/New_York, children start at their parent's expected end, pauses are marked,
batch fires counted, backlogs judged on the workers' concurrency (or said unknown on a
redis bus). With a real daemon (slow): the fires it records over the next seconds are
the agenda's, their tasks due at the agenda's starts; in headless chromium the page
draws 0, 1 and many fires with hostile names escaped (screenshots in build/screenshots).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowlord import agenda, agenda_cache, cli, collector, jitter
from flowlord.agenda_fires import Children
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.config import Config
from flowlord.errors import BadRequest
from flowlord.loader import Loader
from flowlord.model import Task
from flowlord.rules import parse_rule
from flowlord.store import Store, expected, reads, write_txn
from flowlord.tasks import Context
from flowlord.web import agenda_chart, charts
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard
from tests.browser import Browser
from tests.helpers import answers, daemon, free_port, get, query, wait_for

HOSTILE = "<script>alert(1)</script>"
HOSTILE_FILE = "<b>&.toml"  # a file key cannot hold a slash
NY_RULES = [  # fixed hours, periodic hours, seconds, a zone of its own, @every, descriptors
    "0 1 * * *", "30 1 * * *", "0 2 * * *", "30 2 * * *", "15 3 * * *", "0 * * * *",
    "*/20 * * * *", "0 */2 * * *", "45 0-4 * * *", "0 1,2 * * *", "30 */1 * * *",
    "0 30 1 * * *", "TZ=UTC 0 6 * * *", "CRON_TZ=Europe/London 30 1 * * *",
    "@every 90m", "@hourly", "@daily", "0 0 1 * * sun",
]


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def setup(tmp_path: Path, files: dict[str, str], config: str = 'timezone = "UTC"\n') -> Path:
    wf = tmp_path / "workflows"
    wf.mkdir(exist_ok=True)
    for name, text in files.items():
        (wf / name).write_text(text)
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(f'workflows = "{wf}"\ndb = "{tmp_path / "f.db"}"\n{config}')
    store = Store(str(tmp_path / "f.db"))
    Loader(str(wf), store).refresh()
    store.close()
    return cfg


def phase_toml(task: str, rule: str = "", depends: str = "", template: str = "") -> str:
    return (f'[[phase]]\ntask = "{task}"\n' + (f'rule = "{rule}"\n' if rule else "")
            + (f'dependsOn = "{depends}"\n' if depends else "")
            + (f'template = "{template}"\n' if template else "") + "\n")


def history(db: Path, rows: list[tuple[str, str, float]], when: datetime) -> None:
    """Ended tasks of phases: (file, task, run seconds) each."""
    store = Store(str(db))
    with write_txn(store.conn):
        for i, (file, task, seconds) in enumerate(rows):
            started = when - timedelta(hours=1, seconds=i)
            store.conn.execute(
                "INSERT INTO tasks (id, type, job, created, started, ended, result, file_path, "
                "phase) VALUES (?, ?, ?, ?, ?, ?, 'complete', ?, ?)",
                (f"h{i}", task.partition(":")[0], task.partition(":")[2], rfc3339_ms(started),
                 rfc3339_ms(started), rfc3339_ms(started + timedelta(seconds=seconds)),
                 file, task))
    store.close()


def read(cfg: Path, now: datetime, hours: int = 24, **given: int) -> agenda.Agenda:
    from flowlord.config import load_config
    config = load_config(str(cfg))
    store = Store(config.db, readonly=True)
    try:
        return agenda.read(store, config, now, hours, given)
    finally:
        store.close()


# --- the same slots as the code that fires ---------------------------------------------


@pytest.mark.parametrize("day", ["2026-03-08", "2026-11-01"], ids=["spring", "fall"])
def test_agenda_agrees_with_next_for_every_cron_phase_over_a_dst_day(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], day: str) -> None:
    text = "".join(phase_toml(f"p{i}", f"cron={r}") for i, r in enumerate(NY_RULES))
    cfg = setup(tmp_path, {"ny.toml": text}, 'timezone = "America/New_York"\n')
    start = datetime.fromisoformat(f"{day}T00:00:00-05:00").astimezone(UTC)
    found = cli_json(capsys, "-c", str(cfg), "agenda", "--json", "--hours", "26",
                     "--from", rfc3339(start))
    end = start + timedelta(hours=26)
    by_phase: dict[str, list[str]] = {}
    for fire in found["fires"]:
        by_phase.setdefault(fire["task"], []).append(fire["slot"])
    for i, rule in enumerate(NY_RULES):
        assert cli.main(["-c", str(cfg), "next", f"p{i}", "--after", rfc3339(start),
                         "-n", "200"]) == 0
        times = [datetime.fromisoformat(line) for line in capsys.readouterr().out.split()]
        expected = [rfc3339(t) for t in times if t <= end]
        assert sorted(by_phase.get(f"p{i}", [])) == expected, rule
    assert found["total"] == sum(len(v) for v in by_phase.values())
    starts = [f["start"] for f in found["fires"]]
    assert starts == sorted(starts)  # in time order
    # the fall day's repeated hour: `*/20` follows elapsed time, through both 01:xx
    if day == "2026-11-01":
        assert [s for s in by_phase["p6"] if s.startswith(("2026-11-01T05", "2026-11-01T06"))
                ] == [f"2026-11-01T0{h}:{m}:00Z" for h, m in (
                    ("5", "20"), ("5", "40"), ("6", "00"), ("6", "20"), ("6", "40"))]
        assert by_phase["p1"].count("2026-11-01T05:30:00Z") == 1  # 01:30 once
    else:  # 02:30 does not exist: the fixed rule fires when the gap ends, 03:00 EDT
        assert "2026-03-08T07:00:00Z" in by_phase["p3"]


def test_jitter_moves_the_start_not_the_slot_and_the_window_is_half_open(tmp_path: Path
                                                                         ) -> None:
    cfg = setup(tmp_path, {"a.toml": phase_toml("extract:day", "cron=0 * * * *&jitter=10m")})
    now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    found = read(cfg, now, 3)
    assert [rfc3339(f.slot) for f in found.fires] == [
        "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-01T03:00:00Z"]
    delay = jitter.delay("a.toml", "extract:day", timedelta(minutes=10))
    for f in found.fires:
        assert found.fire_json(f)["start"] == rfc3339_ms(f.slot + delay)
        assert 0 < delay.total_seconds() < 600


def test_the_fires_of_any_window_are_found_by_bisection_as_a_scan_finds_them(
        tmp_path: Path) -> None:
    """within() bisects by start and compares only the fires near the window's edges; a
    jitter longer than the rule's period and windows shorter than the jitter included."""
    files = {f"j{i}.toml": phase_toml(f"t{i}", f"cron=* * * * *&jitter={j}")
             for i, j in enumerate(["3m", "45s", "1s", "10m"])}
    files["plain.toml"] = phase_toml("p", "cron=*/2 * * * *")
    cfg = setup(tmp_path, files)
    now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    found = read(cfg, now, 3)
    assert len(found.fires) == 4 * 180 + 90
    assert found.jitter == max(jitter.delay(f"j{i}.toml", f"t{i}", timedelta(minutes=m))
                               for i, m in enumerate([3, 0.75, 1 / 60, 10])).total_seconds()
    windows = [(now + timedelta(seconds=s), timedelta(seconds=n))
               for s in range(-60, 3 * 3600 + 60, 397) for n in (0, 1, 59, 60, 61, 600, 7200)]
    windows += [(now, timedelta(hours=3)), (now + timedelta(minutes=5), timedelta(minutes=2))]
    for start, length in windows:
        end = start + length
        window = found.within(start, end)
        scanned = [f for f in found.fires if start < f.slot <= end]
        assert list(window) == scanned and len(window) == len(scanned)
        assert [window[n] for n in range(-len(window), len(window))] == scanned * 2
        assert window[3:9] == scanned[3:9] and window[::-5] == scanned[::-5]
    with pytest.raises(IndexError):
        found.within(now, now + timedelta(minutes=2))[10_000]


# --- children, expected times, pauses, batches -------------------------------------------


def chain(tmp_path: Path) -> Path:
    return setup(tmp_path, {"a.toml": phase_toml("extract:day", "cron=0 0 * * *")
                            + phase_toml("load", depends="extract")
                            + phase_toml("report", depends="load")
                            + phase_toml("other", depends="extract:night")
                            + phase_toml("audit", depends="report")
                            + phase_toml("broken", "cron=nope", depends="extract")})


def test_children_start_when_their_parent_is_expected_to_end(tmp_path: Path) -> None:
    cfg = chain(tmp_path)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    history(tmp_path / "f.db", [("a.toml", "extract:day", 60.0)] * 3
            + [("a.toml", "load", 600.0), ("a.toml", "load", 300.0), ("a.toml", "load", 900.0)]
            + [("a.toml", "report", 30.0)], now)
    found = read(cfg, now)
    assert len(found.fires) == 1
    fire = found.fire_json(found.fires[0])
    assert fire["slot"] == "2026-01-02T00:00:00Z" and fire["expected_run"] == 60.0
    assert fire["expected_end"] == "2026-01-02T00:01:00.000Z"
    (load,) = fire["children"]  # not `other` (another job), not `broken` (an error)
    assert (load["task"], load["start"], load["expected_run"], load["expected_end"]) == (
        "load", "2026-01-02T00:01:00.000Z", 600.0, "2026-01-02T00:11:00.000Z")
    (report,) = load["children"]
    assert report["start"] == "2026-01-02T00:11:00.000Z" and report["expected_run"] == 30.0
    (audit,) = report["children"]  # it never ran: its run and end are unknown
    assert audit["start"] == "2026-01-02T00:11:30.000Z"
    assert audit["expected_run"] is None and audit["expected_end"] is None
    assert "slot" not in load and set(load) == set(fire) - {"slot"}
    assert found.topics == {"audit": {"fires": 0, "tasks": 1}, "extract": {"fires": 1, "tasks": 1},
                            "load": {"fires": 0, "tasks": 1}, "report": {"fires": 0, "tasks": 1}}


def test_an_unknown_run_time_leaves_the_childrens_start_unknown(tmp_path: Path) -> None:
    found = read(chain(tmp_path), datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    fire = found.fire_json(found.fires[0])
    assert fire["expected_run"] is None and fire["expected_end"] is None
    assert fire["children"][0]["start"] is None
    assert fire["children"][0]["children"][0]["start"] is None


def pause(cfg: Path, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["-c", str(cfg), "pause", *args]) == 0


def test_paused_phases_are_marked_and_start_no_children(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    cfg = chain(tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    history(tmp_path / "f.db", [("a.toml", "extract:day", 60.0)], now)
    pause(cfg, "load", "--reason", "db maintenance")
    fire = cli_json(capsys, "-c", str(cfg), "agenda", "--json")["fires"][0]
    assert fire["paused"] is False
    (load,) = fire["children"]
    assert load["paused"] is True and "db maintenance" in load["pause"]
    assert load["tasks"] == 0 and load["children"] == [] and load["expected_end"] is None
    pause(cfg, "extract:day", "--reason", HOSTILE)
    fire = cli_json(capsys, "-c", str(cfg), "agenda", "--json")["fires"][0]
    assert fire["paused"] is True and fire["pause"].endswith(HOSTILE)
    assert fire["tasks"] == 0 and fire["children"] == [] and fire["expected_end"] is None
    text = (cli.main(["-c", str(cfg), "agenda"]), capsys.readouterr().out)[1]
    assert "extract:day" in text and "paused by" in text


def test_a_pause_that_ends_inside_the_window_marks_only_the_slots_it_covers(tmp_path: Path
                                                                            ) -> None:
    cfg = setup(tmp_path, {"a.toml": phase_toml("tick", "cron=0 * * * *")})
    now = datetime.now(UTC).replace(microsecond=0)
    until = (now + timedelta(hours=2)).replace(minute=30, second=0)
    pause(cfg, "tick", "--until", rfc3339(until))
    found = read(cfg, now, 5)
    assert [f.paused is not None for f in found.fires] == [f.slot < until for f in found.fires]
    assert any(f.paused for f in found.fires) and not all(f.paused for f in found.fires)


def test_a_batch_fire_counts_the_tasks_its_fire_builds(tmp_path: Path) -> None:
    cfg = setup(tmp_path, {"a.toml": phase_toml("hours", "cron=0 5 * * *&for=-3h&by=hour")
                           + phase_toml("per", "meta=k:a,b,c", depends="hours")
                           + phase_toml("missing", "cron=0 6 * * *&meta-file=nope.json")})
    found = read(cfg, datetime(2026, 1, 1, tzinfo=UTC))
    first, second = (found.fire_json(f) for f in found.fires)
    assert first["task"] == "hours" and first["tasks"] == 4
    assert first["children"][0]["tasks"] == 12  # a child per meta row, per parent task
    assert second["tasks"] == 0 and "no files found" in second["error"]


# --- backlogs -----------------------------------------------------------------------------


def crowd(tmp_path: Path, bus: str = "") -> Path:
    """14 extract phases at midnight, spread over 5 minutes, 9 minutes each; 4 workers."""
    files = {f"e{i:02d}.toml": phase_toml("extract", "cron=0 0 * * *&jitter=5m")
             for i in range(14)}
    config = ('timezone = "UTC"\n' + (f'[bus]\nurl = "{bus}"\n' if bus else
                                      '[workers.extract]\ncommand = ["true"]\nconcurrency = 4\n'))
    cfg = setup(tmp_path, files, config)
    history(tmp_path / "f.db", [(f"e{i:02d}.toml", "extract", 540.0) for i in range(14)],
            datetime(2026, 1, 1, 12, tzinfo=UTC))
    return cfg


def test_a_topic_whose_tasks_exceed_its_concurrency_gets_a_backlog(tmp_path: Path) -> None:
    found = read(crowd(tmp_path), datetime(2026, 1, 1, 12, tzinfo=UTC))
    (warning,) = found.warnings
    assert isinstance(warning, agenda.Backlog)
    starts = sorted(f.start for f in found.fires)
    # first come, first served on 4 workers of 9 minutes: the 13th and 14th wait for
    # the 9th and 10th to end, 27 minutes after the first four started
    assert warning.tasks == 14 and warning.concurrency == 4 and warning.p50 == 540.0
    assert warning.first_due == starts[0] and warning.last_due == starts[-1]
    assert warning.clears == pytest.approx(starts[1] + 3 * 540)
    assert re.fullmatch(r"extract: 14 tasks due 00:0\d–00:0\d, concurrency 4, p50 9 min: "
                        r"backlog until 00:\d\d \(longest wait \d+ min\)", warning.text())
    assert warning.as_json()["kind"] == "backlog"


def test_backlogs_follow_the_queue_of_each_stretch() -> None:
    one = [(0.0, 10.0, 2), (5.0, 10.0, 1)]  # two at 0, one at 5: on 2 workers it waits 5 s
    (b,) = agenda.warnings({"t": one}, {"t": 2})
    assert isinstance(b, agenda.Backlog)
    assert (b.tasks, b.first_due, b.last_due, b.clears, b.max_wait) == (3, 0.0, 5.0, 10.0, 5.0)
    assert agenda.warnings({"t": one}, {"t": 3}) == []  # enough workers: none
    two = [*one, (100.0, 10.0, 3)]  # a second crowd, after the first cleared
    assert [w.first_due for w in agenda.warnings({"t": two}, {"t": 2})] == [0.0, 100.0]
    # unknown run times count as 0 s: they wait behind a known one, and are said so
    (unknown,) = agenda.warnings({"t": [(0.0, 10.0, 1), (1.0, None, 2)]}, {"t": 1})
    assert isinstance(unknown, agenda.Backlog) and unknown.unknown_runs == 2
    assert unknown.clears == 10.0 and "2 without a known run time" in unknown.text()
    (nobody,) = agenda.warnings({"t": one}, {})
    assert isinstance(nobody, agenda.NoWorker) and "no [workers.t]" in nobody.text()


def test_on_a_redis_bus_concurrency_is_unknown_unless_given(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = crowd(tmp_path, "redis://127.0.0.1:1/0")
    now = "2026-01-01T12:00:00Z"
    found = cli_json(capsys, "-c", str(cfg), "agenda", "--json", "--from", now)
    assert found["warnings"] == [] and "not known here" in found["notes"][0]
    given = cli_json(capsys, "-c", str(cfg), "agenda", "--json", "--from", now,
                     "--concurrency", "extract=4")
    assert [w["kind"] for w in given["warnings"]] == ["backlog"]
    assert cli.main(["-c", str(cfg), "agenda", "--concurrency", "extract"]) == 2


# --- the API and the page, in-process ---------------------------------------------------


def hostile_site(tmp_path: Path, fires: int) -> Config:
    """A file with a hostile phase name firing `fires` times in the next 24 hours (0: a
    phase that fires next year) with a child; a worker of concurrency 1."""
    rule = {0: "cron=0 0 1 1 *", 1: "cron=59 23 * * *"}.get(fires, "cron=*/2 * * * *")
    cfg = setup(tmp_path, {HOSTILE_FILE: phase_toml(HOSTILE, rule + "&jitter=1m")
                           + phase_toml("child", depends=HOSTILE)
                           + phase_toml("slow:x", "cron=*/30 * * * *")},
                f'timezone = "UTC"\n[workers."{HOSTILE}"]\ncommand = ["true"]\n'
                'concurrency = 1\n')
    history(tmp_path / "f.db", [(HOSTILE_FILE, HOSTILE, 400.0),
                                (HOSTILE_FILE, "child", 30.0),
                                (HOSTILE_FILE, "slow:x", 4000.0)],
            datetime.now(UTC))
    from flowlord.config import load_config
    return load_config(str(cfg))


def test_the_api_pages_the_fires_and_checks_its_parameters(tmp_path: Path) -> None:
    config = hostile_site(tmp_path, 720)
    api = Api(config, healthy=lambda: True, role=lambda: "leader")
    status, body = api.answer("/api/agenda", {"limit": ["5"], "offset": ["2"]})
    assert int(status) == 200 and body["total"] == 720 + 48 and len(body["fires"]) == 5
    _, whole = api.answer("/api/agenda", {"limit": ["1000"]})
    assert whole["fires"][2:7] == body["fires"]
    assert [w["topic"] for w in body["warnings"] if w["kind"] == "backlog"] == [HOSTILE]
    assert {w["kind"] for w in body["warnings"]} == {"backlog", "no_worker"}
    _, one = api.answer("/api/agenda", {"topic": ["slow"], "hours": ["2"]})
    assert one["total"] == 4 and {f["task"] for f in one["fires"]} == {"slow:x"}
    for bad in ({"hours": ["0"]}, {"hours": ["169"]}, {"limit": ["0"]},
                {"concurrency": ["x=0"]}):
        with pytest.raises(BadRequest):
            api.answer("/api/agenda", bad)


@pytest.mark.parametrize("fires", [0, 1, 720])
def test_the_page_escapes_hostile_names(tmp_path: Path, fires: int) -> None:
    config = hostile_site(tmp_path, fires)
    dashboard = Dashboard(Api(config, healthy=lambda: True, role=lambda: "leader"))
    status, body = dashboard.answer("/agenda", {})
    html = str(body)
    assert int(status) == 200
    assert HOSTILE not in html and "<b>&" not in html and "&lt;b&gt;&amp;.toml" in html
    assert ("&lt;script&gt;alert(1)&lt;/script&gt;" in html) == (fires > 0)
    assert f"{fires + 48} cron fires due in the window" in html
    with pytest.raises(BadRequest):
        dashboard.answer("/agenda", {"file": ["nope.toml"]})


def test_runs_of_no_known_time_are_ticked_once_a_pixel_and_all_counted(tmp_path: Path
                                                                         ) -> None:
    """A phase due every second that never ran: 3,600 runs in an hour, a tick each where
    they fall, drawn once per pixel (1.7 million of them made a page of 22 MB)."""
    cfg = setup(tmp_path, {"a.toml": phase_toml("often", "cron=* * * * * *")})
    now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    found = read(cfg, now, 1)
    drawn = agenda_chart.chart(found, found.shown(now, 1), now, 1)
    assert drawn.unknown == 3600
    (lane,) = drawn.lanes
    assert lane.fire_count == 3600
    xs = [float(m.split(",")[0]) for m in lane.fires.split("M")[1:]]
    assert xs == sorted(set(xs)) and all(x == int(x) for x in xs)
    assert len(xs) == drawn.plot_width + 1  # every pixel from 0 to the end, once


def test_a_chart_of_an_earlier_minute_is_served_while_the_next_is_drawn_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = read(chain(tmp_path), datetime(2026, 1, 1, 0, 0, tzinfo=UTC), 24)
    found.inputs = ("workflows", 1)
    drawing, done = threading.Event(), threading.Event()
    gate = threading.Event()
    draw = agenda_chart.chart

    def gated(*args: Any, **kwargs: Any) -> agenda_chart.AgendaChart:
        drawing.set()
        assert gate.wait(30)
        try:
            return draw(*args, **kwargs)
        finally:
            done.set()
    charts_kept = agenda_chart.Drawings()

    def asked(at: datetime, agenda: agenda.Agenda = found) -> agenda_chart.Asked:
        return agenda_chart.Asked(agenda, at, 24, None, None, agenda.shown(at, 24), ())
    first = charts_kept.get(asked(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)))
    assert charts_kept.get(asked(datetime(2026, 1, 1, 0, 0, 59, tzinfo=UTC))) is first
    monkeypatch.setattr(agenda_chart, "chart", gated)
    later = asked(datetime(2026, 1, 1, 0, 1, 5, tzinfo=UTC))
    assert charts_kept.get(later) is first  # answered at once, not waiting for the drawing
    assert drawing.wait(30) and not done.is_set()
    gate.set()
    assert done.wait(30)
    wait_for(lambda: charts_kept.get(later) is not first)
    assert charts_kept.get(later).ticks[0].at != first.ticks[0].at  # of 00:01, not 00:00
    # changed workflows or pauses, or a drawing past STALE: drawn for the request itself
    drawing.clear()
    changed = read(chain(tmp_path), datetime(2026, 1, 1, 0, 0, tzinfo=UTC), 24)
    changed.inputs = ("workflows", 2)
    kept = charts_kept.get(later)
    assert charts_kept.get(asked(later.start, changed)) is not kept and drawing.is_set()
    drawing.clear()
    far = asked(later.start + agenda_chart.Drawings.STALE + timedelta(minutes=1), changed)
    assert charts_kept.get(far).ticks[0].at != kept.ticks[0].at and drawing.is_set()


def test_a_late_or_failed_drawing_aside_never_stands_for_a_newer_chart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def at(minute: int, second: int = 5) -> datetime:
        return datetime(2026, 1, 1, 0, minute, second, tzinfo=UTC)
    old = read(chain(tmp_path), at(0, 0), 24)
    old.inputs = ("workflows", 1)
    new = read(chain(tmp_path), at(0, 0), 24)
    new.inputs = ("workflows", 2)

    def asked(when: datetime, agenda: agenda.Agenda) -> agenda_chart.Asked:
        return agenda_chart.Asked(agenda, when, 24, None, None, agenda.shown(when, 24), ())

    def aside_ended() -> bool:
        return not any(t.name == "agenda-chart" for t in threading.enumerate())
    gate, draw = threading.Event(), agenda_chart.chart

    def held_aside(*args: Any) -> agenda_chart.AgendaChart:
        if threading.current_thread().name == "agenda-chart":
            assert gate.wait(30)
        return draw(*args)
    monkeypatch.setattr(agenda_chart, "chart", held_aside)
    kept = agenda_chart.Drawings()
    first = kept.get(asked(at(0), old))
    assert kept.get(asked(at(1), old)) is first  # 00:01 drawn aside, held
    newer = kept.get(asked(at(2), new))  # changed inputs: drawn for the request
    gate.set()
    wait_for(aside_ended)
    assert kept.get(asked(at(2, 30), new)) is newer  # the late 00:01 did not replace it

    def broken(*args: Any) -> agenda_chart.AgendaChart:
        raise RuntimeError("cannot draw")
    monkeypatch.setattr(agenda_chart, "chart", broken)
    assert kept.get(asked(at(3), new)) is newer  # served; its drawing aside fails
    wait_for(aside_ended)
    with pytest.raises(RuntimeError):  # nothing stale stands in: drawn for the request
        kept.get(asked(at(3, 30), new))


def test_the_cache_serves_a_sliding_window_and_sees_changes(tmp_path: Path) -> None:
    cfg = chain(tmp_path)
    from flowlord.config import load_config
    config = load_config(str(cfg))
    cache = agenda_cache.AgendaCache(config, config.db)
    store = Store(config.db, readonly=True)
    try:
        now = datetime(2026, 1, 1, 23, 58, tzinfo=UTC)
        first = cache.get(store, now, 24)
        assert cache.get(store, now + timedelta(minutes=1), 24) is first
        assert first.shown(now + timedelta(minutes=1), 24)[0].slot == datetime(
            2026, 1, 2, tzinfo=UTC)
        assert cache.get(store, now + timedelta(minutes=6), 24) is not first  # too old
        kept = cache.get(store, now + timedelta(minutes=6), 24)
        assert kept.inputs and kept.inputs == first.inputs  # the same workflows and pauses
        pause(cfg, "extract:day")
        paused = cache.get(store, now + timedelta(minutes=6), 24)
        assert paused is not kept and paused.inputs != kept.inputs  # a pause
    finally:
        store.close()


def test_a_failed_refresh_aside_lets_the_kept_agenda_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next agenda, computed aside, fails: the kept one is let go, so the next
    request computes its own in the open (and answers an error there, if it fails)."""
    cfg = chain(tmp_path)
    from flowlord.config import load_config
    config = load_config(str(cfg))
    cache = agenda_cache.AgendaCache(config, config.db)
    compute = agenda_cache.read

    def broken_aside(*args: Any) -> agenda.Agenda:
        if threading.current_thread().name == "agenda":
            raise RuntimeError("cannot compute")
        return compute(*args)
    monkeypatch.setattr(agenda_cache, "read", broken_aside)
    store = Store(config.db, readonly=True)
    try:
        now = datetime(2026, 1, 1, 23, 58, tzinfo=UTC)
        first = cache.get(store, now, 24)
        later = now + agenda_cache.AgendaCache.SLACK * 0.6  # past half: refreshed aside
        assert cache.get(store, later, 24) is first
        wait_for(lambda: not any(t.name == "agenda" for t in threading.enumerate()))
        assert cache.get(store, later, 24) is not first
    finally:
        store.close()


# --- with a real daemon, and in a browser (slow) ----------------------------------------


@pytest.mark.slow
def test_the_agenda_predicts_the_fires_the_daemon_records(tmp_path: Path) -> None:
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "a.toml").write_text(
        phase_toml("every3", "cron=*/3 * * * * *") + phase_toml("every4", "cron=@every 4s")
        + phase_toml("jittered", "cron=*/5 * * * * *&jitter=3s")
        + phase_toml("held", "cron=*/2 * * * * *") + phase_toml("child", depends="every3")
        + phase_toml("later", "cron=0 0 1 1 *"))
    port = free_port()
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(f'timezone = "UTC"\n[http]\nlisten = "127.0.0.1:{port}"\n')
    db = tmp_path / "f.db"
    base = f"http://127.0.0.1:{port}"
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)]):
        wait_for(lambda: answers(base), 30)
        pause_cli = cli.main(["-c", str(cfg), "--db", str(db), "-w", str(wf), "pause", "held"])
        assert pause_cli == 0
        answered: list[Any] = []

        def paused_in_agenda() -> bool:  # the agenda, computed after the pause was seen
            answered[:] = [get(base, "/api/agenda?hours=1&limit=1000")]
            return any(f["task"] == "held" and f["paused"]
                       for f in answered[0][1].get("fires", []))
        wait_for(paused_in_agenda, 30)
        status, body = answered[0]
        assert status == 200
        start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
        end = start + timedelta(seconds=20)
        predicted = {(f["task"], f["slot"]): f for f in body["fires"]
                     if datetime.fromisoformat(f["slot"].replace("Z", "+00:00")) <= end}
        assert {t for t, _ in predicted} == {"every3", "every4", "jittered", "held"}
        wait_for(lambda: datetime.now(UTC) > end + timedelta(seconds=4), 40)
        recorded = {(phase, slot): (error, due) for phase, slot, error, due in query(
            db, "SELECT f.phase, f.scheduled_for, f.error, (SELECT max(due_at) FROM tasks AS t "
                "WHERE t.file_path = f.file_path AND t.phase = f.phase AND t.scheduled_for = "
                "f.scheduled_for) FROM fires AS f WHERE f.scheduled_for > ? AND "
                "f.scheduled_for <= ?", (rfc3339(start), rfc3339(end)))}
    assert set(recorded) == set(predicted)  # the same slots, none more, none fewer
    for key, fire in predicted.items():
        error, due = recorded[key]
        assert fire["paused"] == str(error).startswith("paused by"), key
        if key[0] == "jittered":
            assert due == fire["start"]  # the tasks wait until the agenda's start
    assert all(f["children"][0]["task"] == "child" for (t, _), f in predicted.items()
               if t == "every3")


@pytest.fixture(params=[0, 1, 720], ids=["0-fires", "1-fire", "720-fires"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    fires = int(request.param)
    config = hostile_site(tmp_path, fires)
    port = free_port()
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(cfg.read_text() + f'[http]\nlisten = "127.0.0.1:{port}"\n')
    base = f"http://127.0.0.1:{port}"
    with daemon(tmp_path, Path(config.workflows), Path(config.db), args=["-c", str(cfg)]):
        wait_for(lambda: answers(base), 30)
        yield base, tmp_path, fires


@pytest.mark.slow
def test_the_agenda_renders_in_a_browser(site: tuple[str, Path, int]) -> None:
    base, tmp_path, fires = site
    b = Browser(tmp_path / "chromium")
    dom = b.load(base + "/agenda")
    assert dom.tags.get("svg") == 1 and "script" not in dom.tags
    assert f"{fires + 48} cron fires due in the window" in dom.text
    bars = re.findall(r'<rect class="bar ([a-z ]+)"', dom.html)
    assert 0 < len(bars) <= charts.MAX_BARS
    assert HOSTILE_FILE in dom.text and (HOSTILE in dom.text) == (fires > 0)  # as text
    if fires == 720:
        assert "backlog until" in dom.text and "error" in bars
    empty = b.load(base + "/agenda?topic=nothing")
    assert "no cron fire due in this window" in empty.text
    b.screenshot(base + "/agenda", f"agenda-{fires}")
    b.screenshot(base + "/agenda?hours=1", f"agenda-1h-{fires}")
    assert dom.link("Agenda") == "/agenda"


def test_the_p50_is_the_one_flowlord_stats_shows(tmp_path: Path) -> None:
    cfg = chain(tmp_path)
    now = datetime.now(UTC)
    history(tmp_path / "f.db", [("a.toml", "extract:day", s) for s in (5.0, 1.5, 7.25, 3.0)]
            + [("a.toml", "load", s) for s in (2.0, 9.0, 4.0)] + [("a.toml", "report", 0.5)],
            now)
    store = Store(str(tmp_path / "f.db"), readonly=True)
    try:
        stats = {(r["file"], r["task"]): r["run_p50"] for r in reads.stats(
            store, since=rfc3339_ms(now - timedelta(days=30)), by="phase")}
        assert agenda.p50s(store, now) == stats == {
            ("a.toml", "extract:day"): 3.0, ("a.toml", "load"): 4.0, ("a.toml", "report"): 0.5}
    finally:
        store.close()
    assert str(cfg)


def test_the_p50_is_the_same_with_and_without_sqlites_percentile(tmp_path: Path) -> None:
    """store/expected.py ranks with percentile_disc where SQLite has it and with window
    functions where it does not: the two agree with `flowlord stats` for odd and even
    counts, ties, and a negative run (counted as 0)."""
    chain(tmp_path)
    now = datetime.now(UTC)
    runs = {"extract:day": (5.0, 1.5, 7.25, 3.0, 3.0, 9.5), "load": (2.0, 9.0, 4.0, -1.0, 0.25),
            "report": (0.5,), "audit": (8.0, 2.0)}
    history(tmp_path / "f.db", [("a.toml", t, s) for t, ss in runs.items() for s in ss], now)
    store = Store(str(tmp_path / "f.db"), readonly=True)
    try:
        since = rfc3339_ms(now - timedelta(days=30))
        stats = {(r["file"], r["task"]): r["run_p50"]
                 for r in reads.stats(store, since=since, by="phase")}
        assert expected.has_percentile()  # the apsw wheels' SQLite: else the test is half
        assert expected.run_p50s(store, since, percentile=True) == stats
        assert expected.run_p50s(store, since, percentile=False) == stats == {
            ("a.toml", "extract:day"): 3.0, ("a.toml", "load"): 2.0,
            ("a.toml", "report"): 0.5, ("a.toml", "audit"): 2.0}
    finally:
        store.close()


def test_children_are_those_the_daemon_starts(tmp_path: Path) -> None:
    """agenda_fires.Children finds children in one pass: the same as `Loader.children`
    for a completed task of every phase (topic and topic:job dependsOn, a child of two
    parents, error phases left out), and each child's own `kids` are its children."""
    text = (phase_toml("extract:day", "cron=0 0 * * *")
            + phase_toml("extract:night", "cron=0 1 * * *")
            + phase_toml("load", depends="extract") + phase_toml("night", depends="extract:night")
            + phase_toml("load:x", depends="extract:day")
            + phase_toml("report", "meta=k:a,b", depends="load")  # of load and load:x
            + phase_toml("broken", "cron=nope", depends="extract")
            + phase_toml("audit", depends="report"))
    cfg = setup(tmp_path, {"a.toml": text, "b.toml": phase_toml("load", depends="extract")})
    store = Store(str(tmp_path / "f.db"), readonly=True)
    try:
        phases = store.phases()
        loader = Loader(str(tmp_path / "workflows"), store)
        children = Children(phases, {}, Context(UTC, str(tmp_path), datetime.now(UTC)))
        for phase in phases:
            kids = children.of(phase.file_path, phase.task)
            done = Task(type=phase.topic, job=phase.job, meta=f"workflow={phase.file_path}")
            assert [k.phase for k in kids] == loader.children(done), phase.task
            for kid in kids:
                assert kid.kids == children.of(kid.phase.file_path, kid.phase.task)
        assert [k.phase.task for k in children.of("a.toml", "extract:night")] == [
            "load", "night"]
        assert [k.phase.task for k in children.of("a.toml", "extract:day")] == ["load", "load:x"]
        report = children.of("a.toml", "load")
        assert report == children.of("a.toml", "load:x")
        assert [(k.phase.task, k.per_parent) for k in report] == [("report", 2)]
        assert [k.phase.task for k in report[0].kids] == ["audit"]
    finally:
        store.close()
    assert str(cfg)


def test_phases_sharing_a_schedule_share_its_slots_and_keep_their_own_start(tmp_path: Path
                                                                           ) -> None:
    """agenda_fires.fires asks the Scheduler once per schedule: rules that differ but for
    jitter and batch still get every slot, and each its own jitter, to the microsecond."""
    rules = {"plain": "cron=*/30 * * * *", "late": "cron=*/30 * * * *&jitter=7m",
             "hours": "cron=*/30 * * * *&for=-2h&by=hour", "other": "cron=15 * * * *&jitter=1s"}
    cfg = setup(tmp_path, {f"{t}.toml": phase_toml(t, r) for t, r in rules.items()})
    now = datetime(2026, 1, 1, 0, 10, 0, 123456, tzinfo=UTC)
    found = read(cfg, now, 3)
    slots: dict[str, list[datetime]] = {}
    for f in found.fires:
        slots.setdefault(f.phase.task, []).append(f.slot)
        start = jitter.start(f.phase.file_path, f.phase.task,
                             parse_rule(f.phase.rule).jitter, f.slot)
        assert f.start == (start - agenda.EPOCH).total_seconds()
        assert f.tasks == (3 if f.phase.task == "hours" else 1)
    assert slots["plain"] == slots["late"] == slots["hours"] == [
        now.replace(minute=0, second=0, microsecond=0) + timedelta(minutes=30 * i)
        for i in range(1, 7)]
    assert len(slots["other"]) == 3


def test_the_cycle_collector_is_paused_while_computing_and_back_after_the_last() -> None:
    import gc
    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():  # another thread's computation, overlapping
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first is still computing
    assert gc.isenabled()
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()
