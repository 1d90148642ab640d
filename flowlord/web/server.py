"""The HTTP transport: the request handler, the threaded server, `http.listen` and the
loopback checks. Paths under /api/, /metrics and /healthz go to the JSON API (and
every POST); any other GET to the dashboard's pages.

Each request runs on a thread of the server's with a connection of its own (a
read-only one for GET), so no request can hold up the scheduler's loop.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from flowlord import __version__
from flowlord.config import ConfigError
from flowlord.errors import BadRequest
from flowlord.web.answers import CONTENT_SECURITY_POLICY, Asset, Metrics, Page
from flowlord.web.dashboard import Daemon, Dashboard

MAX_BODY = 65536  # bytes of a POST body, at most
INTERNAL_ERROR = "internal error: the daemon's log has the details"


class JsonApi(Daemon, Protocol):
    """What the transport asks of `flowlord.web.api.Api`."""

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


class _Handler(BaseHTTPRequestHandler):
    api: JsonApi
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
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:  # not a number
                raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
            if not 0 <= length <= MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"a body of at most {MAX_BODY} bytes")
            body = self.rfile.read(length)
            status, answer = self.api.post(urlsplit(self.path).path,
                                            self.headers.get("Authorization", ""), body)
        except BadRequest as e:
            status, answer = e.status, {"error": str(e)}
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
            data, kind = bytes(body), body.content_type
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
    def __init__(self, host: str, port: int, api: JsonApi, log: Any) -> None:
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
