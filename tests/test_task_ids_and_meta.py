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


@given(st.text(st.sampled_from("ab/%&=+ ;é"), min_size=1, max_size=8),
       st.text(st.sampled_from("ab%&=+ ;"), max_size=4))
def test_a_plain_fires_meta_is_its_base_meta_encoded(file_path: str, job: str) -> None:
    from datetime import UTC, datetime

    from flowlord.model import Phase

    phase = Phase(file_path, f"topic:{job}" if job else "topic", rule="cron=0 * * * *",
                  template="{yyyy}")
    slot = datetime(2026, 5, 6, 7, 0, tzinfo=UTC)
    ctx = tasks.Context(UTC, "/", slot)
    (task,) = tasks.fire_tasks(phase, slot, ctx)
    t = tasks.data_time(slot, tasks.parse_rule(phase.rule).offset, UTC)
    assert task.meta == tasks.encode_meta(tasks._base_meta(phase, t))
    assert (task.type, task.job, task.info) == ("topic", phase.job, "2026")
