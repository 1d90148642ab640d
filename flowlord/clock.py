"""The wall clock and elapsed time behind one small interface, so tests can drive time.

Only this module reads the system clock for scheduling; everything else takes
the time as an argument or asks a Clock.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


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
