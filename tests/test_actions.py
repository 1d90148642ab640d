"""The audit trail: every trigger, backload, refresh and notify is a row in `actions`
before it has any effect, with its actor (the Unix user, or the HTTP token's name) and
its outcome; `flowlord actions`, `/api/actions` and the dashboard's page show it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flowlord.cli import main
from flowlord.clock import FakeClock
from flowlord.config import Config, ConfigError, http_tokens, load_config
from flowlord.model import Fire, Task
from flowlord.operations import Action, record_fires, unix_actor
from flowlord.store import Store
from flowlord.web.api import Api
from flowlord.web.dashboard import Dashboard
from tests.helpers import query, stepped, turn, utc

PHASES = ('[[phase]]\ntask = "extract"\nrule = "files=/tmp/in/*.csv"\n'
          'template = "?h={hh}"\n')


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_each_command_is_a_row_with_its_unix_user_and_outcome(
        tmp_path: Path, wf: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (wf / "a.toml").write_text(PHASES)
    db = str(tmp_path / "f.db")
    common = ("-w", str(wf), "--db", db)
    monkeypatch.delenv("SUDO_USER", raising=False)
    me = unix_actor()  # the process's user
    cli(capsys, "refresh", *common)
    monkeypatch.setenv("SUDO_USER", "alice")  # behind sudo: the person, not root
    cli(capsys, "trigger", "extract", "--time", "2026-02-01T05:00:00Z", *common)
    cli(capsys, "trigger", "extract", "--time", "2026-02-01T05:00:00Z", *common)
    cli(capsys, "backload", "extract", "--from", "2026-03-01T00:00:00Z", "--to",
        "2026-03-01T01:00:00Z", "--by", "hour", *common)
    cli(capsys, "notify", "/tmp/in/x.csv", *common)
    cli(capsys, "trigger", "extract", "--dry-run", *common)  # no effect, no action
    rows = query(Path(db), "SELECT actor, kind, target, args, outcome, message "
                           "FROM actions ORDER BY action_no")
    assert rows == [
        (me, "refresh", "", "{}", "done", "+a.toml"),
        ("alice", "trigger", "a.toml: extract", '{"time": "2026-02-01T05:00:00Z"}', "done",
         "1 of 1 fire new, 1 task created"),
        ("alice", "trigger", "a.toml: extract", '{"time": "2026-02-01T05:00:00Z"}', "done",
         "0 of 1 fire new, 0 tasks created"),
        ("alice", "backload", "a.toml: extract",
         '{"by": "hour", "from": "2026-03-01T00:00:00+00:00", '
         '"to": "2026-03-01T01:00:00+00:00"}', "done", "2 of 2 fires new, 2 tasks created"),
        ("alice", "notify", "/tmp/in/x.csv", '{"paths": ["/tmp/in/x.csv"]}', "done",
         "1 path, 1 task created")]
    listed = cli(capsys, "actions", "--db", db).splitlines()
    assert len(listed) == 5 and listed[0].split("\t")[2:4] == ["alice", "notify"]
    assert cli(capsys, "actions", "--db", db, "--json", "--limit", "1").startswith("[\n {")


def test_an_action_that_fails_says_why_and_changes_nothing_else(store: Store, wf: Path) -> None:
    (wf / "a.toml").write_text(PHASES)
    refused = Fire("a.toml", "extract", "2026-01-01T00:00:00Z", "trigger",
                   [Task(type="extract", id="")])  # the database refuses an empty id
    action = Action("bob", "trigger", "a.toml: extract")
    with pytest.raises(Exception, match="CHECK constraint failed"):
        record_fires(store, [refused], utc(2026, 1, 1), action)
    assert store.conn.execute("SELECT actor, outcome, message FROM actions").fetchall() == [
        ("bob", "failed", "ConstraintError: CHECK constraint failed: id <> ''")]
    assert store.conn.execute("SELECT count(*) FROM fires").fetchone() == (0,)


def test_http_actions_are_done_by_the_loop_as_the_token_named(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(PHASES)
    clock = FakeClock(utc(2026, 12, 1, 12))
    with stepped(tmp_path, wf, clock) as d:
        api = Api(d.config, lambda: True, lambda: "leader",
                  {"alice": "a-secret", "bob": "b-secret"}, loop=d)
        answers: list[Any] = []

        def post() -> None:
            answers.append(api.post("/api/trigger", "Bearer b-secret",
                                    b'{"task": "extract", "time": "2026-02-01T05:00:00Z"}'))

        asking = threading.Thread(target=post)
        asking.start()
        while asking.is_alive():  # the loop's turns apply the request's command
            turn(d, clock)
            asking.join(0.01)
        status, body = answers[0]
        assert status == 201 and [t["info"] for t in body["tasks"]] == ["?h=05"]
        assert api.answer("/api/actions", {})[1][0]["actor"] == "bob"
        with pytest.raises(Exception, match="Bearer"):
            api.post("/api/trigger", "Bearer wrong", b"{}")
    assert query(tmp_path / "f.db", "SELECT actor, kind, outcome FROM actions") == [
        ("bob", "trigger", "done")]


def test_an_http_backload_with_reprocess_is_one_turn_of_the_loop(
        tmp_path: Path, wf: Path) -> None:
    (wf / "a.toml").write_text(PHASES)
    clock = FakeClock(utc(2026, 12, 1, 12))
    with stepped(tmp_path, wf, clock) as d:
        api = Api(d.config, lambda: True, lambda: "leader", {"alice": "a-secret"}, loop=d)
        body = (b'{"task": "extract", "from": "2026-03-01T00:00:00Z", '
                b'"to": "2026-03-01T02:00:00Z", "by": "hour", "reprocess": "all"}')
        answers: list[Any] = []

        def post() -> None:
            answers.append(api.post("/api/backload", "Bearer a-secret", body))

        for _ in range(2):  # the second time, every step fired before: all run again
            asking = threading.Thread(target=post)
            asking.start()
            while asking.is_alive():
                turn(d, clock)
                asking.join(0.01)
            for _ in range(3):  # the tasks run and end
                turn(d, clock)
        (first, made), (second, again) = answers
        assert (first, len(made["tasks"]), made["reruns"]) == (201, 3, 0)
        assert (second, made["tasks"][:0], again["tasks"], again["reruns"]) == (201, [], [], 3)
    assert query(tmp_path / "f.db", "SELECT kind, outcome FROM actions ORDER BY action_no") == [
        ("backload", "done"), ("backload", "done"), ("rerun", "done")]
    assert query(tmp_path / "f.db", "SELECT count(*), sum(attempt) FROM tasks") == [(6, 3)]


def test_tokens_have_names_from_the_config_and_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# who may act\ncarol:c-secret\n\ndave: d-secret\n")
    config = tmp_path / "flowlord.toml"
    config.write_text('[http]\ntoken = "old"\ntoken_file = "tokens"\n'
                      '[http.tokens]\nalice = "a-secret"\n')
    assert http_tokens(load_config(str(config))) == {
        "token": "old", "alice": "a-secret", "carol": "c-secret", "dave": "d-secret"}
    token_file.write_text("just-a-token\n")  # the file of old: one bare token
    assert http_tokens(Config(http_token_file=str(token_file))) == {"token": "just-a-token"}
    config.write_text('[http.tokens]\nalice = ""\n')
    with pytest.raises(ConfigError, match="http.tokens must be a table of names"):
        load_config(str(config))
    with pytest.raises(ConfigError, match="http.token_file"):
        http_tokens(Config(http_token_file=str(tmp_path / "missing")))


def test_the_dashboard_lists_actions_with_hostile_text_escaped(store: Store) -> None:
    from flowlord.operations import begin

    begin(store, Action("<script>x</script>", "notify", "<b>path</b>", {"k": "<i>"}),
          utc(2026, 1, 1))
    api = Api(Config(db=store.path), lambda: True, lambda: "leader")
    status, page = Dashboard(api).answer("/actions", {})
    html = str(page)
    assert status == 200 and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<script>" not in html and "&lt;b&gt;path&lt;/b&gt;" in html and "not applied" in html
