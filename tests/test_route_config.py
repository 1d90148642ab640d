"""`[[alerts.route]]` in the config, and which alerts a route matches (flowlord/routes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowlord.config import FAILURE_KINDS, ConfigError, Route, load_config
from flowlord.routes import matches
from flowlord.store.alerts import AlertRow


def test_routes_are_read_and_the_one_webhook_is_a_route_for_todays_kinds(
        tmp_path: Path) -> None:
    f = tmp_path / "flowlord.toml"
    f.write_text('[alerts]\nwebhook = "https://hooks.example/old"\n\n'
                 '[[alerts.route]]\nwebhook = "https://hooks.example/a"\n'
                 'kinds = ["late", "success"]\ntopics = ["report*"]\n\n'
                 '[[alerts.route]]\nwebhook = "http://127.0.0.1:9/b"\nfiles = ["etl/*"]\n'
                 'name = "etl"\n')
    config = load_config(str(f))
    legacy, a, b = config.alert_routes()
    assert (legacy.webhook, legacy.kinds, legacy.key()) == (
        "https://hooks.example/old", FAILURE_KINDS, "alerts.webhook")
    assert (a.kinds, a.topics, a.files) == (("late", "success"), ("report*",), ())
    assert a.key().startswith("sha256:") and b.key() == "etl"
    assert "success" not in b.kinds and "late" in b.kinds  # default: every row kind


@pytest.mark.parametrize(("text", "error"), [
    ('[[alerts.route]]\nkinds = ["late"]\n', r"alerts.route\[0\].webhook must be an http"),
    ('[[alerts.route]]\nwebhook = "https://x/a"\nkinds = ["late", "lost"]\n',
     "unknown kind 'lost'"),
    ('[[alerts.route]]\nwebhook = "https://x/a"\ntopics = "report*"\n',
     "topics must be a list of non-empty strings"),
    ('[[alerts.route]]\nwebhook = "https://x/a"\nchannel = "#ops"\n',
     r"unknown key: alerts.route\[0\].channel"),
    ('[[alerts.route]]\nwebhook = "https://x/a"\n[[alerts.route]]\nwebhook = "https://x/a"\n',
     "give each a distinct name"),
    ('[alerts]\nroute = "https://x/a"\n', "must be an array of tables"),
])
def test_a_bad_route_is_one_line_naming_it(tmp_path: Path, text: str, error: str) -> None:
    f = tmp_path / "flowlord.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(str(f))


def test_a_route_matches_by_kind_topic_or_topic_job_and_file() -> None:
    def alert(kind: str, type_: str, job: str, file: str | None) -> AlertRow:
        return AlertRow(1, kind, type_, job, "", "", file, None if file is None else type_,
                        None)
    route = Route("https://x", ("failed", "late"), topics=("report*", "load:daily"),
                  files=("etl/*",))
    assert matches(route, alert("late", "report", "", "etl/a.toml"))
    assert matches(route, alert("failed", "load", "daily", "etl/deep/b.toml"))
    assert not matches(route, alert("failed", "load", "hourly", "etl/b.toml"))
    assert not matches(route, alert("slow", "report", "", "etl/a.toml"))
    assert not matches(route, alert("late", "report", "", "other/a.toml"))
    assert not matches(route, alert("failed", "report", "", None))  # no phase, no file
    assert matches(Route("https://x", ("failed",)), alert("failed", "x", "", None))
