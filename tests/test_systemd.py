"""The systemd units pass `systemd-analyze verify` without a single complaint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "flowlord.service"
WORKER_UNIT = ROOT / "systemd" / "flowlord-worker@.service"


@pytest.mark.parametrize("source, name", [(UNIT, "flowlord.service"),
                                          (WORKER_UNIT, "flowlord-worker@extract.service")])
def test_unit_verifies_cleanly(tmp_path: Path, source: Path, name: str) -> None:
    # ExecStart must name an existing program: point it at this environment's flowlord;
    # the worker's environment file is made up here, as an operator writes it
    flowlord = Path(sys.executable).parent / "flowlord"
    env = tmp_path / "worker-extract.env"
    env.write_text("FLOWLORD_BUS=redis://127.0.0.1:6379/0\nFLOWLORD_COMMAND=/bin/true {info}\n")
    unit = tmp_path / name
    unit.write_text(source.read_text().replace("/opt/flowlord/.venv/bin/flowlord", str(flowlord))
                    .replace("/etc/flowlord/worker-%i.env", str(env)))
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (.ci/run installs it)"
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout + done.stderr == ""  # verify exits 0 even on unknown keys


def test_unit_is_type_notify_with_watchdog_and_reload() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=30s", "StateDirectory=flowlord",
                 "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
                 "NoNewPrivileges=yes"):
        assert line in text.splitlines()
