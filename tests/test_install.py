"""Production, as docs/install.md says: packaging/install.sh into a temporary root, the
installed unit verified by systemd-analyze, one database for the daemon and every
command, no database made by a command that reads, the database readable by the
service's group while the daemon runs and after it stopped, and `make run` without
the dev tools."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, messages_until, run_cli

pytestmark = pytest.mark.slow

DOC = (ROOT / "docs" / "install.md").read_text()
GROUP = 40001  # the service's group, and an operator of it (no names needed)
OPERATOR = 40002


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The doc's install command, run with DESTDIR: the root and what it printed."""
    [command] = [line for line in re.findall(r"```sh\n(.*?)```", DOC, re.S)[0].splitlines()
                 if "install.sh" in line]
    root = tmp_path_factory.mktemp("root")
    argv = command.removeprefix("sudo ").split()
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "DESTDIR": str(root)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    yield root, done.stdout


def test_the_script_installs_everything_and_prints_what_needs_root(
        installed: tuple[Path, str]) -> None:
    root, out = installed
    for step in ("groupadd --system flowlord", "useradd --system --gid flowlord",
                 "chown -R root:flowlord /etc/flowlord",
                 "chown -R flowlord:flowlord /var/lib/flowlord", "systemctl daemon-reload",
                 "usermod --append --groups flowlord alice"):
        assert f"not run (needs the real root): {step}" in out
    assert _mode(root / "etc/flowlord") == 0o750
    assert _mode(root / "etc/flowlord/flowlord.toml") == 0o640
    assert _mode(root / "var/lib/flowlord") == 0o750
    assert _mode(root / "var/lib/flowlord/drop") == 0o2770
    config = (root / "etc/flowlord/flowlord.toml").read_text()
    assert 'workflows = "/etc/flowlord/workflows"' in config
    assert 'db = "/var/lib/flowlord/flowlord.db"' in config
    # the drop example watches a directory the service sees: not its private /tmp
    drop = (root / "etc/flowlord/workflows/drop.toml").read_text()
    assert "files=/var/lib/flowlord/drop/*.csv" in drop and "/tmp" not in drop.split(
        "[[phase]]")[1]
    flowlord = root / "opt/flowlord/.venv/bin/flowlord"
    done = subprocess.run([str(flowlord), "check", str(root / "etc/flowlord/workflows")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the venv has what running needs, not the dev tools
    assert not (root / "opt/flowlord/.venv/bin/pytest").exists()


def test_the_installed_unit_verifies_and_takes_everything_from_the_config(
        installed: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = installed
    text = (root / "etc/systemd/system/flowlord.service").read_text()
    [exec_start] = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    assert exec_start == ("ExecStart=/opt/flowlord/.venv/bin/flowlord run "
                          "--config /etc/flowlord/flowlord.toml")
    assert "StateDirectory=flowlord" in text.splitlines()
    # ExecStart must name an existing program: the installed one, under the root
    unit = tmp_path / "flowlord.service"
    unit.write_text(text.replace("/opt/flowlord/", f"{root}/opt/flowlord/"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == ""


def test_every_command_with_the_config_sees_the_database_the_config_names(
        installed: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = installed
    cfg = tmp_path / "flowlord.toml"  # the installed config, its paths under the root
    cfg.write_text((root / "etc/flowlord/flowlord.toml").read_text()
                   .replace('"/etc/flowlord', f'"{root}/etc/flowlord')
                   .replace('"/var/lib/flowlord', f'"{root}/var/lib/flowlord'))
    db = root / "var/lib/flowlord/flowlord.db"
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    flowlord = str(root / "opt/flowlord/.venv/bin/flowlord")
    done = subprocess.run([flowlord, "-c", str(cfg), "tasks"], cwd=elsewhere,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (f"flowlord: no database at {db} (db in {cfg}): "
                           f"`flowlord -c {cfg} refresh` creates it\n")
    assert not db.exists() and list(elsewhere.iterdir()) == []
    done = subprocess.run([flowlord, "-c", str(cfg), "refresh"], cwd=elsewhere,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert db.exists() and list(elsewhere.iterdir()) == []
    done = subprocess.run([flowlord, "-c", str(cfg), "phases"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "drop.toml\tcount" in done.stdout


def test_no_command_that_needs_a_database_makes_one(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    db = tmp_path / "none.db"
    for command in (["tasks"], ["phases"], ["graph"], ["stats"], ["actions"], ["pauses"],
                    ["logs", "1"], ["doctor"], ["doctor", "--fix"], ["cancel", "1"],
                    ["rerun", "1"], ["mark", "1", "complete"], ["drop", "--type", "t"],
                    ["pause", "--all"], ["resume", "--all"], ["notify", "/x/y.csv"],
                    ["trigger", "t"], ["export"]):
        done = run_cli(*command, "-w", str(wf), "--db", str(db), cwd=tmp_path)
        assert done.returncode == 2, command
        assert done.stderr == (f"flowlord: no database at {db} (from --db): "
                               f"`flowlord --db {db} refresh` creates it\n"), command
        assert not db.exists(), command


def test_the_group_reads_the_database_while_the_daemon_runs_and_after_it_stopped() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    # not under pytest's tmp_path: its parents are root's alone (0700)
    base = Path(tempfile.mkdtemp(prefix="flowlord-group-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"  # as StateDirectory= makes it: the service's, 0750
        state.mkdir(mode=0o750)
        os.chown(state, 0, GROUP)
        wf = base / "wf"
        wf.mkdir()
        (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
        db = state / "flowlord.db"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(base / "notify.sock"))
        sock.settimeout(20)
        # the daemon in the service's group, with the unit's umask
        env = {**os.environ, "NOTIFY_SOCKET": str(base / "notify.sock"),
               "PYTHONPATH": str(ROOT)}
        env.pop("FLOWLORD_CONFIG", None)
        proc = subprocess.Popen(
            ["setpriv", f"--regid={GROUP}", "--clear-groups", sys.executable, "-m",
             "flowlord", "run", "-w", str(wf), "--db", str(db)],
            env=env, umask=0o027, stderr=subprocess.DEVNULL)
        try:
            messages_until(sock, "READY=1")
            assert _operator_reads(db) == "1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            sock.close()
        for name in ("flowlord.db", "flowlord.db-wal", "flowlord.db-shm"):
            path = state / name
            assert path.exists(), name  # kept at the clean stop
            assert (path.stat().st_gid, _mode(path)) == (GROUP, 0o640), name
        assert _operator_reads(db) == "1"  # stopped: the operator still reads it
    finally:
        shutil.rmtree(base)


def _operator_reads(db: Path) -> str:
    """What an operator of the group (not the owner, no other right) reads."""
    done = subprocess.run(
        ["setpriv", f"--reuid={OPERATOR}", f"--regid={OPERATOR}", f"--groups={GROUP}",
         "sqlite3", "-readonly", str(db), "SELECT count(*) FROM workflow_phases"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout.strip()


def test_make_run_installs_no_dev_tools_and_make_test_does() -> None:
    def planned(target: str) -> str:
        done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run, test = planned("run"), planned("test")
    assert "pip install --quiet -e .\n" in run and "[dev]" not in run
    assert "pip install --quiet -e '.[dev]'" in test
    # each has a stamp of its own in the shared .venv
    assert re.search(r"touch \.venv/\.installed-run", run)
    assert re.search(r"touch \.venv/\.installed-dev", test)
