"""The one place logging is configured: one line per event, for the reader it goes to.

Under systemd, stderr is the journal (`JOURNAL_STREAM` names its device and inode):
each line starts with a syslog level prefix (`<6>` info, `<4>` warning, `<3>` error)
that journald turns into the entry's priority, and carries no time (journald adds
its own) and no level word (the priority is the level):

    <4>event="workflow file not loaded" file=a.toml status="parse error: …"

Anywhere else (a terminal, a file, a pipe) a line starts with the time, in UTC to the
millisecond as every time flowlord writes, and names the level only when it is not
info:

    2026-12-02T11:00:00.123Z workflows changed changes=+a.toml
    2026-12-02T11:00:01.456Z WARNING workflow file not loaded file=a.toml status="…"

The values are logfmt (quoted when they hold spaces); a traceback stays on its line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from flowlord.clock import utc_now_ms

_RENDER = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _journal_line(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    return f"<{_PRIORITY.get(method, 6)}>{_RENDER(_, method, event)}"


def _console_line(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    text = str(event.pop("event", ""))
    rest = _RENDER(_, method, event) if event else ""
    level = "" if method == "info" else f"{method.upper()} "
    return f"{utc_now_ms()} {level}{text}" + (f" {rest}" if rest else "")


def to_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal: systemd sets JOURNAL_STREAM to the device and
    inode of the stream it connected (a child whose stderr was redirected keeps the
    variable but not the stream, hence the comparison)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a file (a test's)
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure(stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr), in the journal's format when it is the journal."""
    stream = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            _journal_line if to_journal(stream) else _console_line,
        ],
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
