"""The dashboard: server-rendered HTML pages over the API's queries (CONTRACT §8, `GET /`).

Jinja2 with autoescape renders every page, so workflow content (task names, rules,
templates, messages) is always text, never markup. No JavaScript and no asset from
elsewhere: links and GET forms do all the navigation, the graph is SVG drawn here,
and the one stylesheet ships in the package. The Content-Security-Policy header
forbids scripts outright, as a second wall behind the escaping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import resources
from itertools import groupby
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from flowlord.clock import parse_iso
from flowlord.errors import BadRequest
from flowlord.store import Store
from flowlord.web import params
from flowlord.web.drawing import lay_out

if TYPE_CHECKING:
    from flowlord.web.api import Api

CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
GRAPH_NODES_AT_ONCE = 400  # more phases than this: the graph page asks for one file
GRAPH_NODES_OF_A_FILE = 2000  # more than this in one file: not drawn (a page of megabytes)
STYLESHEET = resources.files("flowlord.web").joinpath("pages", "style.css").read_bytes()


class Page(str):
    """An HTML answer, not JSON."""


class Asset(bytes):
    """A file of the package's, with its content type."""

    content_type = "text/css; charset=utf-8"


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
    env.filters["file_url"] = lambda file: quote(file, safe="/")
    env.filters["part_url"] = lambda part: quote(str(part), safe="")
    env.globals["plural"] = lambda n, word: word if n == 1 else word + "s"
    env.globals["query"] = lambda **kw: urlencode({k: v for k, v in kw.items()
                                                   if v not in (None, "")})
    return env


class Dashboard:
    """Renders the pages from the API's queries (which check the query parameters),
    each request with a read-only connection of its own."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.env = _environment()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, Any]:
        """The page at `path`, or a 404 page; a bad parameter raises BadRequest (the
        caller renders it with `error`)."""
        if path == "/static/style.css":
            return HTTPStatus.OK, Asset(STYLESHEET)
        pages: dict[str, Callable[[Store, dict[str, list[str]]], Page]] = {
            "/": self.overview, "/files": self.files, "/phases": self.phases,
            "/graph": self.graph, "/tasks": self.tasks, "/alerts": self.alerts}
        store = Store(self.api.db, readonly=True)
        try:
            if path in pages:
                return HTTPStatus.OK, pages[path](store, query)
            if path.startswith("/phases/") and path.count("/") >= 3:
                file, _, task = path[len("/phases/"):].rpartition("/")
                return HTTPStatus.OK, self.phase(store, file, task)
            if path.startswith("/tasks/") and len(path) > len("/tasks/"):
                return HTTPStatus.OK, self.lineage(store, path[len("/tasks/"):])
        finally:
            store.close()
        return HTTPStatus.NOT_FOUND, self.error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def error(self, status: HTTPStatus, message: str) -> Page:
        return self._render("error.html", "error", status=int(status), reason=status.phrase,
                            message=message)

    def _render(self, template: str, section: str, **values: Any) -> Page:
        return Page(self.env.get_template(template).render(
            section=section, role=self.api.role(), webhook=bool(self.api.config.webhook),
            **values))

    # --- pages -------------------------------------------------------------------------

    def overview(self, store: Store, query: dict[str, list[str]]) -> Page:
        return self._render(
            "overview.html", "overview",
            status=self.api.status(store, {}),
            refused=list(store.conn.execute(
                "SELECT file_path, status FROM workflow_files WHERE status <> '' "
                "ORDER BY file_path LIMIT 10")),
            broken=list(store.conn.execute(
                "SELECT file_path, task, severity, status FROM broken_phases LIMIT 10")),
            next_fires=list(store.conn.execute(
                "SELECT file_path, task, next_fire FROM workflow_phases "
                "WHERE next_fire IS NOT NULL ORDER BY next_fire LIMIT 10")),
            queue=store.queue_depths(),
            failures=self._recent_failures(store, 10),
            alerts=self.api.alerts(store, {"limit": ["10"]}))

    def _recent_failures(self, store: Store, limit: int) -> list[dict[str, Any]]:
        """The newest tasks that ended in error or alert: one indexed query per result
        (tasks_by_result), merged, so a million old failures cost nothing."""
        found = [t for result in ("error", "alert")
                 for t in self.api.tasks(store, {"result": [result],
                                                     "limit": [str(limit)]})]
        return sorted(found, key=lambda t: t["task_no"], reverse=True)[:limit]

    def files(self, store: Store, query: dict[str, list[str]]) -> Page:
        rows = self.api.files(store, query)  # checks limit and offset
        return self._render("files.html", "files", files=rows, limit=params.limit(query),
                            offset=params.offset(query))

    def phases(self, store: Store, query: dict[str, list[str]]) -> Page:
        rows = self.api.phases(store, query)  # checks every parameter
        file = params.one(query, "file")
        refused = self._file_status(store, file) if file is not None else ""
        return self._render("phases.html", "phases", phases=rows, refused=refused,
                            severity=params.one(query, "severity"), file=file,
                            limit=params.limit(query), offset=params.offset(query))

    def _file_status(self, store: Store, file: str) -> str:
        """The workflow file's status ('' when it loaded); 404 when there is no such file."""
        status = store.conn.execute("SELECT status FROM workflow_files WHERE file_path = ?",
                                    (file,)).fetchall()
        if not status:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no workflow file {file}")
        return str(status[0][0])

    def phase(self, store: Store, file: str, task: str) -> Page:
        found = self.api.phase(store, unquote(file), unquote(task))
        return self._render("phase.html", "phases", phase=found)

    def graph(self, store: Store, query: dict[str, list[str]]) -> Page:
        file = params.one(query, "file")
        if file is not None:
            self._file_status(store, file)  # 404 for no such file
        files = [path for path, in store.conn.execute(
            "SELECT file_path FROM workflow_files ORDER BY file_path")]
        if file is None:
            total, limit = sum(store.severity_counts().values()), GRAPH_NODES_AT_ONCE
        else:
            (total,), = store.conn.execute(
                "SELECT count(*) FROM workflow_phases WHERE file_path = ?", (file,))
            limit = GRAPH_NODES_OF_A_FILE
        if total > limit:
            return self._render("graph.html", "graph", files=files, drawings=[], file=file,
                                too_many=total)
        rows = store.conn.execute(
            "SELECT file_path, task, depends_on, severity FROM workflow_phases "
            + ("WHERE file_path = ? " if file is not None else "")
            + "ORDER BY file_path, position", (file,) if file is not None else ())
        drawings = [(path, lay_out([(t, d, s) for _, t, d, s in group]))
                    for path, group in groupby(rows, key=lambda r: r[0])]
        return self._render("graph.html", "graph", files=files, drawings=drawings, file=file,
                            too_many=0)

    def tasks(self, store: Store, query: dict[str, list[str]]) -> Page:
        rows = self.api.tasks(store, query)
        return self._render("tasks.html", "tasks", tasks=rows,
                            filters={k: params.one(query, k) or ""
                                     for k in ("type", "job", "result")},
                            limit=params.limit(query))

    def lineage(self, store: Store, task_id: str) -> Page:
        rows = self.api.lineage(store, unquote(task_id))
        first = rows[0]
        fire = None
        if first["file"] is not None and first["scheduled_for"] is not None:
            fire = next(iter(store.conn.execute(
                "SELECT source, fired_at, error FROM fires WHERE file_path = ? AND phase = ? "
                "AND scheduled_for = ?", (first["file"], first["phase"],
                                          first["scheduled_for"]))), None)
        (total,), = store.conn.execute("SELECT count(*) FROM tasks WHERE id = ?",
                                       (first["id"],))
        return self._render("lineage.html", "tasks", id=first["id"], root=first, fire=fire,
                            tree=tree(rows), total=total, shown=len(rows))

    def alerts(self, store: Store, query: dict[str, list[str]]) -> Page:
        return self._render("alerts.html", "alerts", alerts=self.api.alerts(store, query),
                            limit=params.limit(query))


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
