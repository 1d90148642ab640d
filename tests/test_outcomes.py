"""What a task's result leads to (docs/compatibility.md, Results, retries and alerts).

warn → nothing; alert → an alert; error → a retry, or a failure alert once the
phase's retries are spent; complete → the children. Expectations follow the
reference, with the fixes documented in `flowlord/outcomes.py`: a child's meta
keeps the parent's keys except the ones about one attempt (retry, retried,
delayed), siblings build their meta separately, a failed task whose phase is gone
still alerts, and a retry without `retry_delay` drops a stale `delayed=`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlord.durations import parse_duration
from flowlord.model import NewTask, Phase, StoredTask, Task
from flowlord.outcomes import Effects, after_result, decode_meta
from flowlord.rules import parse_query
from flowlord.tasks import Context, encode_meta
from tests.helpers import at

CREATED = datetime(2026, 11, 23, 14, 5, 6, 789000, tzinfo=UTC)
CREATED_TEXT = "2026-11-23T14:05:06.789Z"  # task times have milliseconds
CTX = Context(UTC, ".", CREATED)
ROOT_ID = "3f2b8c1e-5d4a-4e6f-9a7b-0c1d2e3f4a5b"
PARENT_META = "workflow=a.toml&cron=2026-11-23T14"
HOUR = "{yyyy}-{mm}-{dd}T{hh}"


def no_jitter() -> float:
    return 0.0


def stored(meta: str = PARENT_META, info: str = "?day=2020-03-05", *, type_: str = "extract",
           job: str = "", task_no: int = 7, attempt: int = 0, file_path: str | None = "a.toml",
           phase: str | None = "extract",
           scheduled_for: str | None = "2026-11-23T14:00:00Z") -> StoredTask:
    task = Task(type=type_, job=job, info=info, meta=meta, id=ROOT_ID,
                created="2026-11-23T14:00:01Z", started="2026-11-23T14:00:02Z",
                ended="2026-11-23T14:00:03Z", result="error", msg="boom")
    return StoredTask(task_no, task, file_path, phase, attempt, scheduled_for)


def phase(task: str = "extract", rule: str = "", *, template: str = "?hour=" + HOUR,
          retry: int = 0, depends_on: str = "", file_path: str = "a.toml") -> Phase:
    return Phase(file_path, task, depends_on=depends_on, rule=rule, template=template,
                 retry=retry)


def child(task: str = "load", template: str = "?hour=" + HOUR, rule: str = "",
          depends_on: str = "extract", file_path: str = "a.toml") -> Phase:
    return phase(task, rule, template=template, depends_on=depends_on, file_path=file_path)


def complete(parent: StoredTask, *children: Phase, ctx: Context = CTX) -> Effects:
    return after_result(parent, "complete", "", phase=phase(), children=children, ctx=ctx,
                        jitter=no_jitter)


def fail(task: StoredTask, ph: Phase | None, msg: str = "boom", *,
         jitter: Callable[[], float] = no_jitter, ctx: Context = CTX) -> Effects:
    return after_result(task, "error", msg, phase=ph, children=[child()], ctx=ctx,
                        jitter=jitter)


def pairs(text: str) -> list[tuple[str, str]]:
    found, ok = parse_query(text)
    assert ok, text
    return found


def keys(text: str) -> list[str]:
    return [k for k, _ in pairs(text)]


def only(effects: Effects) -> NewTask:
    assert len(effects.tasks) == 1, effects
    assert effects.alerts == []
    return effects.tasks[0]


# --- decode_meta ------------------------------------------------------------------------


def test_decode_meta_reads_the_encoded_form() -> None:
    assert decode_meta("name=george%20washington&q=a%26b&eq=x%3Dy&plus=1%2B1&pct=100%25") == {
        "name": "george washington", "q": "a&b", "eq": "x=y", "plus": "1+1", "pct": "100%"}


def test_decode_meta_reads_the_raw_form_of_go_producers() -> None:
    assert decode_meta("workflow=a.toml&cron=2026-11-23T14&file=s3://b/dir/f.txt"
                       "&name=george washington&t=10.5µs") == {
        "workflow": "a.toml", "cron": "2026-11-23T14", "file": "s3://b/dir/f.txt",
        "name": "george washington", "t": "10.5µs"}


def test_decode_meta_plus_is_a_space_as_in_a_query_string() -> None:
    # the retry/failed producer of Go escapes a space as `+`
    assert decode_meta("name=george+washington") == {"name": "george washington"}


def test_decode_meta_keeps_the_first_value_of_a_repeated_key() -> None:
    assert decode_meta("a=1&b=2&a=3") == {"a": "1", "b": "2"}


def test_decode_meta_edge_cases() -> None:
    assert decode_meta("") == {}
    assert decode_meta("flag&x=") == {"flag": "", "x": ""}
    assert decode_meta("a=1&&b=2") == {"a": "1", "b": "2"}
    # as Go's ParseQuery: a malformed pair is dropped, the others are read
    assert decode_meta("bad=%zz&semi=a;b&ok=1") == {"ok": "1"}


_meta_text = st.text(max_size=12)  # no surrogates by default


@given(st.lists(st.tuples(_meta_text, _meta_text), max_size=6))
def test_decode_meta_reads_back_what_encode_meta_wrote(items: list[tuple[str, str]]) -> None:
    expected: dict[str, str] = {}
    for key, value in items:
        expected.setdefault(key, value)
    assert decode_meta(encode_meta(items)) == expected


# --- results that lead to nothing, or to an alert (§5.4) --------------------------------


@pytest.mark.parametrize("result", ["warn", "", "running", "COMPLETE"])
def test_warn_and_unknown_results_lead_to_nothing(result: str) -> None:
    effects = after_result(stored(), result, "careful", phase=phase(retry=3),
                           children=[child()], ctx=CTX, jitter=no_jitter)
    assert effects == Effects()


def test_an_alert_result_alerts_at_once_without_retry_or_children() -> None:
    effects = after_result(stored(), "alert", "disk on fire", phase=phase(retry=3),
                           children=[child()], ctx=CTX, jitter=no_jitter)
    assert effects.tasks == []
    assert effects.alerts == [("alert", "disk on fire")]


def test_an_alert_result_alerts_when_its_phase_is_gone() -> None:
    effects = after_result(stored(), "alert", "disk on fire", phase=None, children=[],
                           ctx=CTX, jitter=no_jitter)
    assert effects.alerts == [("alert", "disk on fire")]
    assert effects.tasks == []


def test_an_error_does_not_start_the_children() -> None:
    effects = fail(stored(), phase(retry=1))
    assert [t.phase for t in effects.tasks] == ["extract"]  # the retry only


def test_a_complete_task_is_not_retried_and_does_not_alert() -> None:
    effects = after_result(stored(), "complete", "", phase=phase(retry=3), children=[],
                           ctx=CTX, jitter=no_jitter)
    assert effects == Effects()


# --- children (§5.5) ----------------------------------------------------------------


def test_a_child_task_shares_the_trace_id_and_starts_at_attempt_zero() -> None:
    parent = stored(task_no=41)
    new = only(complete(parent, child("load:daily", file_path="a.toml")))
    assert new.task.type == "load"
    assert new.task.job == "daily"
    assert new.task.id == ROOT_ID
    assert new.task.created == CREATED_TEXT
    assert (new.task.result, new.task.msg, new.task.started, new.task.ended) == ("",) * 4
    assert new.file_path == "a.toml"
    assert new.phase == "load:daily"
    assert new.attempt == 0
    assert new.scheduled_for is None
    assert new.due_at is None
    assert new.parent_no == 41


def test_the_child_time_is_the_parent_cron_meta_before_its_info() -> None:
    parent = stored("workflow=a.toml&cron=2026-11-23T14", "?day=2020-03-05")
    assert only(complete(parent, child(template=HOUR))).task.info == "2026-11-23T14"


@pytest.mark.parametrize(("info", "rendered"), [
    ("?day=2020-03-05", "2020-03-05T00"),
    ("?hour=2020-03-05T11:12:15Z", "2020-03-05T11"),
    ("gs://bucket/2020/03/05/11/part.json", "2020-03-05T11"),
    ("gs://bucket/out/20200305T113000.json", "2020-03-05T11"),
])
def test_without_cron_the_child_time_comes_from_the_parent_info(info: str,
                                                                rendered: str) -> None:
    parent = stored("workflow=a.toml", info)
    assert only(complete(parent, child(template=HOUR))).task.info == rendered


def test_an_invalid_cron_meta_falls_back_to_the_parent_info() -> None:
    parent = stored("workflow=a.toml&cron=2026-13-01T00", "?day=2020-03-05")
    assert only(complete(parent, child(template=HOUR))).task.info == "2020-03-05T00"


def test_without_any_parent_time_the_child_template_keeps_its_tokens() -> None:
    parent = stored("workflow=a.toml", "s3://bucket/file.txt")
    assert only(complete(parent, child(template="?day={yyyy}-{mm}-{dd}"))).task.info == (
        "?day={yyyy}-{mm}-{dd}")


@pytest.mark.parametrize("workflow", ["workflow=a.toml&", ""])
def test_a_meta_value_naming_another_meta_token_is_replaced_in_its_turn(workflow: str) -> None:
    """render_meta replaces one name after another, so `{meta:y}` inside x's value is
    replaced when y's turn comes: the same for the usual child (a parent with a
    `workflow`, rendered in one pass elsewhere) and any other."""
    parent = stored(f"{workflow}cron=2026-11-23T14&x=%7Bmeta:y%7D&y=Q")
    made = only(complete(parent, child(template="?h={hh}&a={meta:x}{meta:y}")))
    assert made.task.info == "?h=14&a=QQ"


def test_the_child_time_is_not_moved_into_the_context_zone() -> None:
    # times read from meta and info are UTC (§4.4): the child renders the cron hour as is
    ctx = Context(ZoneInfo("America/New_York"), ".", CREATED)
    parent = stored("workflow=a.toml&cron=2026-11-23T14")
    assert only(complete(parent, child(template=HOUR), ctx=ctx)).task.info == "2026-11-23T14"


def test_the_child_template_reads_the_parent_meta() -> None:
    parent = stored("workflow=a.toml&cron=2026-11-23T14&file=s3://b/in/f.txt&name=george%20w")
    new = only(complete(parent, child(template="{meta:file}?who={meta:name}&x={meta:none}")))
    assert new.task.info == "s3://b/in/f.txt?who=george w&x="


def test_the_child_meta_starts_with_workflow_cron_and_the_child_job() -> None:
    parent = stored("cron=2026-11-23T14&workflow=a.toml")
    new = only(complete(parent, child("load:daily")))
    assert pairs(new.task.meta) == [("workflow", "a.toml"), ("cron", "2026-11-23T14"),
                                    ("job", "daily")]


def test_the_child_meta_has_no_job_when_the_child_has_none() -> None:
    parent = stored("workflow=a.toml&cron=2026-11-23T14&job=nightly", job="nightly")
    new = only(complete(parent, child("load")))
    assert pairs(new.task.meta) == [("workflow", "a.toml"), ("cron", "2026-11-23T14")]
    assert new.task.job == ""


def test_the_child_meta_has_no_cron_when_the_parent_had_none() -> None:
    parent = stored("workflow=a.toml", "?day=2020-03-05")
    assert pairs(only(complete(parent, child())).task.meta) == [("workflow", "a.toml")]


def test_the_child_workflow_falls_back_to_the_child_file() -> None:
    parent = stored("cron=2026-11-23T14")
    new = only(complete(parent, child(file_path="dir/b.toml")))
    assert pairs(new.task.meta)[0] == ("workflow", "dir/b.toml")


def test_the_child_meta_keeps_the_parent_keys_but_not_those_of_an_attempt() -> None:
    parent = stored("workflow=a.toml&cron=2026-11-23T14&zeta=z&file=s3://b/f%20g.txt"
                    "&retry=2&retried=3&delayed=1.2s&alpha=a")
    new = only(complete(parent, child("load:daily")))
    assert pairs(new.task.meta) == [
        ("workflow", "a.toml"), ("cron", "2026-11-23T14"), ("job", "daily"),
        ("alpha", "a"), ("file", "s3://b/f g.txt"), ("zeta", "z")]


def test_a_grandchild_sees_the_root_meta() -> None:
    root = stored("workflow=a.toml&cron=2026-11-23T14&file=s3://b/in.csv", task_no=1)
    first = only(complete(root, child("load", template="{meta:file}")))
    assert first.task.info == "s3://b/in.csv"
    as_stored = StoredTask(2, first.task, first.file_path, first.phase)
    second = only(complete(as_stored, child("report", template=HOUR + "?src={meta:file}",
                                             depends_on="load")))
    assert second.task.info == "2026-11-23T14?src=s3://b/in.csv"
    assert second.task.id == ROOT_ID
    assert second.parent_no == 2
    assert decode_meta(second.task.meta)["file"] == "s3://b/in.csv"


def test_two_siblings_give_two_tasks() -> None:
    effects = complete(stored(), child("load:a"), child("load:b"), child("index"))
    assert effects.alerts == []
    assert [(t.phase, t.task.type, t.task.job) for t in effects.tasks] == [
        ("load:a", "load", "a"), ("load:b", "load", "b"), ("index", "index", "")]
    assert all(t.task.id == ROOT_ID and t.parent_no == 7 for t in effects.tasks)


def test_siblings_build_their_meta_separately() -> None:
    # the first sibling's rule meta must not reach the second (flowlord shared one map)
    first = child("load:a", template="?k={meta:k}", rule="meta=k:mine")
    second = child("load:b", template="?k={meta:k}")
    a, b = complete(stored(PARENT_META + "&k=parent"), first, second).tasks
    assert a.task.info == "?k=mine"
    assert decode_meta(a.task.meta)["k"] == "mine"
    assert b.task.info == "?k=parent"
    assert decode_meta(b.task.meta)["k"] == "parent"


def test_a_child_rule_meta_gives_one_child_per_row() -> None:
    rows = child(template="?name={meta:name}&v={meta:value}&hour=" + HOUR,
                 rule="meta=name:a,b|value:1,2")
    effects = complete(stored(), rows)
    assert [t.task.info for t in effects.tasks] == [
        "?name=a&v=1&hour=2026-11-23T14", "?name=b&v=2&hour=2026-11-23T14"]
    assert [decode_meta(t.task.meta) for t in effects.tasks] == [
        {"workflow": "a.toml", "cron": "2026-11-23T14", "name": "a", "value": "1"},
        {"workflow": "a.toml", "cron": "2026-11-23T14", "name": "b", "value": "2"}]
    assert {t.task.id for t in effects.tasks} == {ROOT_ID}


def test_a_child_meta_file_that_is_missing_skips_the_child_with_a_note(tmp_path: Path) -> None:
    ctx = Context(UTC, str(tmp_path), CREATED)
    effects = complete(stored(), child("load", rule="meta-file=missing.json"), child("index"),
                       ctx=ctx)
    assert [t.phase for t in effects.tasks] == ["index"]
    assert len(effects.notes) == 1
    assert "load" in effects.notes[0]
    assert "missing.json" in effects.notes[0]


def test_a_child_meta_file_gives_one_child_per_line(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text('{"name": "a"}\n{"name": "b"}\n', encoding="utf-8")
    ctx = Context(UTC, str(tmp_path), CREATED)
    effects = complete(stored(), child("load", "?n={meta:name}", "meta-file=rows.json"),
                       ctx=ctx)
    assert [t.task.info for t in effects.tasks] == ["?n=a", "?n=b"]


# --- require (§3.5) ---------------------------------------------------------------------


@pytest.mark.parametrize("meta", [PARENT_META, PARENT_META + "&file=", PARENT_META + "&file"])
def test_require_skips_the_child_when_the_parent_meta_lacks_the_key(meta: str) -> None:
    effects = complete(stored(meta), child("load", rule="require={meta:file}"))
    assert effects.tasks == []
    assert effects.alerts == []
    assert len(effects.notes) == 1
    assert "load" in effects.notes[0]
    assert "file" in effects.notes[0]


def test_require_is_met_by_a_non_empty_value() -> None:
    effects = complete(stored(PARENT_META + "&file=s3://b/f.txt"),
                       child("load", "{meta:file}", "require={meta:file}"))
    assert only(effects).task.info == "s3://b/f.txt"
    assert effects.notes == []


def test_require_skips_only_its_own_child() -> None:
    effects = complete(stored(), child("load", rule="require={meta:file}"), child("index"))
    assert [t.phase for t in effects.tasks] == ["index"]


def test_every_required_key_must_be_set() -> None:
    rule = "require={meta:file}&require={meta:size}"
    assert complete(stored(PARENT_META + "&file=f"), child(rule=rule)).tasks == []
    assert len(complete(stored(PARENT_META + "&file=f&size=3"), child(rule=rule)).tasks) == 1
    joined = "require={meta:file},{meta:size}"
    assert complete(stored(PARENT_META + "&size=3"), child(rule=joined)).tasks == []


def test_require_text_that_is_not_a_meta_token_always_passes() -> None:
    effects = complete(stored(), child(rule="require=foo"), child("x", rule="require={meta:a b}"))
    assert len(effects.tasks) == 2
    assert effects.notes == []


# --- retries (§3.6, §5.6) ---------------------------------------------------------------


def test_a_retry_repeats_the_task_one_attempt_later() -> None:
    failed = stored("workflow=a.toml&cron=2026-11-23T14&job=daily", "?day=2026-11-23",
                    type_="load", job="daily", task_no=12, attempt=0, phase="load:daily")
    new = only(fail(failed, phase("load:daily", retry=3)))
    assert new.task.type == "load"
    assert new.task.job == "daily"
    assert new.task.info == "?day=2026-11-23"
    assert new.task.id == ROOT_ID
    assert new.task.created == CREATED_TEXT
    assert (new.task.result, new.task.msg, new.task.started, new.task.ended) == ("",) * 4
    assert new.attempt == 1
    assert new.file_path == "a.toml"
    assert new.phase == "load:daily"
    assert new.scheduled_for == "2026-11-23T14:00:00Z"
    assert new.parent_no == 12


def test_a_retry_meta_counts_the_retry_and_is_sorted() -> None:
    failed = stored("workflow=a.toml&cron=2026-11-23T14&job=daily&file=s3://b/a%20b.txt")
    new = only(fail(failed, phase(retry=3)))
    assert pairs(new.task.meta) == [("cron", "2026-11-23T14"), ("file", "s3://b/a b.txt"),
                                    ("job", "daily"), ("retry", "1"), ("workflow", "a.toml")]


@pytest.mark.parametrize("attempt", [1, 2])
def test_later_retries_replace_the_retry_count(attempt: int) -> None:
    failed = stored(f"{PARENT_META}&retry={attempt}", attempt=attempt)
    new = only(fail(failed, phase(retry=3)))
    assert new.attempt == attempt + 1
    assert decode_meta(new.task.meta)["retry"] == str(attempt + 1)
    assert keys(new.task.meta).count("retry") == 1


def test_a_task_kept_without_its_origin_is_retried_the_same() -> None:
    failed = stored(file_path=None, phase=None, scheduled_for=None)
    new = only(fail(failed, phase(retry=1)))
    assert (new.file_path, new.phase, new.scheduled_for) == (None, None, None)


def test_without_retry_delay_a_retry_is_due_one_second_later() -> None:
    new = only(fail(stored(), phase(retry=1), jitter=lambda: 0.999))
    assert new.due_at == "2026-11-23T14:05:07.789Z"
    assert "delayed" not in decode_meta(new.task.meta)


def test_the_due_time_is_utc_whatever_the_zone_of_the_creation_time() -> None:
    ny = CREATED.astimezone(ZoneInfo("America/New_York"))
    new = only(fail(stored(), phase(retry=1), ctx=Context(UTC, ".", ny)))
    assert new.due_at == "2026-11-23T14:05:07.789Z"
    assert new.task.created == CREATED_TEXT


def test_without_retry_delay_a_stale_delayed_is_dropped() -> None:
    failed = stored(PARENT_META + "&delayed=12.5s&retry=1", attempt=1)
    new = only(fail(failed, phase(retry=3)))
    assert "delayed" not in decode_meta(new.task.meta)


@pytest.mark.parametrize(("delay", "jitter", "seconds", "written"), [
    ("10s", 0.0, 10, "10s"),
    ("10s", 0.5, 12, "12s"),
    ("1m", 0.25, 66, "1m6s"),
    ("100ms", 0.5, 0.12, "120ms"),
    ("1h", 0.5, 4320, "1h12m0s"),
    ("1m30s", 0.0, 90, "1m30s"),
])
def test_retry_delay_plus_jitter_is_waited_and_written(delay: str, jitter: float,
                                                      seconds: float, written: str) -> None:
    new = only(fail(stored(), phase(retry=1, rule=f"retry_delay={delay}"),
                    jitter=lambda: jitter))
    assert new.due_at is not None
    assert at(new.due_at) - CREATED == timedelta(seconds=seconds)
    assert decode_meta(new.task.meta)["delayed"] == written


def test_retry_delay_replaces_a_stale_delayed() -> None:
    failed = stored(PARENT_META + "&delayed=99s&retry=1", attempt=1)
    new = only(fail(failed, phase(retry=3, rule="retry_delay=10s")))
    assert decode_meta(new.task.meta)["delayed"] == "10s"
    assert keys(new.task.meta).count("delayed") == 1


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_the_jitter_is_below_forty_percent_of_retry_delay(jitter: float) -> None:
    new = only(fail(stored(), phase(retry=1, rule="retry_delay=10s"), jitter=lambda: jitter))
    assert new.due_at is not None
    waited = at(new.due_at) - CREATED
    assert timedelta(seconds=10) <= waited < timedelta(seconds=14)
    delayed = parse_duration(decode_meta(new.task.meta)["delayed"])
    assert timedelta(seconds=10) <= delayed < timedelta(seconds=14)


@given(jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
       delay=st.sampled_from(["250ms", "1s", "7s", "45s", "2m", "90m"]))
def test_every_jitter_keeps_the_delay_in_range(jitter: float, delay: str) -> None:
    rd = parse_duration(delay)
    new = only(fail(stored(), phase(retry=1, rule=f"retry_delay={delay}"),
                    jitter=lambda: jitter))
    assert new.due_at is not None
    assert rd <= at(new.due_at) - CREATED < rd * 1.4
    written = decode_meta(new.task.meta)["delayed"]
    assert rd <= parse_duration(written) <= rd * 1.4  # Go format, read back


# --- failures (§3.7, §5.7) --------------------------------------------------------------


def test_after_its_retries_a_task_fails_with_an_alert() -> None:
    failed = stored(f"{PARENT_META}&retry=2", attempt=2)
    effects = fail(failed, phase(retry=2), "disk full")
    assert effects.tasks == []
    assert len(effects.alerts) == 1
    kind, message = effects.alerts[0]
    assert kind == "failed"
    assert "disk full" in message


def test_a_phase_without_retries_fails_at_the_first_error() -> None:
    effects = fail(stored(attempt=0), phase(retry=0))
    assert effects.tasks == []
    assert [kind for kind, _ in effects.alerts] == ["failed"]


def test_retry_three_means_three_retries_then_a_failure() -> None:
    ph = phase(retry=3)
    attempts = []
    task = stored()
    while True:
        effects = fail(task, ph)
        if not effects.tasks:
            break
        new = only(effects)
        attempts.append(new.attempt)
        task = StoredTask(task.task_no + 1, new.task, new.file_path, new.phase, new.attempt,
                          new.scheduled_for)
    assert attempts == [1, 2, 3]
    assert [kind for kind, _ in effects.alerts] == ["failed"]


def test_a_failure_without_a_message_still_alerts() -> None:
    effects = fail(stored(), phase(), "")
    assert [kind for kind, _ in effects.alerts] == ["failed"]
    assert effects.alerts[0][1]


@pytest.mark.parametrize("rule", ["no_alert=true", "no_alert=1", "cron=0 * * * *&no_alert=yes"])
def test_no_alert_with_a_value_silences_the_failure(rule: str) -> None:
    effects = fail(stored(), phase(rule=rule))
    assert effects == Effects()


@pytest.mark.parametrize("rule", ["no_alert", "no_alert=", "retry_delay=1s&no_alert"])
def test_a_bare_no_alert_still_alerts(rule: str) -> None:
    effects = fail(stored(), phase(rule=rule))
    assert effects.tasks == []
    assert [kind for kind, _ in effects.alerts] == ["failed"]


def test_no_alert_does_not_stop_the_retries() -> None:
    new = only(fail(stored(), phase(retry=1, rule="no_alert=true")))
    assert new.attempt == 1


def test_a_failed_task_whose_phase_is_gone_still_alerts() -> None:
    effects = fail(stored(attempt=0), None, "lost")
    assert effects.tasks == []
    assert len(effects.alerts) == 1
    kind, message = effects.alerts[0]
    assert kind == "failed"
    assert "lost" in message
