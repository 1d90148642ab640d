"""`[workers.<topic>] env` and `inherit_env`: a topic's own environment, seen by the
commands a real daemon runs (docs/config.md)."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from flowlord.config import ConfigError, load_config
from flowlord.workers import topic_environment
from tests.helpers import ROOT, daemon, daemon_config, query, run_cli, wait_for

# prints what the task sees: its topic's variable, one the daemon has, the task's type
SHOW = 'echo "greeting=${GREETING-unset} daemon=${FROM_DAEMON-unset} type=$FLOWLORD_TASK_TYPE"'


def test_env_must_be_a_table_of_strings(tmp_path: Path) -> None:
    for bad in ('env = ["A=1"]', 'env = { A = 1 }', 'env = { "A=B" = "1" }',
                'inherit_env = "no"'):
        cfg = tmp_path / "bad.toml"
        cfg.write_text(f'[workers.t]\ncommand = ["true"]\n{bad}\n')
        with pytest.raises(ConfigError, match=r"workers\.t\.(env|inherit_env)"):
            load_config(str(cfg))


@pytest.mark.slow
def test_a_topic_runs_with_its_own_environment(tmp_path: Path, wf: Path) -> None:
    (wf / "env.toml").write_text('[[phase]]\ntask = "own"\n\n[[phase]]\ntask = "added"\n')
    cfg = daemon_config(tmp_path, f'''
[workers.own]
command = ["sh", "-c", '{SHOW}']
inherit_env = false
env = {{ GREETING = "hello there", PATH = "/usr/bin:/bin" }}

[workers.added]
command = ["sh", "-c", '{SHOW}']
env = {{ GREETING = "hi" }}
''')
    db = tmp_path / "f.db"
    assert run_cli("refresh", "-c", str(cfg), "-w", str(wf), "--db", str(db)).returncode == 0
    for task in ("own", "added"):
        done = run_cli("trigger", task, "-c", str(cfg), "-w", str(wf), "--db", str(db))
        assert done.returncode == 0, done.stderr
    with daemon(tmp_path, wf, db, args=["-c", str(cfg)], env={"FROM_DAEMON": "yes"},
                stderr=subprocess.DEVNULL):
        wait_for(lambda: len(query(db, "SELECT task_no FROM tasks WHERE result = 'complete'"))
                 == 2, 30)
    logs = {type: (tmp_path / "logs" / f"{no}.log").read_text()
            for no, type in query(db, "SELECT task_no, type FROM tasks")}
    assert logs == {"own": "greeting=hello there daemon=unset type=own\n",
                    "added": "greeting=hi daemon=yes type=added\n"}


def test_the_readme_example_is_a_valid_worker_table(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "inherit_env" in b]
    cfg = tmp_path / "flowlord.toml"
    cfg.write_text(textwrap.dedent(block))
    worker = load_config(str(cfg)).workers["load"]
    assert not worker.inherit_env and worker.env["PGHOST"] == "db1"
    env = topic_environment(worker.env, worker.inherit_env, {"HOME": "/root"})
    assert env == {"PGHOST": "db1", "PGUSER": "etl", "PATH": "/usr/bin:/bin"}
