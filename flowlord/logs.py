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
import threading
from collections.abc import Callable, MutableMapping
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


COMPLETED_LOG_EVERY = 10.0  # seconds between the lines counting completed tasks


class EndedTasks:
    """The log of ended tasks, kept by the daemon and by `flowlord worker`: a line for
    each that did not complete, and every few seconds one counting those that did. A
    line per completed task would be thousands a second in a burst, past journald's
    default rate limit, and the database keeps every result anyway. Safe to use from
    several threads (a worker's runs report on their own)."""

    def __init__(self, log: Any, monotonic: Callable[[], float]) -> None:
        self.log = log
        self.monotonic = monotonic
        self.completed = 0  # since the last line that counted them
        self.next_count = 0.0
        self.lock = threading.Lock()

    def ended(self, task_no: int, result: str, msg: str) -> None:
        if result == "complete":
            with self.lock:
                self.completed += 1
        else:
            self.log.warning("task ended", task_no=task_no, result=result, msg=msg[:200])

    def count(self, now: bool = False) -> None:
        """The line counting completed tasks, when one is due (`now`: at a stop)."""
        with self.lock:
            if not self.completed or (self.monotonic() < self.next_count and not now):
                return
            count, self.completed = self.completed, 0
            self.next_count = self.monotonic() + COMPLETED_LOG_EVERY
        self.log.info("tasks completed", count=count)
