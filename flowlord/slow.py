"""Slow tasks: one `slow` alert for a task still running after `[alerts] slow_factor`
times its phase's usual run time (the p95 of its newest completed runs, at least
MIN_RUNS of them: without a history there is no "usual").
"""

from __future__ import annotations

from typing import Any

import apsw

from flowlord import metrics
from flowlord.clock import Clock, parse_iso, rfc3339
from flowlord.store import Store, write_txn
from flowlord.store.reads import nearest_rank

CHECK_EVERY = 60.0  # seconds between looks
MIN_RUNS = 10  # completed runs a phase needs before it can be slow
HISTORY = 200  # its newest completed runs looked at


class SlowWatch:
    def __init__(self, store: Store, factor: float, clock: Clock, log: Any) -> None:
        self.store = store
        self.factor = factor
        self.clock = clock
        self.log = log
        self.next_check = 0.0

    def check(self, monotonic: float) -> None:
        if monotonic < self.next_check:
            return
        self.next_check = monotonic + CHECK_EVERY
        now = self.clock.now()
        usual: dict[tuple[str, str, str], float | None] = {}  # a phase's p95, this look
        slow = []
        for stored in self.store.running():
            if stored.file_path is None or stored.phase is None or not stored.task.started:
                continue
            key = (stored.task.type, stored.file_path, stored.phase)
            if key not in usual:
                usual[key] = _p95(self.store.recent_run_times(*key, HISTORY))
            p95 = usual[key]
            ran = (now - parse_iso(stored.task.started)).total_seconds()
            if p95 is not None and ran > self.factor * max(p95, 1.0):
                slow.append((stored, ran, p95))
        if not slow:
            return
        try:
            with write_txn(self.store.conn):
                for stored, ran, p95 in slow:
                    message = (f"running for {ran:.0f} s, {ran / max(p95, 1.0):.1f} times its "
                               f"phase's usual {p95:.1f} s (p95)")
                    if self.store.add_alert(stored.task_no, "slow", stored.task, message,
                                            rfc3339(now)):
                        metrics.ALERTS.labels("slow").inc()
                        self.log.warning("task slower than usual", task_no=stored.task_no,
                                         type=stored.task.type, message=message)
        except apsw.BusyError:
            self.next_check = monotonic + 1.0


def _p95(times: list[float]) -> float | None:
    """The nearest-rank p95 of at least MIN_RUNS run times; None with fewer."""
    if len(times) < MIN_RUNS:
        return None
    return nearest_rank(sorted(times), 95)
