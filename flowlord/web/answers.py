"""What a GET may answer besides JSON, and how the transport sends it: an HTML page,
an asset of the package's, Prometheus text. Kept apart so the transport
(`flowlord.web.server`), the API and the dashboard share them without importing
one another."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

# the pages need no script, so none may run (a second wall behind autoescape)
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Page(str):
    """An HTML answer, not JSON."""


class Asset(bytes):
    """A file of the package's, with its content type."""

    content_type = "text/css; charset=utf-8"


class Metrics(bytes):
    """An answer in Prometheus's text format, not JSON."""

    content_type = CONTENT_TYPE_LATEST
