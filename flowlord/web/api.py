"""The daemon's HTTP API (CONTRACT §8): JSON about files, phases, the graph, tasks and
alerts, /healthz, and POST refresh, trigger and backload behind a bearer token.

Each request runs on a thread of the server's with a connection of its own (a
read-only one for GET), so no request can hold up the scheduler's loop. Bad
parameters get a 4xx with a JSON error; large results are paginated with a hard cap.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import apsw
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flowlord import __version__, metrics
from flowlord.cli_tasks import backload_fires, record, trigger_fire
from flowlord.clock import parse_iso
from flowlord.config import Config, ConfigError
from flowlord.errors import BadRequest, UsageError
from flowlord.loader import Loader, LoaderError
from flowlord.metrics import DatabaseState
from flowlord.model import Fire
from flowlord.rules import BY_STEPS
from flowlord.store import Store, StoreError
from flowlord.store.taskrows import task_filter
from flowlord.tasks import BuildError
from flowlord.web import params
from flowlord.web.dashboard import CONTENT_SECURITY_POLICY, Asset, Dashboard, Page

MAX_BODY = 65536  # bytes of a POST body, at most
INTERNAL_ERROR = "internal error: the daemon's log has the details"
RECENT_TASKS = 10_000  # the newest tasks looked through for phases' last results
MAX_GRAPH = 10_000  # phases in an answer of /api/graph for every file
STARTED = time.time()


class Metrics(bytes):
    """An answer in Prometheus's text format, not JSON."""


def parse_listen(listen: str, token: str) -> tuple[str, int]:
    """`host:port` → (host, port); a non-loopback host needs a token (ConfigError)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"http.listen must be host:port, such as 127.0.0.1:8080: {listen}")
    if not (host == "localhost" or _is_loopback(host)) and not token:
        raise ConfigError(f"http.listen {listen} is not a loopback address: set http.token "
                          "(or http.token_file) first")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Api:
    """Answers for each path; `healthy()` says whether the main loop makes progress.
    The POST endpoints write as `flowlord refresh`, `trigger` and `backload` do, through
    connections of their own; the daemon follows their changes like any other writer."""

    def __init__(self, config: Config, healthy: Callable[[], bool],
                 role: Callable[[], str], token: str = "",
                 last_rescan: Callable[[], str | None] = lambda: None) -> None:
        self.config = config
        self.db = config.db
        self.healthy = healthy
        self.role = role
        self.token = token
        self.last_rescan = last_rescan

    def post(self, path: str, authorization: str, body: bytes) -> tuple[HTTPStatus, Any]:
        if not self.token:
            raise BadRequest(HTTPStatus.FORBIDDEN, "POST is disabled: no http.token is set")
        given = authorization.removeprefix("Bearer ").strip()
        if not authorization.startswith("Bearer ") or not hmac.compare_digest(
                given.encode(), self.token.encode()):
            raise BadRequest(HTTPStatus.UNAUTHORIZED, "Authorization: Bearer <token> needed")
        routes = {"/api/refresh": self.refresh, "/api/trigger": self.trigger,
                  "/api/backload": self.backload}
        if path not in routes:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path: {path}")
        try:
            fields = json.loads(body or b"{}")
        except ValueError as e:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        try:
            return routes[path](fields)
        except UsageError as e:  # no such phase, a phase that cannot run
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(e)) from None
        except (apsw.BusyError, LoaderError, StoreError) as e:
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None

    def refresh(self, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        loader = Loader(self.config.workflows, Store(self.db),
                        allow_world_writable=self.config.allow_world_writable)
        try:
            return HTTPStatus.OK, {"changes": loader.refresh()}
        finally:
            loader.close()

    def trigger(self, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        phase, fire = trigger_fire(self.config, _text(fields, "task"),
                                   _time(fields, "time", None), _text(fields, "workflow", None))
        if fire.error:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, fire.error)
        return _created(record(self.config, [fire]))

    def backload(self, fields: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        by = _text(fields, "by", None)
        if by is not None and by not in BY_STEPS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "by must be hour, day, week or month")
        start, end = _time(fields, "from"), _time(fields, "to")
        assert start is not None and end is not None
        try:
            _, fires = backload_fires(self.config, _text(fields, "task"), start, end, by,
                                      _text(fields, "workflow", None))
        except BuildError as e:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from None
        return _created(record(self.config, fires))

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, Any]:
        if path == "/metrics":
            return HTTPStatus.OK, Metrics(self.text_metrics())
        if path == "/healthz":
            ok = self.healthy()
            return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                    {"status": "ok" if ok else "stuck", "role": self.role()})
        routes: dict[str, Callable[[Store, dict[str, list[str]]], Any]] = {
            "/api/status": self.status, "/api/files": self.files, "/api/phases": self.phases,
            "/api/graph": self.graph, "/api/tasks": self.tasks, "/api/alerts": self.alerts}
        store = Store(self.db, readonly=True)
        try:
            if path in routes:
                return HTTPStatus.OK, routes[path](store, query)
            if path.startswith("/api/phases/") and path.count("/") >= 4:
                file, _, task = path[len("/api/phases/"):].rpartition("/")
                return HTTPStatus.OK, self.phase(store, unquote(file), unquote(task))
            if path.startswith("/api/tasks/") and len(path) > len("/api/tasks/"):
                return HTTPStatus.OK, self.lineage(store, unquote(path[len("/api/tasks/"):]))
        finally:
            store.close()
        raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path: {path}")

    def text_metrics(self) -> bytes:
        """The process's counters, and the database's state read now."""
        state = CollectorRegistry()
        state.register(DatabaseState(lambda: Store(self.db, readonly=True)))
        return generate_latest(metrics.REGISTRY) + generate_latest(state)

    # --- endpoints -------------------------------------------------------------------

    def status(self, store: Store, query: dict[str, list[str]]) -> dict[str, Any]:
        files, refused, last_load = store.file_counts()
        return {"version": __version__, "uptime_seconds": round(time.time() - STARTED),
                "role": self.role(), "files": files, "refused_files": refused,
                "phases": store.severity_counts(), "last_rescan": self.last_rescan(),
                "last_load": last_load}

    def files(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        # a page of files, each counted through the primary key of its phases
        rows = store.conn.execute(
            "SELECT f.file_path, f.status, f.file_hash, f.loaded_at, "
            "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path), "
            "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path "
            " AND p.severity = 'error'), "
            "(SELECT count(*) FROM workflow_phases AS p WHERE p.file_path = f.file_path "
            " AND p.severity = 'warning') "
            "FROM workflow_files AS f ORDER BY f.file_path LIMIT ? OFFSET ?",
            (params.limit(query), params.offset(query)))
        return [{"file": f[0], "status": f[1], "file_hash": f[2], "loaded_at": f[3],
                 "phases": f[4], "errors": f[5], "warnings": f[6]} for f in rows]

    def phases(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        severity = params.one(query, "severity")
        if severity is not None and severity not in ("ok", "warning", "error"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "severity must be ok, warning or error")
        where, args = [], []
        for column, value in (("severity", severity), ("file_path", params.one(query, "file"))):
            if value is not None:
                where.append(f"p.{column} = ?")
                args.append(value)
        if severity in ("warning", "error"):
            where.append("p.severity <> 'ok'")  # so the partial index of the broken serves
        sql = (f"SELECT {_PHASE_COLUMNS} FROM workflow_phases AS p "
               + ("WHERE " + " AND ".join(where) + " " if where else "")
               + "ORDER BY p.file_path, p.position LIMIT ? OFFSET ?")
        rows = store.conn.execute(sql, (*args, params.limit(query), params.offset(query)))
        phases = [_phase(r) for r in rows]
        results = _last_results(store, phases)
        for p in phases:
            p["last_result"] = results.get((p["file"], p["task"]))
        return phases

    def phase(self, store: Store, file: str, task: str) -> dict[str, Any]:
        rows = list(store.conn.execute(f"SELECT {_PHASE_COLUMNS} FROM workflow_phases AS p "
                                       "WHERE p.file_path = ? AND p.task = ?", (file, task)))
        if not rows:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no phase {task} in {file}")
        found = _phase(rows[0])
        found["last_tasks"] = _newest_tasks(store, file, task, 10)
        found["parents"] = []
        for parent, severity, status in store.conn.execute(  # `dependsOn = topic`: each job
                "SELECT e.parent, p.severity, p.status FROM phase_edges AS e "
                "JOIN workflow_phases AS p ON p.file_path = e.file_path AND p.task = e.parent "
                "WHERE e.file_path = ? AND e.child = ? ORDER BY p.position", (file, task)):
            last = _newest_tasks(store, file, parent, 1)
            found["parents"].append({
                "task": parent, "severity": severity, "status": status,
                "last_task_no": last[0]["task_no"] if last else None,
                "last_started": last[0]["started"] if last else None,
                "last_result": last[0]["result"] if last else None,
                "last_ended": last[0]["ended"] if last else None})
        return found

    def graph(self, store: Store, query: dict[str, list[str]]) -> dict[str, Any]:
        file = params.one(query, "file")
        if file is None and (total := sum(store.severity_counts().values())) > MAX_GRAPH:
            raise BadRequest(HTTPStatus.BAD_REQUEST,
                             f"{total} phases are too many for one answer (at most "
                             f"{MAX_GRAPH}): ask for one file with ?file=")
        return {"nodes": [{"file": p.file_path, "task": p.task, "severity": p.severity}
                          for p in store.phases(file_path=file)],
                "edges": [{"from": a, "to": b, "file": f}
                          for f, a, b in store.edges(file_path=file)]}

    def tasks(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        result = params.one(query, "result")
        if result not in (None, "complete", "error", "alert", "warn", "none"):
            raise BadRequest(HTTPStatus.BAD_REQUEST,
                             "result must be complete, error, alert, warn or none")
        source, args = task_filter(type=params.one(query, "type"), job=params.one(query, "job"),
                                   result=result, before=params.integer(query, "before", None))
        return [_task(r) for r in store.conn.execute(
            f"SELECT {_TASK_COLUMNS} {source} ORDER BY task_no DESC LIMIT ?",
            (*args, params.limit(query)))]

    def lineage(self, store: Store, task_id: str) -> list[dict[str, Any]]:
        rows = [_task(r) for r in store.conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ? ORDER BY task_no LIMIT ?",
            (task_id, params.MAX_LIMIT))]
        if not rows:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task with id {task_id}")
        return rows

    def alerts(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        before = params.integer(query, "before", None)
        return [{"alert_no": r[0], "task_no": r[1], "kind": r[2], "type": r[3], "job": r[4],
                 "message": r[5], "created": r[6], "posted_at": r[7], "task_id": r[8]}
                for r in store.conn.execute(
                    "SELECT a.alert_no, a.task_no, a.kind, a.type, a.job, a.message, a.created, "
                    "a.posted_at, t.id FROM alerts AS a JOIN tasks AS t USING (task_no) "
                    "WHERE a.alert_no < ? ORDER BY a.alert_no DESC LIMIT ?",
                    (before if before is not None else 2**62, params.limit(query)))]


_PHASE_COLUMNS = ("p.file_path, p.task, p.depends_on, p.rule, p.template, p.retry, "
                  "p.severity, p.status, p.next_fire, (SELECT max(f.scheduled_for) FROM "
                  "fires AS f WHERE f.file_path = p.file_path AND f.phase = p.task)")
_TASK_COLUMNS = ("task_no, id, type, job, info, meta, created, started, ended, result, msg, "
                 "file_path, phase, attempt, scheduled_for, parent_no, due_at")


def _newest_tasks(store: Store, file: str, phase: str, limit: int) -> list[dict[str, Any]]:
    """A phase's newest tasks, through the index of its topic's tasks (tasks_by_type)."""
    return [_task(r) for r in store.conn.execute(
        f"SELECT {_TASK_COLUMNS} FROM tasks WHERE type = ? AND file_path = ? AND phase = ? "
        "ORDER BY task_no DESC LIMIT ?", (phase.partition(":")[0], file, phase, limit))]


def _last_results(store: Store, phases: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(file, task) → the result of the phase's newest task (None while it runs): looked
    for among the newest RECENT_TASKS tasks, then among the tasks of the phase's last
    fire (through the slot index). No index leads from a phase to its tasks (every task
    inserted would pay for one), so a child phase quiet for longer has none."""
    found: dict[tuple[str, str], Any] = {
        (f, p): result for f, p, result, _ in store.conn.execute(
            "SELECT file_path, phase, result, max(task_no) FROM tasks WHERE task_no > "
            "(SELECT max(task_no) FROM tasks) - ? AND file_path IS NOT NULL "
            "GROUP BY file_path, phase", (RECENT_TASKS,))}
    for p in phases:
        key = (p["file"], p["task"])
        if key not in found and p["last_fire"] is not None:
            for (result,) in store.conn.execute(
                    "SELECT result FROM tasks WHERE file_path = ? AND phase = ? AND "
                    "scheduled_for = ? ORDER BY task_no DESC LIMIT 1", (*key, p["last_fire"])):
                found[key] = result
    return found


def _phase(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("file", "task", "depends_on", "rule", "template", "retry", "severity", "status",
            "next_fire", "last_fire")
    return dict(zip(keys, r, strict=True))


def _task(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("task_no", "id", "type", "job", "info", "meta", "created", "started", "ended",
            "result", "msg", "file", "phase", "attempt", "scheduled_for", "parent_no", "due_at")
    return dict(zip(keys, r, strict=True))


def _created(new: list[Fire]) -> tuple[HTTPStatus, Any]:
    """201 with the created tasks; 200 with none when every slot was fired before."""
    tasks = [json.loads(t.to_json()) for fire in new for t in fire.tasks]
    return (HTTPStatus.CREATED if new else HTTPStatus.OK), {
        "fires": len(new), "tasks": tasks}


_REQUIRED = object()


def _text(fields: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    value = fields.get(key, default)
    if value is _REQUIRED:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is required")
    if value is not default and not isinstance(value, str):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must be a string")
    return value


def _time(fields: dict[str, Any], key: str, default: Any = _REQUIRED) -> datetime | None:
    text = _text(fields, key, default)
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is not an ISO 8601 time") from None


class _Handler(BaseHTTPRequestHandler):
    api: Api
    dashboard: Dashboard
    loopback_only: bool
    log: Any
    server_version = f"flowlord/{__version__}"
    timeout = 30  # seconds a connection may idle before its request is complete
    head = False  # answering HEAD: the headers of the GET answer, no body

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self.head = True
        self.do_GET()

    def refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED,
                   {"error": f"method {self.command} is not allowed: GET, HEAD or POST"},
                   {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = refuse_method

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """A request the stdlib refused to parse (a bad request line, a line too long):
        JSON like every other error, not its HTML page."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(status, {"error": message or status.phrase})

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if not self._host_allowed():
            return
        parts = urlsplit(self.path)
        page = not parts.path.startswith("/api/") and parts.path not in ("/metrics", "/healthz")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=50)
            status, body = (self.dashboard if page else self.api).answer(parts.path, query)
        except BadRequest as e:
            status, body = e.status, str(e)
        except ValueError as e:  # a query string parse_qs refuses
            status, body = HTTPStatus.BAD_REQUEST, f"bad query: {e}"
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=self.path[:200])
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
        if isinstance(body, str) and not isinstance(body, Page):  # an error message
            body = self.dashboard.error(status, body) if page else {"error": body}
        self._send(status, body)

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_allowed():
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"a body of at most {MAX_BODY} bytes")
            body = self.rfile.read(length)
            status, answer = self.api.post(urlsplit(self.path).path,
                                            self.headers.get("Authorization", ""), body)
        except BadRequest as e:
            status, answer = e.status, {"error": str(e)}
        except ValueError:  # a Content-Length that is not a number
            status, answer = HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"}
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=self.path[:200])
            status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR}
        self._send(status, answer)

    def _host_allowed(self) -> bool:
        """On a loopback address, a request must name a loopback host: a web page whose
        DNS name was pointed at 127.0.0.1 (DNS rebinding) cannot read the API."""
        hosts = self.headers.get_all("Host") or []
        if not self.loopback_only or not hosts:
            return True
        if len(hosts) > 1:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "more than one Host header"})
            return False
        try:
            name = (urlsplit(f"//{hosts[0]}").hostname or "").rstrip(".")
        except ValueError:  # such as an unclosed [
            self._send(HTTPStatus.BAD_REQUEST, {"error": "a malformed Host header"})
            return False
        if name == "localhost" or _is_loopback(name):
            return True
        self._send(HTTPStatus.MISDIRECTED_REQUEST, {
            "error": f"this server answers loopback names only, not {hosts[0][:100]}"})
        return False

    def _send(self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None
              ) -> None:
        headers = dict(headers or {})
        if isinstance(body, Metrics):
            data, kind = bytes(body), CONTENT_TYPE_LATEST
        elif isinstance(body, Asset):
            data, kind = bytes(body), body.content_type
            headers["Cache-Control"] = "max-age=3600"
        elif isinstance(body, Page):
            data, kind = body.encode(), "text/html; charset=utf-8"
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        else:
            data = json.dumps(body, ensure_ascii=False).encode()
            kind = "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not self.head:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # not every request in the journal


class HttpServer:
    def __init__(self, host: str, port: int, api: Api, log: Any) -> None:
        handler = type("Handler", (_Handler,), {
            "api": api, "dashboard": Dashboard(api), "log": log,
            "loopback_only": host == "localhost" or _is_loopback(host)})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
