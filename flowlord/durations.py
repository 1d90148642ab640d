"""Go duration syntax (`90s`, `-4h`, `1h30m`, `250ms`), plus `d` for days."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
MAX_SECONDS = (2**63 - 1) / 1e9  # Go's longest duration: about 292 years (2562047h)
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")


class DurationError(ValueError):
    pass


@lru_cache(maxsize=4096)
def parse_duration(text: str) -> timedelta:
    """Parse a Go duration; raises DurationError.

    Go also accepts a bare `0`; a bare non-zero number has no unit and is refused
    (Go's flowlord would read `offset=3600` as 3600 nanoseconds, never what was meant).
    """
    s = text.strip()
    if not s:
        raise DurationError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return timedelta(0)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise DurationError(f"invalid duration: {text}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise DurationError(f"invalid duration: {text}")
    if total > MAX_SECONDS:  # Go's limit, which keeps every time math of ours in range
        raise DurationError(f"duration out of range: {text}")
    return timedelta(seconds=sign * total)


def format_duration(d: timedelta) -> str:
    """Go's rendering, to the microsecond: `1h30m0s`, `2.5s`, `250ms`, `10.52ms`, `500µs`."""
    us = round(d.total_seconds() * 1_000_000)
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    if us < 1000:
        return f"{sign}{us}µs"
    if us < 1_000_000:
        return sign + _decimal(us, 1000) + "ms"
    h, rest = divmod(us, 3_600_000_000)
    m, rest = divmod(rest, 60_000_000)
    s = _decimal(rest, 1_000_000) + "s"
    if h:
        return f"{sign}{h}h{m}m{s}"
    if m:
        return f"{sign}{m}m{s}"
    return sign + s


def _decimal(n: int, unit: int) -> str:
    """n / unit with no trailing zeros: 1500000 / 1000000 → `1.5`."""
    whole, frac = divmod(n, unit)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{len(str(unit)) - 1}d}".rstrip("0")


def format_seconds(seconds: float | None) -> str:
    """A task's wait or run time for people, as precise as is useful: `0.042 s`,
    `3.5 s`, `4 min 05 s`, `2 h 10 min`, `3 d 4 h`; '' for none."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole >= 86400:
        return f"{whole // 86400} d {whole % 86400 // 3600} h"
    if whole >= 3600:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 60} min {whole % 60:02d} s"
