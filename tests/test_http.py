"""The HTTP API of the real daemon (README.md, HTTP API and dashboard): its answers, the
token on POST, its 4xx for bad parameters and bodies, and no 500 for a thousand random
requests."""

from __future__ import annotations

import json
import random
import re
import socket
import string
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import answers, backload, daemon, free_port, get, run_cli, wait_for

TOKEN = "s3cret-token"


def post(base: str, path: str, body: object, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(base + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


@pytest.fixture
def api(tmp_path: Path, wf: Path) -> Iterator[str]:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "extract"\nrule = "cron=0 * * * *"\ntemplate = "?h={hh}"\n\n'
        '[[phase]]\ntask = "load"\ndependsOn = "extract"\n\n'
        '[[phase]]\ntask = "<script>alert(1)</script>"\nrule = "cron=bad"\n')
    (wf / "dir").mkdir()
    (wf / "dir" / "b.toml").write_text('[[phase]]\ntask = "other:job"\n')
    db = tmp_path / "f.db"
    backload(wf, db, "extract", 3)
    port = free_port()
    config = tmp_path / "flowlord.toml"
    config.write_text(f'timezone = "UTC"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                      f'token = "{TOKEN}"\n')
    base = f"http://127.0.0.1:{port}"
    with daemon(tmp_path, wf, db, args=["-c", str(config)]):
        wait_for(lambda: answers(base), 30)
        yield base


@pytest.mark.slow
def test_the_read_endpoints_answer_from_the_database(api: str) -> None:
    status, body = get(api, "/api/status")
    assert status == 200 and body["files"] == 2 and body["role"] == "leader"
    assert body["phases"]["error"] == 1 and sum(body["phases"].values()) == 4
    status, files = get(api, "/api/files")
    assert [f["file"] for f in files] == ["a.toml", "dir/b.toml"]
    status, errors = get(api, "/api/phases?severity=error")
    assert [(p["task"], p["severity"]) for p in errors] == [
        ("<script>alert(1)</script>", "error")]
    status, page = get(api, "/api/phases?limit=2&offset=1")
    assert [p["task"] for p in page] == ["load", "<script>alert(1)</script>"]
    status, phase = get(api, "/api/phases/a.toml/load")
    assert status == 200 and phase["depends_on"] == "extract"
    assert [p["task"] for p in phase["parents"]] == ["extract"]
    status, nested = get(api, "/api/phases/dir/b.toml/other:job")
    assert status == 200 and nested["file"] == "dir/b.toml"
    status, graph = get(api, "/api/graph")
    assert {"from": "extract", "to": "load", "file": "a.toml"} in graph["edges"]
    status, one = get(api, "/api/graph?file=dir/b.toml")
    assert one == {"nodes": [{"file": "dir/b.toml", "task": "other:job", "severity": "warning"}],
                   "edges": []}
    status, tasks = get(api, "/api/tasks?type=extract&limit=2")
    assert status == 200 and len(tasks) == 2 and tasks[0]["task_no"] > tasks[1]["task_no"]
    status, older = get(api, f"/api/tasks?type=extract&before={tasks[1]['task_no']}")
    assert [t["task_no"] for t in older] == [tasks[1]["task_no"] - 1]
    status, lineage = get(api, f"/api/tasks/{tasks[0]['id']}")
    assert status == 200 and lineage[0]["id"] == tasks[0]["id"]
    assert get(api, "/api/alerts")[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/phases?severity=bad", "/api/tasks?limit=0",
                                  "/api/tasks?limit=100000", "/api/tasks?before=-1",
                                  "/api/tasks?result=maybe", "/api/phases?offset=x",
                                  "/api/tasks?type=a&type=b"])
def test_bad_parameters_get_400_with_a_json_error(api: str, path: str) -> None:
    status, body = get(api, path)
    assert status == 400 and body["error"]


@pytest.mark.slow
def test_unknown_paths_get_404(api: str) -> None:
    assert get(api, "/api/nothing")[0] == 404
    assert get(api, "/api/phases/a.toml/ghost")[0] == 404
    assert get(api, "/api/tasks/no-such-id")[0] == 404
    assert post(api, "/api/nothing", {})[0] == 404


@pytest.mark.slow
def test_posts_need_the_token(api: str) -> None:
    assert post(api, "/api/refresh", {}, token=None)[0] == 401
    assert post(api, "/api/refresh", {}, token="wrong")[0] == 401
    assert post(api, "/api/refresh", {})[0] == 200


@pytest.mark.slow
def test_trigger_backload_and_refresh_write_as_the_commands_do(api: str, wf: Path) -> None:
    status, body = post(api, "/api/trigger", {"task": "extract", "time": "2026-02-01T05:00:00Z"})
    assert status == 201 and [t["info"] for t in body["tasks"]] == ["?h=05"]
    assert post(api, "/api/trigger", {"task": "extract", "time": "2026-02-01T05:00:00Z"}) == (
        200, {"fires": 0, "tasks": []})  # fired before: nothing new
    status, body = post(api, "/api/backload", {"task": "extract", "from": "2026-03-01T00:00:00Z",
                                               "to": "2026-03-01T02:00:00Z", "by": "hour"})
    assert status == 201 and body["fires"] == 3 and len(body["tasks"]) == 3
    (wf / "c.toml").write_text('[[phase]]\ntask = "new"\n')
    status, body = post(api, "/api/refresh", {})
    assert status == 200 and "+c.toml" in body["changes"]
    assert any(p["task"] == "new" for p in get(api, "/api/phases")[1])
    # each is in the audit trail, done as the one token of old, named `token`
    done = [a for a in get(api, "/api/actions")[1] if a["actor"] == "token"]
    assert [(a["actor"], a["kind"], a["outcome"]) for a in done] == [
        ("token", "refresh", "done"), ("token", "backload", "done"),
        ("token", "trigger", "done"), ("token", "trigger", "done")]


@pytest.mark.slow
@pytest.mark.parametrize("path, body", [
    ("/api/trigger", b"not json"), ("/api/trigger", b"[1]"), ("/api/trigger", b"{}"),
    ("/api/trigger", b'{"task": "ghost"}'), ("/api/trigger", b'{"task": 7}'),
    ("/api/trigger", b'{"task": "extract", "time": "yesterday"}'),
    ("/api/backload", b'{"task": "extract", "from": "2026-01-01"}'),
    ("/api/backload", b'{"task": "extract", "from": "2026-01-01", "to": "2026-01-02", '
                      b'"by": "fortnight"}'),
])
def test_bad_post_bodies_get_a_4xx_with_a_json_error(api: str, path: str, body: bytes) -> None:
    status, answer = post(api, path, None, raw=body)
    assert 400 <= status < 500 and answer["error"]


@pytest.mark.slow
def test_a_thousand_random_requests_never_get_a_500(api: str) -> None:
    rng = random.Random(7)
    paths = ["/api/status", "/api/files", "/api/phases", "/api/phases/", "/api/graph",
             "/api/tasks", "/api/tasks/", "/api/alerts", "/healthz", "/", "/api/phases/a.toml/",
             "/files", "/phases", "/phases/", "/phases/a.toml/", "/graph", "/tasks", "/tasks/",
             "/alerts", "/static/", "/static/style.css"]
    keys = ["limit", "offset", "before", "severity", "type", "job", "result", "file", "x"]
    junk = string.printable + "éß☃\x00%"
    for _ in range(1000):
        path = rng.choice(paths) + "".join(rng.choice(junk) for _ in range(rng.randint(0, 8)))
        query = "&".join(f"{rng.choice(keys)}="
                         + "".join(rng.choice(junk) for _ in range(rng.randint(0, 6)))
                         for _ in range(rng.randint(0, 3)))
        url = urllib.parse.quote(path, safe="/:") + "?" + urllib.parse.quote(query, safe="=&")
        status, body = get(api, url)
        page = not url.startswith("/api/") and url.partition("?")[0] != "/healthz"
        assert status != 500 and isinstance(body, str if page else (dict, list)), (url, body)


@pytest.mark.slow
def test_a_non_loopback_address_needs_a_token(tmp_path: Path, wf: Path) -> None:
    config = tmp_path / "flowlord.toml"
    config.write_text('[http]\nlisten = "0.0.0.0:8080"\n')
    done = run_cli("run", "-c", str(config), "-w", str(wf), "--db", str(tmp_path / "f.db"))
    assert done.returncode == 2
    assert "not a loopback address: set http.token" in done.stderr


def test_healthz_says_503_when_the_main_loop_is_stuck(tmp_path: Path) -> None:
    from flowlord.config import Config
    from flowlord.web.api import Api

    stuck = Api(Config(db=str(tmp_path / "f.db")), healthy=lambda: False, role=lambda: "leader")
    assert stuck.answer("/healthz", {}) == (503, {"status": "stuck", "role": "leader"})
    fine = Api(Config(db=str(tmp_path / "f.db")), healthy=lambda: True, role=lambda: "standby")
    assert fine.answer("/healthz", {}) == (200, {"status": "ok", "role": "standby"})


def test_posts_are_disabled_without_a_token(tmp_path: Path) -> None:
    from flowlord.config import Config
    from flowlord.web.api import Api, BadRequest

    api = Api(Config(db=str(tmp_path / "f.db")), healthy=lambda: True, role=lambda: "leader")
    with pytest.raises(BadRequest) as refused:
        api.post("/api/refresh", "Bearer anything", b"{}")
    assert refused.value.status == 403


@pytest.mark.slow
def test_metrics_count_events_and_read_the_state_from_the_database(api: str) -> None:
    assert post(api, "/api/trigger", {"task": "extract", "time": "2026-02-02T05:00:00Z"})[0] \
        == 201
    with urllib.request.urlopen(api + "/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    assert 'flowlord_phases{severity="error"} 1.0' in text
    assert 'flowlord_queue_depth{topic="extract"} 4.0' in text  # 3 backloaded, 1 triggered
    for name in ("flowlord_fires_total", "flowlord_fire_lateness_seconds_bucket",
                 "flowlord_tasks_ended_total", "flowlord_retries_total",
                 "flowlord_alerts_total", "flowlord_refresh_seconds_count",
                 "flowlord_watch_events_total", "flowlord_rescans_total",
                 "flowlord_database_busy_total", "flowlord_tasks_running"):
        assert name in text, name
    assert "flowlord_refresh_seconds_count 1.0" in text  # the load at start


@pytest.mark.slow
def test_the_whole_graph_is_refused_past_its_cap_but_one_file_answers(
        tmp_path: Path, wf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlord.config import Config
    from flowlord.web import api as http_api
    from flowlord.web.api import Api, BadRequest

    (wf / "a.toml").write_text('[[phase]]\ntask = "x"\n\n[[phase]]\ntask = "y"\n'
                               'dependsOn = "x"\n')
    (wf / "b.toml").write_text('[[phase]]\ntask = "z"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    monkeypatch.setattr(http_api, "MAX_GRAPH", 2)
    api = Api(Config(db=str(db)), healthy=lambda: True, role=lambda: "leader")
    with pytest.raises(BadRequest) as refused:
        api.answer("/api/graph", {})
    assert refused.value.status == 400
    assert str(refused.value) == ("3 phases are too many for one answer (at most 2): "
                                  "ask for one file with ?file=")
    status, graph = api.answer("/api/graph", {"file": ["a.toml"]})
    assert status == 200 and graph["edges"] == [{"from": "x", "to": "y", "file": "a.toml"}]
    assert [n["task"] for n in graph["nodes"]] == ["x", "y"]


@pytest.mark.slow
def test_blank_parameters_are_no_filter_and_file_filters_phases(api: str) -> None:
    assert get(api, "/api/tasks?type=&job=&result=") == get(api, "/api/tasks")
    assert get(api, "/api/phases?severity=&file=") == get(api, "/api/phases")
    status, phases = get(api, "/api/phases?file=dir/b.toml")
    assert status == 200 and [p["task"] for p in phases] == ["other:job"]
    status, body = get(api, "/api/status")
    assert body["last_rescan"] is not None and body["last_load"] is not None


@pytest.mark.slow
def test_a_loopback_server_refuses_other_host_names(api: str) -> None:
    """DNS rebinding: a page served as evil.example, its name pointed at 127.0.0.1."""
    request = urllib.request.Request(api + "/api/status", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value as e:
        assert e.code == 421
        assert json.loads(e.read()) == {
            "error": "this server answers loopback names only, not evil.example"}
    for request, error in [
            (b"GET /api/status HTTP/1.1\r\nHost: [::1:80\r\n\r\n", "a malformed Host header"),
            (b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
             "more than one Host header")]:
        head, body = raw(api, request)
        assert head.split(b" ")[1] == b"400" and json.loads(body) == {"error": error}
    port = urllib.parse.urlsplit(api).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"localhost.:{port}", "[::1]"):
        request = urllib.request.Request(api + "/api/status", headers={"Host": host})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200


@pytest.mark.slow
def test_head_answers_like_get_without_a_body_and_other_methods_get_405(api: str) -> None:
    request = urllib.request.Request(api + "/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b""
        assert answer.headers["Content-Type"].startswith("application/json")
    for method in ("PUT", "DELETE", "OPTIONS"):
        request = urllib.request.Request(api + "/api/status", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        with refused.value as e:
            assert e.code == 405 and e.headers["Allow"] == "GET, HEAD, POST"
            assert json.loads(e.read()) == {
                "error": f"method {method} is not allowed: GET, HEAD or POST"}


def raw(api: str, request: bytes) -> tuple[bytes, bytes]:
    """(head, body) of the answer to bytes sent as they are: the body as long as its
    Content-Length says (the connection may stay open for the next request)."""
    host, port = urllib.parse.urlsplit(api).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(body) < length and (chunk := conn.recv(65536)):
            body += chunk
    return head, body


@pytest.mark.slow
def test_a_request_the_server_cannot_parse_gets_a_json_error(api: str) -> None:
    head, body = raw(api, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n")
    assert head.split(b" ")[1] == b"431"
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {
        "error": "Request Header Fields Too Large: exceeds max_header of 65536"}
    for request, status in [
            (b"POST /api/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
             b"400"),
            (b"POST /api/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Length: 65537\r\n\r\n",
             b"413"),
            (b"GARBAGE\r\n\r\n", b"400")]:
        head, body = raw(api, request)
        assert head.split(b" ")[1] == status, head
        assert b"Content-Type: application/json" in head and json.loads(body)["error"]


@pytest.mark.slow
def test_a_phase_under_a_topic_shows_every_job_of_it_as_a_parent(
        tmp_path: Path, wf: Path) -> None:
    from flowlord.config import Config
    from flowlord.web.api import Api
    from flowlord.web.dashboard import Dashboard

    (wf / "a.toml").write_text('[[phase]]\ntask = "x:1"\n\n[[phase]]\ntask = "x:2"\n\n'
                               '[[phase]]\ntask = "y"\ndependsOn = "x"\n')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-w", str(wf), "--db", str(db)).returncode == 0
    api = Api(Config(db=str(db)), healthy=lambda: True, role=lambda: "leader")
    status, phase = api.answer("/api/phases/a.toml/y", {})
    assert status == 200 and phase["last_tasks"] == []
    assert [(p["task"], p["last_task_no"]) for p in phase["parents"]] == \
        [("x:1", None), ("x:2", None)]
    # x:2 fired by hand: its task waits for a worker, and the page says so
    done = run_cli("trigger", "x:2", "-w", str(wf), "--db", str(db))
    assert done.returncode == 0, done.stderr
    status, phase = api.answer("/api/phases/a.toml/y", {})
    waiting = phase["parents"][1]
    assert waiting["last_task_no"] is not None and waiting["last_started"] is None
    page = Dashboard(api).answer("/phases/a.toml/y", {})[1]
    assert page.count("never ran") == 1 and page.count("waiting for a worker") == 1
