"""`flowlord run`: keep the database in step with the workflow directory, fire phases,
run their tasks.

The daemon is a step: `tick(now, monotonic)` does one turn of the work with the
time it is given, and returns how long the loop may wait before the next turn.
`run()` wires the real parts (the lock, the bus, the HTTP server:
`flowlord/startup.py`; signals; systemd: `flowlord/service_manager.py`),
then only waits and ticks. Tests build a Daemon in-process with a fake clock and the
in-process bus and drive it turn by turn.

One turn: fire the slots due by now (the ledger, `flowlord/ledger.py`); bring the
database in step with the directory (file events, or a full rescan at start, on
SIGHUP and every `rescan`) and reschedule the changed phases; follow other writers;
renew the lease; record arrived files; apply the commands other threads asked for
(`flowlord/commands.py`); record results and hand out tasks (`flowlord/dispatch.py`);
alerts, retention, the webhook; the next slot's fires built, if it comes within a
moment (`flowlord/ahead.py`). Only this loop writes to the database in the process.

Signals only set flags; the interpreter wakes the loop's wait through a pipe
(`flowlord/wakeup.py`). A write that finds the database locked keeps its work
for the next turn: changes are found again by a rescan, fires wait in the ledger.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TypeVar

import apsw

from flowlord import collector, logs, operations
from flowlord.bus import Bus
from flowlord.bus.local import LocalBus
from flowlord.checkpoints import Checkpoints
from flowlord.clock import Clock, SystemClock, rfc3339_ms
from flowlord.commands import Commands
from flowlord.config import Config
from flowlord.deadlines import Deadlines
from flowlord.disk_full import DiskFull
from flowlord.dispatch import Dispatcher
from flowlord.file_triggers import FileTriggers
from flowlord.ledger import Ledger
from flowlord.loader import Loader, LoaderError
from flowlord.model import Fire
from flowlord.notices import Notices
from flowlord.operate import Place
from flowlord.operations import Action
from flowlord.pauses import Pauses
from flowlord.recoveries import Recoveries
from flowlord.retention import Retention
from flowlord.routes import Routes
from flowlord.runs import DaemonRun
from flowlord.scheduler import Scheduler
from flowlord.service_manager import ServiceManager
from flowlord.slow import SlowWatch
from flowlord.standby import Leadership
from flowlord.startup import http_server, lock_database, open_bus
from flowlord.store import Store
from flowlord.store.connection import apply_page_limit, wait_while_busy
from flowlord.tasks import Context, meta_dir
from flowlord.wakeup import Wakeup
from flowlord.workflow_sync import WorkflowSync

T = TypeVar("T")

TICK = 1.0  # longest wait: bounds how late a clock step is seen
BUSY_TIMEOUT_MS = 1000  # a locked database is retried on the next turn, with pings between
STOP_WRITE_SECONDS = 10.0  # at stop, how long to retry recording fires in a locked database
STUCK_AFTER = 30.0  # seconds without a turn of the main loop: /healthz answers 503
COMMAND_TIMEOUT = 10.0  # seconds an HTTP request waits for the loop to apply its command
GATHER = 0.005  # seconds results may gather while no worker would idle
RETRY_SOON = 0.2  # seconds before the next turn while work waits (a locked database)


class Daemon:
    def __init__(self, config: Config, clock: Clock | None = None, bus: Bus | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.log = logs.get("flowlord.daemon")
        self.wakeup = Wakeup()  # a signal, a file event, a result, a command: look again
        self.stop_signals = 0  # SIGTERM/SIGINT received: one stops gently, two at once
        self.rescan_asked = False  # SIGHUP
        self.commands = Commands(self.wakeup.wake)
        self.leadership: Leadership | None = None  # with a redis bus: who fires
        self.bus = bus
        self.ledger = Ledger(Scheduler(config.zone(), catchup=config.catchup,
                                       limit=config.catchup_limit), self.log)
        self.file_triggers = FileTriggers(self.log, self.wakeup.wake)
        self.pauses = Pauses()  # one view of them, shared by the ledger, tasks and files
        self.ledger.pauses = self.file_triggers.pauses = self.pauses
        self.pauses_seen = -1  # PRAGMA data_version when the pauses were last read
        self.run_row = DaemonRun(config.bus_node, self.clock, self.log)
        self.disk = DiskFull(self.log, self.clock)  # while the database cannot be written
        self.failed = False  # ended by an error, not a signal: how its run row ends
        self.retention = Retention(config.retention, self.log, self.clock.monotonic(),
                                   config.task_logs())
        # alerts and events to [alerts] webhook and each [[alerts.route]] (flowlord/routes.py)
        self.routes = Routes(config.alert_routes(), config.webhook_interval.total_seconds(),
                             self.clock, self.log)
        monotonic = self.clock.monotonic()
        self.systemd = ServiceManager(monotonic)  # READY, STATUS, the watchdog, STOPPING
        self.last_turn = monotonic  # of the main loop: /healthz's signal

    # --- wiring ---------------------------------------------------------------------

    def open(self) -> None:
        """The database, the loader and the dispatcher (and the bus, unless given)."""
        if self.bus is None:
            self.bus, self.leadership = open_bus(self.config, self.log, self.wakeup.wake)
        self.ledger.leadership = self.file_triggers.leadership = self.leadership
        store = Store(self.config.db, busy_timeout_ms=BUSY_TIMEOUT_MS)
        wait_while_busy(store.conn, BUSY_TIMEOUT_MS,
                        lambda: self.systemd.ping(self.clock.monotonic()))
        store.conn.pragma("wal_autocheckpoint", 0)  # checkpoints run off the loop
        self.checkpoints = Checkpoints(self.config.db, self.log)
        self.loader = Loader(self.config.workflows, store,
                             allow_world_writable=self.config.allow_world_writable)
        self.store = store
        self.dispatcher = Dispatcher(self.loader, self.bus, self._context(self.clock.now()),
                                     self.config.task_ttl, self.log, self.clock)
        self.dispatcher.pauses = self.pauses
        self.slow = SlowWatch(store, self.config.slow_factor, self.clock, self.log)
        self.deadlines = Deadlines(store, self.ledger.scheduler, self.clock, self.log,
                                   self.config.catchup_limit)
        self.dispatcher.recoveries = Recoveries(store, self.routes, self.clock, self.log)
        # warnings told once, and every operator action (flowlord/notices.py)
        self.notices = Notices(self.log, self.bus.workers if isinstance(self.bus, LocalBus)
                               else None, self.clock.monotonic())
        self.sync = WorkflowSync(self.loader, self.ledger, self.file_triggers,
                                 rescan_every=self.config.rescan.total_seconds(),
                                 monotonic=self.clock.monotonic(), log=self.log,
                                 wake=self.wakeup.wake, changed=self._workflows_changed,
                                 rescheduled=self._rescheduled)

    def start(self) -> None:
        """The first load, the schedule with its catch-up fires, the tasks left by the
        last run; committed before the daemon says it is ready (with a redis bus, the
        catch-up fires wait for the first turn's lease and claims)."""
        self.checkpoints.start()
        try:
            self.run_row.begin(self.store)
        except apsw.FullError:  # this run goes unrecorded; it waits the disk out below
            self.log.error("this run not recorded: the database is full")
        self.notices.start(self.store)
        self.sync.first_load(self.clock.now, lambda: bool(self.stop_signals), self.wakeup.wait)
        now = self.clock.now()
        self.pauses.load(self.store, now)  # catch-up is judged by the pauses of its slots
        self.ledger.start(self.store, now, self._context(now))
        self.sync.scheduled_now()
        self.dispatcher.recover()
        adopt = getattr(self.bus, "adopt", None)
        if adopt is not None:  # the redis bus: what the last run published is in flight
            unsent = {s.task_no for s in self.dispatcher.unsent}
            adopt([(s, self.dispatcher._timeout(s)) for s in self.store.running()
                   if s.task_no not in unsent])
        self.ledger.write(self.store, now, self.clock.monotonic)

    def run(self) -> int:
        lock = lock_database(self.config.db)  # first: a second daemon must not touch the bus
        self.bus, self.leadership = open_bus(self.config, self.log, self.wakeup.wake)
        http = http_server(
            self.config, self.log, loop=self, last_rescan=lambda: self.sync.last_rescan,
            healthy=lambda: time.monotonic() - self.last_turn < STUCK_AFTER,
            role=lambda: self.leadership.role if self.leadership is not None else "leader")
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.wakeup.on_signals()
        self.open()
        try:
            with collector.paused():  # flowlord/collector.py; what the start made lives on, so no
                self.start()  # collection need ever look at it (nor at once, on enabling)
                gc.freeze()
            if http is not None:
                http.start()
                self.log.info("http api listening", listen=self.config.http_listen)
            self.systemd.ready(self.store, self.leadership)
            while not self.stop_signals:
                self.wakeup.wait(self._turn())
                # results that came while every worker has its next task: let more come,
                # so that one turn records them (bench/tasks.py, whole loop)
                self.wakeup.linger(GATHER, lambda: not self.stop_signals
                                   and self.dispatcher.bus.gathering())
        except BaseException:
            self.failed = True
            raise
        finally:
            self.systemd.stopping()
            if http is not None:
                http.stop()
            self.close()
        self.log.info("stopped")
        os.close(lock)
        return 0

    def _turn(self) -> float:
        """A turn of `run`'s loop: `tick`, and a database that cannot take writes (a
        full disk) waited out instead of ending the daemon (flowlord/disk_full.py)."""
        apply_page_limit(self.store.conn)  # the tests' stand-in for a full disk, if set
        try:
            wait = self.tick(self.clock.now(), self.clock.monotonic())
            if self.disk.writable():
                self.ledger.missed_rows(self.store, self.clock.now())
                self.systemd.status(self.store, self.leadership)
            return wait
        except apsw.FullError as e:
            self.systemd.ping(self.clock.monotonic(), now=True)  # the loop turns: keep it fed
            return self.disk.full(e, len(self.ledger.pending))

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        """Flags only: the interpreter has already woken the loop (the wakeup pipe)."""
        if signum == signal.SIGHUP:
            self.rescan_asked = True
        else:
            self.stop_signals += 1

    def hurry(self) -> bool:
        """A second SIGTERM/SIGINT: stop at once, ending the running tasks."""
        return self.stop_signals > 1

    def close(self) -> None:
        """Stop watching; record what was found before the stop, if the database lets us;
        give running tasks their grace (none once hurried) and record their ends."""
        self.sync.stop()
        self.file_triggers.stop()
        deadline = time.monotonic() + STOP_WRITE_SECONDS  # real seconds: the last work
        while True:
            now = self.clock.now()
            try:
                self.file_triggers.record(self.store, self._context(now))
                self.ledger.write(self.store, now, self.clock.monotonic)
            except apsw.FullError:  # said below: what could not be recorded
                break
            if (not (self.ledger.pending or self.file_triggers.arrived)
                    or time.monotonic() >= deadline or self.hurry()):
                break
            time.sleep(RETRY_SOON)
        self.commands.fail_queued()
        try:
            self.dispatcher.close(self.config.shutdown_grace.total_seconds(),
                                  STOP_WRITE_SECONDS, self.hurry)
        except apsw.FullError:  # the tasks were ended; their results could not be written
            self.log.error("results not recorded: the database is full")
        if self.leadership is not None:
            self.leadership.release()  # a standby takes over now, not at the expiry
        self.run_row.end(self.store, "failed" if self.failed else "stopped")
        self.checkpoints.stop()
        self.loader.close()
        if self.ledger.pending:  # the database stayed locked; their slots count as missed
            self.log.error("fires not recorded", count=len(self.ledger.pending))
        if self.file_triggers.arrived:
            self.log.error("arrived files not recorded",
                           paths=" ".join(self.file_triggers.arrived))
        self.wakeup.close()

    # --- what other threads ask of the loop (flowlord/web/actions.py's Loop) ----------

    def record(self, action: Action, fires: list[Fire]) -> list[Fire]:
        return self.commands.ask(action.kind, action.actor, lambda: self.ledger.record_now(
            self.store, fires, self.clock.now(), action), COMMAND_TIMEOUT)

    def record_then(self, action: Action, fires: list[Fire],
                    then: Callable[[Place, list[Fire]], T]) -> tuple[list[Fire], T]:
        """`record`, then what follows from the new fires (a backload's reruns), in one
        command of the loop."""
        recorded: list[list[Fire]] = []  # a command put back (a locked database) after
        # the fires were committed records them no second time: it goes on from `then`

        def on_the_loop() -> tuple[list[Fire], T]:
            now = self.clock.now()
            if not recorded:
                recorded.append(self.ledger.record_now(self.store, fires, now, action))
            place = Place(self.store, self._context(now), self.loader.children)
            return recorded[0], then(place, recorded[0])
        return self.commands.ask(action.kind, action.actor, on_the_loop, COMMAND_TIMEOUT)

    def act(self, action: Action, apply: Callable[[Place], T]) -> T:
        """Any other action: `apply` runs on the loop with the daemon's database."""
        def on_the_loop() -> T:
            now = self.clock.now()
            try:
                return apply(Place(self.store, self._context(now), self.loader.children))
            finally:
                self.pauses.load(self.store, now)  # a pause or a resume counts at once
        return self.commands.ask(action.kind, action.actor, on_the_loop, COMMAND_TIMEOUT)

    def rescan(self, action: Action) -> list[str]:
        return self.commands.ask(action.kind, action.actor,
                                 lambda: self._rescan_now(action), COMMAND_TIMEOUT)

    def _rescan_now(self, action: Action) -> list[str]:
        """A rescan asked for over HTTP, on the loop: the slots due by now fire first from
        the phases as they were (as in a turn); a locked database keeps it queued."""
        now = self.clock.now()
        self.ledger.fire_due(now, self.clock.monotonic(), self._context(now))
        try:
            return operations.rescan(self.store, action, now, lambda: self.sync.rescan(now))
        except LoaderError as e:
            if isinstance(e.__cause__, apsw.BusyError):
                raise e.__cause__ from None  # tried again on the next turn
            raise

    # --- one turn -------------------------------------------------------------------

    def tick(self, now: datetime, monotonic: float) -> float:
        """One turn of the loop at this time; how many seconds the loop may wait."""
        self.last_turn = monotonic
        ctx = self._context(now)
        # slots due by now fire from the phases as they were, before a refresh can
        # reschedule them (a rename at 12:00:00.1 must not lose the 12:00 slot)
        self._follow_pauses(now)
        self.ledger.fire_due(now, monotonic, ctx)
        asked, self.rescan_asked = self.rescan_asked, False  # a SIGHUP from now on counts
        self.sync.turn(now, monotonic, asked)
        if self._lead(self.clock.monotonic()):  # after a long rescan, the lease's time now
            self.file_triggers.record(self.store, ctx)
        else:  # a standby leaves arrived files to the leader, caught up at a takeover
            self.file_triggers.drop(self.store, ctx)
        self.ledger.fire_due(now, monotonic, ctx)
        self.ledger.write(self.store, self.clock.now(), self.clock.monotonic)  # fired_at
        if self.ledger.delayed:  # jittered tasks: the loop must wake when they are due
            self.ledger.delayed = False
            self.dispatcher.forget_due()
        self.commands.apply_queued(self.log)
        # the tasks in this database are its own, whoever leads: a standby that led
        # before still runs their children and retries
        self.dispatcher.turn()
        self.dispatcher.stop_ended(monotonic)
        self.dispatcher.check_overdue(monotonic)
        self.slow.check(monotonic)
        self.deadlines.check(now, self.leadership is None or self.leadership.leading)
        self.notices.tick(self.store, rfc3339_ms(now), monotonic)
        self.retention.tick(self.store, now, monotonic)
        self.run_row.seen(self.store, monotonic)
        self.routes.tick(self.store, monotonic)
        self.systemd.ping(monotonic)
        self.ledger.build_ahead(self.clock.now(), self._context)  # flowlord/ahead.py
        return self._wait()

    def _follow_pauses(self, now: datetime) -> None:
        """Pauses another process wrote (`flowlord pause`): read again when the database
        changed. Before the turn fires, so a slot due now sees a pause made before it."""
        version = self.store.data_version()
        if version != self.pauses_seen:
            self.pauses_seen = version
            self.pauses.load(self.store, now)

    def _wait(self) -> float:
        """Until the next slot, retry, rescan or settled file event; at most TICK. From
        the clock's time now, not the turn's: a long turn must not make a fire late."""
        now, monotonic = self.clock.now(), self.clock.monotonic()
        waits = [TICK, self.sync.next_rescan - monotonic]
        deadline = self.ledger.next_turn()
        if deadline is not None:
            waits.append((deadline - now).total_seconds())
        retry_due = self.dispatcher.next_due()
        if retry_due is not None:
            waits.append(retry_due)
        settles = self.sync.settles_in()
        if settles is not None:
            waits.append(settles)
        if self.ledger.waiting or self.dispatcher.pending or self.commands.waiting:
            waits.append(RETRY_SOON)  # the database was locked, or slots wait for a claim
        if self.leadership is not None:  # the lease is renewed from this loop
            waits.append(self.leadership.lease_ms / 3000)
        return max(0.0, min(waits))

    def _context(self, now: datetime) -> Context:
        """What building tasks needs, as of now."""
        return Context(self.ledger.scheduler.zone, meta_dir(self.config.workflows), now)

    def _lead(self, monotonic: float) -> bool:
        """Whether this daemon fires and records arrived files now: always on the local
        bus; with redis, only while it holds the lease."""
        if self.leadership is None:
            return True
        was = self.leadership.leading
        leading = self.leadership.tick(monotonic)
        if leading != was:
            self.systemd.status(self.store, self.leadership)
        return leading

    def _workflows_changed(self) -> None:
        self.notices.changed()
        self.systemd.status(self.store, self.leadership)

    def _rescheduled(self) -> None:
        self.dispatcher.forget_phases()
        self.deadlines.forget()


def run(config: Config) -> int:
    logs.configure()
    return Daemon(config).run()
