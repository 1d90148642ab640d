"""Routed notifications: every alert row, and every event that is no row (`success`),
goes to each `[[alerts.route]]` that matches it (README.md, Alerts and
notifications; docs/config.md). `[alerts] webhook` is a route too, for the kinds it
always posted (failed, alert, incomplete, slow).

A route matches an alert when its `kinds` name the alert's kind, one of its
`topics` globs matches the alert's `topic` or `topic:job` (none given: any), and
one of its `files` globs matches the workflow file of the alert's phase (none
given: any; an alert of no phase then matches no route with `files`). Globs are
fnmatch's (`*` crosses `/`). Each route has its own sender (flowlord/webhook.py):
its own cursor, batch, backoff and thread, so a route whose server is down delays
no other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from flowlord.clock import Clock, rfc3339
from flowlord.config import Route
from flowlord.store import Store
from flowlord.store.alerts import AlertRow
from flowlord.webhook import Webhook

NEW_ROUTE_LOOKBACK = timedelta(days=1)  # a route first seen gets the unposted alerts of this


def matches(route: Route, alert: AlertRow) -> bool:
    if alert.kind not in route.kinds:
        return False
    if route.topics:
        task = f"{alert.type}:{alert.job}" if alert.job else alert.type
        if not any(fnmatchcase(alert.type, g) or fnmatchcase(task, g) for g in route.topics):
            return False
    return not route.files or (alert.file_path is not None and any(
        fnmatchcase(alert.file_path, g) for g in route.files))


class Routes:
    def __init__(self, routes: Sequence[Route], interval: float, clock: Clock,
                 log: Any) -> None:
        self.clock = clock
        self.senders = [Webhook(r, interval, log, matches, self._since) for r in routes]
        self.kinds = {k for r in routes for k in r.kinds}

    def wants(self, kind: str) -> bool:
        """Whether any route asks for this kind (an event nobody wants is not made)."""
        return kind in self.kinds

    def event(self, event: AlertRow) -> None:
        """An event that is no row (`success`): to each matching route, in memory."""
        for sender in self.senders:
            if matches(sender.route, event):
                sender.add_event(event)

    def tick(self, store: Store, monotonic: float) -> None:
        for sender in self.senders:
            sender.tick(store, monotonic)

    def _since(self) -> str:
        return rfc3339(self.clock.now() - NEW_ROUTE_LOOKBACK)
