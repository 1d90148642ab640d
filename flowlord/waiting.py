"""Why a task waits (README.md, Scheduling policy): said on `flowlord tasks`, the API
and the dashboard, so "why hasn't it started?" has an answer where the task is shown.

A waiting task is, first of all, not due yet (a retry's delay, a phase's jitter);
else its topic is paused; else its phase holds it (`overlap=queue`: queued behind an
earlier task; `max_active`: as many running as allowed); else its topic has no
worker (local workers without a `[workers.<topic>]` table) or all of them busy;
else a worker takes it at the next turn. Worked out when the list is read, from the
same rows and rules the daemon claims by (flowlord/store/taskrows.py, claim_limited),
so it can say only what the daemon would decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flowlord.clock import rfc3339_ms
from flowlord.config import Config
from flowlord.pauses import Pauses
from flowlord.rules import parse_rule
from flowlord.store import Store


def local_concurrency(config: Config) -> dict[str, int] | None:
    """Each topic's local workers; None on a redis bus, where workers are elsewhere."""
    if config.bus_url != "local":
        return None
    return {topic: worker.concurrency for topic, worker in config.workers.items()}


def explain(store: Store, tasks: list[dict[str, Any]], now: datetime,
            concurrency: Mapping[str, int] | None) -> None:
    """Give each task of `tasks` (task JSON) its `waiting` reason, or None when it has
    started. `concurrency`: each topic's local workers; None for a remote bus, where
    workers are not known."""
    waiting = [t for t in tasks if not t["started"]]
    for t in tasks:
        t["waiting"] = None
    if not waiting:
        return
    now_text = rfc3339_ms(now)
    pauses = Pauses.read(store, now)
    running = {topic: busy for topic, _, busy in store.queue_depths()}
    rules: dict[tuple[str, str], tuple[int | None, bool]] = {}
    unfinished: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for t in waiting:
        t["waiting"] = _reason(store, t, now, now_text, pauses, running, concurrency, rules,
                               unfinished)


def _reason(store: Store, t: dict[str, Any], now: datetime, now_text: str, pauses: Pauses,
            running: dict[str, int], concurrency: Mapping[str, int] | None,
            rules: dict[tuple[str, str], tuple[int | None, bool]],
            unfinished: dict[tuple[str, str], list[tuple[int, bool]]]) -> str:
    if t["due_at"] and t["due_at"] > now_text:
        return f"due at {t['due_at']}"
    paused = pauses.of_topic(t["type"], now)
    if paused is not None:
        return "topic paused"
    if t["file"] is not None:
        key = (t["file"], t["phase"])
        if key not in rules:
            found = store.phases(file_path=key[0], task=key[1])
            rule = parse_rule(found[0].rule) if found else None
            rules[key] = ((rule.max_active, rule.overlap == "queue") if rule else (None, False))
        most, queue = rules[key]
        if most is not None or queue:
            if key not in unfinished:
                unfinished[key] = store.phase_unfinished(*key)
            ahead = [n for n, _ in unfinished[key]]
            active = sum(1 for _, started in unfinished[key] if started)
            if queue and ahead and ahead[0] != t["task_no"]:
                return f"queued behind task {ahead[0]}"
            if most is not None and active >= most:
                return f"phase max_active {most}"
    if concurrency is not None:
        workers = concurrency.get(t["type"])
        if workers is None:
            return "no worker for the topic"
        if running.get(t["type"], 0) >= workers:
            return "topic full"
    return "a free worker takes it next"
