"""A bus whose worker is a Python function in this process: it measures and tests the
dispatcher without the cost of processes (bench/tasks.py, tests/test_dispatch.py).
No config selects it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flowlord.clock import utc_now_ms
from flowlord.model import Done, StoredTask


def complete(stored: StoredTask) -> tuple[str, str]:
    return "complete", ""


class InProcessBus:
    """Runs `work(task)` → (result, msg) at once for every task it is sent."""

    def __init__(self, work: Callable[[StoredTask], tuple[str, str]] = complete) -> None:
        self.work = work
        self.done: list[Done] = []

    def open_topics(self) -> list[str] | None:
        return None

    def capacity(self, topic: str) -> int:
        return 1_000_000

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        for stored, _ in tasks:
            self.done.append(Done(stored.task_no, *self.work(stored), utc_now_ms()))

    def receive(self, wait: float) -> list[Done]:
        found, self.done = self.done, []
        return found

    def gathering(self) -> bool:
        return False  # every result is there at once

    def running(self) -> list[int]:
        return []  # its work is done when sent

    def stop(self, task_no: int, reason: str) -> bool:
        return True

    def ack(self, done: Done) -> None:
        pass

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        return self.receive(0)
