"""The dashboard (README.md, HTTP API and dashboard): server-rendered HTML pages over
the read model (`flowlord.store.reads`, as the API reads it).

Jinja2 with autoescape renders every page, so workflow content (task names, rules,
templates, messages) is always text, never markup. No JavaScript and no asset from
elsewhere: links and GET forms do all the navigation, the graph is SVG drawn here,
and the one stylesheet ships in the package. The Content-Security-Policy header
forbids scripts outright, as a second wall behind the escaping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from importlib import resources
from itertools import groupby
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from flowlord import waiting
from flowlord.clock import parse_iso, rfc3339
from flowlord.config import Config
from flowlord.durations import format_seconds
from flowlord.errors import BadRequest
from flowlord.operations import in_zone
from flowlord.store import Store, history, reads
from flowlord.tasklog import read_log_end
from flowlord.web import agenda_chart, charts, params, timeline_chart
from flowlord.web.answers import CONTENT_SECURITY_POLICY as CONTENT_SECURITY_POLICY
from flowlord.web.answers import Asset, Page
from flowlord.web.drawing import lay_out
from flowlord.web.sessions import Session
from flowlord.web.timeline import Timelines

RECENT_RUNS = 100  # a phase's newest runs drawn on its page,
RUNS_OVER = timedelta(days=30)  # among those created in this time
HOURLY_HOURS = 7 * 24  # its tasks per hour over the last days
TIMELINE_HOURS = 6  # the timeline's window unless ?hours=
TIMELINE_MAX_HOURS = 7 * 24
FILE_CHOICES = 1000  # files offered in a page's filter; past that a field (macros.html)
LOG_SHOWN_BYTES = 64 * 1024  # the end of a task's log on its page; the rest by a link
LOG_REFRESH_SECONDS = 5  # a running task's page reloads itself this often
GRAPH_NODES_AT_ONCE = 400  # more phases than this: the graph page asks for one file
GRAPH_NODES_OF_A_FILE = 2000  # more than this in one file: not drawn (a page of megabytes)
STYLESHEET = resources.files("flowlord.web").joinpath("pages", "style.css").read_bytes()


class Daemon(Protocol):
    """What the pages need of the daemon (`flowlord.web.api.Api` has it): the database,
    the config, and the process's facts."""

    @property
    def db(self) -> str: ...

    @property
    def config(self) -> Config: ...

    @property
    def role(self) -> Callable[[], str]: ...

    def about(self) -> dict[str, Any]: ...


def since(text: str | None, now: datetime | None = None) -> str:
    """'3 min ago' or 'in 12 s' for an RFC 3339 UTC time; '' for none."""
    if not text:
        return ""
    try:
        then = parse_iso(text)
    except ValueError:
        return text
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    size = abs(seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if size >= length:
            amount = f"{size // length:.0f} {unit}"
            break
    else:
        amount = f"{size:.0f} s"
    return f"{amount} ago" if seconds >= 0 else f"in {amount}"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("flowlord.web", "pages"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["since"] = since
    env.filters["seconds"] = format_seconds
    env.filters["file_url"] = lambda file: quote(file, safe="/")
    env.filters["part_url"] = lambda part: quote(str(part), safe="")
    env.globals["plural"] = lambda n, word: word if n == 1 else word + "s"
    env.globals["file_choices"] = FILE_CHOICES
    env.globals["query"] = lambda **kw: urlencode({k: v for k, v in kw.items()
                                                   if v not in (None, "")})
    return env


class Dashboard:
    """Renders the pages from the read model, each request with a read-only connection
    of its own; query parameters are checked by `flowlord.web.params`, as the API's."""

    def __init__(self, api: Daemon) -> None:
        self.api = api
        self.env = _environment()
        self._local = threading.local()  # the session of the page this thread renders
        self.timelines = Timelines()  # the settled parts of timelines, kept
        self.agenda_charts = agenda_chart.Drawings()  # the agenda's, kept per view

    def answer(self, path: str, query: dict[str, list[str]], session: Session | None = None
               ) -> tuple[HTTPStatus, Any]:
        """The page at `path`, or a 404 page; a bad parameter raises BadRequest (the
        caller renders it with `error`). With a signed-in `session` the pages carry
        the forms of the actions (`flowlord.web.forms` answers them)."""
        if path == "/static/style.css":
            return HTTPStatus.OK, Asset(STYLESHEET)
        self._local.session = session
        try:
            return self._page(path, query)
        finally:
            self._local.session = None

    def _page(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, Any]:
        pages: dict[str, Callable[[Store, dict[str, list[str]]], Page]] = {
            "/": self.overview, "/files": self.files, "/phases": self.phases,
            "/graph": self.graph, "/tasks": self.tasks, "/alerts": self.alerts,
            "/actions": self.actions, "/timeline": self.timeline,
            "/arrivals": self.arrivals, "/agenda": self.agenda}
        store = Store(self.api.db, readonly=True)
        try:
            if path in pages:
                return HTTPStatus.OK, pages[path](store, query)
            if path.startswith("/phases/") and path.count("/") >= 3:
                file, _, task = path[len("/phases/"):].rpartition("/")
                return HTTPStatus.OK, self.phase(store, file, task)
            if path.startswith("/tasks/") and len(path) > len("/tasks/"):
                task_id, _, task_no = path[len("/tasks/"):].rpartition("/")
                if (task_id and task_no.isascii() and task_no.isdigit()  # /tasks/<id>/<no>
                        and len(task_no) <= 18):
                    return HTTPStatus.OK, self.attempt(store, task_id, int(task_no))
                return HTTPStatus.OK, self.lineage(store, path[len("/tasks/"):])
        finally:
            store.close()
        return HTTPStatus.NOT_FOUND, self.error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def error(self, status: HTTPStatus, message: str, session: Session | None = None) -> Page:
        return self.render("error.html", "error", session, status=int(status),
                           reason=status.phrase, message=message)

    def render(self, template: str, section: str, session: Session | None = None,
               **values: Any) -> Page:
        """A page of the dashboard: `template` with `values`, the section lit in the
        navigation, and the session (given, or that of the page `answer` renders; None:
        signed out, so no action forms)."""
        return Page(self.env.get_template(template).render(
            section=section, role=self.api.role(), webhook=bool(self.api.config.webhook),
            session=session or getattr(self._local, "session", None), **values))

    # --- pages -------------------------------------------------------------------------

    def overview(self, store: Store, query: dict[str, list[str]]) -> Page:
        return self.render(
            "overview.html", "overview",
            status={**self.api.about(), **reads.status(store)},
            refused=reads.refused_files(store, 10),
            broken=reads.broken_phases(store, 10),
            next_fires=reads.next_fires(store, 10),
            paused=_paused_among(store, reads.next_fires(store, 10)
                                 + [(f, t, "") for f, t, *_ in reads.broken_phases(store, 10)]),
            queue=(queue := store.queue_depths()),
            paused_topics=_paused_topics(store, [topic for topic, _, _ in queue]),
            failures=reads.recent_failures(store, 10),
            alerts=reads.alerts(store, limit=10))

    def files(self, store: Store, query: dict[str, list[str]]) -> Page:
        limit, offset = params.limit(query), params.offset(query)
        return self.render("files.html", "files", files=reads.files(store, limit, offset),
                            limit=limit, offset=offset)

    def phases(self, store: Store, query: dict[str, list[str]]) -> Page:
        severity, file = params.severity(query), params.one(query, "file")
        limit, offset = params.limit(query), params.offset(query)
        rows = reads.phases(store, severity=severity, file=file, limit=limit, offset=offset)
        refused = self._file_status(store, file) if file is not None else ""
        refused_files = reads.refused_files(store, 10) if file is None else []
        return self.render("phases.html", "phases", phases=rows, refused=refused,
                            refused_files=refused_files,
                            severity=severity, file=file, limit=limit, offset=offset)

    def _file_status(self, store: Store, file: str) -> str:
        """The workflow file's status ('' when it loaded); 404 when there is no such file."""
        status = reads.file_status(store, file)
        if status is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no workflow file {file}")
        return status

    def phase(self, store: Store, file: str, task: str) -> Page:
        file, task = unquote(file), unquote(task)
        found = reads.phase(store, file, task)
        if found is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no phase {task} in {file}")
        now = datetime.now(UTC).replace(microsecond=0)
        runs = history.recent_runs(store, file, task, rfc3339(now - RUNS_OVER), rfc3339(now),
                                   RECENT_RUNS)
        first_hour = now.replace(minute=0, second=0) - timedelta(hours=HOURLY_HOURS - 1)
        hourly = history.hourly_counts(store, file, task, rfc3339(first_hour))
        return self.render("phase.html", "phases", phase=found,
                           refused=reads.file_status(store, file) or "",
                           runs=charts.runs_chart(runs, task),
                           hourly=charts.hourly_chart(hourly, first_hour, HOURLY_HOURS, file),
                           runs_days=RUNS_OVER.days, hourly_days=HOURLY_HOURS // 24,
                           timeline=charts.timeline_href(now, TIMELINE_HOURS, file))

    def graph(self, store: Store, query: dict[str, list[str]]) -> Page:
        file = params.one(query, "file")
        if file is not None:
            self._file_status(store, file)  # 404 for no such file
        files = reads.file_paths(store)
        if file is None:
            total, limit = sum(store.severity_counts().values()), GRAPH_NODES_AT_ONCE
        else:
            total, limit = reads.phase_count(store, file), GRAPH_NODES_OF_A_FILE
        if total > limit:
            return self.render("graph.html", "graph", files=files, drawings=[], file=file,
                                too_many=total, paused={})
        phases = store.phases(file_path=file)
        drawings = [(path, lay_out([(p.task, p.depends_on, p.severity) for p in group]))
                    for path, group in groupby(phases, key=lambda p: p.file_path)]
        paused = _paused_among(store, [(p.file_path, p.task, "") for p in phases])
        return self.render("graph.html", "graph", files=files, drawings=drawings, file=file,
                            too_many=0, paused=paused)

    def tasks(self, store: Store, query: dict[str, list[str]]) -> Page:
        filters = params.task_filters(query, self.api.config.zone())
        before, limit = params.integer(query, "before", None), params.limit(query)
        rows = reads.tasks(store, **filters, before=before, limit=limit)
        waiting.explain(store, rows, datetime.now(UTC),
                        waiting.local_concurrency(self.api.config))
        shown = {key: params.one(query, key) or "" for key in filters}  # as typed
        return self.render("tasks.html", "tasks", tasks=rows, limit=limit, filters=shown)

    def lineage(self, store: Store, task_id: str) -> Page:
        task_id = unquote(task_id)
        rows = reads.lineage(store, task_id, params.MAX_LIMIT)
        if not rows:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task with id {task_id}")
        first = rows[0]
        fire = None
        if first["file"] is not None and first["scheduled_for"] is not None:
            fire = reads.fire(store, first["file"], first["phase"], first["scheduled_for"])
        return self.render("lineage.html", "tasks", id=first["id"], root=first, fire=fire,
                            tree=tree(rows), total=reads.lineage_size(store, first["id"]),
                            shown=len(rows))

    def attempt(self, store: Store, task_id: str, task_no: int) -> Page:
        """One task (one attempt): what it is, its times, the actions on it, and the end
        of its log; a page of a running task reloads itself (no JavaScript)."""
        found = reads.task(store, task_no)
        if found is None or found["id"] != unquote(task_id):
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no task {task_no} with id {task_id}")
        waiting.explain(store, [found], datetime.now(UTC),
                        waiting.local_concurrency(self.api.config))
        end = read_log_end(self.api.config.task_logs(), task_no, LOG_SHOWN_BYTES)
        log, size = end if end is not None else (None, 0)
        return self.render("attempt.html", "tasks", t=found, refresh=LOG_REFRESH_SECONDS,
                           log=None if log is None else as_text(log), shown=len(log or b""),
                           size=size)

    def alerts(self, store: Store, query: dict[str, list[str]]) -> Page:
        before, limit = params.integer(query, "before", None), params.limit(query)
        return self.render("alerts.html", "alerts", limit=limit,
                            alerts=reads.alerts(store, before=before, limit=limit))

    def actions(self, store: Store, query: dict[str, list[str]]) -> Page:
        before, limit = params.integer(query, "before", None), params.limit(query)
        return self.render("actions.html", "actions", limit=limit,
                            actions=reads.actions(store, before=before, limit=limit))

    def timeline(self, store: Store, query: dict[str, list[str]]) -> Page:
        """What ran when: ?hours= (1 to 168, default 6) up to ?end= (an ISO time, default
        now), every topic or, with ?file=, that file's phases."""
        hours = params.integer(query, "hours", TIMELINE_HOURS)
        assert hours is not None
        if not 1 <= hours <= TIMELINE_MAX_HOURS:
            raise BadRequest(HTTPStatus.BAD_REQUEST,
                             f"hours must be from 1 to {TIMELINE_MAX_HOURS}")
        file, text = params.one(query, "file"), params.one(query, "end")
        if file is not None:
            self._file_status(store, file)  # 404 for no such file
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            end = (in_zone(parse_iso(text), self.api.config.zone()) if text is not None
                   else now)
            start = end - timedelta(hours=hours)
        except (ValueError, OverflowError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "end is not an ISO 8601 time") from None
        found = self.timelines.window(store, start, end, now, file)
        drawn = timeline_chart.timeline(
            found.bars, found.fires, start=start, seconds=(end - start).total_seconds(),
            now=now, lanes=history.lanes_of_file(store, file) if file is not None else None,
            file=file, merged_px=found.grain * charts.timeline_width()
            / (end - start).total_seconds())
        return self.render("timeline.html", "timeline", chart=drawn, hours=hours, file=file,
                           start=rfc3339(start), end=rfc3339(end), end_text=text or "",
                           longest=history.LONGEST_RUN_HOURS,
                           files=reads.file_paths(store, FILE_CHOICES + 1),
                           earlier=charts.timeline_href(start, hours, file),
                           later=(charts.timeline_href(min(end + timedelta(hours=hours), now),
                                                       hours, file) if end < now else ""))

    def agenda(self, store: Store, query: dict[str, list[str]]) -> Page:
        """What will run when (flowlord/agenda.py): ?hours= (1 to 168, default 24),
        ?topic=, ?file=; drawn by flowlord/web/agenda_chart.py, its fires listed."""
        got = agenda_chart.asked(store, self.api.config, query)
        if got.file is not None:
            self._file_status(store, got.file)  # 404 for no such file
        limit, offset = params.limit(query), params.offset(query)
        rows = [got.agenda.fire_json(f) for f in got.fires[offset:offset + limit]]
        for row in rows:
            row["descendants"] = agenda_chart.descendants(row["children"])
        chart = self.agenda_charts.get(got)
        return self.render(
            "agenda.html", "agenda", chart=chart,
            rows=rows, total=len(got.fires), hours=got.hours, file=got.file, topic=got.topic,
            warnings=[w.as_json() for w in got.agenda.warnings
                      if got.topic is None or w.topic == got.topic],
            notes=got.agenda.notes, files=reads.file_paths(store, FILE_CHOICES + 1), limit=limit,
            offset=offset, start=rfc3339(got.start),
            end=rfc3339(got.start + timedelta(hours=got.hours)), stats_days=reads.STATS_DAYS)

    def arrivals(self, store: Store, query: dict[str, list[str]]) -> Page:
        before, limit = params.integer(query, "before", None), params.limit(query)
        return self.render("arrivals.html", "arrivals", limit=limit,
                           arrivals=history.arrivals(store, before=before, limit=limit))


def _paused_topics(store: Store, topics: list[str]) -> dict[str, str]:
    """topic → why, for the topics of this list whose tasks a pause keeps waiting."""
    pauses = reads.pauses_now(store)
    now = datetime.now(UTC)
    return {topic: found.why() for topic in topics
            if (found := pauses.of_topic(topic, now)) is not None}


def _paused_among(store: Store, phases: list[tuple[str, str, str]]
                  ) -> dict[tuple[str, str], str]:
    """(file, task) → why, for the phases of this list that a pause stops now."""
    pauses = reads.pauses_now(store)
    now = datetime.now(UTC)
    return {(file, task): found.why() for file, task, _ in phases
            if (found := pauses.of_phase(file, task, now)) is not None}


# control characters but tab and newline, shown as their pictures (U+2400…): an ANSI
# escape sequence reads as text, and cannot move the cursor of whoever copies it out
_CONTROLS = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}


def as_text(log: bytes) -> str:
    """A log's bytes as text for a page: undecodable bytes replaced, controls shown."""
    return log.decode("utf-8", errors="replace").translate(_CONTROLS)


def tree(tasks: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(depth, task) in the order of a depth-first walk from the roots: each task under
    the one it came from (`parent_no`); a parent outside the list makes a root. A loop,
    not recursion: a chain of retries and children can be thousands deep."""
    numbers = {t["task_no"] for t in tasks}
    children: dict[int | None, list[dict[str, Any]]] = {}
    for t in tasks:
        children.setdefault(t["parent_no"] if t["parent_no"] in numbers else None,
                            []).append(t)
    walk: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, t) for t in reversed(children.get(None, []))]
    while stack:
        depth, task = stack.pop()
        walk.append((depth, task))
        stack.extend((depth + 1, t) for t in reversed(children.get(task["task_no"], [])))
    return walk
