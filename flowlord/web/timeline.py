"""The runs of a timeline's window, read in blocks with the settled ones kept between
requests: the default window (the last 6 hours) moves with every request, but most of
what it shows ended long ago and cannot change.

A window is cut into blocks of a 24th of its length, at multiples of that length since
the epoch, so the blocks of the window a second later are the same ones. A block is kept
once it has settled: it ended a minute ago or more and no task that began in it is still
running. Its reading (`flowlord.store.history.runs_shape`, and `history.runs_bars` for
each grain asked) is used again while as many tasks began in it (a deleted task, or one
whose start a worker moved into it, changes that) and no action was taken since
(`flowlord mark` changes a finished task's result). A block that cannot be kept is
looked at in its 24 parts, each kept as a block is: the rest is read each time, the
parts not settled (the newest minute), those cut by the window's edges, the runs still
going, the fires' tasks still waiting. Reading the whole block cut by the window's start
and the newest one was most of the time of a request.

The runs narrower than the grain (charts.merge_width) are merged by row and by slot of
the grain since the epoch, not since the window's start, so a merged bar stays where it
was as the window moves; a slot cut by a block's edge is merged again here. The kept
blocks of a window's own are kept joined too (`_Joined`), while they are the same
blocks: only the bars read afresh are merged into them at each request.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from flowlord.clock import rfc3339_ms
from flowlord.store import Store, history
from flowlord.store.history import Runs, Shape, WindowRun
from flowlord.web import charts

BLOCKS_PER_WINDOW = 24
SETTLED_SECONDS = 60  # a block is kept once it ended this long ago
MAX_KEPT_ROWS = 50_000  # rows of bars, shapes and marks kept over all blocks (~10 MB)
# Task times are stored as text, some to the second ("…:06Z"), some to the millisecond
# ("…:06.123Z"), and compared as text: "…:06Z" sorts after a block's edge "…:06.250Z".
# What the queries count in a block is what its texts say; what is decided here in
# seconds leaves this margin.
_TEXT_MARGIN = 1.0
MAX_JOINED = 8  # windows whose kept blocks are kept joined (_Joined): the last ones asked


class Window(NamedTuple):
    """What the timeline of a window draws."""

    bars: list[WindowRun]  # times in seconds from the window's start
    fires: list[tuple[str, float]]  # (row, px from the plot's left): a fire's mark
    grain: float  # seconds: runs shorter than this were merged (0: none was)


# a block's key: (file, the window's block size, this block's size, its number: it
# begins at number × size seconds since the epoch); a block's reading depends on the
# window's length, which the window's block size tells
_Key = tuple[str | None, float, float, int]


class _Block(NamedTuple):
    began: int  # tasks begun in it when it was read
    actions: int  # the newest action's number when it was read
    shape: Shape
    bars: dict[float, list[tuple[int, WindowRun]]]  # by grain


class _Joined(NamedTuple):
    """The kept blocks of a window's own, joined: their shapes' counts summed, their
    marks, and their bars merged (by grain). The window moves with each request but
    keeps the same blocks for a 24th of its length: merging their bars again each time
    was a tenth of a request's time."""

    blocks: tuple[_Block, ...]  # what it was joined from: used while they are kept
    rows: dict[str, list[int]]
    marks: set[tuple[str, int]]
    bars: dict[float, dict[tuple[str, int], WindowRun]]  # by grain


class Timelines:
    """The timelines of one server, its settled blocks kept (at most MAX_KEPT_ROWS rows,
    the least recently used dropped first). Threads share it: a block is read outside
    the lock, kept under it."""

    def __init__(self, max_rows: int = MAX_KEPT_ROWS) -> None:
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()
        self._rows = 0
        self._joined: OrderedDict[tuple[object, ...], _Joined] = OrderedDict()

    def window(self, store: Store, start: datetime, end: datetime, now: datetime,
               file: str | None, max_bars: int = charts.MAX_BARS) -> Window:
        """The bars and fire marks of [start, end), every topic or (with `file`) that
        file's phases, as one snapshot of the database."""
        with history.read_snapshot(store):
            return _Reading(self, store, start, end, now, file).window(max_bars)

    def _get(self, key: _Key) -> _Block | None:
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
            return block

    def _put(self, key: _Key, block: _Block) -> None:
        with self._lock:
            old = self._blocks.pop(key, None)
            self._rows += _size(block) - (_size(old) if old is not None else 0)
            self._blocks[key] = block
            while self._rows > self.max_rows and len(self._blocks) > 1:
                _, dropped = self._blocks.popitem(last=False)
                self._rows -= _size(dropped)

    def _joined_of(self, key: tuple[object, ...], blocks: tuple[_Block, ...]) -> _Joined:
        """These blocks joined: as kept while they are the same, else joined now."""
        with self._lock:
            joined = self._joined.get(key)
            if joined is not None and len(joined.blocks) == len(blocks) and all(
                    a is b for a, b in zip(joined.blocks, blocks, strict=True)):
                self._joined.move_to_end(key)
                return joined
        rows: dict[str, list[int]] = {}
        for block in blocks:
            _add_rows(rows, block.shape.rows)
        joined = _Joined(blocks, rows, set().union(*[b.shape.marks for b in blocks]), {})
        with self._lock:
            self._joined[key] = joined
            while len(self._joined) > MAX_JOINED:
                self._joined.popitem(last=False)
        return joined


class _Reading:
    """One window read: which blocks are kept, which are read, then merged."""

    def __init__(self, kept: Timelines, store: Store, start: datetime, end: datetime,
                 now: datetime, file: str | None) -> None:
        self.kept, self.store, self.file = kept, store, file
        self.lane = "type" if file is None else "phase"
        self.seconds = (end - start).total_seconds()
        self.per = self.seconds / charts.timeline_width()  # seconds a px is worth
        self.widths = [self.per * w for w, _ in charts.merge_steps()]
        self.start, self.end, self.now = start.timestamp(), end.timestamp(), now.timestamp()
        self.start_text, self.end_text = rfc3339_ms(start), rfc3339_ms(end)
        self.now_text = rfc3339_ms(now)
        self.earliest = self.start - history.LONGEST_RUN_HOURS * 3600
        self.block = self.seconds / BLOCKS_PER_WINDOW
        self.actions = -1  # read at the first block kept

    def window(self, max_bars: int) -> Window:
        kept, live = self._blocks()
        sources = [Runs(_text(lo), _text(hi), self.start_text, self.start, self.end,
                        self.now_text, self.start_text) for lo, hi in live]
        sources.append(Runs("", self.end_text, clip_lo=self.start, clip_hi=self.end,
                            now=self.now_text, since=self.start_text, running=True))
        shapes = [history.runs_shape(self.store, s, self.lane, self.file, self.widths, self.per)
                  for s in sources]
        # joined apart: the whole blocks stay the same for a 24th of the window, the
        # parts at its edges change more often
        groups = [[(k, b) for k, b in kept if k[2] == self.block],
                  [(k, b) for k, b in kept if k[2] != self.block]]
        joined = [self.kept._joined_of((self.file, self.block, *[k for k, _ in group]),
                                       tuple(b for _, b in group)) for group in groups]
        rows: dict[str, list[int]] = {}
        for shape_rows in [j.rows for j in joined] + [s.rows for s in shapes]:
            _add_rows(rows, shape_rows)
        total = [sum(c) for c in zip(*rows.values(), strict=True)] if rows else []
        grain_px = charts.merge_width(total[0] if total else 0, len(rows), total[1:]
                                      if total else [0] * len(self.widths), max_bars)
        grain = grain_px * self.per
        merged = dict(self._joined_bars(groups[0], joined[0], grain))
        for (_, slot), bar in self._joined_bars(groups[1], joined[1], grain).items():
            _merge(merged, slot, bar)
        for source in sources:
            for slot, bar in history.runs_bars(self.store, source, self.lane, self.file, grain):
                _merge(merged, slot, bar)
        marks = history.waiting_marks(self.store, self.lane, self.file, self.start_text,
                              self.end_text, self.per)
        for shape in shapes:
            marks |= shape.marks
        first_slot = math.floor(self.start / self.per)
        # a kept block's own runs began in the window, but their tasks may have been
        # created before it
        for j in joined:
            marks.update(m for m in j.marks if m[1] >= first_slot)
        return Window([(b[0], b[1], b[2] - self.start, b[3] - self.start, *b[4:])
                       for b in merged.values()],
                      sorted((row, round(slot - self.start / self.per, 2))
                             for row, slot in marks), grain)

    def _joined_bars(self, kept: list[tuple[_Key, _Block]],
                     joined: _Joined, grain: float) -> dict[tuple[str, int], WindowRun]:
        """The kept blocks' bars at this grain, merged: as joined before, else now."""
        bars = joined.bars.get(grain)
        if bars is None:
            bars = {}
            for key, block in kept:
                for slot, bar in self._bars_of(key, block, grain):
                    _merge(bars, slot, bar)
            joined.bars[grain] = bars  # the same whoever joins them: threads may race
        return bars

    def _blocks(self) -> tuple[list[tuple[_Key, _Block]], list[tuple[float, float]]]:
        """The kept blocks that have runs in the window, and the spans to read. A block
        that cannot be kept (the window's edges cut it, it has not settled, a run in it
        is still going) is looked at in its 24 parts, kept as blocks are: the spans
        read at each request are then the parts at the window's edges, not blocks."""
        size, part = self.block, self.block / BLOCKS_PER_WINDOW
        first, last = math.ceil(self.earliest / size), math.floor(self.end / size)
        running = history.running_starts(self.store)
        found = self._keepable(size, range(first, last + 1), running)
        parts = self._keepable(part, [j for k, block in found.items() if block is None
                                      for j in range(k * BLOCKS_PER_WINDOW,
                                                     (k + 1) * BLOCKS_PER_WINDOW)], running)
        kept: list[tuple[_Key, _Block]] = []
        live: list[tuple[float, float]] = []
        edge = self.earliest
        for key, block in [((self.file, size, size, k), b) if b is not None else
                           ((self.file, size, part, j), parts[j])
                           for k, b in found.items()
                           for j in ([k] if b is not None else
                                     range(k * BLOCKS_PER_WINDOW, (k + 1) * BLOCKS_PER_WINDOW))]:
            if block is None:
                continue
            lo, hi = key[3] * key[2], (key[3] + 1) * key[2]
            if hi > self.start:  # one of the window's own: its runs are drawn
                kept.append((key, block))
            if lo > edge:
                live.append((edge, lo))
            edge = hi
        if edge < self.end:
            live.append((edge, self.end))
        return kept, live

    def _keepable(self, size: float, numbers: Sequence[int], running: list[str]
                  ) -> dict[int, _Block | None]:
        """Blocks of `size` by number, in order: each one's reading when it can be
        kept (settled, not cut by the window's start, its runs not past the window's
        edges, none still running), else None."""
        busy = {_number(started, size) for started in running}
        settled = [k for k in numbers
                   if (k + 1) * size <= self.now - SETTLED_SECONDS and k not in busy
                   and not k * size < self.start < (k + 1) * size
                   and (k + 1) * size <= self.end]
        began = dict(zip(settled, history.started_counts(
            self.store, [(_text(k * size), _text((k + 1) * size)) for k in settled]),
            strict=True))
        found: dict[int, _Block | None] = {}
        for k in numbers:
            block = self._settled(size, k, began[k]) if k in began else None
            # a run that ended at the window's start is in it, and so may one that
            # ended in the second before (times compared as text): such a block is read
            if block is not None and not (block.shape.last_end < self.start - _TEXT_MARGIN
                                          if (k + 1) * size <= self.start
                                          else block.shape.last_end <= self.end):
                block = None
            found[k] = block
        return found

    def _settled(self, size: float, k: int, began: int) -> _Block | None:
        """Block k's reading: the one kept while still true, else read now and kept."""
        if self.actions < 0:
            self.actions = self.store.last_action_no()  # `flowlord mark` is one
        key = (self.file, self.block, size, k)
        block = self.kept._get(key)
        if block is not None and block.began == began and \
                block.actions == self.actions:
            return block
        runs = Runs(_text(k * size), _text((k + 1) * size))
        block = _Block(began, self.actions, history.runs_shape(
            self.store, runs, self.lane, self.file, self.widths, self.per), {})
        self.kept._put(key, block)
        return block

    def _bars_of(self, key: _Key, block: _Block, grain: float) -> list[tuple[int, WindowRun]]:
        bars = block.bars.get(grain)
        if bars is None:
            size, k = key[2], key[3]
            bars = history.runs_bars(self.store, Runs(_text(k * size), _text((k + 1) * size)),
                                     self.lane, self.file, grain)
            self.kept._put(key, block._replace(bars={**block.bars, grain: bars}))
        return bars


def _merge(merged: dict[tuple[str, int], WindowRun], slot: int, bar: WindowRun) -> None:
    """Add a bar; the merged runs of one row's slot, cut by a block's edge, are one bar."""
    have = merged.setdefault((bar[1], slot), bar)
    if have is bar:
        return
    results = [r for r in (have[4], bar[4]) if r is not None]
    merged[bar[1], slot] = (max(have[0], bar[0]), bar[1], min(have[2], bar[2]),
                            max(have[3], bar[3]), max(results) if results else None,
                            have[5] + bar[5], have[6] + bar[6], have[7] + bar[7],
                            have[8] + bar[8], have[9] + bar[9], have[10] + bar[10],
                            None, None, None, None, None)


def _add_rows(rows: dict[str, list[int]], more: dict[str, tuple[int, ...]] | dict[str, list[int]]
              ) -> None:
    """Add a shape's counts by row to `rows`."""
    for name, counts in more.items():
        have = rows.setdefault(name, [0] * len(counts))
        for i, n in enumerate(counts):
            have[i] += n


@functools.lru_cache(maxsize=4096)  # the edges of the same blocks at each request
def _text(seconds: float) -> str:
    """Seconds since the epoch as task times are stored."""
    return rfc3339_ms(datetime.fromtimestamp(seconds, UTC))


def _number(started: str, size: float) -> int:
    """The block of `size` a run that began at `started` is in, as the queries count it:
    by text, where "…:06Z" is in the block that begins at "…:06.250Z"."""
    at = datetime.fromisoformat(started)  # a time written by hand may have no zone: UTC
    k = math.floor((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() / size)
    while _text((k + 1) * size) <= started:
        k += 1
    while _text(k * size) > started:
        k -= 1
    return k


def _size(block: _Block) -> int:
    return (len(block.shape.rows) + len(block.shape.marks)
            + sum(len(b) for b in block.bars.values()))
