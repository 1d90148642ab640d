"""The dashboard's forms (README.md, HTTP API and dashboard): signing in and out, and
every action, with no JavaScript.

A browser signs in once with a token (`flowlord.web.sessions`); its session acts as
the token's name. Every POST here is refused with 403 when its Origin (or, without
one, its Referer) is another site; every POST but the sign-in needs a session (401)
and the session's CSRF token in the form (403). An action then goes through
`Actions.act`, the one entry the JSON API uses too (the daemon's loop does the
writing), and its outcome is a page. A backload is shown first, built by reading as
`flowlord backload --dry-run` builds it; its page's button creates it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from flowlord import operations
from flowlord.clock import parse_iso
from flowlord.errors import BadRequest, UsageError
from flowlord.loader import LoaderError
from flowlord.model import Fire
from flowlord.rules import BY_STEPS
from flowlord.store import Store, StoreError
from flowlord.tasks import BuildError, Context, meta_dir
from flowlord.web.actions import Actions
from flowlord.web.answers import INTERNAL_ERROR, Page, response
from flowlord.web.dashboard import Daemon, Dashboard
from flowlord.web.sessions import COOKIE, Session, Sessions

# the fields each action takes from its form; the rest are ignored
FIELDS: dict[str, tuple[str, ...]] = {
    "refresh": (), "trigger": ("task", "workflow", "time"),
    "backload": ("task", "workflow", "from", "to", "by", "reprocess"),
    "pause": ("task", "workflow", "file", "topic", "all", "until", "reason"),
    "resume": ("task", "workflow", "file", "topic", "all"),
    "rerun": ("only",), "cancel": (), "mark": ("result", "msg")}
FLAGS = {"only", "all"}  # checkboxes: `yes` when ticked, absent when not
ON_TASK = re.compile(r"/act/tasks/([0-9]{1,18})/(rerun|cancel|mark)")
PREVIEW_TASKS = 500  # tasks a backload's preview lists; it counts them all


class Acting(Daemon, Protocol):
    """What the forms need of `flowlord.web.api.Api`."""

    @property
    def actions(self) -> Actions: ...


class Forms:
    def __init__(self, api: Acting, dashboard: Dashboard, sessions: Sessions,
                 log: Any) -> None:
        self.api = api
        self.dashboard = dashboard
        self.sessions = sessions
        self.log = log

    def signin_page(self, request: Request, message: str = "",
                    status: HTTPStatus = HTTPStatus.OK) -> Response:
        session = self.sessions.find(request.cookies.get(COOKIE))
        return response(status, self.dashboard.render(
            "signin.html", "signin", session, enabled=bool(self.api.actions.tokens),
            message=message))

    def post(self, request: Request, path: str) -> Response:
        """A form's POST: the origin, the session and its CSRF token checked, then the
        sign-in, the sign-out or an action; each answered with a page."""
        session = None
        try:
            _same_origin(request)
            if path == "/signin":
                return self._sign_in(request)
            session = self.sessions.find(request.cookies.get(COOKIE))
            if session is None:
                raise BadRequest(HTTPStatus.UNAUTHORIZED,
                                 "sign in first (/signin): actions need a session")
            if not session.csrf_matches(_one(request.form, "csrf")):
                raise BadRequest(HTTPStatus.FORBIDDEN, "the form's CSRF token is missing or "
                                 "not this session's: load the page again")
            if path == "/signout":
                return self._sign_out(request)
            return self._act(session, path, request.form)
        except BadRequest as e:
            return response(e.status, self.dashboard.error(e.status, str(e), session))
        except HTTPException as e:  # werkzeug's: a body too big, a form it cannot parse
            status = HTTPStatus(e.code or 400)
            return response(status, self.dashboard.error(
                status, e.description or status.phrase, session))
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=path[:200])
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            return response(status, self.dashboard.error(status, INTERNAL_ERROR, session))

    def _sign_in(self, request: Request) -> Response:
        try:  # every token compared, in constant time, as for a bearer token
            actor = self.api.actions.actor("Bearer " + _one(request.form, "token").strip())
        except BadRequest as e:
            message = str(e) if e.status == HTTPStatus.FORBIDDEN else "not a token of this daemon"
            return self.signin_page(request, message, e.status)
        self.sessions.end(request.cookies.get(COOKIE))
        cookie, _ = self.sessions.start(actor)
        answer = response(HTTPStatus.SEE_OTHER, Page(""), {"Location": "/"})
        answer.set_cookie(COOKIE, cookie, max_age=int(self.sessions.lifetime), path="/",
                          secure=request.is_secure, httponly=True, samesite="Strict")
        return answer

    def _sign_out(self, request: Request) -> Response:
        self.sessions.end(request.cookies.get(COOKIE))
        answer = response(HTTPStatus.SEE_OTHER, Page(""), {"Location": "/signin"})
        answer.delete_cookie(COOKIE, path="/", secure=request.is_secure, httponly=True,
                             samesite="Strict")
        return answer

    def _act(self, session: Session, path: str, form: MultiDict[str, str]) -> Response:
        on_task = ON_TASK.fullmatch(path)
        name = on_task[2] if on_task else path.removeprefix("/act/")
        if not path.startswith("/act/") or name not in FIELDS:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no such form: {path}")
        fields = _fields(name, form)
        back = _back(form)
        if name == "backload" and _one(form, "confirm") != "create":
            return self._preview(session, fields, back)
        target = (f"task {on_task[1]}" if on_task else fields.get("task") or fields.get("file")
                  or fields.get("topic") or ("every phase" if fields.get("all") else ""))
        try:
            status, answer = self.api.actions.act(session.actor, "/api/" + path[len("/act/"):],
                                                  fields)
        except BadRequest as e:
            status, answer = e.status, {"error": str(e)}
        return response(status, self.dashboard.render(
            "outcome.html", "actions", session, action=name, target=target, status=int(status),
            phrase=status.phrase, answer=answer, back=back))

    def _preview(self, session: Session, fields: dict[str, Any], back: str) -> Response:
        """The fires a backload would make, built by reading (nothing is written), and a
        button that asks for them."""
        try:
            chosen, fires = self._backload_fires(fields)
        except BadRequest as e:
            return response(e.status, self.dashboard.render(
                "outcome.html", "actions", session, action="backload",
                target=fields.get("task", ""), status=int(e.status), phrase=e.status.phrase,
                answer={"error": str(e)}, back=back))
        tasks = [(fire, task) for fire in fires for task in fire.tasks]
        return response(HTTPStatus.OK, self.dashboard.render(
            "backload.html", "phases", session, phase=chosen.phase, warnings=chosen.warnings,
            fields=fields, fires=len(fires), tasks=tasks[:PREVIEW_TASKS], total=len(tasks),
            empty=[f for f in fires if not f.tasks][:10], back=back))

    def _backload_fires(self, fields: dict[str, Any]) -> tuple[operations.Chosen, list[Fire]]:
        by = fields.get("by")
        if by is not None and by not in BY_STEPS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "by must be hour, day, week or month")
        start, end = _time(fields, "from"), _time(fields, "to")
        if "task" not in fields:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "task is required")
        config = self.api.config
        try:
            store = Store(config.db, readonly=True)
            try:
                chosen = operations.runnable_phase(store, fields["task"], fields.get("workflow"))
            finally:
                store.close()
            ctx = Context(config.zone(), meta_dir(config.workflows), datetime.now(UTC))
            return chosen, operations.backload_fires(chosen.phase, start, end, by, ctx)
        except UsageError as e:  # no such phase, a phase that cannot run
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(e)) from None
        except BuildError as e:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from None
        except (LoaderError, StoreError) as e:
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None


def _same_origin(request: Request) -> None:
    """A browser names the page a form was posted from (Origin, else Referer): it must be
    this server. A client naming neither is not a browser a site could steer, and the
    CSRF token still decides."""
    origin = request.headers.get("Origin")
    if origin is None and (referer := request.headers.get("Referer")):
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin is not None and origin.lower() != request.host_url.rstrip("/").lower():
        raise BadRequest(HTTPStatus.FORBIDDEN,
                         f"a form posted from another site ({origin[:100]}) is refused")


def _one(form: MultiDict[str, str], key: str) -> str:
    values = form.getlist(key)
    if len(values) > 1:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} given more than once")
    return values[0] if values else ""


def _fields(name: str, form: MultiDict[str, str]) -> dict[str, Any]:
    """The action's fields from its form: a blank one left out (as no value), a ticked
    checkbox true."""
    fields: dict[str, Any] = {}
    for key in FIELDS[name]:
        value = _one(form, key).strip()
        if key in FLAGS and value not in ("", "yes"):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must be yes or absent")
        if value:
            fields[key] = True if key in FLAGS else value
    return fields


def _back(form: MultiDict[str, str]) -> str:
    """The page a form was on, to link back to: a path of this site only."""
    back = _one(form, "back")
    ok = back.startswith("/") and not back.startswith("//") and "\\" not in back
    return back[:500] if ok else "/"


def _time(fields: dict[str, Any], key: str) -> datetime:
    if key not in fields:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is required")
    try:
        return parse_iso(fields[key])
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is not an ISO 8601 time") from None
