"""Shared fixtures: real SQLite files in tmp_path, the upstream fixture files copied in.
Plain helper functions are in tests/helpers.py."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlord.loader import Loader
from flowlord.store import Store
from tests.helpers import FIXTURES
from tests.redis_server import RedisServer


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A fresh copy of the Go flowlord's own test files."""
    target = tmp_path / "upstream"
    shutil.copytree(FIXTURES, target)
    return target


@pytest.fixture
def wf(tmp_path: Path) -> Path:
    d = tmp_path / "workflows"
    d.mkdir()
    return d


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The socket `flowlord run` sends its systemd notifications to (NOTIFY_SOCKET)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(20)
    yield s
    s.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "flowlord.db"))
    yield s
    s.close()


@pytest.fixture
def loader(wf: Path, store: Store) -> Loader:
    return Loader(str(wf), store)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of its own, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()
