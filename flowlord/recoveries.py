"""What a `complete` says beyond itself (README.md, Alerts and notifications):

* `recovered`, an alert row, once: a phase's first complete after a failure (its
  newest alert among failed, alert and recovered is a failure), or the completion
  of a slot that had its `late` alert. One row per task and per slot (migration 20),
  written in the transaction that records the result.
* `success`, every complete, only when a route asks for it, and never a row: it
  would double the writes of every task and fill the alerts table with what is the
  normal case. It is a notification held in the routes' memory (flowlord/routes.py):
  at most once, and one not yet accepted is lost with a restart.

The result recorder (flowlord/results.py) calls `recorded()` for each result inside its
transaction, then `committed()` or `discarded()`: what a rolled-back turn decided
is forgotten, as the turn is recorded again.
"""

from __future__ import annotations

from typing import Any

from flowlord import metrics
from flowlord.clock import Clock, rfc3339
from flowlord.model import Phase, StoredTask
from flowlord.routes import Routes
from flowlord.rules import parse_rule
from flowlord.store import Store
from flowlord.store import alerts as alert_rows
from flowlord.store.alerts import AlertRow

FAILURES = ("failed", "alert")
PhaseKey = tuple[str, str]


class Recoveries:
    def __init__(self, store: Store, routes: Routes | None, clock: Clock, log: Any) -> None:
        self.store = store
        self.routes = routes
        self.clock = clock
        self.log = log
        self.failing: dict[PhaseKey, bool] = {}  # per phase seen: whether it is failing
        self._failing: dict[PhaseKey, bool] = {}  # this turn's, until committed
        self._events: list[AlertRow] = []
        self._recovered: list[tuple[int, str]] = []  # (task_no, message), for the log

    def recorded(self, stored: StoredTask, result: str, alerts: list[tuple[str, str]],
                 phase: Phase | None) -> None:
        """A result was recorded with these alerts (kind, message); inside its txn."""
        key = (stored.file_path, stored.phase) if stored.file_path and stored.phase else None
        if key is not None and any(kind in FAILURES for kind, _ in alerts):
            self._failing[key] = True
        if result != "complete":
            return
        task = stored.task
        if self.routes is not None and self.routes.wants("success"):
            self._events.append(AlertRow(None, "success", task.type, task.job,
                                         f"task {stored.task_no} complete",
                                         rfc3339(self.clock.now()), stored.file_path,
                                         stored.phase, stored.scheduled_for))
        if key is None:
            return
        why = []
        if self._is_failing(key):
            why.append("complete after a failure")
            self._failing[key] = False
        if stored.scheduled_for is not None and phase is not None and \
                parse_rule(phase.rule).deadline is not None and self._late_slot_done(key, stored):
            why.append(f"its slot {stored.scheduled_for}, late, is complete")
        if why:
            message = f"task {stored.task_no}: " + "; ".join(why)
            if self.store.add_alert(stored.task_no, "recovered", task, message,
                                    rfc3339(self.clock.now())):
                self._recovered.append((stored.task_no, message))

    def committed(self) -> None:
        self.failing.update(self._failing)
        for task_no, message in self._recovered:
            metrics.ALERTS.labels("recovered").inc()
            self.log.info("recovered", task_no=task_no, message=message)
        if self.routes is not None:
            for event in self._events:
                self.routes.event(event)
        self.discarded()

    def discarded(self) -> None:
        self._failing, self._events, self._recovered = {}, [], []

    def _is_failing(self, key: PhaseKey) -> bool:
        if key in self._failing:
            return self._failing[key]
        if key not in self.failing:  # read once per phase; kept up to date from here on
            self._failing[key] = alert_rows.last_failure_kind(self.store.conn, *key) in FAILURES
            return self._failing[key]
        return self.failing[key]

    def _late_slot_done(self, key: PhaseKey, stored: StoredTask) -> bool:
        assert stored.scheduled_for is not None
        conn = self.store.conn
        if not alert_rows.late_alert(conn, *key, stored.scheduled_for):
            return False
        return alert_rows.slot_state(conn, *key, stored.scheduled_for, "9999").done_by
