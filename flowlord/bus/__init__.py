"""How tasks reach workers and results come back: one small interface, one
implementation per transport. The daemon claims tasks in the database, hands
each to `send`, and records what `receive` returns, then calls `ack`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from typing import Protocol

from flowlord.model import Done, StoredTask


def drain(results: queue.SimpleQueue[Done], wait: float) -> list[Done]:
    """Everything in `results`, waiting up to `wait` seconds for the first."""
    found: list[Done] = []
    try:
        found.append(results.get(timeout=wait) if wait > 0 else results.get_nowait())
        while True:
            found.append(results.get_nowait())
    except queue.Empty:
        pass
    return found


class BusUnavailable(Exception):
    """A remote bus cannot be reached or refuses us; str(e) is one line for people.
    Raised by `send`, `handed_over` names the tasks that went through all the same."""

    def __init__(self, message: str, handed_over: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.handed_over = handed_over


class Bus(Protocol):
    def open_topics(self) -> list[str] | None:
        """The topics it can take a task of now; None: any topic (ask `capacity`)."""

    def capacity(self, topic: str) -> int:
        """How many more tasks of this topic can be sent now (0: none, or no worker)."""

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        """Hand claimed tasks to workers, each with its timeout in seconds (over the
        worker's; None: the worker's). A remote bus hands a turn's tasks over in one
        round trip, and raises BusUnavailable when some could not be (its `handed_over`:
        the task numbers of those that were)."""

    def receive(self, wait: float) -> list[Done]:
        """Results that came back, waiting up to `wait` seconds for the first."""

    def ack(self, done: Done) -> None:
        """The result is stored: the bus may forget it."""

    def running(self) -> list[int]:
        """The tasks sent and not yet come back (task_no)."""

    def gathering(self) -> bool:
        """Whether results have come back while every worker still has a task waiting
        after the one it runs: the loop may let a few more come before it records them
        (no worker idles meanwhile). False where the bus cannot tell."""

    def stop(self, task_no: int, reason: str) -> bool:
        """End a task sent to a worker (it was cancelled, or marked by hand): its process
        group ends, and the result that comes back is of no account. False when the bus
        could not be told (ask again later)."""

    def close(self, grace: float, hurry: Callable[[], bool] = ...) -> list[Done]:
        """Let running tasks finish within `grace` seconds (less once `hurry()` is true),
        end the rest; their results."""
