"""The embedded bus: tasks run as processes of this machine, per `[workers.<topic>]`."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from flowlord.bus import drain
from flowlord.config import WorkerConfig
from flowlord.model import Done, StoredTask
from flowlord.process_watch import ProcessWatch
from flowlord.tasklog import DEFAULT_MAX_BYTES
from flowlord.workers import Run, inherited_environment, topic_environment

STOPPED = "stopped: the daemon shut down while the task ran"
# tasks sent per worker slot beyond the one it runs: a slot whose task ends starts the
# next task at once, instead of waiting for the daemon's loop to record and claim
# (docs/decisions.md, Performance of the task loop)
PREFETCH = 4
HURRY_CHECK = 0.1  # seconds between looks at whether the stop became urgent
STOP_WAIT = 10.0  # seconds for a stopped task's result; a task still without one is left
# running in the database, and recorded as an error at the next start


class LocalBus:
    def __init__(self, workers: Mapping[str, WorkerConfig],
                 wake: Callable[[], None] | None = None, log_dir: str | None = None,
                 log_max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.workers = workers
        self.log_dir = log_dir  # each task's output goes to its log there (tasklog.py)
        self.log_max_bytes = log_max_bytes
        self.runs: dict[int, Run] = {}
        # per topic, how many of `runs` are its: capacity() is asked for each topic at
        # every turn of the loop, and counting the runs each time grew with concurrency
        self.busy: dict[str, int] = dict.fromkeys(workers, 0)
        # one thread starts and minds every topic's processes, each topic's `concurrency`
        # at a time (flowlord/process_watch.py)
        self.processes = ProcessWatch({topic: w.concurrency for topic, w in workers.items()},
                                      self._handed_over)
        self.results: queue.SimpleQueue[Done] = queue.SimpleQueue()
        inherited = inherited_environment()
        # each topic's own: the daemon's, and its `env` table (`inherit_env`, config.py)
        self.environments = {topic: topic_environment(w.env, w.inherit_env, inherited)
                             for topic, w in workers.items()}
        self.wake = wake  # called (no arguments) when a result arrives, to end a wait early

    def open_topics(self) -> list[str] | None:
        return [topic for topic in self.workers if self.capacity(topic) > 0]

    def capacity(self, topic: str) -> int:
        worker = self.workers.get(topic)
        if worker is None:
            return 0
        return max(0, worker.concurrency * (1 + PREFETCH) - self.busy[topic])

    def send(self, tasks: Sequence[tuple[StoredTask, float | None]]) -> None:
        for stored, timeout_seconds in tasks:
            self._send(stored, timeout_seconds)

    def _send(self, stored: StoredTask, timeout_seconds: float | None) -> None:
        worker = self.workers[stored.task.type]
        timeout = (timedelta(seconds=timeout_seconds) if timeout_seconds is not None
                   else worker.timeout)
        run = Run(stored, worker.command, timeout, self._finished,
                  self.environments[stored.task.type],
                  self.log_dir, self.log_max_bytes)
        if stored.task_no not in self.runs:
            self.busy[stored.task.type] += 1
        self.runs[stored.task_no] = run
        self.processes.submit(run)

    def _finished(self, done: Done) -> None:  # on the processes' thread
        self.results.put(done)

    def _handed_over(self) -> None:  # on the processes' thread, after results of a turn
        if self.wake is not None:
            self.wake()

    def receive(self, wait: float) -> list[Done]:
        found = drain(self.results, wait)
        for done in found:
            run = self.runs.pop(done.task_no, None)
            if run is not None:
                self.busy[run.stored.task.type] -= 1
        return found

    def running(self) -> list[int]:
        return list(self.runs)

    def gathering(self) -> bool:
        if self.results.empty():
            return False
        # every busy topic has a task waiting after those it runs
        return all(self.processes.waiting(topic) > 0 for topic, n in self.busy.items() if n)

    def stop(self, task_no: int, reason: str) -> bool:
        run = self.runs.get(task_no)
        if run is not None:
            run.stop(reason)
        return True

    def ack(self, done: Done) -> None:
        pass  # the database is the queue: a stored result is the acknowledgement

    def close(self, grace: float, hurry: Callable[[], bool] = lambda: False) -> list[Done]:
        """Running tasks get `grace` seconds, or less once `hurry()` says so (a second
        SIGTERM); then they are ended."""
        deadline = time.monotonic() + grace
        for run in self.processes.take_waiting():  # those not started yet go back
            run.cancel()
            run.run()  # hands over at once that it never ran
        running = list(self.runs.values())
        while running and time.monotonic() < deadline and not hurry():
            running[0].join(min(HURRY_CHECK, max(0.0, deadline - time.monotonic())))
            running = [run for run in running if not run.join(0)]
        for run in self.runs.values():  # one a free slot was to take goes back, as above
            if not run.cancel():
                run.stop(STOPPED)
        for run in list(self.runs.values()):  # ended within seconds (SIGKILL), or stuck
            run.join(STOP_WAIT)
        self.processes.close()
        return self.receive(0)
