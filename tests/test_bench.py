"""Each benchmark in its quick mode: it runs, prints every figure, and leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

LABELS = {
    "refresh.py": ["cold load", "no-change rescan", "one changed file, targeted",
                   "one changed file, full", "peak RSS", "physical limit", "ratio", "target",
                   "goal cold load / limit <= 2.5", "the same in CPU time"],
    "daemon.py": ["edit latency over 20 edits", "goal p99 <= 20 ms", "written back to back",
                  "start-up to READY=1: cold", "warm restart", "RSS",
                  "idle CPU", "500 phases due at one second", "raw insert",
                  "lateness of 60 fires", "agenda of 24 h", "/api/agenda over", "target",
                  "ratio", "goal burst / raw insert limit <= 2",
                  "the fires built and their write begun"],
    "tasks.py": ["whole loop, `true` worker, concurrency 4: 100 tasks", "concurrency 16",
                 "spawning `true` alone", "task logs, a worker printing 1 KiB per task",
                 "capture costs", "0 children each: 500 results",
                 "10 children each: 500 results and 5000 children",
                 "limit: the same rows written raw", "ratio", "target",
                 "goal whole loop at concurrency 4 <= 1.4 x", "goal results with 10 children"],
    "http_api.py": ["overview page", "phases API, first page", "tasks API, topic7 errors",
                    "/metrics", "a topic never run", "one phase, a child", "a job never run",
                    "no client", "20 clients, 1 request/s each",
                    "20 clients back to back", "p99 growth with 20 polling clients", "target",
                    "actions, request to outcome", "rerun", "cancel", "pause",
                    "20 clients, 1 rerun/s each", "p99 growth with 20 clients posting actions",
                    "/api/stats", "phase page with its charts", "timeline, 6 h",
                    "files page", "graph page", "an attempt's page", "/api/pauses",
                    "/healthz", "/api/agenda", "agenda page", "the first request, computing it"],
    "policy.py": ["fire lateness of 600 phases", "without the policy", "p99",
                  "with overlap=skip and max_active=1", "ratio", "target"],
    "redis_bus.py": ["end to end, `true`, 4 workers: redis", "of the local bus",
                     "start latency at 100 tasks/s", "p50", "p99", "round trips/s", "target",
                     "goal end to end over redis >= 75% of the local bus"],
}


@pytest.mark.parametrize("script", sorted(LABELS))
def test_bench_quick_runs(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOWLORD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["TMPDIR"] = str(tmp_path)  # so a temp file left behind would be seen below
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for label in LABELS[script]:
        assert label in result.stdout, label
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
