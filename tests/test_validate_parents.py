"""validate_file's short way for the usual file (no issue, no task twice, every parent
written before its children) gives exactly what the full way gives, and the full way is
taken for every other file."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowlord import validate
from flowlord.parse import RawPhase
from flowlord.validate import validate_file

# few names, so that parents are found, written before or after, and cycles happen
raw_phase = st.builds(
    RawPhase,
    position=st.integers(0, 20),
    task=st.sampled_from(["a", "b", "c", "a:j", "b:k", "c:j", ":j", "", " d", "\x01e"]),
    depends_on=st.sampled_from(["", "", "a", "b", "c", "a:j", "b:k", "x", "a:x"]),
    rule=st.sampled_from(["cron=0 * * * *", "", "job=j", "cron=0 * * * *&job=k",
                          "files=*.csv", "cron=bad", "cron=0 * * * *&x=1"]),
    template=st.just(""),
    retry=st.sampled_from([0, 3, 11]),
    issues=st.sampled_from([(), (), (validate.Issue("warning", "warning: ignored key: x"),)]),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(raw_phase, max_size=8))
def test_the_short_way_agrees_with_the_full_way(raws: list[RawPhase]) -> None:
    full = validate._validate_all("f.toml", raws)
    assert validate_file("f.toml", raws) == full
    short = validate._usual_file("f.toml", raws)
    assert short is None or short == full and all(p.severity == "ok" for p in full)


def test_a_chain_written_in_order_is_usual() -> None:
    raws = [RawPhase(0, "a", rule="cron=0 * * * *"), RawPhase(1, "b", depends_on="a"),
            RawPhase(2, "c:j", depends_on="b"), RawPhase(3, "d", depends_on="c:j"),
            RawPhase(4, "a2", rule="cron=0 * * * *"), RawPhase(5, "e", depends_on="a")]
    phases = validate._usual_file("f.toml", raws)
    assert phases is not None
    assert [(p.task, p.severity) for p in phases] == [
        ("a", "ok"), ("b", "ok"), ("c:j", "ok"), ("d", "ok"), ("a2", "ok"), ("e", "ok")]


def test_a_topic_written_again_after_its_child_takes_the_full_way() -> None:
    raws = [RawPhase(0, "a:j", rule="cron=0 * * * *"), RawPhase(1, "b", depends_on="a"),
            RawPhase(2, "a:k", depends_on="b")]  # a:k is a parent of b, and its child
    assert validate._usual_file("f.toml", raws) is None
    phases = {p.task: p for p in validate_file("f.toml", raws)}
    assert phases["a:k"].status.startswith("dependency cycle: ")
    assert phases["b"].status.startswith("dependency cycle: ")
