"""The HTTP transport: `http.listen`, the WSGI application (werkzeug's requests and
responses) served by waitress on a thread of its own, and the loopback checks.
Paths under /api/, /metrics and /healthz go to the JSON API; other GETs to the
dashboard's pages, other POSTs to its forms (`flowlord.web.forms`).

waitress reads requests asynchronously and hands each complete one to a thread of a
fixed pool, so an idle or slow connection holds no thread; each request reads with a
connection of its own (read-only), and writes only by asking the daemon's loop
(`flowlord.web.actions`), so no request can hold up the scheduler's loop.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask
from waitress.trigger import trigger
from werkzeug.wrappers import Request, Response

from flowlord import __version__
from flowlord.config import ConfigError
from flowlord.errors import BadRequest
from flowlord.web.actions import Actions
from flowlord.web.answers import INTERNAL_ERROR, Page, response
from flowlord.web.dashboard import Daemon, Dashboard
from flowlord.web.forms import Forms
from flowlord.web.sessions import COOKIE, Sessions

MAX_BODY = 65536  # bytes of a POST body, at most
MAX_HEADER = 65536  # bytes of a request's line and headers, at most
MAX_FIELDS = 50  # parameters of a query string, at most
IDLE_TIMEOUT = 30  # seconds a connection may idle before it is closed
THREADS = 16  # requests answered at once (an action may wait up to 10 s for the loop)


class JsonApi(Daemon, Protocol):
    """What the transport asks of `flowlord.web.api.Api`."""

    @property
    def actions(self) -> Actions: ...

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[HTTPStatus, Any]: ...

    def post(self, path: str, authorization: str, body: bytes) -> tuple[HTTPStatus, Any]: ...


def parse_listen(listen: str, token: bool) -> tuple[str, int]:
    """`host:port` → (host, port); a non-loopback host needs a token (ConfigError)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"http.listen must be host:port, such as 127.0.0.1:8080: {listen}")
    if not (host == "localhost" or _is_loopback(host)) and not token:
        raise ConfigError(f"http.listen {listen} is not a loopback address: set http.token "
                          "(or http.tokens, http.token_file) first")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Request(Request):
    max_content_length = MAX_BODY
    max_form_memory_size = MAX_BODY
    max_form_parts = MAX_FIELDS


class App:
    """The WSGI application: methods, the Host check, then the API, a page or a form."""

    def __init__(self, api: JsonApi, log: Any, loopback_only: bool) -> None:
        self.api = api
        self.log = log
        self.loopback_only = loopback_only
        self.dashboard = Dashboard(api)
        self.sessions = Sessions()
        self.forms = Forms(api, self.dashboard, self.sessions, log)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = _Request(environ)
        try:
            answer = self.respond(request)
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=request.full_path[:200])
            answer = response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR})
        result: Iterable[bytes] = answer(environ, start_response)
        return result

    def respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD", "POST"):
            return response(HTTPStatus.METHOD_NOT_ALLOWED, {
                "error": f"method {request.method} is not allowed: GET, HEAD or POST"[:200]},
                {"Allow": "GET, HEAD, POST"})
        refused = self._host_refused(request)
        if refused is not None:
            return refused
        # the path as sent, %2F and all: a task's name may hold a slash
        path = urlsplit(request.environ.get("REQUEST_URI") or request.path).path
        page = not path.startswith("/api/") and path not in ("/metrics", "/healthz")
        if request.method == "POST":
            return self.forms.post(request, path) if page else self._post(request, path)
        return self._get(request, path, page)

    def _get(self, request: Request, path: str, page: bool) -> Response:
        session = self.sessions.find(request.cookies.get(COOKIE)) if page else None
        try:
            query = parse_qs(request.environ.get("QUERY_STRING", ""), keep_blank_values=True,
                             max_num_fields=MAX_FIELDS)
            if page and path == "/signin":
                return self.forms.signin_page(request)
            if page:
                status, body = self.dashboard.answer(path, query, session)
            else:
                status, body = self.api.answer(path, query)
        except BadRequest as e:
            status, body = e.status, str(e)
        except ValueError as e:  # a query string parse_qs refuses
            status, body = HTTPStatus.BAD_REQUEST, f"bad query: {e}"
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=request.full_path[:200])
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
        if isinstance(body, str) and not isinstance(body, Page):  # an error message
            body = self.dashboard.error(status, body, session) if page else {"error": body}
        return response(status, body)

    def _post(self, request: Request, path: str) -> Response:
        """A POST of the JSON API: a bearer token, a JSON body."""
        try:
            if (request.content_length or 0) > MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"a body of at most {MAX_BODY} bytes")
            status, answer = self.api.post(path, request.headers.get("Authorization", ""),
                                           request.get_data(cache=False))
        except BadRequest as e:
            status, answer = e.status, {"error": str(e)}
        except Exception:  # a bug costs this answer, never the daemon
            self.log.exception("http request failed", path=request.full_path[:200])
            status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": INTERNAL_ERROR}
        return response(status, answer)

    def _host_refused(self, request: Request) -> Response | None:
        """On a loopback address, a request must name a loopback host: a web page whose
        DNS name was pointed at 127.0.0.1 (DNS rebinding) cannot read the API."""
        host = request.environ.get("HTTP_HOST")
        if not self.loopback_only or host is None:
            return None
        if "," in host:  # waitress joins repeated headers with ", "
            return response(HTTPStatus.BAD_REQUEST, {"error": "more than one Host header"})
        try:
            name = (urlsplit(f"//{host}").hostname or "").rstrip(".")
        except ValueError:  # such as an unclosed [
            return response(HTTPStatus.BAD_REQUEST, {"error": "a malformed Host header"})
        if name == "localhost" or _is_loopback(name):
            return None
        return response(HTTPStatus.MISDIRECTED_REQUEST, {
            "error": f"this server answers loopback names only, not {host[:100]}"})


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]  # waitress has no types
    """A request waitress could not parse (a line too long, a bad Content-Length, a body
    too big): JSON like every other error, not its plain text."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json; charset=utf-8"),
                                      ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):  # type: ignore[misc]  # waitress has no types
    error_task_class = _JsonErrorTask


class HttpServer:
    """waitress serving `App` on `host:port` (both families for localhost); the port is
    bound here (OSError), served from `start()` on a thread of its own until `stop()`."""

    def __init__(self, host: str, port: int, api: JsonApi, log: Any) -> None:
        self.app = App(api, log, loopback_only=host == "localhost" or _is_loopback(host))
        self._map: dict[int, Any] = {}
        self.server = create_server(
            self.app, map=self._map, host=host, port=port, threads=THREADS,
            channel_timeout=IDLE_TIMEOUT, cleanup_interval=5,
            max_request_header_size=MAX_HEADER, max_request_body_size=MAX_BODY,
            ident=f"flowlord/{__version__}", expose_tracebacks=False)
        for served in list(self._map.values()):
            if isinstance(served, BaseWSGIServer):
                served.channel_class = _Channel
        self._wake = trigger(self._map)  # stop() closes the sockets on the server's thread
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Closes the listening sockets and every connection; requests still being
        answered get up to 2 s."""
        if self.thread.is_alive():
            self._wake.pull_trigger(lambda: wasyncore.close_all(self._map))
            self.thread.join(5)
        else:
            wasyncore.close_all(self._map)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
