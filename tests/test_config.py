"""Config file: defaults, types, unknown keys named, paths relative to the file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from flowlord.config import Config, ConfigError, load_config, resolve_zone, with_flags


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "flowlord.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert (config.workflows, config.db, config.catchup) == ("workflows", "flowlord.db", "none")
    assert config.rescan == timedelta(minutes=5)


def test_every_contract_key_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
workflows = "wf"
db = "state/f.db"
timezone = "UTC"
catchup = "last"
rescan = "30s"
[bus]
url = "redis://localhost:6379/0"
[workers.etl]
command = ["prog", "--date", "{info}"]
concurrency = 2
timeout = "10m"
[alerts]
task_ttl = "2h"
webhook = "http://hooks/x"
[http]
listen = "127.0.0.1:8080"
token = "t"
"""))
    assert config.workflows == str(tmp_path / "wf")
    assert config.db == str(tmp_path / "state" / "f.db")
    assert config.rescan == timedelta(seconds=30)
    assert config.workers["etl"].command == ("prog", "--date", "{info}")
    assert config.workers["etl"].timeout == timedelta(minutes=10)
    assert (config.bus_url, config.task_ttl, config.http_listen) == (
        "redis://localhost:6379/0", timedelta(hours=2), "127.0.0.1:8080")
    assert config.zone() == ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown key: colour"),
        ("[bus]\nurll = 'x'", "unknown key: bus.urll"),
        ("[workers.a]\ncommand = ['x']\nshell = true", "unknown key: workers.a.shell"),
        ("[workers.a]\ncommand = 'x y'", "workers.a.command must be a list of strings"),
        ("[workers.a]\ncommand = ['x']\nconcurrency = 0", "concurrency must be an integer"),
        ("rescan = 5", "rescan must be a positive duration"),
        ("rescan = 'soon'", "rescan must be a positive duration"),
        ("rescan = '0s'", "rescan must be a positive duration"),
        ("timezone = 'America'", "unknown time zone: America"),
        ("db = 5", "db must be a string"),
        ("catchup = 'some'", "catchup must be none, last or all"),
        ("timezone = 'Mars/Olympus'", "unknown time zone: Mars/Olympus"),
        ("[[[", "config"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config = with_flags(load_config(write(tmp_path, 'db = "a.db"')), workflows="w", db=None)
    assert config.workflows == "w" and config.db == str(tmp_path / "a.db")
    assert with_flags(Config(), workflows=None, db="x.db").db == "x.db"


def test_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert resolve_zone("local") == ZoneInfo("Europe/Berlin")


def test_a_webhook_must_be_an_http_url(tmp_path: Path) -> None:
    f = tmp_path / "flowlord.toml"
    f.write_text('[alerts]\nwebhook = "ftp://example/hook"\n')
    with pytest.raises(ConfigError, match="alerts.webhook must be an http:// or https:// URL"):
        load_config(str(f))
    f.write_text('[alerts]\nwebhook = "https://hooks.example/T1"\n')
    assert load_config(str(f)).webhook == "https://hooks.example/T1"
