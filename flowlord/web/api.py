"""The daemon's HTTP API (CONTRACT §8): JSON about files, phases, the graph, tasks and
alerts, /healthz, and POST refresh, trigger and backload behind a bearer token.

A GET reads through the read model (`flowlord.store.reads`) on a read-only connection
of its own; the transport is `flowlord.web.server`. Bad parameters get a 4xx with a
JSON error; large results are paginated with a hard cap.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import apsw
from prometheus_client import CollectorRegistry, generate_latest

from flowlord import __version__, metrics
from flowlord.cli_tasks import backload_fires, record, trigger_fire
from flowlord.clock import parse_iso
from flowlord.config import Config
from flowlord.errors import BadRequest, UsageError
from flowlord.loader import Loader, LoaderError
from flowlord.metrics import DatabaseState
from flowlord.model import Fire
from flowlord.rules import BY_STEPS
from flowlord.store import Store, StoreError, reads
from flowlord.tasks import BuildError
from flowlord.web import params
from flowlord.web.answers import Metrics
from flowlord.web.server import HttpServer as HttpServer  # the daemon imports it from here
from flowlord.web.server import parse_listen as parse_listen  # likewise

MAX_GRAPH = 10_000  # phases in an answer of /api/graph for every file
STARTED = time.time()


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

    def about(self) -> dict[str, Any]:
        """The process: version, uptime, role."""
        return {"version": __version__, "uptime_seconds": round(time.time() - STARTED),
                "role": self.role()}

    def status(self, store: Store, query: dict[str, list[str]]) -> dict[str, Any]:
        state = reads.status(store)
        return {**self.about(), "files": state["files"],
                "refused_files": state["refused_files"], "phases": state["phases"],
                "last_rescan": self.last_rescan(), "last_load": state["last_load"]}

    def files(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return reads.files(store, params.limit(query), params.offset(query))

    def phases(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return reads.phases(store, severity=params.severity(query),
                            file=params.one(query, "file"), limit=params.limit(query),
                            offset=params.offset(query))

    def phase(self, store: Store, file: str, task: str) -> dict[str, Any]:
        found = reads.phase(store, file, task)
        if found is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no phase {task} in {file}")
        return found

    def graph(self, store: Store, query: dict[str, list[str]]) -> dict[str, Any]:
        file = params.one(query, "file")
        if file is None and (total := sum(store.severity_counts().values())) > MAX_GRAPH:
            raise BadRequest(HTTPStatus.BAD_REQUEST,
                             f"{total} phases are too many for one answer (at most "
                             f"{MAX_GRAPH}): ask for one file with ?file=")
        return reads.graph(store, file)

    def tasks(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return reads.tasks(store, result=params.result(query), type=params.one(query, "type"),
                           job=params.one(query, "job"),
                           before=params.integer(query, "before", None),
                           limit=params.limit(query))

    def lineage(self, store: Store, task_id: str) -> list[dict[str, Any]]:
        rows = reads.lineage(store, task_id, params.MAX_LIMIT)
        if not rows:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task with id {task_id}")
        return rows

    def alerts(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return reads.alerts(store, before=params.integer(query, "before", None),
                            limit=params.limit(query))


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
