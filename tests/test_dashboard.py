"""The dashboard of the real daemon, in a real headless browser with JavaScript off: every
page shows what the database holds, links lead from a fire to its children, hostile
workflow content stays text, a broken file shows why. Screenshots go to build/screenshots.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowlord.config import Config
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard, since, tree
from flowlord.web.drawing import NODE_HEIGHT, NODE_WIDTH, depths, lay_out
from tests.browser import Browser
from tests.helpers import answers, backload, daemon, free_port, get, query, run_cli, wait_for

HOSTILE_TASK = "<script>alert(1)</script>"
HOSTILE_FILE = "<img src=x onerror=alert(3)>.toml"
FAILURE = "<b>load failed</b>"


@dataclass
class Site:
    base: str
    wf: Path
    db: Path
    browser: Browser


@pytest.fixture
def site(tmp_path: Path, wf: Path) -> Iterator[Site]:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "extract"\nrule = "cron=0 * * * *"\n'
        'template = "?h={hh}&x=<i>{hh}</i>"\n\n'
        '[[phase]]\ntask = "load"\ndependsOn = "extract"\n\n'
        f'[[phase]]\ntask = "{HOSTILE_TASK}"\nrule = "cron=bad"\n'
        'template = "<img src=x onerror=alert(2)>"\n')
    (wf / HOSTILE_FILE).write_text('[[phase]]\ntask = "boom"\nrule = "cron=0 0 * * *"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "extract", 2)
    port = free_port()
    config = tmp_path / "flowlord.toml"
    config.write_text(
        f'timezone = "UTC"\n[http]\nlisten = "127.0.0.1:{port}"\n\n'
        '[workers.extract]\ncommand = ["true"]\n\n'
        f'[workers.load]\ncommand = ["sh", "-c", "echo \'{FAILURE}\' >&2; exit 1"]\n')
    base = f"http://127.0.0.1:{port}"
    with daemon(tmp_path, wf, db, args=["-c", str(config)]):
        wait_for(lambda: answers(base), 30)
        # both extracts ran, and both loads failed for good: two alerts
        wait_for(lambda: query(db, "SELECT count(*) FROM alerts") == [(2,)], 60)
        yield Site(base, wf, db, Browser(tmp_path / "chromium"))


@pytest.mark.slow
def test_every_page_shows_the_database_and_links_a_fire_to_its_children(site: Site) -> None:
    b, base = site.browser, site.base
    overview = b.load(base + "/")
    assert "3 ok 0 warnings 1 error 2 files" in overview.text
    assert f"{HOSTILE_TASK} error no valid rule found: cron=bad" in overview.text
    assert "Recent failures" in overview.text and FAILURE in overview.text
    assert overview.text.count("failed load (task") == 2  # the two alerts of kind failed
    b.screenshot(base + "/", "overview")

    phase = b.load(base + overview.link(HOSTILE_TASK))  # a hostile name survives its URL
    assert f"{HOSTILE_TASK} in a.toml" in phase.text
    assert "error: no valid rule found: cron=bad" in phase.text
    assert "<img src=x onerror=alert(2)>" in phase.text

    files = b.load(base + overview.link("2 files"))
    assert "a.toml" in files.text and HOSTILE_FILE in files.text
    b.screenshot(base + "/files", "files")

    of_file = b.load(base + files.link(HOSTILE_FILE))
    assert [label for _, label in of_file.links if label == "boom"] == ["boom"]
    assert "extract" not in of_file.text
    b.screenshot(base + "/phases", "phases")

    graph = b.load(base + overview.link("Graph"))
    assert graph.tags.get("svg") == 2 and graph.tags.get("rect") == 4  # two files, 4 phases
    assert graph.tags.get("path") == 3  # extract → load, and an arrowhead in each drawing
    load = b.load(base + graph.link("load"))
    assert "load in a.toml" in load.text and "runs when its parent completes" in load.text
    assert "Parent task severity last result ended why extract ok complete" in load.text
    b.screenshot(base + "/graph", "graph")

    failed = b.load(base + "/tasks?type=load&job=&result=error")  # as the form sends it
    rows = [label for href, label in failed.links if href.startswith("/phases/")]
    assert rows == ["load", "load"]
    b.screenshot(base + "/tasks?type=load&job=&result=error", "tasks")

    task_id = query(site.db, "SELECT id FROM tasks WHERE type = 'load' ORDER BY task_no LIMIT 1")
    lineage = b.load(base + failed.link(str(task_id[0][0])))
    assert "Fired by extract in a.toml for the slot 2026-01-01T00:00:00Z: a backload fire" \
        in lineage.text
    assert lineage.text.index("extract complete") < lineage.text.index("load error")
    assert FAILURE in lineage.text
    b.screenshot(base + failed.link(str(task_id[0][0])), "lineage")

    alerts = b.load(base + "/alerts")
    assert alerts.text.count("failed after 1 attempt: exit status 1") == 2
    newest = query(site.db, "SELECT task_no, id FROM alerts JOIN tasks USING (task_no) "
                            "ORDER BY alert_no DESC LIMIT 1")[0]
    alerted = b.load(base + alerts.link(f"task {newest[0]}"))
    assert f"Task {newest[1]}" in alerted.text and "load error" in alerted.text
    b.screenshot(base + "/alerts", "alerts")

    for dom in (overview, phase, files, graph, failed, lineage, alerts):
        assert "script" not in dom.tags and "img" not in dom.tags and "b" not in dom.tags


@pytest.mark.slow
def test_the_filter_forms_work_with_their_fields_left_blank(site: Site) -> None:
    """A browser sends an empty field as `name=`: blank means no filter."""
    b, base = site.browser, site.base
    every = b.load(base + "/tasks?type=&job=&result=")
    assert [label for href, label in every.links if href.startswith("/phases/")] == \
        ["load", "load", "extract", "extract"]
    errors = b.load(base + "/tasks?type=&job=&result=error")
    assert [label for href, label in errors.links if href.startswith("/phases/")] == \
        ["load", "load"]
    loads = b.load(base + "/tasks?type=&job=&result=&phase=load&id=&since=")
    assert [label for href, label in loads.links if href.startswith("/phases/")] == \
        ["load", "load"]
    assert "wait" in loads.text and " s" in loads.text  # queue and run time on each row
    later = b.load(base + "/tasks?phase=&since=2999-01-01T00:00")
    assert "no tasks" in later.text
    bad = b.load(base + "/tasks?since=yesterday")
    assert "since is not an ISO 8601 time" in bad.text
    phases = b.load(base + "/phases?severity=")
    assert "error" in phases.text and HOSTILE_TASK in phases.text and "boom" in phases.text
    assert b.load(base + "/graph?file=").tags.get("svg") == 2


@pytest.mark.slow
def test_phases_carry_their_last_result_and_lists_page(site: Site) -> None:
    status, phases = get(site.base, "/api/phases")
    assert status == 200
    assert {p["task"]: p["last_result"] for p in phases} == {
        "boom": None, "extract": "complete", "load": "error", HOSTILE_TASK: None}
    status, first = get(site.base, "/api/alerts?limit=1")
    status, second = get(site.base, f"/api/alerts?limit=1&before={first[0]['alert_no']}")
    status, third = get(site.base, f"/api/alerts?limit=1&before={second[0]['alert_no']}")
    assert [first[0]["alert_no"], second[0]["alert_no"], third] == [2, 1, []]
    assert [f["file"] for f in get(site.base, "/api/files?limit=1&offset=1")[1]] == ["a.toml"]
    assert get(site.base, "/files?limit=1")[1].count('href="/files?limit=1&amp;offset=1"') == 1


@pytest.mark.slow
def test_a_file_broken_while_the_daemon_runs_shows_why_on_the_overview(site: Site) -> None:
    text = (site.wf / "a.toml").read_text().replace('dependsOn = "extract"',
                                                     'dependsOn = "ghost"')
    (site.wf / "a.toml").write_text(text)
    wait_for(lambda: get(site.base, "/api/status")[1]["phases"]["error"] == 2, 30)
    overview = site.browser.load(site.base + "/")
    assert "2 errors" in overview.text
    assert "a.toml load error parent task not found: ghost" in overview.text


@pytest.mark.slow
def test_hostile_content_is_escaped_on_every_page(site: Site) -> None:
    task_id, task_no = query(site.db, "SELECT id, task_no FROM tasks WHERE type = 'load' "
                                      "LIMIT 1")[0]
    pages = ["/", "/files", "/phases", "/phases?severity=error", "/graph", "/tasks",
             "/tasks?type=load", f"/tasks/{task_id}", f"/tasks/{task_id}/{task_no}", "/alerts",
             "/phases/a.toml/%3Cscript%3Ealert%281%29%3C%2Fscript%3E",
             "/phases/%3Cimg%20src%3Dx%20onerror%3Dalert%283%29%3E.toml/boom"]
    for page in pages:
        status, html = get(site.base, page)
        assert status == 200, page
        for raw in (HOSTILE_TASK, "<img src=x", FAILURE, "<i>{hh}</i>"):
            assert raw not in html, (page, raw)
    status, html = get(site.base, "/phases/a.toml/%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the failed load's page: its output (what it wrote to stderr) is text in the browser
    shown = site.browser.load(f"{site.base}/tasks/{task_id}/{task_no}")
    assert FAILURE in shown.text and shown.tags.get("b", 0) == 0
    assert (f"/api/tasks/{task_no}/log", "the whole text") in shown.links
    site.browser.screenshot(f"{site.base}/tasks/{task_id}/{task_no}", "task-log")


@pytest.mark.slow
def test_errors_are_pages_and_every_page_forbids_scripts(site: Site) -> None:
    for path, status, message in [
            ("/nope", 404, "no such page: /nope"),
            ("/phases/a.toml/ghost", 404, "no phase ghost in a.toml"),
            ("/tasks/no-such-id", 404, "no task with id no-such-id"),
            ("/phases?severity=bad", 400, "severity must be ok, warning or error"),
            ("/tasks?limit=0", 400, "limit must be from 1 to 1000"),
            ("/", 200, "Overview")]:
        try:
            with urllib.request.urlopen(site.base + path, timeout=10) as answer:
                code, headers, html = answer.status, answer.headers, answer.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                code, headers, html = e.code, e.headers, e.read().decode()
        assert (code, message in html) == (status, True), path
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, css = get(site.base, "/static/style.css")
    assert status == 200 and "--error" in css
    assert get(site.base, "/static/../pages/base.html")[0] == 404


# --- the pieces, alone ---------------------------------------------------------------


def test_depth_is_the_longest_path_from_a_root_and_a_cycle_ends() -> None:
    assert depths([("a", ""), ("b", "a"), ("c", "b"), ("d", "a"), ("e", "d")]) == \
        {"a": 0, "b": 1, "c": 2, "d": 1, "e": 2}
    # `dependsOn = topic` hangs a phase under every job of the topic
    assert depths([("x:1", ""), ("x:2", "x:1"), ("y", "x")]) == {"x:1": 0, "x:2": 1, "y": 2}
    # a cycle comes last, in file order; its edge back to an earlier phase is ignored
    assert depths([("a", "b"), ("b", "a"), ("c", ""), ("d", "b")]) == \
        {"c": 0, "a": 0, "b": 1, "d": 2}
    drawing = lay_out([("a", "b", "error"), ("b", "a", "error")])
    assert [e.back for e in drawing.edges] == [True, False]  # b → a goes back, a → b on
    assert drawing.nodes[0].x < drawing.nodes[1].x and drawing.nodes[0].x == 10


def test_nodes_never_overlap_and_edges_join_a_parent_to_its_child() -> None:
    phases = [(f"t{i}", f"t{i // 2}" if i else "", "ok") for i in range(40)]
    drawing = lay_out(phases)
    # and a graph that is not a tree: roots of their own, a diamond, a topic's jobs
    other = lay_out([("r1", "", "ok"), ("r2", "", "ok"), ("x:1", "r1", "ok"),
                     ("x:2", "r2", "ok"), ("y", "x", "ok"), ("z", "y", "warning"),
                     ("w", "r1", "ok"), ("v", "w", "ok"), ("u", "v", "ok")])
    for d in (drawing, other):
        for i, a in enumerate(d.nodes):
            for b in d.nodes[i + 1:]:
                apart = (abs(a.x - b.x) >= NODE_WIDTH or abs(a.y - b.y) >= NODE_HEIGHT)
                assert apart, (a, b)
    assert {n.task: n.x for n in other.nodes}["y"] > {n.task: n.x for n in other.nodes}["x:2"]
    for n in drawing.nodes:
        assert n.x >= 0 and n.x + NODE_WIDTH <= drawing.width
        assert n.y >= 0 and n.y + NODE_HEIGHT <= drawing.height
    assert len(drawing.edges) == 39
    by_task = {n.task: n for n in drawing.nodes}
    first = drawing.edges[0].path  # t0 → t1
    assert first.startswith(f"M{by_task['t0'].x + NODE_WIDTH},")
    assert first.endswith(f" {by_task['t1'].x},{by_task['t1'].y + NODE_HEIGHT // 2}")
    assert lay_out([("a" * 40, "", "error")]).nodes[0].label == "a" * 27 + "…"


def test_a_lineage_thousands_deep_is_walked_without_recursion() -> None:
    chain = [{"task_no": n, "parent_no": n - 1 if n else None} for n in range(5000)]
    walk = tree(chain[::-1])  # any order in, parents first out
    assert [(depth, t["task_no"]) for depth, t in walk] == [(n, n) for n in range(5000)]
    forest = tree([{"task_no": 1, "parent_no": None}, {"task_no": 2, "parent_no": 1},
                   {"task_no": 3, "parent_no": 99}, {"task_no": 4, "parent_no": 1},
                   {"task_no": 5, "parent_no": 2}])  # 99: a parent of another id
    assert [(d, t["task_no"]) for d, t in forest] == [(0, 1), (1, 2), (2, 5), (1, 4), (0, 3)]
    # and the page draws it without a recursion of its own
    fields = {"type": "t", "job": "", "attempt": 1, "result": "error", "file": None,
              "phase": None, "created": "2026-01-01T00:00:00Z", "started": None,
              "ended": None, "due_at": None, "info": "", "msg": "", "id": "i"}
    deep = tree([{**fields, **t} for t in chain])
    page = Dashboard(Api(Config(), healthy=lambda: True, role=lambda: "leader")).render(
        "lineage.html", "tasks", id="i", root=deep[0][1], fire=None, tree=deep,
        total=6000, shown=5000)
    assert page.count('<li class="depth-12">') == 5000 - 12 and "level 4999" in page
    assert "Showing the first 5000 of 6000 tasks." in page


def test_since_says_how_long_ago_or_how_soon() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert since("2026-01-01T11:59:30Z", now) == "30 s ago"
    assert since("2026-01-01T12:05:00Z", now) == "in 5 min"
    assert since("2025-12-30T11:59:59.500Z", now) == "2 d ago"
    assert since("2026-01-01T14:00:00", now) == "in 2 h"
    assert since(None, now) == "" and since("soon", now) == "soon"


@pytest.mark.slow
def test_the_graph_page_draws_no_more_than_its_caps(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlord.errors import BadRequest
    from flowlord.web import dashboard

    (wf / "a.toml").write_text("".join(f'[[phase]]\ntask = "t{i}"\n\n' for i in range(3)))
    (wf / "b.toml").write_text('[[phase]]\ntask = "u"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    monkeypatch.setattr(dashboard, "GRAPH_NODES_AT_ONCE", 3)
    monkeypatch.setattr(dashboard, "GRAPH_NODES_OF_A_FILE", 2)
    pages = Dashboard(Api(Config(db=str(db)), healthy=lambda: True, role=lambda: "leader"))
    every = pages.answer("/graph", {})[1]
    assert "4 phases are too many to draw at once: choose a file." in every
    assert "<svg" not in every
    one = pages.answer("/graph", {"file": ["a.toml"]})[1]
    assert "3 phases are too many to draw at once; " in one and "<svg" not in one
    assert pages.answer("/graph", {"file": ["b.toml"]})[1].count("<rect") == 1
    with pytest.raises(BadRequest) as missing:
        pages.answer("/graph", {"file": ["nope.toml"]})
    assert missing.value.status == 404 and str(missing.value) == "no workflow file nope.toml"
