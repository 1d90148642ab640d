"""The systemd unit passes `systemd-analyze verify` without a single complaint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "flowlord.service"


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    # ExecStart must name an existing program: point it at this environment's flowlord
    flowlord = Path(sys.executable).parent / "flowlord"
    unit = tmp_path / "flowlord.service"
    unit.write_text(UNIT.read_text().replace("/opt/flowlord/.venv/bin/flowlord", str(flowlord)))
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
