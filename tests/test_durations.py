"""Go duration syntax, plus days."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlord.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("-4h", timedelta(hours=-4)),
        ("+4h", timedelta(hours=4)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("2d", timedelta(days=2)),
        ("10us", timedelta(microseconds=10)),
        ("10µs", timedelta(microseconds=10)),
        ("0", timedelta(0)),
        ("-0", timedelta(0)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "4", "3600", "4 hours", "1h-30m", "1x", "--1h",
                                  "1e3s", "9" * 400 + "h"])
def test_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("d", "text"),
    [(timedelta(0), "0s"), (timedelta(milliseconds=10.52), "10.52ms"),
     (timedelta(seconds=35.6), "35.6s"), (timedelta(minutes=1, seconds=2.5), "1m2.5s"),
     (timedelta(hours=-4), "-4h0m0s"), (timedelta(microseconds=500), "500µs"),
     (timedelta(hours=1, minutes=30, microseconds=2), "1h30m0.000002s"),
     (timedelta(seconds=59.123456), "59.123456s")],
)
def test_format_like_go(d: timedelta, text: str) -> None:
    assert format_duration(d) == text


@given(st.integers(min_value=-10**15, max_value=10**15))
def test_format_parses_back(us: int) -> None:
    d = timedelta(microseconds=us)
    assert parse_duration(format_duration(d)) == d
