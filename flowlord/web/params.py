"""Query parameters of the HTTP API and the dashboard, checked: a bad one is a 400."""

from __future__ import annotations

from datetime import tzinfo
from http import HTTPStatus
from typing import Any

from flowlord.clock import parse_iso, rfc3339_ms
from flowlord.errors import BadRequest
from flowlord.operations import in_zone

MAX_LIMIT = 1000  # rows per page, at most
DEFAULT_LIMIT = 100

Query = dict[str, list[str]]


def one(query: Query, key: str) -> str | None:
    """The parameter's value; None when it is absent or blank (`?type=&result=error` is
    how a browser sends a form with an empty field)."""
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} given more than once")
    return values[0] or None


def integer(query: Query, key: str, default: int | None) -> int | None:
    text = one(query, key)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must be a non-negative integer")
    return int(text)


def limit(query: Query) -> int:
    rows = integer(query, "limit", DEFAULT_LIMIT)
    assert rows is not None
    if not 1 <= rows <= MAX_LIMIT:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"limit must be from 1 to {MAX_LIMIT}")
    return rows


def offset(query: Query) -> int:
    rows = integer(query, "offset", 0)
    assert rows is not None
    return rows


def severity(query: Query) -> str | None:
    value = one(query, "severity")
    if value not in (None, "ok", "warning", "error"):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "severity must be ok, warning or error")
    return value


def result(query: Query) -> str | None:
    """A task result to filter by; 'none' means unfinished."""
    value = one(query, "result")
    if value not in (None, "complete", "error", "alert", "warn", "none"):
        raise BadRequest(HTTPStatus.BAD_REQUEST,
                         "result must be complete, error, alert, warn or none")
    return value


def time(query: Query, key: str, zone: tzinfo) -> str | None:
    """An ISO 8601 time (in `zone` without an offset) as task times are stored, to the
    millisecond; None when absent."""
    text = one(query, key)
    if text is None:
        return None
    try:
        return rfc3339_ms(in_zone(parse_iso(text), zone))
    except (ValueError, OverflowError):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} is not an ISO 8601 time") from None


def task_filters(query: Query, zone: tzinfo) -> dict[str, Any]:
    """The filters of a task listing (`reads.tasks`): type, job, result, phase, since
    and id."""
    return {"type": one(query, "type"), "job": one(query, "job"), "result": result(query),
            "phase": one(query, "phase"), "since": time(query, "since", zone),
            "id": one(query, "id")}
