"""tasks.new_task_id is a version 4 UUID's text; encode_meta's short way for meta that
needs no escape gives what escaping each key and value gives."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from flowlord import tasks


def test_new_task_ids_are_random_version_4_uuids() -> None:
    ids = {tasks.new_task_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def escaped_pair_by_pair(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{tasks._escape(k)}={tasks._escape(v)}" for k, v in pairs)


text = st.text(st.sampled_from("ab%&=+ ;:/{}é"), max_size=6)


@given(st.lists(st.tuples(text, text), max_size=5))
def test_encode_meta_agrees_with_escaping_each_key_and_value(
        pairs: list[tuple[str, str]]) -> None:
    assert tasks.encode_meta(pairs) == escaped_pair_by_pair(pairs)
    assert tasks.encode_meta(iter(pairs)) == escaped_pair_by_pair(pairs)
