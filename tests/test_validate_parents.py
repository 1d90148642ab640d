"""validate_file's short way for the usual file (every parent written before its
children, nothing broken) gives exactly what the full search of _check_parents gives."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from flowlord import validate
from flowlord.parse import RawPhase
from flowlord.validate import validate_file

# few names, so that parents are found, written before or after, and cycles happen
raw_phase = st.builds(
    RawPhase,
    position=st.integers(0, 20),
    task=st.sampled_from(["a", "b", "c", "a:j", "b:k", "c:j", ":j", ""]),
    depends_on=st.sampled_from(["", "", "a", "b", "c", "a:j", "b:k", "x", "a:x"]),
    rule=st.sampled_from(["cron=0 * * * *", "", "job=j", "cron=0 * * * *&job=k",
                          "files=*.csv", "cron=bad"]),
    template=st.just(""),
    retry=st.sampled_from([0, 3, 11]),
    issues=st.just(()),
)


def full_search(raws: list[RawPhase]) -> list[object]:
    with mock.patch.object(validate, "_parents_written_first", return_value=False):
        return validate_file("f.toml", raws)  # type: ignore[return-value]


@settings(max_examples=500, deadline=None)
@given(st.lists(raw_phase, max_size=8))
def test_the_short_way_agrees_with_the_full_search(raws: list[RawPhase]) -> None:
    assert validate_file("f.toml", raws) == full_search(raws)


def test_a_chain_written_in_order_takes_the_short_way() -> None:
    raws = [RawPhase(0, "a", rule="cron=0 * * * *"), RawPhase(1, "b", depends_on="a"),
            RawPhase(2, "c:j", depends_on="b"), RawPhase(3, "d", depends_on="c:j")]
    with mock.patch.object(validate, "_check_parents") as check:
        phases = validate_file("f.toml", raws)
    check.assert_not_called()
    assert [(p.task, p.severity) for p in phases] == [
        ("a", "ok"), ("b", "ok"), ("c:j", "ok"), ("d", "ok")]


def test_a_topic_written_again_after_its_child_takes_the_full_search() -> None:
    raws = [RawPhase(0, "a:j", rule="cron=0 * * * *"), RawPhase(1, "b", depends_on="a"),
            RawPhase(2, "a:k", depends_on="b")]  # a:k is a parent of b, and its child
    phases = {p.task: p for p in validate_file("f.toml", raws)}
    assert phases["a:k"].status.startswith("dependency cycle: ")
    assert phases["b"].status.startswith("dependency cycle: ")
