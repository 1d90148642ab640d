"""The one place logging is configured: one line per event, journald-friendly.

Each line starts with a syslog level prefix (`<6>` info, `<4>` warning, `<3>` error)
that journald turns into the entry's priority; journald adds its own timestamp.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_RENDER = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _level_prefix(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    rendered = _RENDER(_, method, event)
    return f"<{_PRIORITY.get(method, 6)}>{rendered}"


def configure() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _level_prefix,
        ],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
