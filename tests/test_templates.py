"""Template tokens (docs/compatibility.md, Templates): the time pass and the meta pass.

Expected values are written out from the reference's rules, using the time of
its own example (`{TS}` of 2018-01-02 03:17:34 is `20180102T031734`).
"""

from __future__ import annotations

import re
import socket
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlord import templates
from flowlord.templates import cron_hour, meta_names, pod_name, render_meta, render_time

T = datetime(2018, 1, 2, 3, 17, 34, tzinfo=UTC)
NY = ZoneInfo("America/New_York")
HOST = "test-hostname-abcdefghij-12345"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    return HOST


# --- the time pass: each token and its case rule (§4.1) ----------------------------------


@pytest.mark.parametrize("token", ["{YYYY}", "{yyyy}", "{YyYy}", "{yYYy}", "{Yyyy}"])
def test_year_token_in_any_case_mix_is_the_four_digit_year(token: str) -> None:
    assert render_time(f"y={token}", T) == "y=2018"


@pytest.mark.parametrize("token", ["{YY}", "{yy}", "{Yy}", "{yY}"])
def test_short_year_is_the_year_from_its_third_digit(token: str) -> None:
    assert render_time(f"y={token}", T) == "y=18"


@pytest.mark.parametrize("token", ["{MM}", "{mm}", "{Mm}", "{mM}"])
def test_mm_in_any_case_is_the_month_never_the_minute(token: str) -> None:
    # the minute of T is 17; the month is January
    assert render_time(f"m={token}", T) == "m=01"


@pytest.mark.parametrize("token", ["{DD}", "{dd}", "{Dd}", "{dD}"])
def test_day_token_in_any_case_mix(token: str) -> None:
    assert render_time(token, T) == "02"


@pytest.mark.parametrize("token", ["{HH}", "{hh}", "{Hh}", "{hH}"])
def test_hour_token_in_any_case_mix(token: str) -> None:
    assert render_time(token, T) == "03"


def test_minute_token_is_lowercase_only() -> None:
    assert render_time("{min}", T) == "17"
    for token in ("{MIN}", "{Min}", "{mIn}"):
        assert render_time(token, T) == token


def test_values_are_zero_padded_to_two_digits() -> None:
    t = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert render_time("{yyyy}-{mm}-{dd}T{hh}:{min}", t) == "2026-03-04T05:06"
    t = datetime(2026, 11, 23, 14, 59, tzinfo=UTC)
    assert render_time("{yyyy}-{mm}-{dd}T{hh}:{min}", t) == "2026-11-23T14:59"


def test_ts_is_uppercase_only() -> None:
    assert render_time("{TS}", T) == "20180102T031734"
    for token in ("{ts}", "{Ts}", "{tS}"):
        assert render_time(token, T) == token


def test_slugs_expand_to_year_month_day_hour_paths() -> None:
    assert render_time("{SLUG}", T) == "2018/01/02/03"
    assert render_time("{HOUR_SLUG}", T) == "2018/01/02/03"
    assert render_time("{DAY_SLUG}", T) == "2018/01/02"
    assert render_time("{MONTH_SLUG}", T) == "2018/01"
    assert render_time("gs://b/{DAY_SLUG}/*.gz", T) == "gs://b/2018/01/02/*.gz"


@pytest.mark.parametrize("token", ["{slug}", "{Slug}", "{hour_slug}", "{day_slug}",
                                   "{Month_Slug}", "{month_slug}"])
def test_slugs_are_uppercase_only(token: str) -> None:
    assert render_time(token, T) == token


def test_host_is_case_insensitive(host: str) -> None:
    assert render_time("{host}|{HOST}|{Host}|{hOsT}", T) == "|".join([host] * 4)


def test_pod_is_the_last_two_dash_parts_of_the_host_case_insensitive(host: str) -> None:
    assert render_time("{pod}/{POD}/{Pod}", T) == "abcdefghij-12345/" * 2 + "abcdefghij-12345"


def test_pod_name() -> None:
    assert pod_name("test-hostname-abcdefghij-12345") == "abcdefghij-12345"
    assert pod_name("web-1") == "web-1"
    assert pod_name("standalone") == "standalone"  # no '-': the whole name


def test_an_unavailable_hostname_renders_as_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert render_time("{host}", T) == "hostname"


def test_host_is_replaced_after_the_time_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "box-{yyyy}")
    # step 10 comes after the year (step 4): a host's text is not time-expanded
    assert render_time("{host}", T) == "box-{yyyy}"


def test_only_the_first_lowercase_uuid_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = uuid.UUID("9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)
    out = render_time("a={uuid}&b={uuid}&c={UUID}&d={Uuid}", T)
    assert out == "a=9f1c2d3e&b={uuid}&c={UUID}&d={Uuid}"


def test_uuid_is_eight_fresh_hex_characters() -> None:
    first = render_time("{uuid}", T)
    second = render_time("{uuid}", T)
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    assert re.fullmatch(r"[0-9a-f]{8}", second)
    assert first != second


def test_an_uppercase_uuid_alone_is_left_as_is() -> None:
    assert render_time("{UUID}", T) == "{UUID}"


# --- comment, zero time, unknown tokens -------------------------------------------------


def test_everything_from_a_hash_after_the_start_is_kept_verbatim() -> None:
    assert render_time("?day={yyyy}-{mm}#{yyyy} {TS}", T) == "?day=2018-01#{yyyy} {TS}"


def test_the_comment_starts_at_the_first_hash() -> None:
    assert render_time("{dd}#a {dd}#b {dd}", T) == "02#a {dd}#b {dd}"


def test_the_comment_keeps_host_and_uuid_tokens(host: str) -> None:
    assert render_time("{host}#{host}{uuid}", T) == f"{host}#{{host}}{{uuid}}"


def test_a_hash_at_index_zero_is_not_a_comment() -> None:
    assert render_time("#{yyyy}/{mm}", T) == "#2018/01"


def test_no_time_leaves_the_template_unchanged(host: str) -> None:
    template = "{yyyy}{yy}{mm}{dd}{hh}{min}{TS}{SLUG}{DAY_SLUG}{host}{pod}{uuid}#{x}"
    assert render_time(template, None) == template


def test_double_braces_keep_the_outer_ones() -> None:
    assert render_time("{{yyyy}}", T) == "{2018}"


@pytest.mark.parametrize("token", ["{today}", "{file}", "{yyyy-mm-dd}", "{y}", "{yyy}",
                                   "{meta:yyyy}", "{ts}"])
def test_unlisted_tokens_are_left_alone(token: str) -> None:
    assert render_time(token, T) == token


def test_the_time_renders_in_the_zone_it_carries() -> None:
    # 2026-01-01 02:00 in New York is 07:00 UTC; the template shows New York's wall clock
    t = datetime(2026, 1, 1, 2, 0, tzinfo=NY)
    assert render_time("{yyyy}-{mm}-{dd}T{hh}", t) == "2026-01-01T02"
    assert render_time("{yyyy}-{mm}-{dd}T{hh}", t.astimezone(UTC)) == "2026-01-01T07"
    plus_five = timezone(timedelta(hours=5, minutes=30))
    assert render_time("{dd}T{hh}:{min}", t.astimezone(plus_five)) == "01T12:30"


def test_a_full_template() -> None:
    template = "s3://bucket/{yyyy}/{mm}/{dd}/{hh}/file-{TS}.json?x={yy}{MM}"
    assert render_time(template, T) == (
        "s3://bucket/2018/01/02/03/file-20180102T031734.json?x=1801")


@given(st.text().filter(lambda s: "{" not in s),
       st.datetimes(timezones=st.just(UTC)))
def test_text_without_a_brace_is_never_changed(text: str, t: datetime) -> None:
    assert render_time(text, t) == text


@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_date_tokens_give_the_calendar_fields(t: datetime) -> None:
    out = render_time("{yyyy}|{yy}|{mm}|{dd}|{hh}|{min}|{HOUR_SLUG}", t)
    year, short, month, day, hour, minute, slug = out.split("|")
    assert (int(year), int(month), int(day), int(hour), int(minute)) == (
        t.year, t.month, t.day, t.hour, t.minute)
    assert short == year[2:]
    assert all(len(v) == 2 for v in (month, day, hour, minute))
    assert slug == f"{year}/{month}/{day}/{hour}"


# --- the meta pass (§4.2) ---------------------------------------------------------------


def test_meta_tokens_are_replaced_and_named_in_token_order_with_duplicates() -> None:
    row = {"x": "1", "y": "2"}
    text, names = render_meta("?a={meta:x}&b={meta:y}&c={meta:x}", row.__getitem__)
    assert text == "?a=1&b=2&c=1"
    assert names == ["x", "y", "x"]


def test_a_missing_meta_key_takes_what_the_getter_gives() -> None:
    text, names = render_meta("?a={meta:gone}&b=1", lambda name: "")
    assert (text, names) == ("?a=&b=1", ["gone"])


@pytest.mark.parametrize("text", ["{meta:da ta}", "{meta:}", "{meta:a-b}", "{META:x}",
                                  "{Meta:x}", "{meta x}", "meta:x"])
def test_only_word_character_names_are_meta_tokens(text: str) -> None:
    assert render_meta(text, lambda name: "VALUE") == (text, [])
    assert meta_names(text) == []


def test_meta_names_accept_letters_digits_and_underscores() -> None:
    assert meta_names("{meta:a_1}{meta:B2}{meta:_}") == ["a_1", "B2", "_"]


def test_the_meta_pass_does_not_touch_time_tokens() -> None:
    text, _ = render_meta("{yyyy}/{meta:k}", lambda name: "{dd}")
    assert text == "{yyyy}/{dd}"


def test_the_meta_pass_covers_the_comment() -> None:
    # the comment is only kept from the time pass; {meta:…} tokens in it are still filled
    info = render_time("?a={meta:k}#{meta:k} {yyyy}", T)
    assert render_meta(info, lambda name: "v") == ("?a=v#v {yyyy}", ["k", "k"])


@given(st.dictionaries(st.text(string.ascii_letters + string.digits + "_", min_size=1),
                       st.text(alphabet=st.characters(blacklist_characters="{}")),
                       min_size=1))
def test_every_named_token_takes_its_row_value(row: dict[str, str]) -> None:
    template = "&".join(f"{k}={{meta:{k}}}" for k in row)
    text, names = render_meta(template, row.__getitem__)
    assert names == list(row)
    assert text == "&".join(f"{k}={v}" for k, v in row.items())


def test_cron_hour_is_the_wall_clock_hour_of_the_time() -> None:
    assert cron_hour(T) == "2018-01-02T03"
    assert cron_hour(datetime(2026, 3, 8, 3, 30, tzinfo=NY)) == "2026-03-08T03"


# --- one pass gives flowlord's kind-by-kind result ------------------------------------------

def kind_by_kind(template: str, t: datetime) -> str:
    """flowlord's order (§4.1), one token kind after another: the reference the one-pass
    renderer must agree with (host and uuid left out: their values are not fixed)."""
    cut = template.find("#")
    comment = ""
    if cut > 0:
        template, comment = template[:cut], template[cut:]
    for token, expansion in (("{SLUG}", "{HOUR_SLUG}"), ("{HOUR_SLUG}", "{YYYY}/{MM}/{DD}/{HH}"),
                             ("{DAY_SLUG}", "{YYYY}/{MM}/{DD}"), ("{MONTH_SLUG}", "{YYYY}/{MM}")):
        template = template.replace(token, expansion)
    template = template.replace("{TS}", t.strftime("%Y%m%dT%H%M%S"))
    for pattern, value in ((r"\{[Yy]{4}\}", str(t.year)), (r"\{[Yy]{2}\}", str(t.year)[2:]),
                           (r"\{[Mm]{2}\}", f"{t.month:02d}"), (r"\{[Dd]{2}\}", f"{t.day:02d}"),
                           (r"\{[Hh]{2}\}", f"{t.hour:02d}")):
        template = re.sub(pattern, value, template)
    return template.replace("{min}", f"{t.minute:02d}") + comment


PIECES = ["{yyyy}", "{YyYy}", "{yy}", "{mm}", "{MM}", "{dd}", "{Dd}", "{hh}", "{HH}", "{min}",
          "{MIN}", "{TS}", "{ts}", "{SLUG}", "{DAY_SLUG}", "{MONTH_SLUG}", "{HOUR_SLUG}",
          "{meta:x}", "{", "}", "#", "y", "m", "-", "{{", "}}", "a=", "&"]


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
       st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_one_pass_agrees_with_flowlords_kind_by_kind_replacement(template: str,
                                                                 t: datetime) -> None:
    assert render_time(template, t) == kind_by_kind(template, t)


@pytest.mark.parametrize("template", [
    "?t={yyyy}-{mm}-{dd}T{hh}&k={meta:k}", "{YYYY}{yy}{MM}{Dd}{HH}{min}", "a{b}c{{}}{yyyy}}",
    "s3://b/{DAY_SLUG}/{HOUR_SLUG}/x", "{yyyy}#{mm} kept {", "}{hh}{", "{TS}{yyyy}",
    "{host}-{yyyy}", "{meta:a}{yyyy}{meta:b}{", "x{yyyy}{uuid}"])
def test_render_time_in_one_format_call_renders_as_the_token_loop(template: str) -> None:
    t = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    literals, kinds = templates._compile(template)
    values = templates._time_values(t)
    loop = literals[0] + "".join(
        (values[k] if k in values else templates._OTHER_VALUES[k](t)) + lit
        for k, lit in zip(kinds, literals[1:], strict=True))
    if "uuid" in kinds:  # new at each use: only its length and place are the same
        assert len(templates.render_time(template, t)) == len(loop)
    else:
        assert templates.render_time(template, t) == loop
