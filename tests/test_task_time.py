"""The time of a task (docs/compatibility.md, Task time): TaskTime, InfoTime and PathTime.

None stands for Go's zero time ("no time known"). Every time found is UTC.
Expectations follow the reference: TaskTime prefers meta `cron=`; InfoTime refuses
an info that is not a URL, then tries three regexes (substring matches, each
falling through when its match is not a valid date), then PathTime of the URL's
path; in PathTime the first rule that matches decides, valid date or not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlord.templates import info_time, path_time, task_time
from tests.helpers import utc


def assert_utc(t: datetime | None) -> None:
    assert t is not None
    assert t.utcoffset() == timedelta(0)


# --- TaskTime ---------------------------------------------------------------------------


def test_task_time_prefers_the_cron_meta_over_the_info() -> None:
    t = task_time({"cron": "2026-11-23T14", "workflow": "a.toml"},
                  "?day=2020-03-05&hour=2020-03-05T11")
    assert t == utc(2026, 11, 23, 14)
    assert_utc(t)


def test_task_time_without_cron_reads_the_info() -> None:
    assert task_time({"workflow": "a.toml"}, "?hour=2020-03-05T11") == utc(2020, 3, 5, 11)
    assert task_time({}, "gs://bucket/logs/2020/03/05/11/f.json") == utc(2020, 3, 5, 11)


@pytest.mark.parametrize("cron", [
    "",                   # empty
    "2026-13-01T00",      # month 13
    "2026-02-30T00",      # no such day
    "2026-11-23T24",      # hour 24
    "2026-11-23",         # no hour
    "2026-11-23T14:00",   # more than the hour
    "2026-11-23T14Z",
    " 2026-11-23T14",
    "2026-1-23T14",       # Go's "01" needs two digits
    "2026-11-3T14",       # Go's "02" needs two digits
    "٢٠٢٦-11-23T14",      # not ASCII digits
    "yesterday",
])
def test_a_cron_meta_that_does_not_parse_falls_back_to_the_info(cron: str) -> None:
    assert task_time({"cron": cron}, "?day=2020-03-05") == utc(2020, 3, 5)
    assert task_time({"cron": cron}, "no time here") is None


def test_a_cron_meta_hour_of_one_digit_parses_as_in_go() -> None:
    # Go's hour field ("15") takes one or two digits
    assert task_time({"cron": "2026-11-23T3"}, "") == utc(2026, 11, 23, 3)


def test_task_time_is_none_when_neither_meta_nor_info_has_a_time() -> None:
    assert task_time({}, "") is None
    assert task_time({"workflow": "a.toml", "job": "j"}, "s3://bucket/file.txt") is None


# --- InfoTime: the three regexes in their order -----------------------------------------


@pytest.mark.parametrize(("info", "expected"), [
    ("?day=2020-03-05T11:12:15Z", utc(2020, 3, 5, 11, 12, 15)),
    ("?date=2020-03-05T11:12:15Z", utc(2020, 3, 5, 11, 12, 15)),
    ("?time=2020-03-05T11:12:15Z", utc(2020, 3, 5, 11, 12, 15)),
    ("?timestamp=2020-03-05T11:12:15Z", utc(2020, 3, 5, 11, 12, 15)),
    ("?time:2020-03-05T11:12:15Z", utc(2020, 3, 5, 11, 12, 15)),
    ("?date=2020-03-05T11", utc(2020, 3, 5, 11)),
    ("?hour=2020-03-05T11", utc(2020, 3, 5, 11)),
    ("?hour_utc=2020-03-05T11", utc(2020, 3, 5, 11)),
    ("?day=2020-03-05", utc(2020, 3, 5)),
    ("?date=2020-03-05", utc(2020, 3, 5)),
    ("?x=1&date=2020-03-05", utc(2020, 3, 5)),
])
def test_info_time_reads_day_date_hour_and_timestamp_values(info: str,
                                                            expected: datetime) -> None:
    t = info_time(info)
    assert t == expected
    assert_utc(t)


def test_hour_with_a_full_timestamp_yields_the_hour() -> None:
    # `hour` is not a key of the second-precision regex: the hour regex matches its start
    assert info_time("?hour=2020-03-05T11:12:15Z") == utc(2020, 3, 5, 11)


def test_day_with_an_hour_only_yields_the_day() -> None:
    # `day` is not a key of the hour regex
    assert info_time("?day=2020-03-05T11") == utc(2020, 3, 5)


@pytest.mark.parametrize("info", [
    "?map=day:2020-03-05",
    "?birthday=2020-03-05",
    "?x=1&date=2020-03-05",
    "s3://bucket/f.txt?holiday=2020-03-05",
    "day=2020-03-05",
])
def test_the_regexes_match_anywhere_in_the_info(info: str) -> None:
    assert info_time(info) == utc(2020, 3, 5)


def test_only_a_literal_z_ends_a_timestamp() -> None:
    # an offset is not read by the timestamp regex; the hour regex (date=) still matches
    assert info_time("?date=2020-03-05T11:12:15+02:00") == utc(2020, 3, 5, 11)
    # `time=` is in neither the hour nor the day regex: nothing is found
    assert info_time("?time=2020-03-05T11:12:15+02:00") is None


def test_the_regex_order_decides_between_keys() -> None:
    # a timestamp beats an hour beats a day, whatever their order in the info
    assert info_time("?day=2021-01-01&hour=2020-03-05T11&time=2019-07-08T01:02:03Z") == (
        utc(2019, 7, 8, 1, 2, 3))
    assert info_time("?day=2021-01-01&hour=2020-03-05T11") == utc(2020, 3, 5, 11)


def test_a_matching_but_invalid_timestamp_falls_through_to_the_hour() -> None:
    assert info_time("?time=2020-13-05T11:12:15Z&hour=2020-03-05T11") == utc(2020, 3, 5, 11)
    assert info_time("?time=2020-03-05T11:12:60Z&hour=2020-03-05T11") == utc(2020, 3, 5, 11)


def test_a_matching_but_invalid_hour_falls_through_to_the_day() -> None:
    assert info_time("?hour=2020-03-05T25&day=2020-03-06") == utc(2020, 3, 6)


def test_a_matching_but_invalid_day_falls_through_to_the_path() -> None:
    assert info_time("gs://b/2020/03/05/11/f.json?day=2020-13-05") == utc(2020, 3, 5, 11)
    assert info_time("gs://b/f.json?day=2021-02-29") is None


def test_an_invalid_date_value_falls_through_all_regex_steps() -> None:
    # date= matches all three regexes; each match is invalid
    assert info_time("/data/2020/03/05/f.json?date=2020-02-30T11:00:00Z") == utc(2020, 3, 5)


def test_only_the_first_match_of_a_regex_is_tried() -> None:
    # Go's FindStringSubmatch: the later valid day= is not reached by the day regex
    assert info_time("?day=2020-13-01&day=2020-03-05") is None


def test_info_time_falls_back_to_the_path_of_the_url() -> None:
    assert info_time("gs://bucket/logs/20180214T140000.json.gz") == utc(2018, 2, 14, 14)
    assert info_time("s3://bucket/2020/03/05/file.txt?x=1") == utc(2020, 3, 5)
    assert info_time("/local/dir/2020-03-05.csv") == utc(2020, 3, 5)


def test_the_host_and_the_query_are_not_part_of_the_path() -> None:
    # the path rules look at the URL path only: a date in the host or query is not read
    assert info_time("gs://2020-03-05/file.txt") is None
    assert info_time("gs://bucket/file.txt?file=2020/03/05") is None


def test_the_path_is_read_unescaped_as_go_does() -> None:
    assert info_time("gs://bucket/2020%2F03%2F05/f.txt") == utc(2020, 3, 5)


@pytest.mark.parametrize("info", [
    "//[bucket/2020/03/05/f.txt?day=2020-03-05",    # missing ']' in host
    "gs://bucket:port/2020/03/05?day=2020-03-05",   # invalid port
    "gs://bucket/100%/2020/03/05?day=2020-03-05",   # bad escape in the path
    "map=day:2020-03-05",                           # colon in a relative first segment
    ":day=2020-03-05",                              # missing protocol scheme
    "?day=2020-03-05\n",                            # a control character
    "gs://bucket/2020/03/05#%zz",                   # bad escape in the fragment
])
def test_an_info_that_is_not_a_url_has_no_time(info: str) -> None:
    assert info_time(info) is None


def test_an_info_with_a_scheme_and_no_slash_is_an_opaque_url() -> None:
    # `day:2020-03-05` parses with scheme `day`; the regexes still read the raw info
    assert info_time("day:2020-03-05") == utc(2020, 3, 5)
    # an opaque URL has no path to read
    assert info_time("data:2020/03/05") is None


def test_info_time_is_none_without_any_time() -> None:
    assert info_time("") is None
    assert info_time("?x=1&y=2") is None
    assert info_time("s3://bucket/file.txt") is None


@pytest.mark.parametrize("info", [
    "?day=٢٠٢٠-03-05",
    "?hour=٢٠٢٠-03-05T11",
    "/data/٢٠٢٠/03/05/f.txt",
])
def test_only_ascii_digits_are_digits(info: str) -> None:
    # Go's \d is [0-9]
    assert info_time(info) is None


# --- PathTime: the first matching rule decides ------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("/path/20180214T140000.txt", utc(2018, 2, 14, 14)),
    ("20180214T140526", utc(2018, 2, 14, 14, 5, 26)),
    ("/path/2018/02/14/14/file.txt", utc(2018, 2, 14, 14)),
    ("/path/2018/02/14/file.txt", utc(2018, 2, 14)),
    ("/path/2018-02-14.txt", utc(2018, 2, 14)),
    ("/path/2018/02/file.txt", utc(2018, 2, 1)),
    ("gs://bucket/2018/02/14/14/f.gz", utc(2018, 2, 14, 14)),
])
def test_path_time_rules(path: str, expected: datetime) -> None:
    t = path_time(path)
    assert t == expected
    assert_utc(t)


def test_path_rules_match_substrings() -> None:
    assert path_time("/a/x2018/02/14/14y/f") == utc(2018, 2, 14, 14)
    assert path_time("/a/log-2018-02-14-v2.txt") == utc(2018, 2, 14)
    assert path_time("/a/name_20180214T140000_v2.gz") == utc(2018, 2, 14, 14)


def test_the_timestamp_rule_looks_at_the_file_name_only() -> None:
    # in a directory name it is not read; the later rules then apply to the whole path
    assert path_time("/data/20180214T140000/2019/03/04/f.txt") == utc(2019, 3, 4)
    assert path_time("/data/20180214T140000/f.txt") is None


def test_the_timestamp_rule_beats_the_slug_rules() -> None:
    assert path_time("/data/2019/03/04/05/20180214T140000.txt") == utc(2018, 2, 14, 14)


def test_the_hour_slug_beats_the_day_slug_beats_the_dash_day_beats_the_month() -> None:
    assert path_time("/2019-03-04/2018/02/14/15/f") == utc(2018, 2, 14, 15)
    assert path_time("/2019-03-04/2018/02/14/f") == utc(2018, 2, 14)
    assert path_time("/2018/02/v-2019-03-04.txt") == utc(2019, 3, 4)


@pytest.mark.parametrize("path", [
    "/data/20181314T140000.txt",        # month 13 in the file name
    "/data/2020/13/45/12/f.txt",        # hour slug, invalid date
    "/data/2020/13/45/f.txt",           # day slug, invalid date
    "/data/2020/02/30/f.txt",
    "/data/2020-13-45.txt",             # dash day, invalid date
    "/data/2020/13/f.txt",              # month slug, month 13
    "/data/2020/00/f.txt",
])
def test_an_invalid_first_match_gives_no_time(path: str) -> None:
    assert path_time(path) is None


def test_an_invalid_first_match_does_not_try_the_later_rules() -> None:
    # each later rule would have found a valid date
    assert path_time("/2019/03/04/05/20181314T140000.txt") is None
    assert path_time("/2020/02/30/11/2019-03-04.txt") is None
    assert path_time("/2020/13/45/v-2019-03-04.txt") is None
    assert path_time("/2020-13-45/2019/03.txt") is None


def test_path_time_is_none_without_a_date() -> None:
    assert path_time("") is None
    assert path_time("/data/file.txt") is None
    assert path_time("/data/202/03/f") is None
    assert path_time("/data/٢٠٢٠/03/f") is None


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
def test_every_file_timestamp_is_read_back(t: datetime) -> None:
    t = t.replace(microsecond=0, tzinfo=UTC)
    assert path_time(f"gs://b/dir/{t:%Y%m%dT%H%M%S}.json") == t
    assert info_time(f"gs://b/dir/{t:%Y%m%dT%H%M%S}.json") == t
    assert info_time(f"?time={t:%Y-%m-%dT%H:%M:%S}Z") == t
    assert task_time({"cron": f"{t:%Y-%m-%dT%H}"}, "") == t.replace(minute=0, second=0)
