"""Prometheus metrics (`GET /metrics`). Events are counted where they happen, in this
process (a restart starts them again, as Prometheus expects of counters); states
(phases by severity, the queue) are read from the database at each scrape, so they
are never out of step with it."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flowlord.store import Store

# no `*_created` series beside every counter: noise here
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

FIRES = Counter("flowlord_fires", "Fires recorded, by source", ["source"], registry=REGISTRY)
FIRE_LATENESS = Histogram(
    "flowlord_fire_lateness_seconds", "From a slot to the commit of its fire",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
    registry=REGISTRY)
TASKS = Counter("flowlord_tasks_ended", "Task results recorded, by topic and result",
                ["topic", "result"], registry=REGISTRY)
TASK_DURATION = Histogram(
    "flowlord_task_duration_seconds", "Run time of ended tasks (started to ended), by topic",
    ["topic"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
    registry=REGISTRY)
TASK_WAIT = Histogram(
    "flowlord_task_wait_seconds",
    "Time ended tasks waited for a worker (created to started), by topic", ["topic"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600), registry=REGISTRY)
RETRIES = Counter("flowlord_retries", "Retries created", registry=REGISTRY)
ALERTS = Counter("flowlord_alerts", "Alerts raised, by kind", ["kind"], registry=REGISTRY)
REFRESH = Histogram("flowlord_refresh_seconds", "Duration of a workflow refresh",
                    registry=REGISTRY)
WATCH_EVENTS = Counter("flowlord_watch_events", "Changed paths seen by the file watch",
                       registry=REGISTRY)
RESCANS = Counter("flowlord_rescans", "Full rescans of the workflow directory",
                  registry=REGISTRY)
BUSY = Counter("flowlord_database_busy", "Writes put off because the database was locked",
               registry=REGISTRY)


def observe_all(histogram: Any, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for each amount, with one addition per bucket: a turn that
    records thousands of results observes each one's run and wait time, and observe()
    walks the buckets in Python under a lock per call (bench/tasks.py). Reaches into
    prometheus_client's Histogram (its bounds, per-bucket values and sum, as observe()
    uses them); without them, observes one by one."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        i = bisect_left(bounds, amount)  # the first bound >= amount, as observe() finds
        if i < len(counts):  # past the last bound (+Inf: never) is counted nowhere, too
            counts[i] += 1
    total.inc(sum(amounts))
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class DatabaseState(Collector):
    """Gauges read at each scrape, through `open_store()` (a read-only connection)."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self.open_store = open_store

    def collect(self) -> Iterator[Metric]:
        store = self.open_store()
        try:
            phases = GaugeMetricFamily("flowlord_phases", "Stored phases, by severity",
                                       labels=["severity"])
            for severity, n in store.severity_counts().items():
                phases.add_metric([severity], n)
            queue = GaugeMetricFamily("flowlord_queue_depth",
                                      "Tasks waiting for a worker, by topic", labels=["topic"])
            running = GaugeMetricFamily("flowlord_tasks_running", "Tasks running, by topic",
                                        labels=["topic"])
            for topic, waiting, busy in store.queue_depths():
                queue.add_metric([topic], waiting)
                running.add_metric([topic], busy)
        finally:
            store.close()
        yield phases
        yield queue
        yield running
