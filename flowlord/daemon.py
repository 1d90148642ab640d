"""`flowlord run`: keep the database in step with the workflow directory, fire phases,
run their tasks.

File events drive targeted refreshes; a full rescan runs at start, on SIGHUP and
every `rescan` period, because inotify drops events on overflow. After each
refresh the scheduler reschedules the phases of the changed files; each due
slot becomes a ledger row with its tasks, in one transaction. Files arriving
for `files=` phases become tasks; the dispatcher hands tasks to workers and
records their results. Signals only set flags; this loop is the only code that
writes to the database.

A write that finds the database locked (a `sqlite3` shell inside BEGIN) keeps
its work for the next turn of the loop: changes are found again by a rescan,
fires wait in `pending` until they are written.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from types import FrameType

import apsw

from flowlord import logs, metrics
from flowlord.arrivals import ArrivalWatcher, matches, record_arrival, storable
from flowlord.bus import Bus, BusUnavailable
from flowlord.bus.local import LocalBus
from flowlord.clock import Clock, SystemClock, rfc3339, utc_now_ms
from flowlord.config import Config, ConfigError
from flowlord.dispatch import Dispatcher
from flowlord.loader import Loader, LoaderError
from flowlord.model import Fire, Phase
from flowlord.retention import Retention
from flowlord.rules import parse_rule
from flowlord.scheduler import Due, PhaseKey, Scheduler, parse_slot
from flowlord.sdnotify import notify, watchdog_interval
from flowlord.standby import DEFAULT_LEASE, Leadership, NodeInUse
from flowlord.store import Store, write_txn
from flowlord.tasks import Context, build_fire, meta_dir
from flowlord.watcher import Watcher
from flowlord.web.api import Api, HttpServer, parse_listen
from flowlord.webhook import Webhook

TICK = 1.0  # longest sleep: bounds how late a signal or a clock step is seen
BUSY_TIMEOUT_MS = 1000  # a locked database is retried on the next turn, with pings between
LOGGED_FIRES = 50  # more fires than this in one turn are logged as one summary line
STOP_WRITE_SECONDS = 10.0  # at stop, how long to retry recording fires in a locked database
FOLLOW_EVERY = 0.1  # seconds between looks for other writers: not on every task result
STUCK_AFTER = 30.0  # seconds without a turn of the main loop: /healthz answers 503


class Daemon:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop = threading.Event()
        self.rescan = threading.Event()
        self.wakeup = threading.Event()  # a signal or a task result: look again now
        self.watcher: Watcher | None = None
        self.log = logs.get("flowlord.daemon")
        self.zone = config.zone()
        self.scheduler = Scheduler(self.zone, catchup=config.catchup, limit=config.catchup_limit)
        self.pending: list[Fire] = []  # fired, not yet written (the database was locked)
        self.unplanned: set[PhaseKey] = set()  # next_fire columns to write
        self.resync = False  # a refresh failed half-way: compare every phase next time
        self.scheduled = False  # _start_schedule has run
        self.arrivals = ArrivalWatcher(self.log, self._wake)  # files for `files=` phases
        self.file_phases: list[Phase] = []
        self.arrived: list[str] = []  # paths not yet recorded (the database was locked)
        self.retention = Retention(config.retention, self.log)
        self.webhook = (Webhook(config.webhook, config.webhook_interval.total_seconds(),
                                self.log) if config.webhook else None)
        self.data_version = -1  # PRAGMA data_version when other writers were last checked
        self.next_follow = 0.0  # monotonic time of the next look for other writers
        self.synced: dict[str, tuple[str, str | None]] = {}  # file → (hash, loaded_at) then
        self.leadership: Leadership | None = None  # with standbys: who fires (bus.lease)
        self.held: list[Fire] = []  # due slots a standby holds until someone claims them
        self.last_turn = time.monotonic()  # of the main loop: /healthz's signal
        self.last_rescan: str | None = None  # when the last full rescan ended (UTC)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        (self.rescan if signum == signal.SIGHUP else self.stop).set()
        self._wake()

    def _wake(self) -> None:
        self.wakeup.set()
        if self.watcher:
            self.watcher.wake()

    def run(self) -> int:
        lock = self._lock_database()  # first: a second daemon must not touch the bus
        bus = self._bus()
        http = self._http()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        store = Store(self.config.db, busy_timeout_ms=BUSY_TIMEOUT_MS)
        loader = Loader(self.config.workflows, store,
                        allow_world_writable=self.config.allow_world_writable)
        self.dispatcher = Dispatcher(loader, bus, self._context(), self.config.task_ttl,
                                     self.log)
        try:
            self._watch(loader)
            self._first_refresh(loader)
            self.last_rescan = utc_now_ms()
            self._start_schedule(loader.store)
            self.dispatcher.recover()
            if http is not None:
                http.start()
                self.log.info("http api listening", listen=self.config.http_listen)
            notify("READY=1", self._status(loader))
            self._loop(loader)
        finally:
            notify("STOPPING=1")
            if http is not None:
                http.stop()
            if self.watcher:
                self.watcher.stop()
            self.arrivals.stop()
            # fires and files found before the stop are recorded, if the database lets us
            deadline = time.monotonic() + STOP_WRITE_SECONDS
            self._record_arrivals(loader.store)
            self._write(loader.store)
            while (self.pending or self.arrived) and time.monotonic() < deadline:
                self._record_arrivals(loader.store)
                self._write(loader.store)
            self.dispatcher.close(self.config.shutdown_grace.total_seconds(),
                                  STOP_WRITE_SECONDS)
            if self.leadership is not None:
                self.leadership.release()  # a standby takes over now, not at the expiry
            loader.close()
        if self.pending:  # the database stayed locked; their slots count as missed
            self.log.error("fires not recorded", count=len(self.pending))
        if self.arrived:
            self.log.error("arrived files not recorded", paths=" ".join(self.arrived))
        self.log.info("stopped")
        os.close(lock)
        return 0

    def _lock_database(self) -> int:
        """One daemon per database: a second one would take the first one's running tasks
        for leftovers of a crash, and run them again."""
        path = self.config.db + ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another flowlord run is using {self.config.db}") from None
        except OSError as e:
            raise ConfigError(f"cannot lock {path}: {e.strerror}") from None
        return fd

    def _bus(self) -> Bus:
        """The bus the config names: `local`, or a redis URL (which must answer now)."""
        if self.config.bus_url == "local":
            return LocalBus(self.config.workers, wake=self._wake)
        from flowlord.bus.redis import DONE_STREAM, RedisBus

        try:
            # always a lease and a node of its own, even alone: two daemons that share a
            # redis by mistake must not both fire, nor read each other's results
            node = self.config.bus_node or socket.gethostname()
            bus = RedisBus(self.config.bus_url, self.log, wake=self._wake,
                           done_stream=f"{DONE_STREAM}:{node}")
            self.leadership = Leadership(bus.client, node,
                                         self.config.bus_lease or DEFAULT_LEASE, self.log)
            try:
                self.leadership.hold_node()
            except (NodeInUse, BusUnavailable):
                bus.close(0)
                raise
            return bus
        except ImportError:
            raise ConfigError("bus.url: the redis bus needs redis-py: "
                              "pip install 'flowlord[redis]'") from None
        except BusUnavailable as e:
            raise ConfigError(f"bus.url: {e}") from None
        except NodeInUse as e:
            raise ConfigError(str(e)) from None

    def _http(self) -> HttpServer | None:
        """The read-only API when http.listen is set; a bad or unsafe address is a config
        error, and so is a port that cannot be bound."""
        if not self.config.http_listen:
            return None
        token = self.config.http_token
        if not token and self.config.http_token_file:
            try:
                with open(self.config.http_token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise ConfigError(f"http.token_file: {e.strerror}: "
                                  f"{self.config.http_token_file}") from None
        host, port = parse_listen(self.config.http_listen, token)
        api = Api(self.config, lambda: time.monotonic() - self.last_turn < STUCK_AFTER,
                  lambda: self.leadership.role if self.leadership is not None else "leader",
                  token, last_rescan=lambda: self.last_rescan)
        try:
            return HttpServer(host, port, api, self.log)
        except OSError as e:
            raise ConfigError(f"http.listen {self.config.http_listen}: {e.strerror}") from None

    def _first_refresh(self, loader: Loader) -> None:
        """The load at start: a bad path is fatal, a locked database is waited for."""
        while True:
            try:
                self._refresh(loader, None)
                return
            except LoaderError as e:
                if not isinstance(e.__cause__, apsw.BusyError) or self.stop.is_set():
                    raise
                self.log.warning("database locked at start; waiting", error=str(e))
                self.stop.wait(1.0)

    def _follow_other_writers(self, store: Store) -> None:
        """`flowlord refresh` (or another process) may have changed workflow rows: when the
        database changed under us, reschedule the files whose rows differ from last time."""
        if time.monotonic() < self.next_follow:
            return
        self.next_follow = time.monotonic() + FOLLOW_EVERY
        version = store.conn.pragma("data_version")
        if version == self.data_version:
            return
        self.data_version = version
        now = {f[0]: (f[2], f[3]) for f in store.files()}  # hash, loaded_at
        changed = {f for f, seen in now.items() if self.synced.get(f) != seen}
        changed |= set(self.synced) - set(now)
        self.synced = now
        if changed and self.scheduled:
            self._reschedule(store, changed)  # unchanged rules keep their schedule

    def _watch(self, loader: Loader) -> None:
        """Watch the directory the workflow path names now. Deployments swap a symlink
        to a new directory; inotify would keep watching the old one."""
        target = os.path.realpath(loader.root)
        if self.watcher and self.watcher.target == target:
            return
        if self.watcher:
            self.watcher.stop()
            self.log.info("watching a new directory", path=target)
        self.watcher = Watcher(loader.root) if os.path.isdir(target) else None
        if self.watcher:
            try:
                self.watcher.start()
            except OSError as e:  # e.g. the inotify watch limit: the rescans remain
                self.log.warning("cannot watch; relying on periodic rescans", error=str(e))
                self.watcher = None

    def _loop(self, loader: Loader) -> None:
        ping_every = watchdog_interval()
        next_rescan = time.monotonic() + self.config.rescan.total_seconds()
        next_ping = time.monotonic()
        while not self.stop.is_set():
            self.last_turn = time.monotonic()
            retry_due = self.dispatcher.next_due()
            wait = max(0.0, min(TICK, next_rescan - time.monotonic(), self._until_due(),
                                TICK if retry_due is None else retry_due))
            if self.pending or self.unplanned or self.dispatcher.pending or self.held:
                wait = min(wait, 0.2)  # the database was locked, or slots wait for a claim
            if self.leadership is not None:  # the lease is renewed from this loop
                wait = min(wait, self.leadership.lease_ms / 3000)
            self.wakeup.clear()
            paths = self.watcher.changed_paths(wait) if self.watcher else set()
            if not self.watcher:
                self.wakeup.wait(wait)
            # slots due by now fire from the phases as they were, before a refresh can
            # reschedule them (a rename at 12:00:00.1 must not lose the 12:00 slot)
            self._fire_due()
            try:
                if (self.rescan.is_set() or time.monotonic() >= next_rescan
                        or (self.watcher and self.watcher.overflowed())):
                    self.rescan.clear()
                    next_rescan = time.monotonic() + self.config.rescan.total_seconds()
                    metrics.RESCANS.inc()
                    self._watch(loader)  # first: what changes during the rescan is seen
                    self._refresh(loader, None)
                    self.last_rescan = utc_now_ms()
                    self._follow_file_phases(loader.store)  # a directory may exist now
                elif paths:
                    metrics.WATCH_EVENTS.inc(len(paths))
                    self._refresh(loader, paths)
            except LoaderError as e:  # the directory is gone for a moment, the database locked
                self.log.error("refresh failed; rescanning soon", error=str(e))
                next_rescan = time.monotonic() + TICK
                self.resync = True
            self._follow_other_writers(loader.store)
            leading = self._lead(loader)
            if leading:  # a standby leaves arrived files to the leader
                self._record_arrivals(loader.store)
            else:
                self.arrivals.arrived()
            self._fire_due()
            self._write(loader.store)
            # the tasks in this database are its own, whoever leads: a standby that led
            # before still runs their children and retries
            self.dispatcher.turn()
            self.dispatcher.check_overdue(time.monotonic())
            self.retention.tick(loader.store, self.clock.now(), time.monotonic())
            if self.webhook:
                self.webhook.tick(loader.store, time.monotonic())
            # pinged from this loop only, so a stuck loop gets restarted by systemd
            if ping_every and time.monotonic() >= next_ping:
                notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every

    # --- workflow files -------------------------------------------------------------

    def _refresh(self, loader: Loader, paths: set[str] | None) -> None:
        with metrics.REFRESH.time():
            changes = loader.refresh(paths)
        for problem in loader.problems:
            self.log.warning("workflow problem", problem=problem)
        if changes:
            self.log.info("workflows changed", changes=" ".join(changes))
            self._notify_status(loader)
        files = {change[1:] for change in changes}
        for file, state in loader.store.file_states(sorted(files)).items():
            if state.status:  # bytes refused: the last good phases stay (or none, if refused)
                self.log.warning("workflow file not loaded", file=file, status=state.status)
        if self.resync:  # an earlier refresh failed after committing some files
            files |= {f[0] for f in loader.store.files()}
            files |= {file for file, _ in self.scheduler.phase_keys()}
            self.resync = False
        if files and self.scheduled:  # before the start, start() schedules everything
            self._reschedule(loader.store, files)

    def _reschedule(self, store: Store, files: Iterable[str]) -> None:
        by_file = {f: [p for p in store.phases(file_path=f) if p.severity != "error"]
                   for f in files}
        self.scheduler.update(by_file, self.clock.now())
        # the files= phases are looked up again only when a changed file has or had one
        # (the lookup reads every phase: not for each edit of a large tree)
        if any("files=" in p.rule for f in by_file for p in by_file[f]) or any(
                p.file_path in by_file for p in self.file_phases):
            self._follow_file_phases(store)
        self.dispatcher.forget_phases()
        # the loader rewrote these phases' rows: their plan is written again, changed or not
        self.unplanned |= {(f, p.task) for f, phases in by_file.items() for p in phases}

    def _notify_status(self, loader: Loader) -> None:
        if os.environ.get("NOTIFY_SOCKET"):  # counting 100,000 phases is not free
            notify(self._status(loader))

    def _follow_file_phases(self, store: Store) -> None:
        self.file_phases = [p for p in store.file_phases() if parse_rule(p.rule).files]
        self.arrivals.follow(self.file_phases)

    def _record_arrivals(self, store: Store) -> None:
        """Files closed after writing, or moved in, under the `files=` directories."""
        # the watch sees every file closed in those directories: keep those a phase wants
        for path in self.arrivals.arrived():
            if not storable(path):
                self.log.warning("file name is not UTF-8, ignored", path=ascii(path))
            elif any(matches(parse_rule(p.rule).files, path) for p in self.file_phases):
                self.arrived.append(path)
        if not self.arrived:
            return
        ctx = self._context()
        try:
            with write_txn(store.conn):
                started = [(path, record_arrival(store, self.file_phases, path, "watch", ctx))
                           for path in self.arrived]
        except apsw.BusyError:
            return  # they wait for the next turn
        self.arrived = []
        for path, tasks in started:
            self.log.info("file arrived", path=path, tasks=len(tasks))

    def _status(self, loader: Loader) -> str:
        counts = loader.store.severity_counts()
        role = f"; {self.leadership.role}" if self.leadership is not None else ""
        return (f"STATUS={counts['ok'] + counts['warning']} valid phases, "
                f"{counts['error']} invalid{role}")

    def _lead(self, loader: Loader) -> bool:
        """Whether this daemon fires and dispatches now: always, unless standbys share
        its redis (bus.lease); then only while it holds the lease."""
        if self.leadership is None:
            return True
        was = self.leadership.leading
        leading = self.leadership.tick(time.monotonic())
        if leading != was:
            self._notify_status(loader)
        return leading

    # --- firing ---------------------------------------------------------------------

    def _start_schedule(self, store: Store) -> None:
        last = {}
        for key, text in store.last_fires().items():
            try:
                last[key] = parse_slot(text)
            except ValueError:  # a row written by hand in another format: no catch-up
                self.log.warning("ledger slot not understood", file=key[0], phase=key[1],
                                 slot=text)
        phases = store.phases()
        self.pending += self._build(self.scheduler.start(phases, self.clock.now(), last))
        self.unplanned |= {(p.file_path, p.task) for p in phases}
        self.scheduled = True
        self._follow_file_phases(store)
        self.data_version = store.conn.pragma("data_version")
        self.synced = {f[0]: (f[2], f[3]) for f in store.files()}
        self.log.info("scheduled", phases=len(self.scheduler), catching_up=len(self.pending))

    def _until_due(self) -> float:
        deadline = self.scheduler.next_deadline()
        if deadline is None:
            return TICK
        return (deadline - self.clock.now()).total_seconds()

    def _fire_due(self) -> None:
        due = self.scheduler.due(self.clock.now(), self.clock.monotonic())
        if due:
            self.pending += self._build(due)
            self.unplanned |= {(d.phase.file_path, d.phase.task) for d in due}

    def _build(self, due: Iterable[Due]) -> list[Fire]:
        ctx = self._context()
        fires = []
        for d in due:
            try:
                fires.append(build_fire(d.phase, d.slot, d.source, ctx))
            except Exception as e:  # a bug costs this fire, recorded with why; not the daemon
                self.log.exception("cannot build the tasks of a fire", file=d.phase.file_path,
                                   phase=d.phase.task)
                fires.append(Fire(d.phase.file_path, d.phase.task, rfc3339(d.slot), d.source,
                                  (), f"internal error: {type(e).__name__}: {e}"))
        return fires

    def _context(self) -> Context:
        """What building tasks needs, as of now."""
        return Context(self.zone, meta_dir(self.config.workflows), self.clock.now())

    def _write(self, store: Store) -> None:
        """Commit pending fires and the plan in one transaction; keep them if locked."""
        if self.leadership is not None:
            self._claim_slots(self.leadership)
        if not self.pending and not self.unplanned:
            return
        texts: dict[datetime, str] = {}  # phases share slots: format each once
        plan = []
        for key in self.unplanned:
            slot = self.scheduler.next_slot(key)
            if slot is not None and slot not in texts:
                texts[slot] = rfc3339(slot)
            plan.append((texts.get(slot) if slot else None, key[0], key[1]))
        started = time.monotonic()
        try:
            with write_txn(store.conn):
                new = store.record_fires(self.pending, utc_now_ms())
                store.set_next_fires(plan)
        except apsw.BusyError:
            self.log.warning("database locked by another process; will retry",
                             fires_waiting=len(self.pending))
            metrics.BUSY.inc()
            return
        except Exception:  # e.g. a task the database refuses: it must not block the others
            self.log.exception("cannot record the fires together; recording them one by one")
            each = self._write_each(store, plan)
            if each is None:
                return
            new = each
        waited = time.monotonic() - started
        if waited > 0.5:
            self.log.warning("waited for the database lock", seconds=round(waited, 3))
        self._log_fires(new, len(self.pending) - len(new))
        self.pending, self.unplanned = [], set()

    def _claim_slots(self, leadership: Leadership) -> None:
        """With standbys, a fire is recorded only once its slot is claimed in redis: the
        leader claims its due slots (one another daemon claimed is recorded as fired
        there); a standby records the slots the leader claimed, and holds the others
        until then, or until it leads (a slot it claimed itself, as leader, is recorded
        with its tasks). While redis cannot be asked, slots are held."""
        fires = self.held + self.pending
        self.held, self.pending = [], []
        if not fires:
            return
        if leadership.leading:
            claimed = leadership.claim(fires)
            if claimed is None:
                self.held = fires
            else:
                self.pending = claimed
            return
        settled = leadership.settle(fires)
        if settled is None:
            self.held = fires
        else:
            self.pending, self.held = settled

    def _write_each(self, store: Store, plan: list[tuple[str | None, str, str]],
                    ) -> list[Fire] | None:
        """Each pending fire in its own transaction; a fire that cannot be stored is
        recorded without its tasks, with the reason. None: the database got locked."""
        new: list[Fire] = []
        try:
            for i, fire in enumerate(self.pending):
                try:
                    with write_txn(store.conn):
                        new += store.record_fires([fire], utc_now_ms())
                except apsw.BusyError:
                    self.pending = self.pending[i:]
                    return None
                except Exception as e:
                    failed = Fire(fire.file_path, fire.phase, fire.scheduled_for, fire.source,
                                  (), f"cannot store its tasks: {type(e).__name__}: {e}")
                    with write_txn(store.conn):
                        new += store.record_fires([failed], utc_now_ms())
            with write_txn(store.conn):
                store.set_next_fires(plan)
        except apsw.BusyError:
            self.pending = []  # all recorded; the plan is written next time
            return None
        return new

    def _log_fires(self, new: list[Fire], repeated: int) -> None:
        now = self.clock.now()
        for f in new:
            metrics.FIRES.labels(f.source).inc()
            if f.source == "cron":
                metrics.FIRE_LATENESS.observe(max(0.0, (now - parse_slot(f.scheduled_for))
                                                  .total_seconds()))
        if repeated:
            self.log.info("slots already fired, skipped", count=repeated)
        failed = [f for f in new if f.error]
        for f in failed:
            self.log.error("fire created no task", file=f.file_path, phase=f.phase,
                           slot=f.scheduled_for, error=f.error)
        if len(new) > LOGGED_FIRES:
            self.log.info("fired", fires=len(new), tasks=sum(len(f.tasks) for f in new))
            return
        for f in new:
            if not f.error:
                self.log.info("fired", file=f.file_path, phase=f.phase, slot=f.scheduled_for,
                              source=f.source, tasks=len(f.tasks))


def run(config: Config) -> int:
    logs.configure()
    return Daemon(config).run()
