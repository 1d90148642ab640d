"""The daemon's side of `files=` phases: which phases wait for files, the watch on
their directories, and recording the files that arrived (flowlord/arrivals.py says
how a path becomes tasks). Files found while the database was locked wait here for
the next turn of the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

from flowlord.arrivals import ArrivalWatcher, matches, record_arrival, storable
from flowlord.model import Phase
from flowlord.pauses import Pauses
from flowlord.rules import parse_rule
from flowlord.store import Store, write_txn
from flowlord.tasks import Context


def runnable_file_phases(store: Store) -> list[Phase]:
    """The stored phases that can run and have a `files=` rule."""
    return [p for p in store.file_phases() if parse_rule(p.rule).files]


class FileTriggers:
    def __init__(self, log: Any, wake: Callable[[], None]) -> None:
        self.log = log
        self.watch = ArrivalWatcher(log, wake)
        self.phases: list[Phase] = []
        self.arrived: list[str] = []  # not yet recorded (the database was locked)
        self.pauses = Pauses()

    def follow(self, store: Store) -> None:
        """Read the `files=` phases again and watch the directories they need."""
        self.phases = runnable_file_phases(store)
        self.watch.follow(self.phases)

    def concerns(self, files: set[str]) -> bool:
        """Whether a change to these workflow files may change the `files=` phases."""
        return any(p.file_path in files for p in self.phases)

    def drop(self) -> None:
        """A standby leaves arrived files to the leader."""
        self.watch.arrived()

    def record(self, store: Store, ctx: Context) -> None:
        """Files closed after writing, or moved in, under the watched directories: those
        a phase wants start its tasks, in one transaction."""
        # the watch sees every file closed in those directories: keep those a phase wants
        for path in self.watch.arrived():
            if not storable(path):
                self.log.warning("file name is not UTF-8, ignored", path=ascii(path))
            elif any(matches(parse_rule(p.rule).files, path) for p in self.phases):
                self.arrived.append(path)
        if not self.arrived:
            return
        phases = []
        for phase in self.phases:  # a paused phase starts nothing: logged with why
            paused = self.pauses.of_phase(phase.file_path, phase.task, ctx.created)
            if paused is None:
                phases.append(phase)
                continue
            rule = parse_rule(phase.rule).files
            for path in self.arrived:
                if matches(rule, path):
                    self.log.warning("file not started", path=path, file=phase.file_path,
                                     phase=phase.task, why=paused.why())
        try:
            with write_txn(store.conn):
                started = [(path, record_arrival(store, phases, path, "watch", ctx))
                           for path in self.arrived]
        except apsw.BusyError:
            return  # they wait for the next turn
        self.arrived = []
        for path, tasks in started:
            self.log.info("file arrived", path=path, tasks=len(tasks))

    def stop(self) -> None:
        self.watch.stop()
