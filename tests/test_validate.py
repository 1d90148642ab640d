"""Every status message of README.md (Status messages), with its severity, on a real
parse of TOML text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlord.model import Phase
from flowlord.parse import RawPhase, parse_workflow
from flowlord.validate import validate_file


def phases_of(toml: str) -> dict[str, Phase]:
    return {p.task: p for p in validate_file("f.toml", parse_workflow(toml.encode()))}


def one(toml: str) -> Phase:
    (phase,) = phases_of(toml).values()
    return phase


CRON = 'rule = "cron=0 * * * *"\n'


@pytest.mark.parametrize(
    ("body", "severity", "message"),
    [
        ('task = ""\n' + CRON, "error", "invalid phase: task is blank"),
        ('task = "  "\n' + CRON, "error", "invalid phase: task is blank"),
        ('task = ":job"\n' + CRON, "error", "invalid phase: task is blank"),
        ('task = "\\u00a0:job"\n' + CRON, "error", "invalid phase: task is blank"),
        ('task = "a"\n', "warning", "warning: non-scheduled phase: use dependsOn, cron or files"),
        ('task = "a"\nrule = "cron=0 * * * *&offset=%zz"\n', "error",
         "invalid rule format: cron=0 * * * *&offset=%zz"),
        ('task = "a"\nrule = "cron=0 * * * *;x=1"\n', "error",
         "invalid rule format: cron=0 * * * *;x=1"),
        ('task = "a"\nrule = "cron=61 * * * *"\n', "error", "no valid rule found: cron=61 * * * *"),
        ('task = "a"\nrule = "cron=bogus"\n', "error", "no valid rule found: cron=bogus"),
        ('task = "a"\nrule = "cron=0 * * * *&offset=4 hours"\n', "error",
         "invalid offset: 4 hours"),
        ('task = "a"\nrule = "cron=0 * * * *&retry_delay=soon"\n', "error",
         "invalid retry_delay: soon"),
        ('task = "a"\nrule = "cron=0 * * * *&retry_delay=-1s"\n', "error",
         "invalid retry_delay: -1s"),
        ('task = "a"\nrule = "cron=0 * * * *&for=2x"\n', "error", "invalid for: 2x"),
        ('task = "a"\nrule = "cron=0 * * * *&by=fortnight"\n', "error", "invalid by: fortnight"),
        ('task = "a"\nrule = "cron=0 * * * *&meta=k:a,b|v:1"\n', "error",
         "invalid meta: k:a,b|v:1"),
        ('task = "a"\nrule = "cron=0 * * * *&catchup=some"\n', "error", "invalid catchup: some"),
        ('task = "a"\nrule = "cron=0 * * * *&timeout=0s"\n', "error", "invalid timeout: 0s"),
        ('task = "a"\nrule = "files=/in/[abc.csv"\n', "error", "invalid files: /in/[abc.csv"),
        ('task = "a"\nrule = "cron=0 * * * *&meta=k:a&meta-file=x.json"\n', "error",
         "invalid rule: meta and meta-file together"),
        ('task = "a"\nrule = "cron=0 * * * *&colour=blue"\n', "warning",
         "warning: ignored rule: colour=blue"),
        ('task = "a"\nrule = "cron=0 * * * *&Offset=-6h"\n', "warning",
         "warning: ignored rule: Offset=-6h"),
        ('task = "a"\nrule = "cron=0 * * * *&cron=5 * * * *"\n', "warning",
         "warning: ignored rule: cron=5 * * * *"),
        ('task = "a"\n' + CRON + 'owner = "me"\n', "warning", "warning: ignored key: owner"),
        ('task = "a"\n' + CRON + "retry = 11\n", "warning",
         "warning: retry count exceeds recommended limit"),
        ('task = "a"\n' + CRON + "retry = -1\n", "error", "invalid retry: -1"),
        ('task = "a"\n' + CRON + 'dependsOn = "b"\n', "error", "parent task not found: b"),
        ('task = "a"\n' + CRON + 'dependsOn = "a"\n', "error", "dependency cycle: a -> a"),
    ],
)
def test_status_message_and_severity(body: str, severity: str, message: str) -> None:
    phase = one("[[phase]]\n" + body)
    assert phase.severity == severity
    assert message in phase.status


def test_ok_phase_has_empty_status() -> None:
    phase = one('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *&offset=-4h&retry_delay=10ms"\n')
    assert (phase.severity, phase.status) == ("ok", "")


def test_cron_error_names_the_reason_after_the_value() -> None:
    status = one('[[phase]]\ntask = "a"\nrule = "cron=0 0 * * 7"\n').status
    assert status.startswith("no valid rule found: cron=0 0 * * 7 (")


def test_several_problems_are_joined_errors_first() -> None:
    phase = one('[[phase]]\ntask = "a"\nrule = "colour=blue&offset=x"\nretry = 12\n')
    assert phase.status.split("; ") == [
        "invalid offset: x",
        "warning: ignored rule: colour=blue",
        "warning: non-scheduled phase: use dependsOn, cron or files",
        "warning: retry count exceeds recommended limit",
    ]
    assert phase.severity == "error"


def test_duplicate_task_errors_on_the_first_and_drops_the_later() -> None:
    phases = phases_of(
        '[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\ntemplate = "first"\n'
        '[[phase]]\ntask = "a"\nrule = "cron=5 * * * *"\ntemplate = "second"\n'
        '[[phase]]\ntask = "b:j"\nrule = "cron=5 * * * *"\n'
        '[[phase]]\ntask = "b"\nrule = "cron=5 * * * *&job=j"\n')
    assert phases["a"].template == "first"
    assert phases["a"].severity == "error"
    assert "duplicate task: a" in phases["a"].status
    assert "duplicate task: b:j" in phases["b:j"].status  # same normalized task
    assert len(phases) == 2


def test_cycle_marks_every_phase_on_it_and_warns_the_children_outside() -> None:
    phases = phases_of(
        '[[phase]]\ntask = "a"\ndependsOn = "c"\n'
        '[[phase]]\ntask = "b"\ndependsOn = "a"\n'
        '[[phase]]\ntask = "c"\ndependsOn = "b"\n'
        '[[phase]]\ntask = "d"\ndependsOn = "b"\n')
    assert "dependency cycle: a -> b -> c -> a" in phases["a"].status
    assert "dependency cycle: b -> c -> a -> b" in phases["b"].status
    assert "dependency cycle: c -> a -> b -> c" in phases["c"].status
    assert all(phases[t].severity == "error" for t in "abc")
    assert phases["d"].severity == "warning"
    assert phases["d"].status == "warning: parent task is invalid: b"


def test_parent_invalid_is_a_warning_on_the_child() -> None:
    phases = phases_of(
        '[[phase]]\ntask = "a"\nrule = "cron=bad"\n'
        '[[phase]]\ntask = "b"\ndependsOn = "a"\n')
    assert phases["b"].severity == "warning"
    assert phases["b"].status == "warning: parent task is invalid: a"


def test_depends_on_topic_matches_any_job_and_topic_job_only_that_job() -> None:
    phases = phases_of(
        '[[phase]]\ntask = "w"\nrule = "cron=0 * * * *&job=p"\n'
        '[[phase]]\ntask = "x"\ndependsOn = "w"\n'
        '[[phase]]\ntask = "y"\ndependsOn = "w:p"\n'
        '[[phase]]\ntask = "z"\ndependsOn = "w:q"\n')
    assert phases["x"].severity == "ok"
    assert phases["y"].severity == "ok"
    assert phases["z"].status == "parent task not found: w:q"


def test_task_job_wins_over_rule_job_and_extra_colons_are_dropped() -> None:
    phases = phases_of(
        '[[phase]]\ntask = "w:x"\nrule = "cron=0 * * * *&job=y"\n'
        '[[phase]]\ntask = "a:b:c"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "t2"\nrule = "cron=0 * * * *&job=j1"\n')
    assert set(phases) == {"w:x", "a:b", "t2:j1"}


def test_a_broken_rule_still_names_its_job() -> None:
    phase = one('[[phase]]\ntask = "t"\nrule = "job=j&offset=%zz"\n')
    assert phase.task == "t:j"
    assert phase.severity == "error"


raw_phase = st.builds(
    RawPhase,
    position=st.integers(0, 50),
    task=st.text(max_size=12),
    depends_on=st.text(max_size=12),
    rule=st.text(max_size=40) | st.lists(
        st.sampled_from(["cron=0 * * * *", "cron=@every 5m", "offset=-1h", "job=j",
                         "files=*.csv", "meta=a:1,2", "meta-file=x", "for=-48h", "by=week",
                         "retry_delay=3s", "catchup=all", "x=%zz", "cron=", "by="]),
        max_size=5).map("&".join),
    template=st.text(max_size=10),
    retry=st.integers(0, 20),
    issues=st.just(()),  # the parser's own issues are covered by tests/test_parse.py
)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_phase, max_size=12))
def test_validate_never_raises_and_keeps_the_status_invariant(raws: list[RawPhase]) -> None:
    phases = validate_file("f.toml", raws)
    assert len({p.task for p in phases}) == len(phases)
    for p in phases:
        assert (p.severity == "ok") == (p.status == "")
