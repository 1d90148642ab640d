"""Pure DAG functions."""

from __future__ import annotations

from flowlord import graph


def test_edges_topic_matches_every_job() -> None:
    phases = [("a:x", ""), ("a:y", ""), ("b", "a"), ("c", "a:y")]
    assert graph.edges(phases) == [("a:x", "b"), ("a:y", "b"), ("a:y", "c")]


def test_cycles_give_a_path_through_each_member_only() -> None:
    phases = [("a", "c"), ("b", "a"), ("c", "b"), ("d", "c"), ("e", "e")]
    found = graph.cycles(phases)
    assert found == {"a": ["a", "b", "c", "a"], "b": ["b", "c", "a", "b"],
                     "c": ["c", "a", "b", "c"], "e": ["e", "e"]}


def test_topological_order_puts_parents_first_and_cycles_last() -> None:
    phases = [("c", "b"), ("b", "a"), ("a", ""), ("x", "y"), ("y", "x")]
    assert graph.topological_order(phases) == ["a", "b", "c", "x", "y"]


def test_long_chain_has_no_cycle() -> None:
    phases = [(f"t{i}", f"t{i - 1}" if i else "") for i in range(5000)][::-1]
    assert graph.cycles(phases) == {}
