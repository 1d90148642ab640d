"""The wall clock and elapsed time behind one small interface, so tests can drive time,
and the one way flowlord writes and reads UTC time text.

Only this module reads the system clock for scheduling; everything else takes
the time as an argument or asks a Clock. Stored times are ISO 8601 UTC with a `Z`
(`2026-11-23T14:05:00Z`): slots, task times and the rest in whole seconds, the
times that measure lateness (fires, due times) to the millisecond.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def local_zone() -> tzinfo:
    """The machine's zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


# Kept for the last times written: the phases due together share their slot (10,000 of
# them at one second write it 10,000 times). Equal datetimes are the same instant, and
# the text is of the instant alone, so an equal time in another zone may share it.
@lru_cache(maxsize=1024)
def rfc3339(t: datetime) -> str:
    """Task times and ledger slots: UTC, whole seconds (`2026-11-23T14:05:00Z`)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(t: datetime) -> str:
    """To the millisecond (`2026-11-23T14:05:00.123Z`): due times, when fires were
    recorded, so a delay of 1.3 s or a fire's lateness shows."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Stored or typed ISO 8601 text, `Z` or an offset or neither (naive: the caller
    decides the zone); ValueError when it is not one."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_between(start: str | None, end: str | None) -> float | None:
    """The seconds from one stored time to another (never negative, to the
    millisecond); None when either is missing or unreadable (a row written by hand)."""
    if not start or not end:
        return None
    try:  # a naive time beside an aware one is a TypeError; Python 3.11 reads the Z
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (ValueError, TypeError):
        return None
    return round(seconds, 3) if seconds > 0 else 0.0


def utc_now() -> str:
    return rfc3339(datetime.now(UTC))


def utc_now_ms() -> str:
    return rfc3339_ms(datetime.now(UTC))


def mtime_text(mtime_ns: int) -> str:
    """An mtime as ISO 8601 UTC with nanoseconds; equal strings mean equal mtimes."""
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    t = time.gmtime(seconds)  # a rescan formats 10,000 of these: no datetime objects
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{ns:09d}Z")


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall clock, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds of real elapsed time; unaffected by clock steps."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told: `advance` is elapsed time, `step` a clock jump."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds

    def step(self, delta: timedelta) -> None:
        """Set the wall clock forward or back without time passing (NTP, an operator)."""
        with self._lock:
            self._now += delta
