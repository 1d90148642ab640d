"""`[http] listen` takes an IPv6 address in brackets: a real daemon answers on ::1."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import daemon, daemon_config, messages_until


def _free_v6_port() -> int | None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as s:
            return int(s.getsockname()[1])
    except OSError:  # no IPv6 loopback on this machine
        return None


@pytest.mark.slow
def test_the_daemon_answers_on_ipv6_loopback(tmp_path: Path, wf: Path,
                                             notify_socket: socket.socket) -> None:
    port = _free_v6_port()
    if port is None:
        pytest.skip("this machine has no IPv6 loopback")
    cfg = daemon_config(tmp_path, f'[http]\nlisten = "[::1]:{port}"\n')
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    with daemon(tmp_path, wf, tmp_path / "f.db", args=["-c", str(cfg)],
                stderr=subprocess.DEVNULL) as proc:
        messages_until(notify_socket, "READY=1")
        with urllib.request.urlopen(f"http://[::1]:{port}/api/status", timeout=10) as answer:
            status = json.load(answer)
        assert status["phases"]["ok"] == 1
        # the Host check takes a bracketed loopback name, and only that
        request = urllib.request.Request(f"http://[::1]:{port}/healthz",
                                         headers={"Host": "example.com"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 421
        assert proc.poll() is None
