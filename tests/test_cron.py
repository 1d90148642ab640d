"""flowlord.cron: robfig/cron v3 grammar (seconds optional) and the DST policy of
docs/compatibility.md, Daylight saving.

Expectations are whole sequences of fire times written as ISO strings with
offsets, so a wrong offset, a double fire or a missing fire all show up.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlord.config import resolve_zone
from flowlord.cron import (
    CronError,
    CronSchedule,
    fire_times,
    next_fire,
    parse_cron,
    schedule_zone,
)
from tests.helpers import at

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # half-hour DST shift
SANTIAGO = ZoneInfo("America/Santiago")  # shifts at midnight
SAT = datetime(2025, 3, 1, tzinfo=UTC)  # a Saturday


def iso(expr: str, start: datetime, tz: tzinfo, n: int) -> list[str]:
    return [t.isoformat() for t in fire_times(expr, start, tz, n)]


# --- grammar: sequences in UTC ------------------------------------------------------------

SEQUENCES = [
    ("0 * * * *", ["2025-03-01T01:00:00+00:00", "2025-03-01T02:00:00+00:00"]),
    ("15 35 13 * * *", ["2025-03-01T13:35:15+00:00", "2025-03-02T13:35:15+00:00"]),
    # seconds come first: second 0 of every minute, not every second of minute 0
    ("0 * * * * *", ["2025-03-01T00:01:00+00:00", "2025-03-01T00:02:00+00:00"]),
    ("*/20 * * * * *", ["2025-03-01T00:00:20+00:00", "2025-03-01T00:00:40+00:00",
                        "2025-03-01T00:01:00+00:00"]),
    # a/n runs to the field's maximum (croniter 7 alone would fire only at :05)
    ("5/15 * * * *", ["2025-03-01T00:05:00+00:00", "2025-03-01T00:20:00+00:00",
                      "2025-03-01T00:35:00+00:00", "2025-03-01T00:50:00+00:00",
                      "2025-03-01T01:05:00+00:00"]),
    ("0 0 * * MON/2", ["2025-03-03T00:00:00+00:00", "2025-03-05T00:00:00+00:00",
                       "2025-03-07T00:00:00+00:00", "2025-03-10T00:00:00+00:00"]),
    ("0 12 * * sun-SAT/2", ["2025-03-01T12:00:00+00:00", "2025-03-02T12:00:00+00:00",
                            "2025-03-04T12:00:00+00:00", "2025-03-06T12:00:00+00:00"]),
    ("0 0 * * MON", ["2025-03-03T00:00:00+00:00", "2025-03-10T00:00:00+00:00"]),
    # both day fields restricted: either one fires
    ("0 0 1 * MON", ["2025-03-03T00:00:00+00:00", "2025-03-10T00:00:00+00:00",
                     "2025-03-17T00:00:00+00:00", "2025-03-24T00:00:00+00:00",
                     "2025-03-31T00:00:00+00:00", "2025-04-01T00:00:00+00:00",
                     "2025-04-07T00:00:00+00:00"]),
    ("0 0 0 */2 * MON", ["2025-03-03T00:00:00+00:00", "2025-03-05T00:00:00+00:00",
                         "2025-03-07T00:00:00+00:00", "2025-03-09T00:00:00+00:00",
                         "2025-03-10T00:00:00+00:00", "2025-03-11T00:00:00+00:00"]),
    # */1 keeps robfig's star bit, so the day must also be a Monday
    ("0 0 */1 * MON", ["2025-03-03T00:00:00+00:00", "2025-03-10T00:00:00+00:00"]),
    # 1-31 is restricted (no star bit): OR with Monday is every day
    ("0 0 1-31 * MON", ["2025-03-02T00:00:00+00:00", "2025-03-03T00:00:00+00:00",
                        "2025-03-04T00:00:00+00:00"]),
    # February 31st never comes, but the Monday side still fires
    ("0 0 31 2 MON", ["2026-02-02T00:00:00+00:00", "2026-02-09T00:00:00+00:00",
                      "2026-02-16T00:00:00+00:00", "2026-02-23T00:00:00+00:00",
                      "2027-02-01T00:00:00+00:00"]),
    ("30 12 * JAN,jul mon-fri", ["2025-07-01T12:30:00+00:00", "2025-07-02T12:30:00+00:00",
                                 "2025-07-03T12:30:00+00:00", "2025-07-04T12:30:00+00:00",
                                 "2025-07-07T12:30:00+00:00"]),
    ("0 9 ? * SAT", ["2025-03-01T09:00:00+00:00", "2025-03-08T09:00:00+00:00"]),
    ("0 0 29 2 *", ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
    ("  0   0 1,15 *   *  ", ["2025-03-15T00:00:00+00:00", "2025-04-01T00:00:00+00:00"]),
    ("@yearly", ["2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"]),
    ("@annually", ["2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"]),
    ("@monthly", ["2025-04-01T00:00:00+00:00", "2025-05-01T00:00:00+00:00"]),
    ("@weekly", ["2025-03-02T00:00:00+00:00", "2025-03-09T00:00:00+00:00"]),
    ("@daily", ["2025-03-02T00:00:00+00:00", "2025-03-03T00:00:00+00:00"]),
    ("@midnight", ["2025-03-02T00:00:00+00:00", "2025-03-03T00:00:00+00:00"]),
    ("@hourly", ["2025-03-01T01:00:00+00:00", "2025-03-01T02:00:00+00:00"]),
    ("@every 7m", ["2025-03-01T00:04:00+00:00", "2025-03-01T00:11:00+00:00",
                   "2025-03-01T00:18:00+00:00"]),
]


@pytest.mark.parametrize(("expr", "expected"), SEQUENCES)
def test_sequences(expr: str, expected: list[str]) -> None:
    assert iso(expr, SAT, UTC, len(expected)) == expected


def test_schedule_object_and_string_agree() -> None:
    sched = parse_cron("0 0 1 * MON")
    assert fire_times(sched, SAT, UTC, 5) == fire_times("0 0 1 * MON", SAT, UTC, 5)
    assert fire_times(sched, SAT, UTC, 0) == []


# --- time zones ---------------------------------------------------------------------------

def test_tz_prefix_wins_over_argument() -> None:
    assert iso("TZ=Asia/Tokyo 0 9 * * *", SAT, NY, 2) == [
        "2025-03-02T09:00:00+09:00", "2025-03-03T09:00:00+09:00"]
    assert iso("CRON_TZ=Europe/Berlin 0 30 4 * * *", SAT, NY, 2) == [
        "2025-03-01T04:30:00+01:00", "2025-03-02T04:30:00+01:00"]
    assert iso("TZ=Europe/Berlin @daily", SAT, NY, 1) == ["2025-03-02T00:00:00+01:00"]


def test_argument_zone_is_used_and_returned() -> None:
    fired = next_fire("0 9 * * *", SAT, NY)
    assert fired.isoformat() == "2025-03-01T09:00:00-05:00"
    assert fired.tzinfo is NY


def test_schedule_zone() -> None:
    assert schedule_zone("CRON_TZ=America/Denver 0 30 4 * * *", UTC) == ZoneInfo("America/Denver")
    assert schedule_zone(parse_cron("TZ=Asia/Tokyo @hourly"), UTC) == ZoneInfo("Asia/Tokyo")
    assert schedule_zone("0 * * * *", BERLIN) is BERLIN
    assert parse_cron("CRON_TZ=UTC\t@hourly").zone == "UTC"


# --- @every ------------------------------------------------------------------------------

def test_every_is_anchored_on_the_epoch() -> None:
    late = iso("@every 7m", at("2025-03-01T00:06:59+00:00"), UTC, 2)
    assert late == ["2025-03-01T00:11:00+00:00", "2025-03-01T00:18:00+00:00"]
    for fired in fire_times("@every 90s", at("2025-03-01T00:00:10.5+00:00"), UTC, 5):
        assert int(fired.timestamp()) % 90 == 0 and fired.microsecond == 0


def test_every_in_a_zone() -> None:
    assert iso("@every 1d", SAT, NY, 2) == [
        "2025-03-01T19:00:00-05:00", "2025-03-02T19:00:00-05:00"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800), ("+5m", 300),
    (".5m", 30), ("1500ms", 1), ("250ms", 1), ("1us", 1), ("1h0.5s", 3600),
])
def test_every_durations(text: str, seconds: int) -> None:
    # robfig rounds @every down to whole seconds, and up to at least one second
    assert parse_cron(f"@every {text}").every == timedelta(seconds=seconds)


# --- DST ---------------------------------------------------------------------------------

DST_SEQUENCES = [
    # fixed time in a skipped hour: fires once, when the gap ends
    ("30 2 * * *", "2025-03-08T12:00:00-05:00", NY,
     ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]),
    ("0 30 2 * * *", "2025-03-08T12:00:00-05:00", NY,
     ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]),
    ("30 2 * * *", "2025-03-29T12:00:00+01:00", BERLIN,
     ["2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00"]),
    # fixed time on fall-back day: once (02:30 is not repeated in New York)
    ("30 2 * * *", "2025-11-01T12:00:00-04:00", NY,
     ["2025-11-02T02:30:00-05:00", "2025-11-03T02:30:00-05:00"]),
    ("30 1 * * *", "2025-11-01T12:00:00-04:00", NY,
     ["2025-11-02T01:30:00-04:00", "2025-11-03T01:30:00-05:00"]),
    # repeated in Berlin: the first occurrence only
    ("30 2 * * *", "2025-10-25T12:00:00+02:00", BERLIN,
     ["2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"]),
    ("0 30 2 * * *", "2025-10-25T12:00:00+02:00", BERLIN,
     ["2025-10-26T02:30:00+02:00", "2025-10-27T02:30:00+01:00"]),
    # two skipped times, and a real 03:00, land on one instant: one fire
    ("0,30 2 * * *", "2025-03-09T00:00:00-05:00", NY,
     ["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"]),
    ("0 2,3 * * *", "2025-03-09T00:00:00-05:00", NY,
     ["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00", "2025-03-10T03:00:00-04:00"]),
    ("0 1-3 * * *", "2025-11-02T00:00:00-04:00", NY,
     ["2025-11-02T01:00:00-04:00", "2025-11-02T02:00:00-05:00", "2025-11-02T03:00:00-05:00",
      "2025-11-03T01:00:00-05:00"]),
    # wildcard or stepped hours follow elapsed time
    ("0 * * * *", "2025-03-09T00:00:00-05:00", NY,
     ["2025-03-09T01:00:00-05:00", "2025-03-09T03:00:00-04:00", "2025-03-09T04:00:00-04:00"]),
    ("0 * * * *", "2025-11-02T00:00:00-04:00", NY,
     ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00", "2025-11-02T02:00:00-05:00",
      "2025-11-02T03:00:00-05:00"]),
    ("0 * * * *", "2025-03-30T00:00:00+01:00", BERLIN,
     ["2025-03-30T01:00:00+01:00", "2025-03-30T03:00:00+02:00", "2025-03-30T04:00:00+02:00"]),
    ("0 * * * *", "2025-10-26T01:00:00+02:00", BERLIN,
     ["2025-10-26T02:00:00+02:00", "2025-10-26T02:00:00+01:00", "2025-10-26T03:00:00+01:00"]),
    ("*/30 * * * *", "2025-11-02T00:30:00-04:00", NY,
     ["2025-11-02T01:00:00-04:00", "2025-11-02T01:30:00-04:00", "2025-11-02T01:00:00-05:00",
      "2025-11-02T01:30:00-05:00", "2025-11-02T02:00:00-05:00"]),
    ("*/30 * * * *", "2025-10-26T01:30:00+02:00", BERLIN,
     ["2025-10-26T02:00:00+02:00", "2025-10-26T02:30:00+02:00", "2025-10-26T02:00:00+01:00",
      "2025-10-26T02:30:00+01:00", "2025-10-26T03:00:00+01:00"]),
    ("0 1/2 * * *", "2025-11-02T00:00:00-04:00", NY,
     ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00", "2025-11-02T03:00:00-05:00"]),
    ("0 */2 * * *", "2025-03-09T00:00:00-05:00", NY,
     ["2025-03-09T04:00:00-04:00", "2025-03-09T06:00:00-04:00"]),
    ("@hourly", "2025-10-26T01:30:00+02:00", BERLIN,
     ["2025-10-26T02:00:00+02:00", "2025-10-26T02:00:00+01:00"]),
    # half-hour shifts
    ("15 2 * * *", "2025-10-04T12:00:00+10:30", LORD_HOWE,
     ["2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"]),
    ("45 1 * * *", "2025-04-05T12:00:00+11:00", LORD_HOWE,
     ["2025-04-06T01:45:00+11:00", "2025-04-07T01:45:00+10:30"]),
    ("*/15 * * * *", "2025-04-06T01:15:00+11:00", LORD_HOWE,
     ["2025-04-06T01:30:00+11:00", "2025-04-06T01:45:00+11:00", "2025-04-06T01:30:00+10:30",
      "2025-04-06T01:45:00+10:30", "2025-04-06T02:00:00+10:30"]),
    # shifts at midnight: the skipped midnight fires at 01:00, the repeated 23:00 once
    ("0 0 * * *", "2025-09-06T12:00:00-04:00", SANTIAGO,
     ["2025-09-07T01:00:00-03:00", "2025-09-08T00:00:00-03:00"]),
    ("30 23 * * *", "2025-04-05T12:00:00-03:00", SANTIAGO,
     ["2025-04-05T23:30:00-03:00", "2025-04-06T23:30:00-04:00"]),
]


@pytest.mark.parametrize(("expr", "start", "zone", "expected"), DST_SEQUENCES)
def test_dst_sequences(expr: str, start: str, zone: ZoneInfo, expected: list[str]) -> None:
    assert iso(expr, at(start), zone, len(expected)) == expected


@pytest.mark.parametrize(("expr", "after", "expected"), [
    # inside the first pass of the repeated hour, the clock will come back
    ("0 * * * *", "2025-11-02T01:30:00-04:00", "2025-11-02T01:00:00-05:00"),
    ("*/30 * * * *", "2025-11-02T01:45:00-04:00", "2025-11-02T01:00:00-05:00"),
    ("* * * * * *", "2025-11-02T01:59:59-04:00", "2025-11-02T01:00:00-05:00"),
    ("30 1 * * *", "2025-11-02T01:15:00-04:00", "2025-11-02T01:30:00-04:00"),
    ("30 1 * * *", "2025-11-02T01:45:00-04:00", "2025-11-03T01:30:00-05:00"),
    # inside the second pass
    ("0 * * * *", "2025-11-02T01:30:00-05:00", "2025-11-02T02:00:00-05:00"),
    ("*/30 * * * *", "2025-11-02T01:15:00-05:00", "2025-11-02T01:30:00-05:00"),
    ("30 1 * * *", "2025-11-02T01:15:00-05:00", "2025-11-03T01:30:00-05:00"),
    ("* * 1 * * *", "2025-11-02T01:30:00-05:00", "2025-11-03T01:00:00-05:00"),
    # just before a gap
    ("* * * * * *", "2025-03-09T01:59:59-05:00", "2025-03-09T03:00:00-04:00"),
    ("* * 2 * * *", "2025-03-09T01:59:59-05:00", "2025-03-09T03:00:00-04:00"),
    ("* * 2 * * *", "2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"),
])
def test_next_fire_around_transitions(expr: str, after: str, expected: str) -> None:
    assert next_fire(expr, at(after), NY).isoformat() == expected


# --- strictly after, argument checks -------------------------------------------------------

@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("0 * * * *", "2025-03-01T01:00:00+00:00", "2025-03-01T02:00:00+00:00"),
    ("0 * * * *", "2025-03-01T00:59:59.999999+00:00", "2025-03-01T01:00:00+00:00"),
    ("15 35 13 * * *", "2025-03-01T13:35:15+00:00", "2025-03-02T13:35:15+00:00"),
    ("15 35 13 * * *", "2025-03-01T13:35:14.5+00:00", "2025-03-01T13:35:15+00:00"),
    ("@every 90s", "2025-03-01T00:01:30+00:00", "2025-03-01T00:03:00+00:00"),
    ("30 2 * * *", "2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"),
])
def test_strictly_after(expr: str, after: str, expected: str) -> None:
    zone = at(after).tzinfo
    assert zone is not None
    assert next_fire(expr, at(after), zone).isoformat() == expected


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire("0 * * * *", datetime(2025, 3, 1), UTC)
    with pytest.raises(ValueError, match="aware"):
        fire_times("@every 5m", datetime(2025, 3, 1), UTC, 3)


@pytest.mark.parametrize(("expr", "after"), [
    ("0 0 1 1 *", datetime(9999, 6, 1, tzinfo=UTC)),
    ("@every 1h", datetime(9999, 12, 31, 23, 30, tzinfo=UTC)),
])
def test_no_fire_time_left_is_a_cron_error(expr: str, after: datetime) -> None:
    with pytest.raises(CronError):
        next_fire(expr, after, UTC)


# --- parsing --------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "fixed"), [
    ("30 2 * * *", True), ("0 1-3 * * *", True), ("0 1,13 * * *", True), ("@daily", True),
    ("0 * * * *", False), ("0 ? * * *", False), ("0 */2 * * *", False), ("0 1/2 * * *", False),
    ("0 9-17/2 * * *", False), ("@hourly", False),
])
def test_fixed_hour(expr: str, fixed: bool) -> None:
    assert parse_cron(expr).fixed_hour is fixed


def test_parsed_fields() -> None:
    sched = parse_cron("TZ=UTC 5/20 1-3 */10 jan,MAR ?")
    assert sched == CronSchedule(
        expr="TZ=UTC 5/20 1-3 */10 jan,MAR ?", zone="UTC", every=None, seconds=(0,),
        minutes=(5, 25, 45), hours=(1, 2, 3), days=(1, 11, 21, 31), months=(1, 3),
        weekdays=(0, 1, 2, 3, 4, 5, 6), dom_star=False, dow_star=True, fixed_hour=True,
        canonical="0 5,25,45 1-3 1,11,21,31 1,3 *")
    every = parse_cron("@every 1h30m")
    assert (every.every, every.zone, every.canonical) == (timedelta(minutes=90), None, None)


@pytest.mark.parametrize(("expr", "canonical"), [
    ("0 * * * *", "0 0 * * * *"),
    ("5/15 * * * *", "0 5,20,35,50 * * * *"),
    ("*/5 9-17 * * MON-FRI", "0 0,5,10,15,20,25,30,35,40,45,50,55 9-17 * * 1-5"),
    ("0 0 0 */2 * MON", "0 0 0 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31 * 1"),
    ("0 0 */1 * MON", "0 0 0 * * 1"),  # AND: croniter needs the literal star
    ("0 0 1-31 * MON", "0 0 0 * * *"),  # OR with a full side: every day
    ("0 0 31 2 MON", "0 0 0 * 2 1"),  # OR with an impossible day side: weekdays only
    ("0 0 15,31 4 *", "0 0 0 15 4 *"),
    ("@weekly", "0 0 0 * * 0"),
])
def test_canonical(expr: str, canonical: str) -> None:
    assert parse_cron(expr).canonical == canonical


INVALID = [
    ("", "empty"), ("   ", "empty"), ("TZ=", "no schedule"), ("CRON_TZ=UTC", "no schedule"),
    ("TZ=Nope/Zone 0 * * * *", "unknown time zone: Nope/Zone"),
    ("TZ=America 0 * * * *", "unknown time zone"), ("TZ=../etc 0 * * * *", "unknown time zone"),
    ("1 2 3 4", "expected 5 or 6 fields, found 4"),
    ("1 2 3 4 5 6 7", "expected 5 or 6 fields, found 7"),
    ("* * * * 7", "day of week"), ("0 0 * * SUN-7", "day of week"),
    ("L * * * *", "minute"), ("0 0 L * *", "day of month"), ("0 0 15W * *", "day of month"),
    ("0 0 * * MON#1", "day of week"), ("H * * * *", "minute"), ("R * * * *", "minute"),
    ("0 0 31 2 *", "never occurs"), ("0 0 30,31 2 *", "never occurs"),
    ("0 0 31 4,6,9,11 *", "never occurs"), ("0 0 0 31 2 ?", "never occurs"),
    ("*/0 * * * *", "step"), ("5-1 * * * *", "backwards"), ("60 * * * *", "range"),
    ("0 24 * * *", "hour"), ("0 0 32 * *", "day of month"), ("0 0 0 * *", "day of month"),
    ("0 0 * 13 *", "month"), ("0 0 * 0 *", "month"), ("60 * * * * *", "second"),
    ("1,,2 * * * *", "minute"), (",1 * * * *", "minute"), ("1- * * * *", "minute"),
    ("-1 * * * *", "minute"), ("/5 * * * *", "minute"), ("5/ * * * *", "minute"),
    ("*/-1 * * * *", "minute"), ("1-2-3 * * * *", "minute"), ("*/2/3 * * * *", "minute"),
    ("+5 * * * *", "minute"), ("\u0663 * * * *", "minute"), ("jan * * * *", "minute"),
    ("0 0 * * monday", "day of week"), ("* * * FOO *", "month"), ("*-5 * * * *", "minute"),
    ("@every", "one duration"), ("@every 1h 2m", "one duration"), ("@every 0s", "positive"),
    ("@every -5m", "positive"), ("@every 5", "invalid duration"), ("@every 5x", "invalid"),
    ("@every 1h-2m", "invalid"), ("@every .", "invalid"), ("@every 99999999999h", "range"),
    ("@every5m", "descriptor"), ("@daily extra", "descriptor"), ("@reboot", "descriptor"),
    ("@Daily", "descriptor"), ("@", "descriptor"),
]


@pytest.mark.parametrize(("expr", "message"), INVALID)
def test_invalid_expressions(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        parse_cron(expr)


def test_cron_error_is_a_short_value_error() -> None:
    with pytest.raises(ValueError) as caught:
        parse_cron("1 2 3")
    assert isinstance(caught.value, CronError)
    assert str(caught.value) == "expected 5 or 6 fields, found 3"


def test_non_string_rejected() -> None:
    with pytest.raises(CronError):
        parse_cron(None)


# --- properties -----------------------------------------------------------------------------

BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ZONES = [ZoneInfo(k) for k in ("UTC", "America/New_York", "Europe/Berlin",
                               "Australia/Lord_Howe", "America/Santiago", "Asia/Kolkata")]


@dataclass(frozen=True)
class Oracle:
    """An expression together with an independent reading of what it means."""

    text: str
    fields: tuple[frozenset[int], ...]
    dom_star: bool
    dow_star: bool
    fixed: bool

    def matches(self, wall: datetime) -> bool:
        sec, minute, hour, dom, month, dow = self.fields
        if not (wall.second in sec and wall.minute in minute and wall.hour in hour
                and wall.month in month):
            return False
        in_dom, in_dow = wall.day in dom, wall.isoweekday() % 7 in dow
        if self.dom_star or self.dow_star:
            return in_dom and in_dow
        return in_dom or in_dow

    def impossible(self) -> bool:
        dom, month = self.fields[3], self.fields[4]
        return self.dow_star and min(dom) > max(MAX_DAYS[m] for m in month)


Drawn = tuple[str, frozenset[int], bool, bool]  # text, values, star bit, periodic


@st.composite
def field_text(draw: st.DrawFn, index: int, hot: tuple[int, ...] = (),
               kinds: tuple[str, ...] = ("*", "?", "*/n", "a", "a-b", "a/n", "a-b/n")) -> Drawn:
    low, high = BOUNDS[index]
    names = MONTH_NAMES if index == 4 else DAY_NAMES if index == 5 else None

    def show(value: int) -> str:
        if names and draw(st.booleans()):
            name = names[value - low]
            return name.upper() if draw(st.booleans()) else name
        return str(value)

    parts: list[str] = []
    values: set[int] = set()
    star = periodic = False
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        use_hot = bool(hot) and draw(st.booleans())
        a = draw(st.sampled_from(hot)) if use_hot else draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        n = draw(st.integers(1, high - low + 1))
        text, span = {
            "*": ("*", range(low, high + 1)), "?": ("?", range(low, high + 1)),
            "*/n": (f"*/{n}", range(low, high + 1, n)), "a": (show(a), range(a, a + 1)),
            "a-b": (f"{show(a)}-{show(b)}", range(a, b + 1)),
            "a/n": (f"{show(a)}/{n}", range(a, high + 1, n)),
            "a-b/n": (f"{show(a)}-{show(b)}/{n}", range(a, b + 1, n)),
        }[kind]
        parts.append(text)
        values.update(span)
        star = star or kind in ("*", "?") or (kind == "*/n" and n == 1)
        periodic = periodic or kind not in ("a", "a-b")
    return ",".join(parts), frozenset(values), star, periodic


def unrestricted(index: int) -> Drawn:
    low, high = BOUNDS[index]
    return "*", frozenset(range(low, high + 1)), True, True


HOT_HOURS = (0, 1, 2, 3, 23)  # hours the sample zones skip or repeat


@st.composite
def expressions(draw: st.DrawFn, seconds: bool, dense: bool) -> Oracle:
    """Random rules; `dense` ones mostly fire daily, often in the hours DST moves."""
    drawn = []
    for index in range(6):
        if dense and index >= 3 and draw(st.integers(0, 3)):
            drawn.append(unrestricted(index))
        else:
            hot = HOT_HOURS if dense and index == 2 else ()
            drawn.append(draw(st.one_of(st.just(unrestricted(index)), field_text(index, hot),
                                        field_text(index, hot, kinds=("a", "a-b")))))
    if not seconds:
        drawn[0] = ("", frozenset({0}), False, False)
    text = " ".join(d[0] for d in drawn).strip()
    return Oracle(text, tuple(d[1] for d in drawn), drawn[3][2], drawn[5][2], not drawn[2][3])


@functools.cache
def transitions(zone: ZoneInfo) -> tuple[datetime, ...]:
    """UTC instants (2024-2026) where the zone's offset changes, found by brute force."""
    found, day = [], datetime(2024, 1, 1, tzinfo=UTC)
    while day.year < 2027:
        if day.astimezone(zone).utcoffset() != (day + timedelta(1)).astimezone(zone).utcoffset():
            moment = day
            while moment.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                moment += timedelta(minutes=1)
            found.append(moment)
        day += timedelta(1)
    return tuple(found) or (datetime(2025, 6, 1, tzinfo=UTC),)


@st.composite
def zoned_starts(draw: st.DrawFn, before: int, after: int) -> tuple[ZoneInfo, datetime]:
    zone = draw(st.sampled_from(ZONES))
    anchor = draw(st.sampled_from(transitions(zone)))
    seconds = draw(st.integers(-before, after))
    if draw(st.booleans()):
        seconds -= seconds % 900  # land exactly on likely fire times
    micros = draw(st.sampled_from([0, 1, 500_000]))
    moment = anchor + timedelta(seconds=seconds, microseconds=micros)
    return zone, moment.astimezone(draw(st.sampled_from([zone, UTC])))


def offset(moment: datetime, zone: ZoneInfo) -> timedelta:
    found = moment.astimezone(zone).utcoffset()
    assert found is not None
    return found


def is_repeated(wall: datetime, zone: ZoneInfo) -> bool:
    return wall.replace(tzinfo=zone).utcoffset() != wall.replace(tzinfo=zone, fold=1).utcoffset()


@settings(max_examples=300, deadline=None)
@given(expressions(seconds=True, dense=False), zoned_starts(before=3 * 86400, after=3 * 86400))
def test_fires_increase_and_match(oracle: Oracle, start: tuple[ZoneInfo, datetime]) -> None:
    zone, after = start
    if oracle.impossible():
        with pytest.raises(CronError):
            parse_cron(oracle.text)
        return
    assert parse_cron(oracle.text).fixed_hour is oracle.fixed
    # same-zone datetimes compare by wall clock in Python, so compare in UTC
    previous = after.astimezone(UTC)
    for fired in fire_times(oracle.text, after, zone, 6):
        assert fired.astimezone(UTC) > previous
        previous = fired.astimezone(UTC)
        local = fired.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if oracle.matches(wall):
            assert not (oracle.fixed and is_repeated(wall, zone) and local.fold)
            continue
        # otherwise it must stand in for a wall time inside a skipped stretch
        instant = fired.astimezone(UTC)
        gap = offset(instant, zone) - offset(instant - timedelta(microseconds=1), zone)
        assert oracle.fixed and gap > timedelta(0)
        skipped = range(1, int(gap.total_seconds()) + 1)
        assert any(oracle.matches(wall - timedelta(seconds=s)) for s in skipped)


HORIZON = timedelta(hours=8)


def brute_force(oracle: Oracle, after: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every fire in (after, after + HORIZON], minute by minute, straight from the
    policy (docs/compatibility.md, Daylight saving)."""
    fires: list[datetime] = []
    moment = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while moment <= after.astimezone(UTC) + HORIZON:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if oracle.matches(wall) and not (oracle.fixed and local.fold):
            fires.append(moment)
        shift = offset(moment, zone) - offset(moment - timedelta(minutes=1), zone)
        if oracle.fixed and shift > timedelta(0) and moment not in fires[-1:]:
            skipped = range(1, int(shift.total_seconds()) // 60 + 1)
            if any(oracle.matches(wall - timedelta(minutes=m)) for m in skipped):
                fires.append(moment)
        moment += timedelta(minutes=1)
    return fires


@settings(max_examples=150, deadline=None)
@given(expressions(seconds=False, dense=True), zoned_starts(before=8 * 3600, after=2 * 3600))
def test_fires_equal_brute_force(oracle: Oracle, start: tuple[ZoneInfo, datetime]) -> None:
    zone, after = start
    if oracle.impossible():
        return
    expected = brute_force(oracle, after, zone)
    got = fire_times(oracle.text, after, zone, len(expected) + 1)
    assert [t.isoformat() for t in got[:-1]] == [t.astimezone(zone).isoformat() for t in expected]
    assert got[-1].astimezone(UTC) > after.astimezone(UTC) + HORIZON


@st.composite
def day_rules(draw: st.DrawFn) -> Oracle:
    """Midnight rules with random day-of-month, month and day-of-week fields."""
    drawn = [draw(st.one_of(st.just(unrestricted(i)), field_text(i), field_text(i, kinds=("*/n",))))
             for i in (3, 4, 5)]
    text = "0 0 " + " ".join(d[0] for d in drawn)
    midnight = (frozenset({0}),) * 3
    return Oracle(text, midnight + tuple(d[1] for d in drawn), drawn[0][2], drawn[2][2], True)


@settings(max_examples=100, deadline=None)
@given(day_rules(), st.dates(date(2024, 1, 1), date(2026, 12, 31)))
def test_day_matching_equals_brute_force(oracle: Oracle, first: date) -> None:
    if oracle.impossible():
        return
    start = datetime.combine(first, time(), UTC)
    days = [start + timedelta(days=k) for k in range(1, 367)]
    expected = [day for day in days if oracle.matches(day.replace(tzinfo=None))]
    got = fire_times(oracle.text, start, UTC, len(expected) + 1)
    assert [t.isoformat() for t in got[:-1]] == [t.isoformat() for t in expected]
    assert got[-1] > days[-1]


TOKENS = ["TZ=", "CRON_TZ=", "UTC", "Europe/Berlin", "Nope", "@every", "@daily", "@", "*", "?",
          "/", "-", ",", "0", "7", "31", "60", "99999999999999999999", "MON", "jan", "L", "W",
          "#", "H", " ", "\t", "1h", "5m", ".5", "s", "+", "\u00b5s", "d", "\x00", "\u0663"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.lists(st.sampled_from(TOKENS), max_size=14).map("".join),
                 st.lists(st.sampled_from(TOKENS), max_size=10).map(" ".join)))
def test_arbitrary_text_raises_only_cron_error(text: str) -> None:
    try:
        sched = parse_cron(text)
    except CronError:
        return
    with contextlib.suppress(CronError):
        next_fire(sched, SAT, UTC)


def test_tz_local_is_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """robfig/cron's `Local` (as `TZ=Local` or `CRON_TZ=Local`) names the machine's zone;
    so does `timezone = "Local"` in the config."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    for rule in ("TZ=Local 0 9 * * *", "CRON_TZ=Local 0 9 * * *"):
        assert schedule_zone(rule, ZoneInfo("UTC")) == ZoneInfo("Asia/Tokyo")
    assert resolve_zone("Local") == ZoneInfo("Asia/Tokyo")
