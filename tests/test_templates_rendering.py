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


ONE_PASS_PIECES = ["{yyyy}", "{YYYY}", "{yy}", "{mm}", "{dd}", "{hh}", "{min}", "{TS}",
                   "{meta:x}", "{meta:y_2}", "{meta:}", "{meta:a b}", "{", "}", "#", "a",
                   "?", "=", "&", "{{", "}}", "meta:x"]
META_VALUES = st.dictionaries(st.sampled_from(["x", "y_2", "z", "workflow", "a b", ""]),
                              st.sampled_from(["", "v", "}", "{yyyy}", "{meta:x}", "{", "a&b"]))


@given(st.lists(st.sampled_from(ONE_PASS_PIECES), max_size=12).map("".join), META_VALUES,
       st.sampled_from([T, None]))
def test_one_pass_renders_as_the_two_passes(template: str, meta: dict[str, str],
                                            t: datetime | None) -> None:
    """A child's template rendered in one format (outcomes.py's usual child) is the time
    pass then the meta pass, with a time or none, a meta name missing or a value that
    looks like a token; templates it cannot render are left to the two passes."""
    fmt, values = templates.one_pass(template), templates.rendering_values(t, meta)
    if fmt is None:
        assert not templates._ONE_PASS.fullmatch(template)
        return
    if values is None:  # a value with a brace: left to the two passes
        assert any("{" in value for value in meta.values())
        return
    two_passes, _ = templates.render_meta(templates.render_time(template, t),
                                          lambda name: meta.get(name, ""))
    assert fmt.format_map(values) == two_passes


def test_one_pass_takes_date_and_meta_tokens_only() -> None:
    assert templates.one_pass("?day={yyyy}-{mm}-{dd}&k={meta:k}") is not None
    for template in ("{YYYY}", "{yyyy}#{meta:k}", "{TS}", "{meta:k}{", "{ts}", "{uuid}",
                     "{host}", "{HOUR_SLUG}"):
        assert templates.one_pass(template) is None, template
