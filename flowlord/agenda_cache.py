"""The HTTP side's copy of the agenda (flowlord/agenda.py computes it): the API and the
dashboard answer from an agenda computed for a slightly longer window, recomputed in
the background as the window slides and at once when the workflows or the pauses
change, so a request never waits for the history while nothing changes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flowlord.agenda import Agenda, p50s, read
from flowlord.aside import Aside
from flowlord.config import Config
from flowlord.store import Store
from flowlord.store.expected import agenda_inputs


class AgendaCache:
    """One computed agenda per (hours, concurrency given), kept for the HTTP threads.

    A request is answered from the kept agenda while the workflows and pauses are those
    it was computed from (`fingerprint`: a few indexed aggregates, read per request) and
    it covers the request's window: each is computed `SLACK` longer than asked, so for
    `SLACK` it serves the window that slid along it, its fires filtered, its backlog
    warnings as computed. Past half of `SLACK` a background thread computes the next, so
    no request waits for the history while nothing changes."""

    SLACK = timedelta(minutes=5)
    KEPT = 8
    RUNS_KEPT = timedelta(minutes=10)  # the run p50s of history are read again after this

    def __init__(self, config: Config, db: str) -> None:
        self.config = config
        self.db = db
        self._lock = threading.Lock()
        self._kept: dict[tuple[Any, ...], tuple[tuple[Any, ...], Agenda]] = {}
        self._aside = Aside("agenda")  # the next agenda, computed while this one serves
        self._runs: tuple[datetime, dict[tuple[str, str], float]] | None = None

    def runs(self, store: Store, now: datetime) -> dict[tuple[str, str], float]:
        """The phases' run p50s, read at most every RUNS_KEPT: history moves slowly."""
        with self._lock:
            kept = self._runs
        if kept is None or not kept[0] <= now < kept[0] + self.RUNS_KEPT:
            kept = (now, p50s(store, now))
            with self._lock:
                self._runs = kept
        return kept[1]

    def get(self, store: Store, now: datetime, hours: int,
            given: Mapping[str, int] | None = None) -> Agenda:
        key = (hours, tuple(sorted((given or {}).items())))
        seen = agenda_inputs(store)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept[0] == seen and now < kept[1].start + self.SLACK:
            if now >= kept[1].start + self.SLACK / 2:
                self._refresh_later(key, hours, given)
            return kept[1]
        agenda = read(store, self.config, now, hours + self.SLACK / timedelta(hours=1), given,
                      self.runs(store, now))
        self._keep(key, seen, agenda)
        return agenda

    def _keep(self, key: tuple[Any, ...], seen: tuple[Any, ...], agenda: Agenda) -> None:
        agenda.inputs = (key, seen)  # its window and concurrency too; set before any
        # other thread sees it
        with self._lock:
            self._kept[key] = (seen, agenda)
            while len(self._kept) > self.KEPT:
                self._kept.pop(next(iter(self._kept)))

    def _refresh_later(self, key: tuple[Any, ...], hours: int,
                       given: Mapping[str, int] | None) -> None:
        def work() -> None:
            store = Store(self.db, readonly=True)
            try:
                now = datetime.now(UTC)
                seen = agenda_inputs(store)
                self._keep(key, seen, read(store, self.config, now,
                                           hours + self.SLACK / timedelta(hours=1), given,
                                           self.runs(store, now)))
            finally:
                store.close()

        def failed() -> None:  # the next request computes it, and answers what went wrong
            with self._lock:
                self._kept.pop(key, None)

        self._aside.run(key, work, failed)


_CACHES: dict[tuple[str, int], AgendaCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_for(config: Config) -> AgendaCache:
    """The process's one cache for this config (the API and the dashboard share it)."""
    with _CACHES_LOCK:
        return _CACHES.setdefault((config.db, id(config)), AgendaCache(config, config.db))
