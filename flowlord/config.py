"""Settings: embedded defaults, then the config file, then command-line flags.

The file is TOML (docs/config.md). Every key is optional; an unknown key is an
error that names it; relative paths are relative to the file's directory.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flowlord.clock import local_zone
from flowlord.durations import DurationError, parse_duration
from flowlord.rules import CATCHUP

DEFAULT_FILE = "flowlord.toml"


class ByteCount(int):
    """A size in bytes in the config: from 4 KiB to 1 TiB."""


class ConfigError(Exception):
    """str(e) is one line naming the file and the key."""


@dataclass(frozen=True)
class WorkerConfig:
    command: tuple[str, ...]
    concurrency: int = 1
    timeout: timedelta = timedelta(hours=1)
    # the topic's own variables, over the daemon's environment (or, with inherit_env =
    # false, instead of it): flowlord/workers.py, topic_environment
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = True


# what an alert route may ask for: the alert rows' kinds, and `success` (every complete,
# a notification only: flowlord/recoveries.py)
ALERT_KINDS = ("failed", "alert", "incomplete", "slow", "late", "recovered", "success")
FAILURE_KINDS = ("failed", "alert", "incomplete", "slow")  # what `[alerts] webhook` posts


@dataclass(frozen=True)
class Route:
    """An `[[alerts.route]]`: the alerts and events of these kinds, topics (globs of
    `topic` or `topic:job`) and workflow files (globs) go to this webhook
    (flowlord/routes.py). Empty topics or files: any."""

    webhook: str
    kinds: tuple[str, ...] = tuple(k for k in ALERT_KINDS if k != "success")
    topics: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    name: str = ""  # its key in route_cursors; '' : a hash of the URL

    def key(self) -> str:
        return self.name or "sha256:" + hashlib.sha256(self.webhook.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Config:
    workflows: str = "workflows"
    db: str = "flowlord.db"
    timezone: str = "local"
    catchup: str = "none"
    catchup_limit: int = 100  # catchup=all fires at most this many missed slots per phase
    allow_world_writable: bool = False  # load workflow files any user can write
    shutdown_grace: timedelta = timedelta(seconds=30)  # running tasks' time to end on stop
    retention: timedelta = timedelta(days=90)  # finished tasks and fires older go, daily
    rescan: timedelta = timedelta(minutes=5)
    bus_url: str = "local"
    # several daemons on one redis: the leader's lease; None: this daemon always leads
    bus_lease: timedelta | None = None
    bus_node: str = ""  # this daemon's name among them ('' : the host name)
    # entries kept in its stream of `flowlord worker`s' task output (flowlord/bus/logstream.py)
    bus_log_stream_max: int = 512
    workers: dict[str, WorkerConfig] = field(default_factory=dict)
    task_ttl: timedelta = timedelta(hours=4)
    logs_dir: str = ""  # task logs; '': `logs` beside the database
    logs_max_bytes: int = 10 * 1024 * 1024  # a task log's cap: its head and tail are kept
    slow_factor: float = 3.0  # a `slow` alert past this many times a phase's usual run
    webhook: str = ""
    webhook_interval: timedelta = timedelta(minutes=5)  # at most one post per interval
    routes: tuple[Route, ...] = ()  # [[alerts.route]]
    http_listen: str = ""
    http_token: str = ""  # the one token of old, named `token`
    http_token_file: str = ""  # `name:token` lines (a bare line: the token named `token`)
    http_tokens: dict[str, str] = field(default_factory=dict)  # name → token
    source: str = ""  # the config file read, or '' for the embedded defaults
    db_from: str = ""  # where `db` was set: "config" (the file), "flag" (--db), '' default

    def zone(self) -> tzinfo:
        return resolve_zone(self.timezone)

    def alert_routes(self) -> tuple[Route, ...]:
        """Every route: `[alerts] webhook` (today's kinds, all topics and files) first."""
        legacy = (Route(self.webhook, FAILURE_KINDS, name="alerts.webhook"),) if self.webhook \
            else ()
        return legacy + self.routes

    def task_logs(self) -> str:
        """The directory of task logs: `[logs] dir`, else `logs` beside the database."""
        return self.logs_dir or os.path.join(os.path.dirname(os.path.abspath(self.db)), "logs")


def resolve_zone(name: str) -> tzinfo:
    """An IANA zone, "UTC", or "local" (also "Local", robfig/cron's name for it): the
    machine's zone with its DST rules."""
    if name == "Local":
        name = "local"
    if name != "local":
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError) as e:  # "America" is a directory
            raise ConfigError(f"unknown time zone: {name}") from e
    return local_zone()


# section → key → (attribute, type)
_TOP = {"workflows": str, "db": str, "timezone": str, "catchup": str, "rescan": timedelta,
        "catchup_limit": int, "allow_world_writable": bool, "shutdown_grace": timedelta,
        "retention": timedelta}
_SECTIONS: dict[str, dict[str, tuple[str, type]]] = {
    "bus": {"url": ("bus_url", str), "lease": ("bus_lease", timedelta),
            "node": ("bus_node", str), "log_stream_max": ("bus_log_stream_max", int)},
    "alerts": {"task_ttl": ("task_ttl", timedelta), "webhook": ("webhook", str),
               "slow_factor": ("slow_factor", float),
               "webhook_interval": ("webhook_interval", timedelta)},
    "logs": {"dir": ("logs_dir", str), "max_bytes": ("logs_max_bytes", ByteCount)},
    "http": {"listen": ("http_listen", str), "token": ("http_token", str),
             "token_file": ("http_token_file", str), "tokens": ("http_tokens", dict)},
}
_WORKER_KEYS = {"command", "concurrency", "timeout", "env", "inherit_env"}


def find_config_file(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("FLOWLORD_CONFIG"):
        return os.environ["FLOWLORD_CONFIG"]
    return DEFAULT_FILE if os.path.exists(DEFAULT_FILE) else None


def load_config(path: str | None) -> Config:
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: {e}") from e
    values: dict[str, Any] = {"source": path, "db_from": "config" if "db" in doc else ""}
    for key, value in doc.items():
        if key in _TOP:
            values[key] = _typed(path, key, value, _TOP[key])
        elif key in _SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                if key == "alerts" and sub == "route":
                    values["routes"] = _routes(path, sub_value)
                    continue
                if sub not in _SECTIONS[key]:
                    raise ConfigError(f"config {path}: unknown key: {key}.{sub}")
                attr, kind = _SECTIONS[key][sub]
                values[attr] = _typed(path, f"{key}.{sub}", sub_value, kind)
        elif key == "workers" and isinstance(value, dict):
            values["workers"] = {t: _worker(path, t, w) for t, w in value.items()}
        else:
            raise ConfigError(f"config {path}: unknown key: {key}")
    base = os.path.dirname(os.path.abspath(path))
    for key in ("workflows", "db", "http_token_file", "logs_dir"):
        if values.get(key):
            values[key] = os.path.join(base, values[key])
    config = Config(**values)
    if config.catchup not in CATCHUP:
        raise ConfigError(f"config {path}: catchup must be none, last or all")
    if config.bus_lease is not None and config.bus_url == "local":
        raise ConfigError(f"config {path}: bus.lease needs a redis bus.url")
    if config.webhook and not config.webhook.startswith(("http://", "https://")):
        raise ConfigError(f"config {path}: alerts.webhook must be an http:// or https:// URL")
    try:
        config.zone()  # an unknown zone is a config error now, not at the first fire
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from e
    return config


def _typed(path: str, key: str, value: object, kind: type) -> object:
    if kind is timedelta:
        if isinstance(value, str):
            try:
                duration = parse_duration(value)
            except DurationError:
                pass
            else:
                if duration > timedelta(0):
                    return duration
        raise ConfigError(f"config {path}: {key} must be a positive duration such as \"5m\"")
    if kind is ByteCount:
        if not isinstance(value, int) or isinstance(value, bool) or not (
                4096 <= value <= 2**40):
            raise ConfigError(f"config {path}: {key} must be a number of bytes from 4096 "
                              "to 1099511627776")
        return value
    if kind is float:  # a factor: a positive number
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"config {path}: {key} must be a positive number")
        return float(value)
    if kind is dict:  # names → non-empty strings ([http.tokens])
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v
                for k, v in value.items()):
            raise ConfigError(f"config {path}: {key} must be a table of names to "
                              "non-empty strings")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path}: {key} must be true or false")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
            raise ConfigError(f"config {path}: {key} must be an integer from 1 to 100000")
        return value
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"config {path}: {key} must be a string")
    return value


def _worker(path: str, topic: str, table: object) -> WorkerConfig:
    where = f"workers.{topic}"
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: {where} must be a table")
    for key in table:
        if key not in _WORKER_KEYS:
            raise ConfigError(f"config {path}: unknown key: {where}.{key}")
    command = table.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(a, str) for a in command)):
        raise ConfigError(f"config {path}: {where}.command must be a list of strings")
    concurrency = table.get("concurrency", 1)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"config {path}: {where}.concurrency must be an integer >= 1")
    timeout = _typed(path, f"{where}.timeout", table.get("timeout", "1h"), timedelta)
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and "\0" not in k
            and isinstance(v, str) and "\0" not in v for k, v in env.items()):
        raise ConfigError(f"config {path}: {where}.env must be a table of names to strings "
                          "(a name without '=')")
    inherit = table.get("inherit_env", True)
    if not isinstance(inherit, bool):
        raise ConfigError(f"config {path}: {where}.inherit_env must be true or false")
    return WorkerConfig(tuple(command), concurrency, timeout,  # type: ignore[arg-type]
                        dict(env), inherit)


def _routes(path: str, tables: object) -> tuple[Route, ...]:
    """`[[alerts.route]]` tables: webhook (required), kinds, topics, files, name."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"config {path}: alerts.route must be an array of tables "
                          "([[alerts.route]])")
    routes: list[Route] = []
    for n, table in enumerate(tables):
        where = f"alerts.route[{n}]"
        unknown = set(table) - {"webhook", "kinds", "topics", "files", "name"}
        if unknown:
            raise ConfigError(f"config {path}: unknown key: {where}.{sorted(unknown)[0]}")
        url = table.get("webhook")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"config {path}: {where}.webhook must be an http:// or https:// "
                              "URL")
        lists: dict[str, tuple[str, ...]] = {}
        for name in ("kinds", "topics", "files"):
            value = table.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) and v for v in value):
                raise ConfigError(f"config {path}: {where}.{name} must be a list of "
                                  "non-empty strings")
            lists[name] = tuple(value)
        bad = [k for k in lists.get("kinds", ()) if k not in ALERT_KINDS]
        if bad:
            raise ConfigError(f"config {path}: {where}.kinds: unknown kind {bad[0]!r} "
                              f"(one of {', '.join(ALERT_KINDS)})")
        name = table.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"config {path}: {where}.name must be a string")
        routes.append(Route(url, name=name, **lists))
    keys = [r.key() for r in routes]
    for n, key in enumerate(keys):
        if key in keys[:n] or key == "alerts.webhook":
            raise ConfigError(f"config {path}: alerts.route[{n}]: another route has the same "
                              "webhook or name; give each a distinct name")
    return tuple(routes)


def http_tokens(config: Config) -> dict[str, str]:
    """The bearer tokens of the HTTP API by name: `http.token` (named `token`), the
    `[http.tokens]` table and `http.token_file`'s lines (`name:token`; a line without a
    name is the token named `token`). A name is who acts, in the audit trail."""
    tokens = {"token": config.http_token} if config.http_token else {}
    tokens.update(config.http_tokens)
    if config.http_token_file:
        try:
            with open(config.http_token_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except OSError as e:
            raise ConfigError(f"http.token_file: {e.strerror}: "
                              f"{config.http_token_file}") from None
        for line in lines:
            if line and not line.startswith("#"):
                name, sep, token = line.partition(":")
                if not sep:  # the file of old: one bare token
                    name, token = "token", name
                tokens[name.strip() or "token"] = token.strip()
    return {name: token for name, token in tokens.items() if token}


def with_flags(config: Config, *, workflows: str | None, db: str | None) -> Config:
    """Command-line flags win over the file; they are relative to the current directory."""
    if workflows:
        config = replace(config, workflows=workflows)
    if db:
        config = replace(config, db=db, db_from="flag")
    return config


def db_origin(config: Config) -> str:
    """Where the database's path came from, for a message that names it."""
    source = os.path.abspath(config.source) if config.source else ""
    if config.db_from == "flag":
        return "from --db"
    if config.db_from == "config":
        return f"db in {source}"
    if source:
        return f"the default, as {source} sets no db; relative to the current directory"
    return "the default, as no config file was read; relative to the current directory"
