"""Pauses: what a pause covers, when it is in force, and the words that say so.

A pause stops new work of a phase, a file, a topic or everything, from `since` until
it is resumed or its `until` passes. A paused phase creates no tasks: a cron slot
due while paused is recorded in the ledger with no task and the pause as its
`error`, so catch-up never fires it later and "why didn't it run?" is one query.
A paused topic keeps its tasks waiting; running ones finish. Rows stay after a
pause ended, so a slot caught up after a restart is judged by the pause that was in
force at its time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flowlord.clock import rfc3339
from flowlord.model import Phase, split_task
from flowlord.store import Store

REMEMBERED = timedelta(days=40)  # ended pauses looked at: as far back as catch-up reaches


@dataclass(frozen=True)
class Pause:
    number: int
    scope: str  # phase, file, topic, all
    file_path: str | None
    task: str | None
    topic: str | None
    actor: str
    reason: str
    since: str
    until: str | None
    ended: str | None
    ended_by: str | None

    def covers(self, file_path: str, task: str) -> bool:
        """Whether it stops the phase `task` of `file_path` (a topic pause stops only the
        topic's tasks from starting, not the phase from creating them)."""
        return (self.scope == "all" or (self.scope == "file" and self.file_path == file_path)
                or (self.scope == "phase" and (self.file_path, self.task) == (file_path, task)))

    def in_force(self, when: str) -> bool:
        """At `when` (UTC text, as slots are written)."""
        ends = [t for t in (self.until, self.ended) if t is not None]
        return self.since <= when and (not ends or when < min(ends))

    def why(self) -> str:
        """`paused by alice until 2026-12-02T14:00:00Z: db maintenance`"""
        text = f"paused by {self.actor}"
        if self.until:
            text += f" until {self.until}"
        return f"{text}: {self.reason}" if self.reason else text

    def target(self) -> str:
        return {"phase": f"{self.file_path}: {self.task}", "file": self.file_path or "",
                "topic": f"topic {self.topic}", "all": "everything"}[self.scope]

    def as_json(self) -> dict[str, Any]:
        return {"pause_no": self.number, "scope": self.scope, "target": self.target(),
                "file": self.file_path, "task": self.task, "topic": self.topic,
                "actor": self.actor, "reason": self.reason, "since": self.since,
                "until": self.until}


class Pauses:
    """The pauses the daemon (or a command) knows, read from the database."""

    def __init__(self) -> None:
        self.rows: list[Pause] = []

    @classmethod
    def read(cls, store: Store, now: datetime) -> Pauses:
        """The pauses as the database holds them at `now`."""
        pauses = cls()
        pauses.load(store, now)
        return pauses

    def load(self, store: Store, now: datetime) -> None:
        self.rows = [Pause(*r) for r in store.pauses_since(rfc3339(now - REMEMBERED))]

    def of_phase(self, file_path: str, task: str, when: datetime) -> Pause | None:
        """The pause that stops this phase at `when`, if any."""
        if not self.rows:  # most of the time: asked for each of 10,000 fires at once
            return None
        text = rfc3339(when)
        return next((p for p in self.rows if p.covers(file_path, task) and p.in_force(text)),
                    None)

    def of_topic(self, topic: str, when: datetime) -> Pause | None:
        """The pause that keeps this topic's tasks waiting at `when`, if any."""
        text = rfc3339(when)
        return next((p for p in self.rows if p.scope in ("topic", "all")
                     and (p.scope == "all" or p.topic == topic) and p.in_force(text)), None)

    def in_force(self, now: datetime) -> list[Pause]:
        text = rfc3339(now)
        return [p for p in self.rows if p.in_force(text)]


def target_of(phase: Phase) -> tuple[str, str, str, str]:
    """A phase's pause target: (scope, file, task, topic)."""
    return ("phase", phase.file_path, phase.task, "")


def topic_target(topic: str) -> tuple[str, str, str, str]:
    return ("topic", "", "", split_task(topic)[0])
