"""Plain values passed between modules: no I/O here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

Severity = Literal["ok", "warning", "error"]
FireSource = Literal["cron", "catchup", "trigger", "backload"]


@dataclass(frozen=True)
class Issue:
    """One problem found on a phase; its message is a status of README.md, Status messages."""

    severity: Literal["warning", "error"]
    message: str


def split_task(task: str) -> tuple[str, str]:
    """`topic:job` → (topic, job); anything after a second colon is not part of the job."""
    topic, _, rest = task.partition(":")
    return topic, rest.partition(":")[0]


def normalize_task(task: str, rule_job: str) -> str:
    """The phase's identity in its file: `topic:job` when there is a job, else `topic`.

    A job written in `task` wins over the rule's `job=` (docs/compatibility.md, Task and
    phase identity).
    """
    task = task.strip()
    if ":" not in task:  # the usual case, kept cheap for cold loads
        return f"{task}:{rule_job}" if rule_job else task
    topic, job = split_task(task)
    job = job or rule_job
    return f"{topic}:{job}" if job else topic


class Phase(NamedTuple):
    """A phase as stored: task normalized, status and severity from validation.

    A NamedTuple, not a frozen dataclass: a cold load builds 100,000 of them.
    """

    file_path: str
    task: str
    depends_on: str = ""
    rule: str = ""
    template: str = ""
    retry: int = 0
    status: str = ""
    severity: Severity = "ok"
    position: int = 0

    @property
    def topic(self) -> str:
        return split_task(self.task)[0]

    @property
    def job(self) -> str:
        return split_task(self.task)[1]


# Task, StoredTask and NewTask are NamedTuples, not frozen dataclasses: a burst of
# results builds tens of thousands, and a NamedTuple is built several times faster.
class Task(NamedTuple):
    """A task in pcelvng/task's JSON shape (docs/compatibility.md, Task JSON)."""

    type: str
    job: str = ""
    info: str = ""
    meta: str = ""
    id: str = ""
    created: str = ""
    started: str = ""
    ended: str = ""
    result: str = ""
    msg: str = ""

    def to_json(self) -> str:
        """pcelvng/task's serialisation: its key order, empty keys left out (`info` stays)."""
        fields = {"type": self.type, "job": self.job, "info": self.info,
                  "created": self.created, "id": self.id, "meta": self.meta,
                  "result": self.result, "msg": self.msg, "started": self.started,
                  "ended": self.ended}
        return json.dumps({k: v for k, v in fields.items() if v or k == "info"},
                          ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Fire:
    """One slot of a phase fired, with the tasks it created (or the error that stopped it)."""

    file_path: str
    phase: str
    scheduled_for: str  # the slot, UTC text
    source: FireSource
    tasks: Sequence[Task] = ()
    error: str = ""
    overlap: str = "allow"  # its phase's rule: what it does beside unfinished earlier tasks
    due_at: str | None = None  # its tasks wait until then (a phase's jitter); None: at once


class StoredTask(NamedTuple):
    """A task row: the task, where it came from, and which attempt it is."""

    task_no: int
    task: Task
    file_path: str | None = None
    phase: str | None = None
    attempt: int = 0
    scheduled_for: str | None = None
    no_children: bool = False  # a rerun with --only: its completion starts no children


class NewTask(NamedTuple):
    """A task row to insert: a child, a retry (with its due time), or a file's task.

    Its fields are the insert's columns in order: a burst of children goes to
    executemany as it is, with no row built per task."""

    id: str
    type: str
    job: str
    info: str
    meta: str
    created: str
    file_path: str | None
    phase: str | None
    attempt: int = 0
    scheduled_for: str | None = None
    due_at: str | None = None
    parent_no: int | None = None
    file_no: int | None = None
    no_children: bool = False

    @classmethod
    def of(cls, task: Task, file_path: str | None, phase: str | None, attempt: int = 0,
           scheduled_for: str | None = None, due_at: str | None = None,
           parent_no: int | None = None, file_no: int | None = None,
           no_children: bool = False) -> NewTask:
        return cls(task.id, task.type, task.job, task.info, task.meta, task.created, file_path,
                   phase, attempt, scheduled_for, due_at, parent_no, file_no, no_children)

    @property
    def task(self) -> Task:
        return Task(type=self.type, job=self.job, info=self.info, meta=self.meta, id=self.id,
                    created=self.created)


@dataclass(frozen=True)
class Done:
    """A finished task, as a bus hands it to the daemon: what the daemon records."""

    task_no: int
    result: str  # complete | error
    msg: str
    ended: str
    started: str = ""  # when its process started; "": keep the claim's time
    ran: bool = True  # False: never started (the bus closed first): back to the queue
    receipt: str = ""  # the bus's handle on the result message, for its acknowledgement
