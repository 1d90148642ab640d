"""The dashboard's forms on the real daemon (README.md, HTTP API and dashboard): signing in
with a token, a session cookie, the actions as forms in a real chromium, and the refusals:
no session (401), no or another session's CSRF token, another origin (403), each
changing nothing in the database. Hostile names stay text on every new page."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser import Tab
from tests.helpers import answers, backload, daemon, free_port, get, query, wait_for

TOKENS = {"alice": "alice-s3cret", "bob": "bob-s3cret"}
HOSTILE_TASK = "<script>alert(1)</script>"
HOSTILE_FILE = "<img src=x onerror=alert(3)>.toml"
HOSTILE_TEMPLATE = "<img src=x onerror=alert(2)>"


@dataclass
class Site:
    base: str
    wf: Path
    db: Path
    tmp: Path


def start(tmp_path: Path, wf: Path, tokens: dict[str, str]) -> Iterator[Site]:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "extract"\nrule = "cron=0 * * * *"\ntemplate = "?h={hh}"\n\n'
        '[[phase]]\ntask = "load"\ndependsOn = "extract"\n\n'
        f'[[phase]]\ntask = "{HOSTILE_TASK}"\nrule = "cron=0 * * * *"\n'
        f'template = "{HOSTILE_TEMPLATE}"\n')
    (wf / HOSTILE_FILE).write_text('[[phase]]\ntask = "boom"\nrule = "cron=0 0 * * *"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "extract", 2)
    port = free_port()
    config = tmp_path / "flowlord.toml"
    table = "".join(f'{name} = "{token}"\n' for name, token in tokens.items())
    config.write_text(f'timezone = "UTC"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                      + (f"[http.tokens]\n{table}" if tokens else ""))
    base = f"http://127.0.0.1:{port}"
    with daemon(tmp_path, wf, db, args=["-c", str(config)]):
        wait_for(lambda: answers(base), 30)
        yield Site(base, wf, db, tmp_path)


@pytest.fixture
def site(tmp_path: Path, wf: Path) -> Iterator[Site]:
    yield from start(tmp_path, wf, TOKENS)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str


def send(base: str, method: str, path: str, fields: dict[str, str] | None = None,
         cookie: str = "", origin: str | None = "", referer: str | None = None) -> Answer:
    """One request, redirects not followed; `origin` "" means this server's."""
    parts = urllib.parse.urlsplit(base)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    if origin is not None:
        headers["Origin"] = origin or base
    if referer is not None:
        headers["Referer"] = referer
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        body = urllib.parse.urlencode(fields or {}) if method == "POST" else None
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return Answer(answer.status, answer.headers, answer.read().decode())
    finally:
        conn.close()


def sign_in(base: str, token: str) -> tuple[str, str]:
    """(the Cookie header, the session's CSRF token)."""
    answer = send(base, "POST", "/signin", {"token": token})
    assert answer.status == 303, answer.text
    cookie = answer.headers["Set-Cookie"].split(";")[0]
    page = send(base, "GET", "/", cookie=cookie)
    return cookie, csrf_of(page.text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


def state(db: Path) -> tuple[object, ...]:
    """What an action would change: the audit trail and the tasks."""
    return (query(db, "SELECT count(*), max(action_no) FROM actions")[0],
            query(db, "SELECT count(*), max(task_no), "
                      "sum(ended IS NOT NULL) FROM tasks")[0])


@pytest.mark.slow
def test_signing_in_sets_a_strict_session_cookie_and_the_pages_then_offer_the_forms(
        site: Site) -> None:
    page = send(site.base, "GET", "/")
    assert page.status == 200 and 'action="/act/' not in page.text and "sign in" in page.text
    refused = send(site.base, "POST", "/signin", {"token": "wrong"})
    assert refused.status == 401 and "Set-Cookie" not in refused.headers
    assert "not a token of this daemon" in refused.text
    answer = send(site.base, "POST", "/signin", {"token": TOKENS["alice"]})
    assert (answer.status, answer.headers["Location"]) == (303, "/")
    attributes = [a.strip() for a in answer.headers["Set-Cookie"].split(";")]
    assert attributes[0].startswith("flowlord_session=") and len(attributes[0]) > 50
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(attributes)
    assert "Secure" not in attributes  # served over plain HTTP
    cookie = attributes[0]
    for path in ("/", "/files", "/phases/a.toml/extract"):
        signed_in = send(site.base, "GET", path, cookie=cookie)
        assert 'action="/act/' in signed_in.text and "alice" in signed_in.text, path
        assert signed_in.headers["Cache-Control"] == "no-store"
    task_no, task_id = query(site.db, "SELECT task_no, id FROM tasks ORDER BY task_no")[0]
    lineage = send(site.base, "GET", f"/tasks/{task_id}", cookie=cookie).text
    assert f'action="/act/tasks/{task_no}/rerun"' in lineage
    assert f'action="/act/tasks/{task_no}/cancel"' in lineage
    # a made-up cookie is no session
    assert 'action="/act/' not in send(site.base, "GET", "/", cookie="flowlord_session=x").text


@pytest.mark.slow
def test_a_form_posted_without_a_session_a_csrf_token_or_from_another_site_changes_nothing(
        site: Site) -> None:
    alice, alice_csrf = sign_in(site.base, TOKENS["alice"])
    _, bob_csrf = sign_in(site.base, TOKENS["bob"])
    fields = {"task": "extract", "time": "2026-02-01T05:00:00Z"}
    before = state(site.db)
    for answer, status in [
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": alice_csrf}), 401),
            (send(site.base, "POST", "/act/tasks/1/cancel", {"csrf": alice_csrf}), 401),
            (send(site.base, "POST", "/act/refresh", {}, origin=None), 401),
            (send(site.base, "POST", "/act/trigger", fields, cookie=alice), 403),
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": ""}, cookie=alice), 403),
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": bob_csrf},
                  cookie=alice), 403),
            (send(site.base, "POST", "/act/tasks/1/cancel", {"csrf": bob_csrf},
                  cookie=alice), 403),
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": alice_csrf},
                  cookie=alice, origin="http://evil.example"), 403),
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": alice_csrf},
                  cookie=alice, origin="null"), 403),
            (send(site.base, "POST", "/act/trigger", {**fields, "csrf": alice_csrf},
                  cookie=alice, origin=None, referer="http://evil.example/page"), 403),
            (send(site.base, "POST", "/signin", {"token": TOKENS["alice"]},
                  origin="http://evil.example"), 403),
            (send(site.base, "POST", "/signout", {"csrf": bob_csrf}, cookie=alice), 403)]:
        assert answer.status == status, answer.text
        assert "Set-Cookie" not in answer.headers
        assert "text/html" in answer.headers["Content-Type"]
    assert state(site.db) == before
    # alice's session still acts, with her token and from this site
    done = send(site.base, "POST", "/act/trigger", {**fields, "csrf": alice_csrf},
                cookie=alice, referer=site.base + "/phases/a.toml/extract", origin=None)
    assert done.status == 201 and "1 task created" in done.text, done.text
    assert query(site.db, "SELECT actor, kind, outcome FROM actions "
                          "ORDER BY action_no DESC LIMIT 1") == [("alice", "trigger", "done")]
    # signed out, the cookie is no session any more
    out = send(site.base, "POST", "/signout", {"csrf": alice_csrf}, cookie=alice)
    assert out.status == 303 and "Max-Age=0" in out.headers["Set-Cookie"]
    after = state(site.db)
    assert send(site.base, "POST", "/act/refresh", {"csrf": alice_csrf},
                cookie=alice).status == 401
    assert state(site.db) == after


@pytest.mark.slow
def test_without_a_token_sign_in_says_actions_are_disabled(tmp_path: Path, wf: Path) -> None:
    for site in start(tmp_path, wf, {}):
        page = send(site.base, "GET", "/signin")
        assert page.status == 200 and "Actions are disabled" in page.text
        assert 'name="token"' not in page.text
        refused = send(site.base, "POST", "/signin", {"token": "anything"})
        assert refused.status == 403 and "Set-Cookie" not in refused.headers
        assert send(site.base, "POST", "/act/refresh", {}).status == 401


@pytest.mark.slow
def test_hostile_names_stay_text_on_the_new_pages(site: Site) -> None:
    cookie, csrf = sign_in(site.base, TOKENS["alice"])
    hostile_phase = "/phases/a.toml/" + urllib.parse.quote(HOSTILE_TASK, safe="")
    pages = [send(site.base, "GET", path, cookie=cookie)
             for path in ("/", "/files", "/signin", hostile_phase,
                          "/phases/" + urllib.parse.quote(HOSTILE_FILE) + "/boom")]
    base = {"csrf": csrf, "back": hostile_phase}
    pages += [
        send(site.base, "POST", "/act/backload", {**base, "task": HOSTILE_TASK,
             "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}, cookie=cookie),
        send(site.base, "POST", "/act/trigger", {**base, "task": HOSTILE_TASK,
             "time": "2026-01-01T05:00:00Z"}, cookie=cookie),
        send(site.base, "POST", "/act/trigger", {**base, "task": HOSTILE_TASK + "x"},
             cookie=cookie),  # no such phase: the error repeats the name
        send(site.base, "POST", "/act/pause", {**base, "file": HOSTILE_FILE,
             "reason": HOSTILE_TEMPLATE}, cookie=cookie)]
    task_id = query(site.db, "SELECT id FROM tasks ORDER BY task_no DESC LIMIT 1")[0][0]
    pages.append(send(site.base, "GET", f"/tasks/{task_id}", cookie=cookie))
    for page in pages:
        assert page.status < 500, page.text
        for raw in (HOSTILE_TASK, "<img src=x"):
            assert raw not in page.text, (page.status, raw, page.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[5].text  # the preview
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[5].text  # its task's info


@pytest.mark.slow
def test_the_forms_in_a_browser(site: Site) -> None:
    """Sign in, trigger, backload (preview, then create), refresh, cancel, rerun and mark,
    typed and clicked in chromium."""
    base = site.base
    with Tab(site.tmp / "chromium") as tab:
        page = tab.open(base + "/")
        assert "sign in" in page.text and "refresh" not in page.text
        tab.open(base + "/signin")
        tab.type("input[name=token]", TOKENS["alice"])
        page = tab.click("form[action='/signin'] button")
        assert "Overview" in page.text and "alice" in page.text and "sign out" in page.text
        [cookie] = [c for c in tab.cookies() if c["name"] == "flowlord_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
        tab.screenshot("signed-in")

        tab.open(base + "/phases/a.toml/extract")
        tab.type("form[action='/act/trigger'] input[name=time]", "2026-02-01T05:00:00Z")
        page = tab.click("form[action='/act/trigger'] button")
        assert "Trigger extract 201 Created, done as alice. 1 task created by 1 new fire" \
            in page.text and "?h=05" in page.text
        tab.screenshot("trigger")

        tab.open(base + "/phases/a.toml/extract")
        tab.type("form[action='/act/backload'] input[name=from]", "2026-03-01T00:00:00Z")
        tab.type("form[action='/act/backload'] input[name=to]", "2026-03-01T02:00:00Z")
        tab.choose("form[action='/act/backload'] option[value=hour]")
        before = state(site.db)
        preview = tab.click("form[action='/act/backload'] button")
        assert "3 steps, 3 tasks" in preview.text and "?h=02" in preview.text
        assert state(site.db) == before  # a preview writes nothing
        tab.screenshot("backload-preview")
        created = tab.click("form[action='/act/backload'] button")
        assert "Backload extract 201 Created" in created.text
        assert "3 tasks created by 3 new fires" in created.text
        assert query(site.db, "SELECT count(*) FROM tasks WHERE info LIKE '?h=0%' "
                              "AND created > '2026-02'") != [(0,)]

        tab.open(base + "/files")
        (site.wf / "c.toml").write_text('[[phase]]\ntask = "new"\n')
        page = tab.click("form[action='/act/refresh'] button")
        # the watch takes a closed file within milliseconds: the rescan may find it done
        assert "Refresh 200 OK" in page.text and (
            "+c.toml" in page.text or "Nothing changed on disk" in page.text)
        assert query(site.db, "SELECT count(*) FROM workflow_files WHERE file_path = "
                              "'c.toml'") == [(1,)]

        newest = int(query(site.db, "SELECT max(task_no) FROM tasks")[0][0])  # type: ignore[call-overload]
        task_id = query(site.db, "SELECT id FROM tasks WHERE task_no = ?", (newest,))[0][0]
        lineage = f"{base}/tasks/{task_id}"
        tab.open(lineage)
        tab.click("details.act summary", navigates=False)  # the task's forms, folded
        page = tab.click(f"form[action='/act/tasks/{newest}/cancel'] button")
        assert "Cancel task " + str(newest) in page.text and "200 OK" in page.text
        assert query(site.db, "SELECT result FROM tasks WHERE task_no = ?",
                     (newest,)) == [("error",)]
        tab.open(lineage)
        tab.click("details.act summary", navigates=False)
        tab.choose(f"form[action='/act/tasks/{newest}/rerun'] input[type=checkbox]")
        page = tab.click(f"form[action='/act/tasks/{newest}/rerun'] button")
        assert "Rerun task " + str(newest) in page.text and "201 Created" in page.text
        rerun = query(site.db, "SELECT task_no, attempt FROM tasks WHERE parent_no = ?",
                      (newest,))
        assert len(rerun) == 1
        tab.open(lineage)
        for summary in (1, 2):  # the cancelled task's, then its rerun's
            tab.click(f"li:nth-child({summary}) details.act summary", navigates=False)
        tab.choose(f"form[action='/act/tasks/{rerun[0][0]}/mark'] option[value=complete]")
        tab.type(f"form[action='/act/tasks/{rerun[0][0]}/mark'] input[name=msg]", "by hand")
        page = tab.click(f"form[action='/act/tasks/{rerun[0][0]}/mark'] button")
        assert "Mark task" in page.text and "200 OK" in page.text, page.text
        assert query(site.db, "SELECT result, msg FROM tasks WHERE task_no = ?",
                     (rerun[0][0],)) == [("complete", "by hand")]

        tab.open(base + "/phases/a.toml/load")
        tab.type("form[action='/act/pause'] input[name=reason]", "the lake is down")
        page = tab.click("form[action='/act/pause'] button")
        assert "Pause load 201 Created" in page.text, page.text
        assert query(site.db, "SELECT reason, actor FROM pauses WHERE ended IS NULL") == [
            ("the lake is down", "alice")]
        tab.open(base + "/phases/a.toml/load")
        page = tab.click("form[action='/act/resume'] button")
        assert "Resume load 200 OK" in page.text
        tab.open(base + "/")
        assert "Resume every phase" not in tab.click(
            "form[action='/act/pause'] button").text  # pausing everything, from the overview
        assert query(site.db, "SELECT count(*) FROM pauses WHERE ended IS NULL") == [(1,)]
        tab.open(base + "/files")
        page = tab.click("form[action='/act/resume'] button")  # a file never paused
        assert f"Resume {HOSTILE_FILE} 200 OK" in page.text and "img" not in page.tags
        tab.open(base + "/")
        page = tab.click("form[action='/act/resume'] button")
        assert "Resume every phase 200 OK" in page.text
        assert query(site.db, "SELECT count(*) FROM pauses WHERE ended IS NULL") == [(0,)]
        done = query(site.db, "SELECT actor, kind, outcome FROM actions ORDER BY action_no")
        assert [(a, k) for a, k, _ in done if a == "alice"][:8] == [
            ("alice", "trigger"), ("alice", "backload"), ("alice", "refresh"),
            ("alice", "cancel"), ("alice", "rerun"), ("alice", "mark"),
            ("alice", "pause"), ("alice", "resume")]
        assert get(base, "/api/status")[0] == 200
