"""templates._compile finds the tokens by one split: the same literals and kinds as a
walk over the matches, the first {uuid} alone a token, whatever the pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowlord import templates


def walked(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tokens found one match after another, as flowlord replaces them."""
    comment = ""
    cut = template.find("#")
    if cut > 0:
        template, comment = template[:cut], template[cut:]
    for token, expansion in templates._SLUGS:
        template = template.replace(token, expansion)
    literals, kinds, start, uuid_seen = [], [], 0, False
    for m in templates._TIME_TOKEN.finditer(template):
        kind = m.group(1).lower()
        if kind == "uuid":
            if uuid_seen:
                continue
            uuid_seen = True
        literals.append(template[start:m.start()])
        kinds.append(kind)
        start = m.end()
    literals.append(template[start:] + comment)
    return tuple(literals), tuple(kinds)


PIECES = ["{yyyy}", "{YY}", "{mm}", "{dd}", "{hh}", "{min}", "{TS}", "{uuid}", "{UUID}",
          "{host}", "{HOST}", "{pod}", "{SLUG}", "{DAY_SLUG}", "{meta:x}", "{", "}", "#",
          "a", "{{", "}}", "uuid"]


@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_split_finds_what_the_walk_finds(template: str) -> None:
    assert templates._compile(template) == walked(template)


def test_only_the_first_uuid_is_a_token() -> None:
    literals, kinds = templates._compile("a{uuid}b{uuid}c{yyyy}{uuid}")
    assert kinds == ("uuid", "yyyy")
    assert literals == ("a", "b{uuid}c", "{uuid}")
