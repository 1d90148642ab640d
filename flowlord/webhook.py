"""Alert summaries to a Slack-compatible webhook, batched and retried, never in the way.

The daemon's loop calls `tick()`. At most once per interval it reads the alerts
the webhook has not accepted yet and hands one summary to a sender thread; the
HTTP request runs there. When the endpoint fails, the same alerts are tried
again after a backoff (doubling, capped at the interval); when it accepts them,
the loop marks them posted, so a restart does not send them twice.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any

import apsw

from flowlord.clock import utc_now
from flowlord.store import Store, write_txn

BATCH = 500  # alerts in one post at most; the rest go in the next
TIMEOUT = 10.0  # seconds for one request
FIRST_BACKOFF = 5.0  # seconds after a failed post; doubles up to the interval


def summary(alerts: Sequence[tuple[int, str, str, str, str, str]]) -> dict[str, Any]:
    """The Slack payload: a count per kind and task, then the newest messages."""
    counts = Counter((kind, f"{type_}:{job}" if job else type_)
                     for _, kind, type_, job, _, _ in alerts)
    lines = [f"{kind} {key}: {n}" for (kind, key), n in sorted(
        counts.items(), key=lambda item: (-item[1], item[0]))]
    latest = [f"{created} {kind} {type_}{':' + job if job else ''}: {message[:300]}"
              for _, kind, type_, job, message, created in alerts[-10:]]
    return {"text": f"flowlord: {len(alerts)} alert{'s' if len(alerts) != 1 else ''}",
            "attachments": [{"color": "#FF0000", "pretext": "flowlord",
                             "title": "alerts", "text": "\n".join(lines + [""] + latest)}]}


class Webhook:
    def __init__(self, url: str, interval: float, log: Any) -> None:
        self.url = url
        self.interval = interval
        self.log = log
        self.next_post = 0.0
        self.backoff = FIRST_BACKOFF
        self.in_flight: list[int] | None = None  # alert numbers being posted
        self.outcomes: queue.SimpleQueue[tuple[list[int], str]] = queue.SimpleQueue()

    def tick(self, store: Store, monotonic: float) -> None:
        self._collect(store, monotonic)
        if self.in_flight is not None or monotonic < self.next_post:
            return
        alerts = store.unposted_alerts(BATCH)
        if not alerts:
            return
        self.in_flight = [a[0] for a in alerts]
        body = json.dumps(summary(alerts)).encode()
        threading.Thread(target=self._post, args=(self.in_flight, body), daemon=True,
                         name="webhook").start()

    def _post(self, numbers: list[int], body: bytes) -> None:  # on its own thread
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                response.read()
            error = ""
        except (urllib.error.URLError, OSError, ValueError) as e:
            error = str(e)
        self.outcomes.put((numbers, error))

    def _collect(self, store: Store, monotonic: float) -> None:
        try:
            numbers, error = self.outcomes.get_nowait()
        except queue.Empty:
            return
        self.in_flight = None
        if error:
            self.log.warning("webhook failed; will retry", error=error,
                             retry_in=round(self.backoff))
            self.next_post = monotonic + min(self.backoff, self.interval)
            self.backoff = min(self.backoff * 2, self.interval)
            return
        try:
            with write_txn(store.conn):
                store.mark_posted(numbers, utc_now())
        except apsw.BusyError:  # posted: mark them next turn, and post nothing before
            self.in_flight = numbers
            self.outcomes.put((numbers, ""))
            return
        self.log.info("alerts posted to the webhook", alerts=len(numbers))
        self.backoff = FIRST_BACKOFF
        self.next_post = monotonic + self.interval
