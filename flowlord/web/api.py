"""The daemon's HTTP API (README.md, HTTP API and dashboard): JSON about files, phases,
the graph, tasks and alerts, /healthz, and the POST actions (flowlord/web/actions.py).

A GET reads through the read model (`flowlord.store.reads`) on a read-only connection
of its own; the transport is `flowlord.web.server`. Bad parameters get a 4xx with a
JSON error; large results are paginated with a hard cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, generate_latest

from flowlord import __version__, metrics, operate, waiting
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.config import Config
from flowlord.errors import BadRequest
from flowlord.metrics import DatabaseState
from flowlord.store import Store, history, reads
from flowlord.store.reads import STATS_DAYS
from flowlord.tasklog import read_log
from flowlord.web import agenda_chart, params
from flowlord.web.actions import Actions, Loop
from flowlord.web.answers import Metrics, PlainText

MAX_GRAPH = 10_000  # phases in an answer of /api/graph for every file
STARTED = time.time()


class Api:
    """Answers for each path; `healthy()` says whether the main loop makes progress.
    POSTs go to the actions (flowlord/web/actions.py), which ask `loop`, the daemon's
    loop, to write."""

    def __init__(self, config: Config, healthy: Callable[[], bool],
                 role: Callable[[], str], tokens: dict[str, str] | None = None,
                 last_rescan: Callable[[], str | None] = lambda: None,
                 loop: Loop | None = None) -> None:
        self.config = config
        self.actions = Actions(config, tokens or {}, loop)
        self.db = config.db
        self.healthy = healthy
        self.role = role
        self.last_rescan = last_rescan

    def post(self, path: str, authorization: str, body: bytes) -> tuple[HTTPStatus, Any]:
        return self.actions.post(path, authorization, body)

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, Any]:
        if path == "/metrics":
            return HTTPStatus.OK, Metrics(self.text_metrics())
        if path == "/healthz":
            ok = self.healthy()
            return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                    {"status": "ok" if ok else "stuck", "role": self.role()})
        routes: dict[str, Callable[[Store, dict[str, list[str]]], Any]] = {
            "/api/status": self.status, "/api/files": self.files, "/api/phases": self.phases,
            "/api/graph": self.graph, "/api/tasks": self.tasks, "/api/alerts": self.alerts,
            "/api/actions": self.actions_done, "/api/pauses": self.pauses,
            "/api/stats": self.stats, "/api/arrivals": self.arrivals,
            "/api/agenda": self.agenda}
        store = Store(self.db, readonly=True)
        try:
            if path in routes:
                return HTTPStatus.OK, routes[path](store, query)
            if path.startswith("/api/phases/") and path.count("/") >= 4:
                file, _, task = path[len("/api/phases/"):].rpartition("/")
                return HTTPStatus.OK, self.phase(store, unquote(file), unquote(task))
            if path.startswith("/api/tasks/") and path.endswith("/log"):
                return HTTPStatus.OK, self.log(store, path[len("/api/tasks/"):-len("/log")],
                                               query)
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
        rows = reads.tasks(store, **params.task_filters(query, self.config.zone()),
                           before=params.integer(query, "before", None),
                           limit=params.limit(query))
        waiting.explain(store, rows, datetime.now(UTC), waiting.local_concurrency(self.config))
        return rows

    def lineage(self, store: Store, task_id: str) -> list[dict[str, Any]]:
        rows = reads.lineage(store, task_id, params.MAX_LIMIT)
        if not rows:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task with id {task_id}")
        return rows

    def log(self, store: Store, task_no: str, query: dict[str, list[str]]) -> PlainText:
        """A task's log as text (?tail=N: its last N lines)."""
        if not task_no.isdigit() or store.task_row(int(task_no)) is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task {task_no}")
        tail = params.integer(query, "tail", None)
        data = read_log(self.config.task_logs(), int(task_no), tail)
        if data is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"task {task_no} has no log")
        return PlainText(data)

    def stats(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Per phase (or per topic with ?by=topic), from history: ?type=, ?file= and
        ?since= (default: the last 30 days); per phase, a page of `limit` stored phases
        (100 unless asked) from `offset` (phases without runs give no row)."""
        since_text = params.time(query, "since", self.config.zone()) or rfc3339_ms(
            datetime.now(UTC) - timedelta(days=STATS_DAYS))
        by = params.one(query, "by") or "phase"
        if by not in ("phase", "topic"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "by is phase or topic")
        if by == "topic" and params.one(query, "file") is not None:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "file is for by=phase: a topic's "
                                                     "tasks come from any file")
        return reads.stats(store, type=params.one(query, "type"), since=since_text, by=by,
                           file=params.one(query, "file"), limit=params.limit(query),
                           offset=params.offset(query))

    def pauses(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The pauses in force now."""
        return operate.pauses_in_force(store, datetime.now(UTC))

    def actions_done(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        return reads.actions(store, before=params.integer(query, "before", None),
                             limit=params.limit(query))

    def arrivals(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Files that arrived for `files=` phases, newest first, each with its tasks."""
        return history.arrivals(store, before=params.integer(query, "before", None),
                                limit=params.limit(query))

    def agenda(self, store: Store, query: dict[str, list[str]]) -> dict[str, Any]:
        """What will run when (flowlord/agenda.py): a page of the window's fires, with
        the backlog warnings and the counts per topic."""
        got = agenda_chart.asked(store, self.config, query)
        limit, offset = params.limit(query), params.offset(query)
        return {**got.agenda.as_json(got.fires[offset:offset + limit]),
                "start": rfc3339(got.start),
                "end": rfc3339(got.start + timedelta(hours=got.hours)),
                "total": len(got.fires), "limit": limit, "offset": offset}

    def alerts(self, store: Store, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return reads.alerts(store, before=params.integer(query, "before", None),
                            limit=params.limit(query))
