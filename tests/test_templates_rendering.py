"""render_time's short way for the usual template (lower-case date tokens, no other
brace, no `#`: its own format text) renders what the token loop over `_compile`'s
literals renders, and only such templates take it."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from flowlord import templates

T = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def token_loop(template: str, t: datetime) -> str:
    literals, kinds = templates._compile(template)
    values = templates._time_values(t)
    return literals[0] + "".join(values[k] + lit
                                 for k, lit in zip(kinds, literals[1:], strict=True))


PIECES = ["{yyyy}", "{YYYY}", "{yy}", "{mm}", "{MM}", "{dd}", "{hh}", "{min}", "{MIN}",
          "{TS}", "{SLUG}", "{DAY_SLUG}", "{meta:x}", "{", "}", "#", "a", "/", "{{", "}}",
          "yyyy", "{yyy}"]


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_the_short_way_renders_as_the_token_loop(template: str) -> None:
    fmt, _, kinds = templates._rendering(template)
    if "{TS}" in template:
        return  # a token outside _time_values: the loop above cannot render it
    if fmt == template and kinds == ():  # the short way
        assert templates._PLAIN.fullmatch(template)
    assert templates.render_time(template, T) == token_loop(template, T)


def test_only_plain_templates_are_their_own_format_text() -> None:
    assert templates._rendering("s3://b/{yyyy}/{mm}/{dd}/{hh}/{min}.json")[0] == (
        "s3://b/{yyyy}/{mm}/{dd}/{hh}/{min}.json")
    for template in ("s3://b/{YYYY}", "{yyyy}#{mm}", "{DAY_SLUG}", "{yyyy}{", "{yyyy}}",
                     "{meta:a}{yyyy}", "{yyyy}{ts}"):
        fmt, literals, kinds = templates._rendering(template)
        assert kinds, template
        assert fmt != template or not templates._PLAIN.fullmatch(template), template
    assert templates.render_time("{yyyy}#{mm}", T) == "2026#{mm}"
