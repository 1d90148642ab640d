"""What an answer may be besides JSON (an HTML page, an asset of the package's,
Prometheus text) and how each is sent: `response` builds the werkzeug Response with
its content type and headers. Kept apart so the transport (`flowlord.web.server`),
the API, the dashboard and its forms share them without importing one another."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.wrappers import Response

# the pages need no script, so none may run (a second wall behind autoescape)
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
INTERNAL_ERROR = "internal error: the daemon's log has the details"


class Page(str):
    """An HTML answer, not JSON."""


class Asset(bytes):
    """A file of the package's, with its content type."""

    content_type = "text/css; charset=utf-8"


class Metrics(bytes):
    """An answer in Prometheus's text format, not JSON."""

    content_type = CONTENT_TYPE_LATEST


class PlainText(bytes):
    """Text as it is (a task's log), not JSON."""

    content_type = "text/plain; charset=utf-8"


def response(status: HTTPStatus, body: Any, headers: dict[str, str] | None = None
             ) -> Response:
    """The answer as sent: a Page as HTML (with the CSP, never cached: it may carry a
    form's CSRF token), an Asset or Metrics as their type, anything else as JSON."""
    headers = dict(headers or {})
    if isinstance(body, Metrics | PlainText):
        data, kind = bytes(body), body.content_type
    elif isinstance(body, Asset):
        data, kind = bytes(body), body.content_type
        headers["Cache-Control"] = "max-age=3600"
    elif isinstance(body, Page):
        data, kind = body.encode(), "text/html; charset=utf-8"
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers.setdefault("Cache-Control", "no-store")
    else:
        data = json.dumps(body, ensure_ascii=False).encode()
        kind = "application/json; charset=utf-8"
    answer = Response(data, status=int(status), content_type=kind)
    answer.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in headers.items():
        answer.headers[name] = value
    return answer
