"""Building the tasks of a cron fire, a batch and a backload (docs/compatibility.md,
Tasks of a fire; Backload and trigger; Task time; Meta).

Expectations are worked out from the reference's rules, with the deliberate
divergences documented in `flowlord/tasks.py`: the template time is the slot plus
the offset in real time, rendered in the configured zone; a batch starts at that
time truncated to the hour on the wall clock; day/week/month steps keep the wall
clock; meta values are percent-encoded; meta-file JSON values render as JSON.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlord import tasks as tasks_module
from flowlord.loader import load_bytes
from flowlord.model import Phase, Task
from flowlord.rules import parse_query, parse_rule
from flowlord.tasks import (
    BuildError,
    Context,
    backload_steps,
    build_fire,
    data_time,
    encode_meta,
    expand,
    fire_tasks,
    is_batch,
    meta_rows,
    rfc3339,
    step,
    steps,
)
from tests.helpers import FIXTURES, utc

NY = ZoneInfo("America/New_York")
CREATED = datetime(2026, 11, 23, 14, 5, 6, 789000, tzinfo=UTC)
SLOT = datetime(2026, 11, 23, 14, 17, 0, tzinfo=UTC)
DAY = "?day={yyyy}-{mm}-{dd}T{hh}"


def context(meta_dir: Path | str = ".", zone: ZoneInfo | None = None) -> Context:
    return Context(zone or ZoneInfo("UTC"), str(meta_dir), CREATED)


def phase(rule: str = "", template: str = DAY, task: str = "topic",
          file: str = "a.toml") -> Phase:
    return Phase(file, task, rule=rule, template=template)


def meta(task: Task) -> dict[str, str]:
    """The task's meta as a dict, read the way the rest of flowlord reads it."""
    pairs, ok = parse_query(task.meta)
    assert ok, task.meta
    assert len({k for k, _ in pairs}) == len(pairs), task.meta
    return dict(pairs)


def keys(task: Task) -> list[str]:
    return [k for k, _ in parse_query(task.meta)[0]]


def infos(built: list[Task]) -> list[str]:
    return [t.info for t in built]


@pytest.fixture
def presidents(tmp_path: Path) -> Path:
    """A directory holding the upstream presidents.json (JSON lines, four rows)."""
    d = tmp_path / "meta"
    d.mkdir()
    shutil.copy(FIXTURES / "presidents.json", d / "presidents.json")
    return d


# --- encoding meta (docs/compatibility.md, Meta) --------------------------------------


def test_meta_pairs_join_as_a_query_string_in_the_given_order() -> None:
    assert encode_meta([("workflow", "a.toml"), ("cron", "2026-11-23T14"), ("job", "j")]) == (
        "workflow=a.toml&cron=2026-11-23T14&job=j")
    assert encode_meta([]) == ""


def test_values_without_special_characters_stay_raw() -> None:
    assert encode_meta([("file", "s3://b/dir/f.txt"), ("u", "µs-ünï"), ("d", "a,b|c:d")]) == (
        "file=s3://b/dir/f.txt&u=µs-ünï&d=a,b|c:d")


@pytest.mark.parametrize(("value", "encoded"), [
    ("george washington", "george%20washington"),
    ("a&b", "a%26b"),
    ("x=1", "x%3D1"),
    ("1+1", "1%2B1"),
    ("100%", "100%25"),
    ("%20", "%2520"),
])
def test_ampersand_equals_percent_plus_and_space_are_percent_encoded(
        value: str, encoded: str) -> None:
    assert encode_meta([("k", value)]) == f"k={encoded}"
    assert parse_query(f"k={encoded}") == ([("k", value)], True)


def test_keys_are_encoded_too() -> None:
    text = encode_meta([("a b", "1"), ("c&d", "2")])
    assert parse_query(text) == ([("a b", "1"), ("c&d", "2")], True)


@given(st.lists(st.tuples(st.text(), st.text()), max_size=8))
def test_encoded_meta_parses_back_to_the_same_pairs(pairs: list[tuple[str, str]]) -> None:
    assert parse_query(encode_meta(pairs)) == (pairs, True)


# --- small helpers: rfc3339, data_time, is_batch ----------------------------------------


def test_rfc3339_is_utc_with_whole_seconds() -> None:
    assert rfc3339(CREATED) == "2026-11-23T14:05:06Z"
    assert rfc3339(datetime(2026, 7, 1, 9, 30, 15, 999999, tzinfo=NY)) == "2026-07-01T13:30:15Z"


def test_the_data_time_is_the_slot_plus_the_offset_in_the_zone() -> None:
    t = data_time(SLOT, timedelta(hours=-4), NY)
    assert t.utcoffset() == timedelta(hours=-5)
    assert (t.year, t.month, t.day, t.hour, t.minute) == (2026, 11, 23, 5, 17)


def test_the_offset_is_real_elapsed_time_across_spring_forward() -> None:
    # 06:30Z is 01:30 EST; an hour later it is 03:30 EDT (02:xx does not exist)
    t = data_time(utc(2026, 3, 8, 6, 30), timedelta(hours=1), NY)
    assert (t.hour, t.minute, t.utcoffset()) == (3, 30, timedelta(hours=-4))


def test_the_offset_is_real_elapsed_time_across_fall_back() -> None:
    # 05:30Z is 01:30 EDT; an hour later it is 01:30 again, now EST
    t = data_time(utc(2026, 11, 1, 5, 30), timedelta(hours=1), NY)
    assert (t.hour, t.minute, t.utcoffset()) == (1, 30, timedelta(hours=-5))


@pytest.mark.parametrize(("rule", "batch"), [
    ("cron=0 * * * *", False),
    ("cron=0 * * * *&by=hour", False),  # by alone does not make a batch
    ("cron=0 * * * *&offset=-4h", False),
    ("cron=0 * * * *&for=0s", False),
    ("cron=0 * * * *&for=-48h", True),
    ("cron=0 * * * *&meta=k:a,b", True),
    ("cron=0 * * * *&meta=k:", True),  # one entry, without values
    ("cron=0 * * * *&meta-file=rows.json", True),
])
def test_what_makes_a_batch(rule: str, batch: bool) -> None:
    assert is_batch(parse_rule(rule)) is batch


# --- a plain cron job (§5.3) ------------------------------------------------------------


def test_a_plain_job_renders_the_time_only_and_keeps_meta_tokens() -> None:
    p = phase("cron=17 * * * *&offset=-4h",
              "?date={yyyy}-{mm}-{dd}T{hh}:{min}&name={meta:name}", task="topic:job")
    [task] = fire_tasks(p, SLOT, context())
    # slot + offset, not truncated: minutes kept
    assert task.info == "?date=2026-11-23T10:17&name={meta:name}"
    assert task.meta == "workflow=a.toml&cron=2026-11-23T10&job=job"
    assert (task.type, task.job, task.created) == ("topic", "job", "2026-11-23T14:05:06.789Z")
    assert uuid.UUID(task.id).version == 4
    assert (task.result, task.msg, task.started, task.ended) == ("", "", "", "")


def test_a_plain_job_without_a_job_has_no_job_in_meta() -> None:
    [task] = fire_tasks(phase("cron=17 * * * *"), SLOT, context())
    assert task.meta == "workflow=a.toml&cron=2026-11-23T14"
    assert task.job == ""


def test_a_job_from_the_rule_is_the_tasks_job() -> None:
    p = Phase("a.toml", "topic:nightly", rule="cron=17 * * * *&job=nightly")
    [task] = fire_tasks(p, SLOT, context())
    assert task.job == "nightly"
    assert meta(task)["job"] == "nightly"


def test_a_plain_job_renders_in_the_configured_zone() -> None:
    [task] = fire_tasks(phase("cron=17 * * * *"), SLOT, context(zone=NY))
    assert task.info == "?day=2026-11-23T09"  # 14:17Z is 09:17 EST
    assert meta(task)["cron"] == "2026-11-23T09"


def test_by_alone_keeps_a_plain_job_untruncated() -> None:
    built = fire_tasks(phase("cron=17 * * * *&by=hour", "{hh}:{min}"), SLOT, context())
    assert infos(built) == ["14:17"]


def test_a_workflow_key_with_spaces_is_percent_encoded_in_meta() -> None:
    [task] = fire_tasks(phase("cron=17 * * * *", file="my flows/a b.toml"), SLOT, context())
    assert "workflow=my%20flows/a%20b.toml&" in task.meta
    assert meta(task)["workflow"] == "my flows/a b.toml"


def test_every_task_gets_a_fresh_id() -> None:
    p = phase("cron=17 * * * *&meta=k:a,b,c")
    ids = [t.id for t in fire_tasks(p, SLOT, context()) + fire_tasks(p, SLOT, context())]
    assert len(set(ids)) == 6
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_task_json_has_flowlords_key_order_and_leaves_empty_keys_out() -> None:
    [task] = fire_tasks(phase("cron=17 * * * *", "?a=1&b=<x>", task="topic:job"), SLOT,
                        context())
    text = task.to_json()
    assert list(json.loads(text)) == ["type", "job", "info", "created", "id", "meta"]
    assert '"info":"?a=1&b=<x>"' in text  # no HTML escaping
    assert not text.endswith("\n")
    [bare] = fire_tasks(phase("cron=17 * * * *", ""), SLOT, context())
    assert json.loads(bare.to_json()) == {
        "type": "topic", "info": "", "created": "2026-11-23T14:05:06.789Z", "id": bare.id,
        "meta": "workflow=a.toml&cron=2026-11-23T14"}


# --- batch: for / by (§3.8) -------------------------------------------------------------


def test_a_batch_starts_at_the_hour_and_includes_its_end() -> None:
    built = fire_tasks(phase("cron=17 * * * *&for=2h&by=hour", "{hh}:{min}"), SLOT, context())
    assert infos(built) == ["14:00", "15:00", "16:00"]
    assert [meta(t)["cron"] for t in built] == ["2026-11-23T14", "2026-11-23T15",
                                                "2026-11-23T16"]


def test_a_negative_for_goes_back_and_comes_newest_first() -> None:
    # the upstream batch-date phase, with the rule written without its leading '?'
    built = fire_tasks(phase("for=-48h&offset=-24h", "?day={yyyy}-{mm}-{dd}"), SLOT,
                       context())
    # now + offset = 2026-11-22 14:17 → start 14:00 → end 2026-11-20 14:00, by day
    assert infos(built) == ["?day=2026-11-22", "?day=2026-11-21", "?day=2026-11-20"]


def test_batch_meta_keys_are_sorted() -> None:
    built = fire_tasks(phase("for=1h&by=hour", task="topic:job"), SLOT, context())
    assert [keys(t) for t in built] == [["cron", "job", "workflow"]] * 2
    assert built[0].meta == "cron=2026-11-23T14&job=job&workflow=a.toml"


@pytest.mark.parametrize("by", ["hour", "HOUR", "Hourly", "hourly"])
def test_by_is_case_insensitive(by: str) -> None:
    built = fire_tasks(phase(f"for=1h&by={by}", "{hh}"), SLOT, context())
    assert infos(built) == ["14", "15"]


@pytest.mark.parametrize("by", ["", "day", "daily", "DAY", "Daily"])
def test_the_default_step_is_a_day(by: str) -> None:
    built = fire_tasks(phase(f"for=48h&by={by}", "{dd}T{hh}"), SLOT, context())
    assert infos(built) == ["23T14", "24T14", "25T14"]


def test_week_and_month_steps() -> None:
    weekly = fire_tasks(phase("for=408h&by=week", "{mm}-{dd}"), SLOT, context())  # 17 days
    assert infos(weekly) == ["11-23", "11-30", "12-07"]
    # 61 days: 23 January 14:00 is the end itself, which is included
    monthly = fire_tasks(phase("for=1464h&by=monthly", "{yyyy}-{mm}-{dd}"), SLOT, context())
    assert infos(monthly) == ["2026-11-23", "2026-12-23", "2027-01-23"]


def test_a_batch_renders_the_template_at_each_step() -> None:
    built = fire_tasks(phase("for=2h&by=hour", "{SLUG}/{TS}#{hh}"), SLOT, context())
    assert infos(built) == ["2026/11/23/14/20261123T140000#{hh}",
                            "2026/11/23/15/20261123T150000#{hh}",
                            "2026/11/23/16/20261123T160000#{hh}"]


# --- DST: batch hour and day steps ------------------------------------------------------


def wall(ts: list[datetime]) -> list[tuple[int, int, int]]:
    """(day, hour, UTC offset in hours) of each time."""
    return [(t.day, t.hour, int(t.utcoffset().total_seconds() // 3600))  # type: ignore[union-attr]
            for t in ts]


def test_hour_steps_skip_the_missing_hour_at_spring_forward() -> None:
    start = datetime(2026, 3, 8, 0, 0, tzinfo=NY)  # 05:00Z
    end = (start.astimezone(UTC) + timedelta(hours=3)).astimezone(NY)  # 04:00 EDT, 08:00Z
    got = steps(start, end, "hour", NY)
    assert wall(got) == [(8, 0, -5), (8, 1, -5), (8, 3, -4), (8, 4, -4)]
    assert [t.astimezone(UTC).hour for t in got] == [5, 6, 7, 8]


def test_hour_steps_repeat_the_wall_hour_at_fall_back() -> None:
    start = datetime(2026, 11, 1, 0, 0, tzinfo=NY)  # 04:00Z
    end = (start.astimezone(UTC) + timedelta(hours=3)).astimezone(NY)  # 02:00 EST
    got = steps(start, end, "hour", NY)
    assert wall(got) == [(1, 0, -4), (1, 1, -4), (1, 1, -5), (1, 2, -5)]
    assert [t.astimezone(UTC).hour for t in got] == [4, 5, 6, 7]


def test_a_range_ending_at_the_first_of_the_repeated_hours_stops_there() -> None:
    start = datetime(2026, 11, 1, 0, 0, tzinfo=NY)  # 04:00Z
    end = (start.astimezone(UTC) + timedelta(hours=1)).astimezone(NY)  # 01:00 EDT, 05:00Z
    assert wall(steps(start, end, "hour", NY)) == [(1, 0, -4), (1, 1, -4)]


def test_a_backwards_range_over_the_repeated_hour_has_both() -> None:
    start = datetime(2026, 11, 1, 1, 0, fold=1, tzinfo=NY)  # 01:00 EST, 06:00Z
    end = (start.astimezone(UTC) - timedelta(hours=1)).astimezone(NY)  # 01:00 EDT, 05:00Z
    assert wall(steps(start, end, "hour", NY)) == [(1, 1, -5), (1, 1, -4)]


def test_a_batch_fire_in_the_repeated_hour_steps_by_real_hours() -> None:
    # 05:30Z is 01:30 EDT; the batch starts at 01:00 EDT and a real hour later is 01:00 EST
    built = fire_tasks(phase("for=1h&by=hour", "{dd}T{hh}:{min}"), utc(2026, 11, 1, 5, 30),
                       context(zone=NY))
    assert infos(built) == ["01T01:00", "01T01:00"]
    assert [meta(t)["cron"] for t in built] == ["2026-11-01T01"] * 2


def test_a_backwards_batch_fire_in_the_second_repeated_hour() -> None:
    # 06:30Z is 01:30 EST; the batch is [01:00 EDT, 01:00 EST], newest first
    built = fire_tasks(phase("for=-1h&by=hour", "{hh}"), utc(2026, 11, 1, 6, 30),
                       context(zone=NY))
    assert infos(built) == ["01", "01"]
    built = fire_tasks(phase("for=-2h&by=hour", "{hh}"), utc(2026, 11, 1, 6, 30),
                       context(zone=NY))
    assert infos(built) == ["01", "01", "00"]


def test_a_batch_fire_across_spring_forward_by_hour() -> None:
    # 06:10Z is 01:10 EST; start 01:00 EST, two real hours later is 04:00 EDT
    built = fire_tasks(phase("for=2h&by=hour", "{hh}"), utc(2026, 3, 8, 6, 10),
                       context(zone=NY))
    assert infos(built) == ["01", "03", "04"]


def test_day_steps_keep_midnight_across_spring_forward() -> None:
    start = datetime(2026, 3, 7, 0, 0, tzinfo=NY)  # 05:00Z
    end = datetime(2026, 3, 9, 1, 0, tzinfo=NY)  # 05:00Z, 48 real hours later
    got = steps(start, end, "day", NY)
    assert wall(got) == [(7, 0, -5), (8, 0, -5), (9, 0, -4)]
    # the day of the change is 23 hours long
    assert got[2].astimezone(UTC) - got[1].astimezone(UTC) == timedelta(hours=23)


def test_day_steps_keep_midnight_across_fall_back() -> None:
    start = datetime(2026, 10, 31, 0, 0, tzinfo=NY)
    got = steps(start, datetime(2026, 11, 2, 0, 0, tzinfo=NY), "day", NY)
    assert wall(got) == [(31, 0, -4), (1, 0, -4), (2, 0, -5)]
    assert got[2].astimezone(UTC) - got[1].astimezone(UTC) == timedelta(hours=25)


def test_a_day_batch_across_fall_back_ends_after_for_in_real_time() -> None:
    # start 2026-10-31 00:00 EDT; for=48h ends at 2026-11-01 23:00 EST (the day has 25 h),
    # so the third midnight is past the end
    built = fire_tasks(phase("for=48h", "{mm}-{dd}T{hh}"), utc(2026, 10, 31, 4, 20),
                       context(zone=NY))
    assert infos(built) == ["10-31T00", "11-01T00"]


def test_a_backwards_day_batch_across_spring_forward_is_anchored_at_its_earlier_end() -> None:
    # start 2026-03-09 00:00 EDT (04:00Z); 48 real hours back is 2026-03-06 23:00 EST, and
    # the day steps walk from there at 23:00 wall-clock time
    built = fire_tasks(phase("for=-48h", "{mm}-{dd}T{hh}"), utc(2026, 3, 9, 4, 0),
                       context(zone=NY))
    assert infos(built) == ["03-08T23", "03-07T23", "03-06T23"]


def test_a_day_batch_across_spring_forward_keeps_the_hour() -> None:
    built = fire_tasks(phase("for=48h", "{mm}-{dd}T{hh}"), utc(2026, 3, 7, 15, 0),
                       context(zone=NY))  # 10:00 EST
    assert infos(built) == ["03-07T10", "03-08T10", "03-09T10"]
    assert [meta(t)["cron"] for t in built] == ["2026-03-07T10", "2026-03-08T10",
                                                "2026-03-09T10"]


def test_week_steps_keep_the_wall_clock_across_dst() -> None:
    t = step(datetime(2026, 3, 5, 12, 0, tzinfo=NY), "week", NY)
    assert wall([t]) == [(12, 12, -4)]
    assert t.month == 3


NY_TIMES = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31),
                        timezones=st.just(NY), allow_imaginary=False)


@given(NY_TIMES, st.integers(-72 * 60, 72 * 60))
def test_hour_steps_are_real_hours_from_the_earlier_end(start: datetime, minutes: int) -> None:
    end = (start.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(NY)
    got = steps(start, end, "hour", NY)
    assert all(t.tzinfo is NY for t in got)
    real = [t.astimezone(UTC) for t in got]
    if minutes < 0:
        real.reverse()  # a backwards range comes newest first
    low, high = sorted([start.astimezone(UTC), end.astimezone(UTC)])
    assert real[0] == low
    assert all(b - a == timedelta(hours=1) for a, b in zip(real, real[1:], strict=False))
    assert real[-1] <= high < real[-1] + timedelta(hours=1)


@given(NY_TIMES.filter(lambda t: t.hour not in (1, 2)), st.integers(0, 40))
def test_day_steps_are_calendar_days_at_the_same_wall_clock(start: datetime, days: int) -> None:
    # away from 01:00-02:59 every wall-clock time exists once on every day
    end = start.replace(tzinfo=None) + timedelta(days=days)
    got = steps(start, end.replace(tzinfo=NY), "day", NY)
    assert len(got) == days + 1
    for i, t in enumerate(got):
        assert t.replace(tzinfo=None) == start.replace(tzinfo=None) + timedelta(days=i)
        assert t.utcoffset() == t.astimezone(UTC).astimezone(NY).utcoffset()


# --- steps: months, order, limits -------------------------------------------------------


@pytest.mark.parametrize(("start", "after"), [
    (datetime(2026, 1, 31, 9), datetime(2026, 3, 3, 9)),  # 31 February is 3 March
    (datetime(2024, 1, 31, 9), datetime(2024, 3, 2, 9)),  # a leap year
    (datetime(2026, 1, 15, 9), datetime(2026, 2, 15, 9)),
    (datetime(2026, 12, 15, 9), datetime(2027, 1, 15, 9)),
    (datetime(2026, 10, 31, 9), datetime(2026, 12, 1, 9)),  # 31 November, across fall-back
    (datetime(2026, 2, 28, 9), datetime(2026, 3, 28, 9)),  # across spring-forward
])
def test_a_month_step_is_gos_add_date(start: datetime, after: datetime) -> None:
    got = step(start.replace(tzinfo=NY), "month", NY)
    assert got.replace(tzinfo=None) == after
    assert got.utcoffset() == after.replace(tzinfo=NY).utcoffset()


def test_month_steps_are_anchored_at_the_earlier_end() -> None:
    start = datetime(2026, 3, 31, tzinfo=UTC)
    end = datetime(2026, 1, 31, tzinfo=UTC)
    # walked from 31 January: 3 March, then 3 April is past 31 March
    assert steps(start, end, "month", UTC) == [datetime(2026, 3, 3, tzinfo=UTC),
                                               datetime(2026, 1, 31, tzinfo=UTC)]


def test_a_range_of_one_instant_has_one_step() -> None:
    t = datetime(2026, 5, 1, 12, tzinfo=NY)
    assert steps(t, t, "hour", NY) == [t]


def test_steps_come_back_in_the_zone() -> None:
    got = steps(utc(2026, 7, 1, 12), utc(2026, 7, 1, 13), "hour", NY)
    assert [t.utcoffset() for t in got] == [timedelta(hours=-4)] * 2
    assert [t.hour for t in got] == [8, 9]


def test_a_backwards_range_is_the_forward_one_reversed() -> None:
    a, b = utc(2026, 7, 1, 0), utc(2026, 7, 4, 0)
    assert steps(b, a, "day", UTC) == steps(a, b, "day", UTC)[::-1]
    assert len(steps(a, b, "day", UTC)) == 4


def test_too_many_steps_is_a_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_module, "MAX_BATCH_TASKS", 10)
    assert len(steps(utc(2026, 1, 1), utc(2026, 1, 1, 9), "hour", UTC)) == 10
    with pytest.raises(BuildError, match="more than 10"):
        steps(utc(2026, 1, 1), utc(2026, 1, 1, 10), "hour", UTC)


def test_too_many_tasks_is_a_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # three steps of four rows is twelve tasks: over a limit of ten, though neither is
    monkeypatch.setattr(tasks_module, "MAX_BATCH_TASKS", 10)
    p = phase("for=2h&by=hour&meta=k:a,b,c,d", "{meta:k}")
    with pytest.raises(BuildError, match="more than 10"):
        fire_tasks(p, SLOT, context())
    fire = build_fire(p, SLOT, "cron", context())
    assert list(fire.tasks) == []
    assert "more than 10" in fire.error
    with pytest.raises(BuildError, match="more than 10"):
        backload_steps(p, SLOT, SLOT + timedelta(hours=2), "hour", context())
    assert len(backload_steps(p, SLOT, SLOT + timedelta(hours=1), "hour", context())) == 2


# --- meta= rows -------------------------------------------------------------------------


def test_meta_rows_take_value_i_of_every_key() -> None:
    rows = meta_rows(parse_rule("meta=name:a,b,c|value:1,2,3"), ".")
    assert rows == [{"name": "a", "value": "1"}, {"name": "b", "value": "2"},
                    {"name": "c", "value": "3"}]
    assert meta_rows(parse_rule("meta=name:a,b&meta=value:1,2"), ".") == [
        {"name": "a", "value": "1"}, {"name": "b", "value": "2"}]


def test_a_meta_key_without_values_has_no_rows() -> None:
    assert meta_rows(parse_rule("meta=name:"), ".") == []
    # no rows and no meta-file: one time-only task, the tokens left as they are
    built = fire_tasks(phase("meta=name:", "?n={meta:name}&d={dd}"), SLOT, context())
    assert infos(built) == ["?n={meta:name}&d=23"]


def test_a_meta_batch_is_one_task_per_row() -> None:
    # the upstream b-meta phase
    p = phase("meta=key:a,b|val:1,2", "?key={meta:key}&val={meta:val}", task="b-meta")
    built = fire_tasks(p, SLOT, context())
    assert infos(built) == ["?key=a&val=1", "?key=b&val=2"]
    assert [t.meta for t in built] == [
        "cron=2026-11-23T14&key=a&val=1&workflow=a.toml",
        "cron=2026-11-23T14&key=b&val=2&workflow=a.toml"]
    assert {t.type for t in built} == {"b-meta"}


def test_only_the_keys_the_template_uses_go_into_meta() -> None:
    p = phase("meta=a:1,2|b:x,y&job=j", "?a={meta:a}&gone={meta:gone}", task="t:j")
    built = fire_tasks(p, SLOT, context())
    assert infos(built) == ["?a=1&gone=", "?a=2&gone="]
    assert [meta(t) for t in built] == [
        {"a": "1", "gone": "", "cron": "2026-11-23T14", "job": "j", "workflow": "a.toml"},
        {"a": "2", "gone": "", "cron": "2026-11-23T14", "job": "j", "workflow": "a.toml"}]
    assert keys(built[0]) == ["a", "cron", "gone", "job", "workflow"]


def test_rows_times_steps() -> None:
    built = fire_tasks(phase("for=1h&by=hour&meta=k:a,b", "{hh}{meta:k}"), SLOT, context())
    assert infos(built) == ["14a", "14b", "15a", "15b"]


def test_a_backwards_batch_with_rows_is_newest_step_first() -> None:
    built = fire_tasks(phase("for=-1h&by=hour&meta=k:a,b", "{hh}{meta:k}"), SLOT, context())
    assert [t.info[:2] for t in built] == ["14", "14", "13", "13"]
    assert {t.info for t in built[:2]} == {"14a", "14b"}
    assert {t.info for t in built[2:]} == {"13a", "13b"}


def test_meta_values_are_not_time_expanded() -> None:
    p = phase("meta=k:{yyyy}", "{yyyy}/{meta:k}")
    assert infos(fire_tasks(p, SLOT, context())) == ["2026/{yyyy}"]


# --- meta-file rows ---------------------------------------------------------------------


def test_a_meta_file_batch_is_one_task_per_line(presidents: Path) -> None:
    p = phase("meta-file=presidents.json",
              "?president={meta:name}&start={meta:start}&end={meta:end}",
              task="batch-president")
    built = fire_tasks(p, SLOT, context(presidents))
    assert infos(built) == [
        "?president=george washington&start=1789&end=1797",
        "?president=john adams&start=1797&end=1801",
        "?president=thomas jefferson&start=1801&end=1809",
        "?president=james madison&start=1809&end=1817"]
    assert built[0].meta == (
        "cron=2026-11-23T14&end=1797&name=george%20washington&start=1789&workflow=a.toml")
    assert meta(built[3]) == {"cron": "2026-11-23T14", "end": "1817", "name": "james madison",
                              "start": "1809", "workflow": "a.toml"}


def test_a_relative_meta_file_is_found_in_the_meta_dir_not_the_working_dir(
        presidents: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "presidents.json").write_text('{"name": "impostor"}\n')
    monkeypatch.chdir(elsewhere)
    rows = meta_rows(parse_rule("meta-file=presidents.json"), str(presidents))
    assert [r["name"] for r in rows] == ["george washington", "john adams",
                                         "thomas jefferson", "james madison"]


def test_an_absolute_meta_file_ignores_the_meta_dir(presidents: Path, tmp_path: Path) -> None:
    rule = parse_rule(f"meta-file={presidents / 'presidents.json'}")
    assert len(meta_rows(rule, str(tmp_path / "nowhere"))) == 4


def test_a_meta_file_glob_reads_every_match_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "b.json").write_text('{"k": "b1"}\n{"k": "b2"}\n')
    (tmp_path / "rows" / "a.json").write_text('{"k": "a1"}\n')
    (tmp_path / "rows" / "c.txt").write_text('{"k": "not json lines"}\n')
    rows = meta_rows(parse_rule("meta-file=rows/*.json"), str(tmp_path))
    assert rows == [{"k": "a1"}, {"k": "b1"}, {"k": "b2"}]


def test_meta_file_values_render_as_text(tmp_path: Path) -> None:
    row = ('{"s": "x y", "i": 1789, "f": 2.5, "one": 1.0, "neg": -3, "tenth": 0.1, '
           '"n": null, "t": true, "no": false, "o": {"a": 1, "b": [true, null]}, '
           '"arr": [1, "x"], "u": "µ"}')
    (tmp_path / "m.json").write_text(row + "\n", encoding="utf-8")
    [got] = meta_rows(parse_rule("meta-file=m.json"), str(tmp_path))
    assert got == {"s": "x y", "i": "1789", "f": "2.5", "one": "1", "neg": "-3",
                   "tenth": "0.1", "n": "", "t": "true", "no": "false",
                   "o": '{"a":1,"b":[true,null]}', "arr": '[1,"x"]', "u": "µ"}


def test_meta_file_blank_lines_and_crlf_are_fine(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_bytes(b'\r\n{"k": "a"}\r\n\n   \n{"k": "b"}')
    assert meta_rows(parse_rule("meta-file=m.json"), str(tmp_path)) == [{"k": "a"}, {"k": "b"}]


def test_a_meta_file_line_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    # JSON strings may hold U+2028, U+2029 and U+0085 raw; only '\n' ends a line
    rows = [{"k": "a\u2028b"}, {"k": "c\u2029d\x85e"}]
    (tmp_path / "m.json").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert meta_rows(parse_rule("meta-file=m.json"), str(tmp_path)) == rows


def test_a_missing_meta_key_renders_empty(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"a": "1"}\n{"a": "2", "b": "x"}\n')
    built = fire_tasks(phase("meta-file=m.json", "{meta:a}-{meta:b}"), SLOT,
                       context(tmp_path))
    assert infos(built) == ["1-", "2-x"]
    assert [meta(t)["b"] for t in built] == ["", "x"]


def test_an_invalid_meta_file_line_fails_the_whole_batch(upstream: Path) -> None:
    with pytest.raises(BuildError, match="invalid.json line 1"):
        meta_rows(parse_rule("meta-file=invalid.json"), str(upstream))


@pytest.mark.parametrize("line", ['[1, 2]', '"text"', '42', 'null'])
def test_a_meta_file_line_must_be_an_object(tmp_path: Path, line: str) -> None:
    (tmp_path / "m.json").write_text('{"k": "ok"}\n' + line + "\n")
    with pytest.raises(BuildError, match="line 2: not a JSON object"):
        meta_rows(parse_rule("meta-file=m.json"), str(tmp_path))


def test_a_deeply_nested_meta_file_line_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"k": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    with pytest.raises(BuildError, match="line 1"):
        meta_rows(parse_rule("meta-file=m.json"), str(tmp_path))


def test_a_meta_file_that_is_not_utf8_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_bytes(b'{"k": "\xff"}\n')
    with pytest.raises(BuildError, match="cannot read meta-file"):
        meta_rows(parse_rule("meta-file=m.json"), str(tmp_path))


def test_a_missing_meta_file_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="^no files found for .*nothing.json$"):
        meta_rows(parse_rule("meta-file=nothing.json"), str(tmp_path))


def test_an_empty_meta_file_at_one_instant_builds_no_tasks(upstream: Path) -> None:
    p = phase("meta-file=empty.json", "?n={meta:name}")
    assert fire_tasks(p, SLOT, context(upstream)) == []
    fire = build_fire(p, SLOT, "cron", context(upstream))
    assert (list(fire.tasks), fire.error) == ([], "")


def test_an_empty_meta_file_over_a_range_builds_time_only_tasks(upstream: Path) -> None:
    p = phase("meta-file=empty.json&for=1h&by=hour", "{hh}?n={meta:name}")
    built = fire_tasks(p, SLOT, context(upstream))
    assert infos(built) == ["14?n={meta:name}", "15?n={meta:name}"]
    assert [keys(t) for t in built] == [["cron", "workflow"]] * 2


def test_expand_is_flowlords_range(presidents: Path) -> None:
    rule = parse_rule("meta-file=presidents.json")
    p = phase("meta-file=presidents.json", "{dd}:{meta:name}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    built = expand(p, rule, start, start + timedelta(days=1), "day", context(presidents))
    assert len(built) == 8
    assert built[0].info == "01:george washington"
    assert built[7].info == "02:james madison"


# --- the upstream batch.toml fixture ----------------------------------------------------


def test_the_upstream_batch_file_as_flowlord_reads_it(upstream: Path) -> None:
    phases = load_bytes("batch.toml", (upstream / "batch.toml").read_bytes())
    assert not isinstance(phases, str)
    by_task = {p.task: p for p in phases}
    ctx = context(upstream)
    # `?for` is not `for` (a leading '?' is part of the first key): a plain job with offset
    [dated] = fire_tasks(by_task["batch-date"], SLOT, ctx)
    assert dated.info == "?day=2026-11-22"
    assert dated.meta == "workflow=batch.toml&cron=2026-11-22T14"
    # `meta_file` is not `meta-file`: a plain job, its meta tokens stay literal
    [president] = fire_tasks(by_task["batch-president"], SLOT, ctx)
    assert president.info == "?president={meta:name}&start={meta:start}&end={meta:end}"
    keyed = fire_tasks(by_task["b-meta"], SLOT, ctx)
    assert infos(keyed) == ["?key=a&val=1", "?key=b&val=2"]


# --- backload ---------------------------------------------------------------------------


def test_backload_builds_every_step_at_its_own_time_without_the_offset() -> None:
    p = phase("cron=0 5 * * *&offset=-4h", "?day={yyyy}-{mm}-{dd}T{hh}", task="t:j")
    got = backload_steps(p, utc(2026, 11, 20), utc(2026, 11, 22), "day", context())
    assert [t for t, _ in got] == [utc(2026, 11, 20), utc(2026, 11, 21), utc(2026, 11, 22)]
    assert [infos(built) for _, built in got] == [
        ["?day=2026-11-20T00"], ["?day=2026-11-21T00"], ["?day=2026-11-22T00"]]
    assert got[0][1][0].meta == "cron=2026-11-20T00&job=j&workflow=a.toml"


def test_backload_in_either_order_is_oldest_to_newest_or_newest_to_oldest() -> None:
    p = phase("cron=0 * * * *", "{hh}")
    forward = backload_steps(p, utc(2026, 7, 1, 1), utc(2026, 7, 1, 3), "hour", context())
    backward = backload_steps(p, utc(2026, 7, 1, 3), utc(2026, 7, 1, 1), "hour", context())
    assert [t for t, _ in forward] == [t for t, _ in backward][::-1]
    assert [infos(b) for _, b in backward] == [["03"], ["02"], ["01"]]


def test_backload_with_rows(presidents: Path) -> None:
    p = phase("meta-file=presidents.json", "{dd}/{meta:start}")
    got = backload_steps(p, utc(2026, 7, 1), utc(2026, 7, 2), "day", context(presidents))
    assert [infos(b) for _, b in got] == [["01/1789", "01/1797", "01/1801", "01/1809"],
                                          ["02/1789", "02/1797", "02/1801", "02/1809"]]


def test_backload_by_hour_across_fall_back() -> None:
    got = backload_steps(phase("cron=0 * * * *", "{hh}"), utc(2026, 11, 1, 4),
                         utc(2026, 11, 1, 7), "hour", context(zone=NY))
    assert [infos(b) for _, b in got] == [["00"], ["01"], ["01"], ["02"]]
    assert wall([t for t, _ in got]) == [(1, 0, -4), (1, 1, -4), (1, 1, -5), (1, 2, -5)]


def test_backload_of_a_missing_meta_file_raises(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="^no files found for"):
        backload_steps(phase("meta-file=gone.json"), SLOT, SLOT, "day", context(tmp_path))


def test_backload_of_one_instant_with_an_empty_meta_file_builds_nothing(
        upstream: Path) -> None:
    # Range step 2 holds for backload too: a meta-file, no rows and start == end
    got = backload_steps(phase("meta-file=empty.json", "{meta:x}"), SLOT, SLOT, "day",
                         context(upstream))
    assert got == []


# --- build_fire -------------------------------------------------------------------------


def test_build_fire_records_the_slot_and_its_tasks() -> None:
    p = phase("cron=17 * * * *&offset=-4h", task="topic:job", file="etl/a.toml")
    slot = datetime(2026, 11, 23, 9, 17, tzinfo=NY)  # 14:17Z
    fire = build_fire(p, slot, "catchup", context())
    assert (fire.file_path, fire.phase, fire.scheduled_for, fire.source, fire.error) == (
        "etl/a.toml", "topic:job", "2026-11-23T14:17:00Z", "catchup", "")
    [task] = fire.tasks
    assert task.info == "?day=2026-11-23T10"


def test_build_fire_of_a_missing_meta_file_is_a_fire_without_tasks(tmp_path: Path) -> None:
    p = phase("cron=0 * * * *&meta-file=missing/*.json", "{meta:x}")
    fire = build_fire(p, SLOT, "cron", context(tmp_path))
    assert list(fire.tasks) == []
    assert fire.error.startswith("no files found for")
    assert fire.scheduled_for == "2026-11-23T14:17:00Z"
    assert (fire.file_path, fire.phase, fire.source) == ("a.toml", "topic", "cron")


def test_build_fire_of_a_broken_meta_file_is_a_fire_without_tasks(upstream: Path) -> None:
    fire = build_fire(phase("meta-file=invalid.json"), SLOT, "trigger", context(upstream))
    assert list(fire.tasks) == []
    assert "invalid.json" in fire.error


def test_an_offset_longer_than_go_allows_is_an_invalid_rule() -> None:
    assert parse_rule("cron=0 * * * *&offset=2562047h").issues == ()
    [issue] = parse_rule("cron=0 * * * *&offset=2562048h").issues
    assert issue.message == "invalid offset: 2562048h"


def test_build_fire_with_a_time_past_year_9999_is_a_fire_without_tasks() -> None:
    late = datetime(9999, 12, 31, 23, tzinfo=UTC)
    fire = build_fire(phase("cron=0 * * * *&offset=2h"), late, "cron", context())
    assert list(fire.tasks) == []
    assert fire.error.startswith("time out of range: 9999-12-31T23:00:00Z plus offset")


def test_build_fire_of_a_batch_reaching_past_year_9999_is_a_fire_without_tasks() -> None:
    late = datetime(9999, 12, 31, 22, tzinfo=UTC)
    fire = build_fire(phase("cron=0 * * * *&for=3h&by=hour"), late, "cron", context())
    assert (list(fire.tasks), fire.error) == ([], "time out of range")
