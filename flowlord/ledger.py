"""Exactly once: every due slot becomes one ledger row with its tasks, never two.

The scheduler says which slots are due; this module turns them into fires and
records them, and keeps the plan (`workflow_phases.next_fire`) in step. Its
state between turns of the daemon's loop:

* `pending`: fires built and not yet recorded (the database was locked, or the
  write failed): they are recorded on a later turn, late but not lost;
* `held`: with a redis bus, slots nobody has claimed in Redis yet (a standby
  waits for the leader's claim, everyone waits while Redis is away);
* `unplanned`: phases whose `next_fire` column must be written again.

The ledger's primary key `(file_path, phase, scheduled_for)` is the last word: a
slot already recorded (by a restart, a trigger, a backload or another daemon's
claim) is skipped, so recording the same fire twice changes nothing. A fire
whose tasks the database refuses is recorded alone, with the reason, so one bad
fire never blocks the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import apsw

from flowlord import collector, metrics
from flowlord.ahead import BuiltAhead
from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.cron import next_fire
from flowlord.model import Fire, Phase
from flowlord.operations import Action, record_fires
from flowlord.overlap import Overlap
from flowlord.pauses import Pauses
from flowlord.rules import parse_rule
from flowlord.scheduler import Due, PhaseKey, Scheduler, parse_slot
from flowlord.standby import Leadership
from flowlord.store import Store, write_txn
from flowlord.tasks import Context, build_fire

LOGGED_FIRES = 50  # more fires than this in one write are logged as one summary line

Plan = list[tuple[str | None, str, str]]  # (next fire or None, file, task)


MAX_PENDING = 20_000  # fires kept in memory while the database cannot take them
MISSED_ROWS = 10_000  # slots of a phase recorded as missed after a full disk, at most
MISSED_FULL = "missed: the database could not be written (disk full) when it was due"


class Ledger:
    def __init__(self, scheduler: Scheduler, log: Any,
                 leadership: Leadership | None = None) -> None:
        self.scheduler = scheduler
        self.log = log
        self.leadership = leadership  # with a redis bus: slots are claimed there first
        self.pauses = Pauses()  # a slot of a paused phase is recorded with no task
        self.delayed = False  # fires were recorded whose tasks wait (jitter): wake for them
        # (file, phase) → (first, last) slot let go while the database was full
        self.missed: dict[PhaseKey, tuple[str, str]] = {}
        self.pending: list[Fire] = []
        self.held: list[Fire] = []
        # in the order they came (a dict): phases come file by file, so the plan's rows
        # are nearly in key order already and sorting them is cheap (`_plan`)
        self.unplanned: dict[PhaseKey, None] = {}
        self.ahead = BuiltAhead()  # fires built a moment before their slot

    @property
    def waiting(self) -> bool:
        """Whether work waits for a later turn (a locked database, unclaimed slots)."""
        return bool(self.pending or self.unplanned or self.held)

    def start(self, store: Store, now: datetime, ctx: Context) -> None:
        """Schedule every stored phase; the slots missed since each phase's last fire in
        the ledger become pending fires, as its catch-up policy says."""
        with collector.paused():  # 100,000 phases become objects
            phases, stored = store.phases_and_plan()
            self.pending += self.build(self.scheduler.start(
                phases, now, lambda: self._last_fires(store), stored), ctx)
        # the stored plan is written again only where it differs (a restart on unchanged
        # files rewrites no row: 100,000 UPDATEs took longer than the rest of the start)
        self.replan(self.scheduler.replanned)
        self.log.info("scheduled", phases=len(self.scheduler), catching_up=len(self.pending))

    def _last_fires(self, store: Store) -> dict[PhaseKey, datetime]:
        """Each phase's last slot fired by the scheduler, read only when some phase
        catches up (a long history makes this the slowest read of a start)."""
        last: dict[PhaseKey, datetime] = {}
        slots: dict[str, datetime] = {}
        for key, text in store.last_fires().items():
            try:
                last[key] = slots[text] if text in slots else slots.setdefault(
                    text, parse_slot(text))
            except ValueError:  # a row written by hand in another format: no catch-up
                self.log.warning("ledger slot not understood", file=key[0], phase=key[1],
                                 slot=text)
        return last

    def fire_due(self, now: datetime, monotonic: float, ctx: Context) -> None:
        """The slots due by `now` become pending fires."""
        due = self.scheduler.due(now, monotonic)
        if due:
            self.pending += self.build(due, ctx, now)
            self.replan((d.phase.file_path, d.phase.task) for d in due)
            self._bound_pending()
        self.ahead.forget_past(now)

    def next_turn(self) -> datetime | None:
        """When the loop must turn for the next slot: a moment before it, until its
        fires are built ahead, then at the slot."""
        deadline = self.scheduler.next_deadline()
        return None if deadline is None else deadline - self.ahead.wake_before(deadline)

    def build_ahead(self, now: datetime, context: Callable[[datetime], Context]) -> None:
        """Build the fires of the next slot if it comes within a moment (flowlord/ahead.py)."""
        self.ahead.build(self.scheduler, now, context, lambda phase, slot: (
            self.pauses.of_phase(phase.file_path, phase.task, slot) is not None))

    def _bound_pending(self) -> None:
        """While the database cannot be written (a full disk), fires wait in memory. Past
        MAX_PENDING of them the oldest are let go, each phase's remembered as the span
        of its slots (first, last): memory stays bounded by the phases, and once the
        database takes writes again every slot of the span is recorded as missed
        (`missed_rows`), so none is lost from the ledger or fired twice."""
        over = len(self.pending) - MAX_PENDING
        if over <= 0:
            return
        for fire in self.pending[:over]:
            key = (fire.file_path, fire.phase)
            first, last = self.missed.get(key, (fire.scheduled_for, fire.scheduled_for))
            self.missed[key] = (min(first, fire.scheduled_for), max(last, fire.scheduled_for))
        del self.pending[:over]
        self.log.error("fires let go while the database cannot be written; their slots "
                       "are recorded as missed when it can", let_go=over,
                       phases=len(self.missed))

    def missed_rows(self, store: Store, now: datetime) -> None:
        """The slots let go by `_bound_pending`, recorded as fires with no task and why
        (each slot of the phase's cron between the first and the last let go)."""
        if not self.missed:
            return
        fires = []
        for (file_path, task), (first, last) in self.missed.items():
            rule = next((parse_rule(p.rule) for p in store.phases(file_path=file_path,
                                                                   task=task)), None)
            slot, rows = parse_slot(first), 0
            while (rule is not None and rule.cron is not None and slot <= parse_slot(last)
                   and rows < MISSED_ROWS):
                rows += 1
                fires.append(Fire(file_path, task, rfc3339(slot), "cron", (), MISSED_FULL))
                slot = next_fire(rule.cron, slot, self.scheduler.zone)
        with write_txn(store.conn):
            store.record_fires(fires, rfc3339_ms(now))
        if fires:
            self.log.warning("slots let go while the database was full recorded as missed",
                             slots=len(fires), phases=len(self.missed))
        self.missed = {}

    def reschedule(self, by_file: dict[str, list[Phase]], now: datetime) -> None:
        """The phases of these files changed (file → its runnable phases now)."""
        self.scheduler.update(by_file, now)
        # the loader rewrote these phases' rows: their plan is written again, changed or not
        self.replan((f, p.task) for f, phases in by_file.items() for p in phases)

    def replan(self, keys: Iterable[PhaseKey]) -> None:
        self.unplanned.update(dict.fromkeys(keys))

    def build(self, due: Iterable[Due], ctx: Context, now: datetime | None = None
              ) -> list[Fire]:
        """The fires of due slots (those built ahead taken as they are, when it is `now`).
        A fire whose tasks cannot be built is still a fire, with `error` saying why; so
        is one a bug stopped, and one of a paused phase (the pause in force at the
        slot's time)."""
        fires = []
        for d in due:
            paused = self.pauses.of_phase(d.phase.file_path, d.phase.task, d.slot)
            if paused is not None:  # recorded, so that catch-up never fires it later
                fires.append(Fire(d.phase.file_path, d.phase.task, rfc3339(d.slot), d.source,
                                  (), paused.why()))
                continue
            built = self.ahead.take(d, now) if now is not None else None
            if built is not None:
                fires.append(built)
                continue
            try:
                fires.append(build_fire(d.phase, d.slot, d.source, ctx))
            except Exception as e:  # a bug costs this fire, recorded with why; not the daemon
                self.log.exception("cannot build the tasks of a fire", file=d.phase.file_path,
                                   phase=d.phase.task)
                fires.append(Fire(d.phase.file_path, d.phase.task, rfc3339(d.slot), d.source,
                                  (), f"internal error: {type(e).__name__}: {e}"))
        return fires

    # --- recording ------------------------------------------------------------------

    def write(self, store: Store, now: datetime, clock: Callable[[], float]) -> None:
        """Record pending fires in one transaction, then the plan in another; keep what
        could not be written (a locked database) for a later turn. The fires' tasks
        commit first, claimable at once: the plan (each phase's next_fire) is written
        right after, and the fires table, not the plan, says what has fired (a plan
        left behind by a crash between the two fires nothing twice). `clock` reads
        elapsed time, to tell how long the write lock took."""
        if self.leadership is not None:
            self._claim_slots(self.leadership)
        if not self.pending and not self.unplanned:
            return
        if self.pending:
            started = clock()
            try:
                with write_txn(store.conn):
                    fired_at = rfc3339_ms(now)
                    new = store.record_fires(self.pending, fired_at, Overlap(store, fired_at))
            except apsw.BusyError:
                self.log.warning("database locked by another process; will retry",
                                 fires_waiting=len(self.pending))
                metrics.BUSY.inc()
                return
            except apsw.FullError:  # no fire is worse off for the wait: all stay pending
                raise
            except Exception:  # e.g. a task the database refuses: it must not block the others
                self.log.exception("cannot record the fires together; recording them one by one")
                if not self._write_each(store, now):
                    return
            else:
                waited = clock() - started
                if waited > 0.5:
                    self.log.warning("waited for the database lock", seconds=round(waited, 3))
                self._log_fires(new, len(self.pending) - len(new), now)
                self.pending = []
        # worked out after the fires' commit: 10,000 phases' next slots took a sixth of
        # a burst's time from its slot to its tasks
        with collector.paused():  # a cold start plans 100,000 phases
            plan = self._plan()
        try:
            with write_txn(store.conn):
                store.set_next_fires(plan)
        except apsw.BusyError:  # the plan waits for a later turn
            return
        self.unplanned = {}

    def record_now(self, store: Store, fires: Sequence[Fire], now: datetime,
                   action: Action | None = None) -> list[Fire]:
        """Fires an operator asked for (trigger, backload), recorded now in one
        transaction with the action's outcome; those that were new. Raises what the
        write raised (a locked database)."""
        new = record_fires(store, fires, now, action)
        self._log_fires(new, len(fires) - len(new), now)
        return new

    def _plan(self) -> Plan:
        texts: dict[datetime, str] = {}  # phases share slots: format each once
        plan = []
        # in key order, the order of the table's primary key: a cold start's 100,000
        # rows took 1.1 s in a set's order and 0.35 s sorted (and sorting a set of them
        # took 0.25 s more; the dict's order is nearly sorted, and sorted in 0.02 s)
        for key in sorted(self.unplanned):
            slot = self.scheduler.next_slot(key)
            if slot is not None and slot not in texts:
                texts[slot] = rfc3339(slot)
            plan.append((texts.get(slot) if slot else None, key[0], key[1]))
        return plan

    def _claim_slots(self, leadership: Leadership) -> None:
        """With a redis bus, a fire is recorded only once its slot is claimed there: the
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

    def _write_each(self, store: Store, now: datetime) -> bool:
        """Each pending fire in its own transaction; a fire that cannot be stored is
        recorded without its tasks, with the reason. The fires recorded are logged and
        leave `pending`; False when the rest must wait for a later turn."""
        new: list[Fire] = []
        fired_at = rfc3339_ms(now)
        for i, fire in enumerate(self.pending):
            try:
                try:
                    with write_txn(store.conn):
                        new += store.record_fires([fire], fired_at, Overlap(store, fired_at))
                except (apsw.BusyError, apsw.FullError):
                    raise
                except Exception as e:
                    failed = Fire(fire.file_path, fire.phase, fire.scheduled_for, fire.source,
                                  (), f"cannot store its tasks: {type(e).__name__}: {e}")
                    with write_txn(store.conn):
                        new += store.record_fires([failed], fired_at)
            except Exception as e:  # locked, or not even the fire alone can be stored: later
                self.pending = self.pending[i:]
                self._log_fires(new, 0, now)
                if isinstance(e, apsw.FullError):
                    raise
                return False
        self.pending = []  # all recorded; the plan is written next
        self._log_fires(new, 0, now)
        return True

    def _log_fires(self, new: Sequence[Fire], repeated: int, now: datetime) -> None:
        if any(f.due_at for f in new):
            self.delayed = True
        # counted by source and slot: 10,000 fires at one second share both
        for (source, slot), n in Counter((f.source, f.scheduled_for) for f in new).items():
            metrics.FIRES.labels(source).inc(n)
            if source == "cron":  # one addition per bucket: observe() each took 30 ms
                late = max(0.0, (now - parse_slot(slot)).total_seconds())
                metrics.observe_all(metrics.FIRE_LATENESS, [late] * n)
        if repeated:
            self.log.info("slots already fired, skipped", count=repeated)
        for f in new:
            if f.error.startswith(("paused by ", "skipped by overlap")):  # as asked
                self.log.info("slot skipped", file=f.file_path, phase=f.phase,
                              slot=f.scheduled_for, why=f.error)
            elif f.error:
                self.log.error("fire created no task", file=f.file_path, phase=f.phase,
                               slot=f.scheduled_for, error=f.error)
        if len(new) > LOGGED_FIRES:
            self.log.info("fired", fires=len(new), tasks=sum(len(f.tasks) for f in new))
            return
        for f in new:
            if not f.error:
                self.log.info("fired", file=f.file_path, phase=f.phase, slot=f.scheduled_for,
                              source=f.source, tasks=len(f.tasks))
