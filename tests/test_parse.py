"""Bytes → phases: key spellings, file order, and errors that never escape as exceptions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowlord.parse import WorkflowParseError, parse_workflow
from flowlord.validate import validate_file


def test_keys_are_case_insensitive_and_depends_on_is_accepted() -> None:
    (p,) = parse_workflow(b'[[PHASE]]\nTASK = "a"\nDependsOn = "b"\nRule = "x=1"\nRETRY = 2\n'
                          b'Template = "t"\n')
    assert (p.task, p.depends_on, p.rule, p.retry, p.template) == ("a", "b", "x=1", 2, "t")
    (p,) = parse_workflow(b'[[phase]]\ntask = "a"\ndepends_on = "b"\n')
    assert p.depends_on == "b" and p.issues == ()


def test_both_spellings_of_the_key_twice_is_an_error_on_the_phase() -> None:
    (p,) = parse_workflow(b'[[phase]]\ntask = "a"\ndependsOn = "b"\ndepends_on = "c"\n')
    assert p.issues[0].severity == "error"
    assert "dependsOn and depends_on together" in p.issues[0].message


def test_phase_and_Phase_tables_merge_in_file_order() -> None:
    phases = parse_workflow(b'[[Phase]]\ntask = "a"\n[[phase]]\ntask = "b"\n'
                            b'[[Phase]]\ntask = "c"\n')
    assert [p.task for p in phases] == ["a", "b", "c"]
    assert [p.position for p in phases] == [0, 1, 2]


def test_empty_file_has_no_phases() -> None:
    assert parse_workflow(b"") == []
    assert parse_workflow(b"# only a comment\n") == []


def test_inline_array_of_tables_is_read() -> None:
    phases = parse_workflow(b'phase = [{task = "a"}, {task = "b", retry = 1}]\n')
    assert [(p.task, p.retry) for p in phases] == [("a", 0), ("b", 1)]


def test_wrong_type_names_key_line_and_column() -> None:
    try:
        parse_workflow(b'[[phase]]\ntask = "a"\n\n[[phase]]\ntask = "b"\n  retry = 1.5\n')
    except WorkflowParseError as e:
        assert str(e) == ("parse error: phase 2: retry must be an integer, found float "
                          "at line 6 column 11")
    else:
        raise AssertionError("no error")


def test_boolean_is_not_an_integer() -> None:
    try:
        parse_workflow(b'[[phase]]\ntask = "a"\nretry = true\n')
    except WorkflowParseError as e:
        assert "retry must be an integer, found boolean" in str(e)
    else:
        raise AssertionError("no error")


def _parse_and_validate(data: bytes) -> None:
    try:
        phases = validate_file("f.toml", parse_workflow(data))
    except WorkflowParseError as e:
        assert str(e).startswith("parse error: ")
        assert "\n" not in str(e)
        return
    for p in phases:
        assert (p.severity == "ok") == (p.status == "")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    _parse_and_validate(data)


toml_value = st.one_of(st.text(max_size=20), st.integers(-5, 30), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False))
phase_key = st.sampled_from(["task", "Task", "dependsOn", "depends_on", "rule", "retry",
                             "template", "extra", "RULE"])


def _toml_string(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + "".join(c if c.isalnum() or c in " :=&*/-?{}" else "" for c in v) + '"'
    return repr(v)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(phase_key, toml_value, max_size=6), max_size=8))
def test_random_phase_tables_never_raise(tables: list[dict[str, object]]) -> None:
    text = "".join("[[phase]]\n" + "".join(f"{k} = {_toml_string(v)}\n" for k, v in t.items())
                   for t in tables)
    _parse_and_validate(text.encode())
