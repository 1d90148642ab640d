"""One route's webhook: Slack-compatible summaries, batched and retried, never in the way.

The daemon's loop calls `tick()` (through flowlord/routes.py, one Webhook per route).
At most once per interval it reads the alerts after the route's cursor that the
route matches, adds the events that are no rows (`success`), and hands one summary
to a thread of its own; the HTTP request runs there, so a slow or dead endpoint
holds up nothing but its own route. When the endpoint fails, the same alerts are
tried again after a backoff (doubling, capped at the interval); when it accepts
them, the loop moves the route's cursor past them and marks them posted
(`alerts.posted_at`: the first route to accept one), so a restart does not send
them twice. Events live in memory only: a restart loses those not yet accepted.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import apsw

from flowlord.clock import utc_now
from flowlord.config import Route
from flowlord.store import Store, write_txn
from flowlord.store import alerts as alert_rows
from flowlord.store.alerts import AlertRow

BATCH = 500  # alerts in one post at most; the rest go in the next
SCAN = 2000  # alerts read at once past the cursor, matched or not
SCANS = 10  # reads per look at most: a route that matches little moves on all the same
EVENTS_MAX = 10_000  # events kept for a route whose webhook is away; the oldest go
TIMEOUT = 10.0  # seconds for one request
FIRST_BACKOFF = 5.0  # seconds after a failed post; doubles up to the interval
LOOK_EVERY = 1.0  # seconds between looks for new alerts when there was nothing to post


def summary(alerts: Sequence[AlertRow]) -> dict[str, Any]:
    """The Slack payload: a count per kind and task, then the newest messages."""
    counts = Counter((a.kind, f"{a.type}:{a.job}" if a.job else a.type) for a in alerts)
    lines = [f"{kind} {key}: {n}" for (kind, key), n in sorted(
        counts.items(), key=lambda item: (-item[1], item[0]))]
    latest = [f"{a.created} {a.kind} {a.type}{':' + a.job if a.job else ''}: {a.message[:300]}"
              for a in alerts[-10:]]
    good = all(a.kind in ("recovered", "success") for a in alerts)
    noun = "alert" if not good else "notification"
    return {"text": f"flowlord: {len(alerts)} {noun}{'s' if len(alerts) != 1 else ''}",
            "attachments": [{"color": "#2EB67D" if good else "#FF0000", "pretext": "flowlord",
                             "title": f"{noun}s", "text": "\n".join(lines + [""] + latest)}]}


class Webhook:
    def __init__(self, route: Route, interval: float, log: Any,
                 matches: Callable[[Route, AlertRow], bool], since: Callable[[], str]) -> None:
        self.route = route
        self.key = route.key()
        self.interval = interval
        self.log = log
        self.matches = matches
        self.since = since  # a new route's cursor starts at the alerts created since then
        self.next_post = 0.0
        self.backoff = FIRST_BACKOFF
        self.cursor: int | None = None  # the highest alert_no looked at (None: not read)
        self.events: deque[AlertRow] = deque(maxlen=EVENTS_MAX)  # not rows: `success`
        self.dropped = 0  # events lost to EVENTS_MAX since the last post
        # (alert numbers, events, cursor after them) of the post in flight
        self.in_flight: tuple[list[int], list[AlertRow], int] | None = None
        self.outcomes: queue.SimpleQueue[str] = queue.SimpleQueue()  # '' or the error

    def add_event(self, event: AlertRow) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)

    def tick(self, store: Store, monotonic: float) -> None:
        self._collect(store, monotonic)
        if self.in_flight is not None or monotonic < self.next_post:
            return
        if self.cursor is None:
            self.cursor = alert_rows.route_cursor(store.conn, self.key, self.since())
        matched, through = self._matched(store)
        events = list(self.events)[:BATCH - len(matched)] if len(matched) < BATCH else []
        if not matched and not events:
            self.cursor = through  # kept in memory; written with the next post
            self.next_post = monotonic + LOOK_EVERY
            return
        for _ in events:
            self.events.popleft()
        self.in_flight = ([a.alert_no for a in matched if a.alert_no is not None], events,
                          through)
        body = json.dumps(summary(matched + events)).encode()
        threading.Thread(target=self._post, args=(body,), daemon=True,
                         name=f"webhook {self.key}").start()

    def _matched(self, store: Store) -> tuple[list[AlertRow], int]:
        """Up to BATCH alerts after the cursor that the route matches, and the cursor
        after them (past the unmatched ones read too)."""
        assert self.cursor is not None
        through, matched = self.cursor, []
        for _ in range(SCANS):
            rows = alert_rows.alerts_after(store.conn, through, SCAN)
            for row in rows:
                assert row.alert_no is not None
                if self.matches(self.route, row):
                    matched.append(row)
                    if len(matched) == BATCH:
                        return matched, row.alert_no
                through = row.alert_no
            if len(rows) < SCAN:
                break
        return matched, through

    def _post(self, body: bytes) -> None:  # on its own thread
        request = urllib.request.Request(self.route.webhook, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                response.read()
            error = ""
        except (urllib.error.URLError, OSError, ValueError) as e:
            error = str(e) or type(e).__name__
        self.outcomes.put(error)

    def _collect(self, store: Store, monotonic: float) -> None:
        if self.in_flight is None:
            return
        try:
            error = self.outcomes.get_nowait()
        except queue.Empty:
            return
        numbers, events, through = self.in_flight
        if error:
            self.in_flight = None
            self.events.extendleft(reversed(events))  # tried again, first
            self.log.warning("webhook failed; will retry", route=self.key, error=error,
                             retry_in=round(min(self.backoff, self.interval)))
            self.next_post = monotonic + min(self.backoff, self.interval)
            self.backoff = min(self.backoff * 2, self.interval)
            return
        try:
            with write_txn(store.conn):
                alert_rows.set_route_cursor(store.conn, self.key, through)
                alert_rows.mark_posted(store.conn, numbers, utc_now())
        except apsw.BusyError:  # posted: mark them next turn, and post nothing before
            self.outcomes.put("")
            return
        except apsw.FullError:  # the same, once the disk has room (flowlord/disk_full.py)
            self.outcomes.put("")
            raise
        self.in_flight = None
        self.cursor = through
        self.log.info("alerts posted to the webhook", route=self.key, alerts=len(numbers),
                      events=len(events))
        if self.dropped:
            self.log.warning("notifications dropped while the webhook was away",
                             route=self.key, dropped=self.dropped)
            self.dropped = 0
        self.backoff = FIRST_BACKOFF
        self.next_post = monotonic + self.interval
