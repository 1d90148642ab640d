"""What `flowlord run` takes hold of before its loop, each from the config: the
database's lock, the bus (with redis, this node and its lease), the task logs'
directory, the HTTP server.

Each is a `ConfigError` at start (one line, exit 2) when it cannot be had, before
the daemon says READY=1; the loop itself is in flowlord/daemon.py.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flowlord.bus import Bus, BusUnavailable
from flowlord.bus.local import LocalBus
from flowlord.config import Config, ConfigError, http_tokens
from flowlord.standby import DEFAULT_LEASE, Leadership, NodeInUse
from flowlord.tasklog import writable_dir

if TYPE_CHECKING:
    from flowlord.web.actions import Loop
    from flowlord.web.server import HttpServer

LOCK_TRIES = 5  # looks at the database's lock before another daemon is taken to hold it


def lock_database(db: str) -> int:
    """One daemon per database: a second one would take the first one's running tasks
    for leftovers of a crash, and run them again. The lock is held while the returned
    descriptor is open."""
    path = db + ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise ConfigError(f"cannot lock {path}: {e.strerror}") from None
    for attempt in range(LOCK_TRIES):  # `flowlord phases` may hold it shared a moment
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.01 * (attempt + 1))
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"cannot lock {path}: {e.strerror}") from None
    os.close(fd)
    raise ConfigError(f"another flowlord run is using {db}")


def open_bus(config: Config, log: Any,
             wake: Callable[[], None]) -> tuple[Bus, Leadership | None]:
    """The bus the config names: `local`, or a redis URL (which must answer now), with
    the leadership that decides who fires (None on the local bus)."""
    if config.bus_url == "local":
        return LocalBus(config.workers, wake=wake, log_dir=task_logs(config),
                        log_max_bytes=config.logs_max_bytes), None
    from flowlord.bus.redis import RedisBus
    from flowlord.bus.wire import DONE_STREAM

    try:
        # always a lease and a node of its own, even alone: two daemons that share a
        # redis by mistake must not both fire, nor read each other's results
        node = config.bus_node or socket.gethostname()
        bus = RedisBus(config.bus_url, log, wake=wake,
                       done_stream=f"{DONE_STREAM}:{node}",
                       # the workers' task output comes back to the logs here
                       log_dir=task_logs(config), log_max_bytes=config.logs_max_bytes,
                       log_stream_max=config.bus_log_stream_max)
        leadership = Leadership(bus.client, node, config.bus_lease or DEFAULT_LEASE, log)
        try:
            leadership.hold_node()
        except (NodeInUse, BusUnavailable):
            bus.close(0)
            raise
        bus.start()  # only once the node is ours: its results and logs streams too
        return bus, leadership
    except ImportError:
        raise ConfigError("bus.url: the redis bus needs redis-py: "
                          "pip install 'flowlord[redis]'") from None
    except BusUnavailable as e:
        raise ConfigError(f"bus.url: {e}") from None
    except NodeInUse as e:
        raise ConfigError(str(e)) from None


def task_logs(config: Config) -> str:
    """The task logs' directory, made now: one the daemon cannot write to is a config
    error at start, not a task without a log later."""
    try:
        return writable_dir(config.task_logs())
    except OSError as e:
        raise ConfigError(f"logs.dir: {e.strerror}: {e.filename}") from None


def http_server(config: Config, log: Any, *, healthy: Callable[[], bool],
                role: Callable[[], str], last_rescan: Callable[[], str | None],
                loop: Loop) -> HttpServer | None:
    """The API when http.listen is set, not yet serving; a bad or unsafe address is a
    config error, and so is a port that cannot be bound."""
    if not config.http_listen:
        return None
    # imported only when serving: werkzeug, jinja2 and waitress are a third of the
    # imports, paid before READY=1 (bench/daemon.py, the warm start)
    from flowlord.web.api import Api
    from flowlord.web.server import HttpServer, parse_listen

    tokens = http_tokens(config)
    host, port = parse_listen(config.http_listen, bool(tokens))
    api = Api(config, healthy, role, tokens, last_rescan=last_rescan, loop=loop)
    try:
        return HttpServer(host, port, api, log)
    except OSError as e:
        raise ConfigError(f"http.listen {config.http_listen}: {e.strerror}") from None
