"""What the service manager (systemd, `Type=notify`) hears from the daemon's loop:
READY=1 with a status line once started, STATUS= again when the phases or the
role change, WATCHDOG=1 pings, STOPPING=1 at the stop.

The protocol itself is flowlord/sdnotify.py; outside systemd every call here is a
no-op. The pings come from the loop only (flowlord/daemon.py), so a stuck loop
gets restarted.
"""

from __future__ import annotations

import os

from flowlord.sdnotify import notify, watchdog_interval
from flowlord.standby import Leadership
from flowlord.store import Store


class ServiceManager:
    def __init__(self, monotonic: float) -> None:
        self.ping_every = watchdog_interval()  # None: no watchdog
        self.next_ping = monotonic

    def ping(self, monotonic: float, *, now: bool = False) -> None:
        """The watchdog's ping when it is due, or at once with `now` (a turn a full disk
        ended before its own ping); also while the loop waits out a lock another
        process holds (flowlord/store/connection.py, wait_while_busy)."""
        if self.ping_every and (now or monotonic >= self.next_ping):
            notify("WATCHDOG=1")
            self.next_ping = monotonic + self.ping_every

    def ready(self, store: Store, leadership: Leadership | None) -> None:
        notify("READY=1", status(store, leadership))

    def status(self, store: Store, leadership: Leadership | None) -> None:
        """The status line again: the phases or the role changed."""
        if os.environ.get("NOTIFY_SOCKET"):  # counting 100,000 phases is not free
            notify(status(store, leadership))

    def stopping(self) -> None:
        notify("STOPPING=1")


def status(store: Store, leadership: Leadership | None) -> str:
    """`STATUS=` of the phases that can fire and those that cannot, and with a redis
    bus the role (leader or standby)."""
    counts = store.severity_counts()
    role = f"; {leadership.role}" if leadership is not None else ""
    return (f"STATUS={counts['ok'] + counts['warning']} valid phases, "
            f"{counts['error']} invalid{role}")
