"""Where the timeline's bars go: a row per topic, or per phase of a file; a bar per run
from its start to its end, or per slot of a row's runs narrower than the grain; the
fires marked. From the bars `flowlord.web.timeline` reads; timeline.html draws it, as
charts.html draws the others (flowlord/web/charts.py: the shared pieces)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timezone
from typing import Any
from urllib.parse import urlencode

from markupsafe import escape

from flowlord.store.history import STATE_COLUMNS, WindowRun
from flowlord.web.charts import (
    BAR_HEIGHT,
    LANE_HEIGHT,
    LANE_LEFT,
    MAX_LANES,
    STACK,
    STATES,
    TOP,
    WIDTH,
    Bar,
    Lane,
    Timeline,
    phase_href,
    task_href,
    time_ticks,
    timeline_width,
)


def timeline(rows: Iterable[WindowRun], fires: Iterable[tuple[str, float]], *,
             start: datetime, seconds: float, now: datetime,
             lanes: Sequence[str] | None = None, file: str | None = None,
             merged_px: float = 0.0) -> Timeline:
    """Rows of bars over [start, start + seconds), from the bars of
    `flowlord.web.timeline.Timelines.window` (a run, or the runs narrower than
    `merged_px` in one slot of a row) and its fire marks (row, px): `lanes` in their order (a file's
    phases), then the rows the runs name, sorted; at most MAX_LANES. A run's bar goes
    from its start to its end, its tooltip and link from its task's columns; merged
    runs take the colour of most of them (outlined red when some failed) and lead to
    the timeline of their hour."""
    rows = list(rows)
    names = list(lanes) if lanes is not None else []
    names += sorted({r[1] for r in rows}.difference(names))
    shown = names[:MAX_LANES]
    index = {name: i for i, name in enumerate(shown)}
    ys = [_bar_y(i) for i in range(len(shown))]
    plot_width = timeline_width()
    scale = plot_width / seconds
    merged = _Merged(start, scale, "&" + urlencode({"file": file}) if file else "")
    bars: list[Bar] = []
    counts = dict.fromkeys(STATE_COLUMNS, 0)
    groups: list[WindowRun] = []  # the merged bars' rows: their states counted at the end
    runs = hidden_runs = 0
    for row in rows:
        n = row[5]
        lane = index.get(row[1])
        if lane is None:
            hidden_runs += n
            continue
        runs += n
        x1 = min(max(row[2] * scale, 0.0), plot_width)
        x2 = min(max(row[3] * scale, x1), plot_width)
        if n == 1:
            state = row[4] or "running"
            counts[state] += 1
            title, href = _single_texts(row, state)
            bars.append(_Bar(round(x1, 2), ys[lane], round(max(x2 - x1, 1.0), 2),
                             BAR_HEIGHT, state, title, href))
        else:
            groups.append(row)
            bars.append(_Bar(round(x1, 2), ys[lane], round(max(x2 - x1, 1.0), 2), BAR_HEIGHT,
                             *merged.texts(row, x1, x2), n))
    if groups:
        for state, column in zip(STATE_COLUMNS, zip(*[g[6:11] for g in groups], strict=True),
                                 strict=True):
            counts[state] += sum(column)
    marks: dict[int, list[float]] = {}
    for name, at in fires:
        if name in index and 0 <= at <= plot_width:
            marks.setdefault(index[name], []).append(at)
    lane_rows = []
    for i, name in enumerate(shown):
        y = TOP + i * LANE_HEIGHT
        xs = sorted(marks.get(i, ()))
        tail = f",{y + 1}v4"
        lane_rows.append(Lane(name, y, phase_href(file, name) if file else
                              "/tasks?" + urlencode({"type": name}),
                              "".join([f"M{x}{tail}" for x in xs]), len(xs)))
    now_at = (now - start).total_seconds() * scale
    return Timeline(WIDTH, TOP + max(len(shown), 1) * LANE_HEIGHT + 6, LANE_LEFT, TOP,
                    plot_width, lane_rows, bars, time_ticks(start, seconds, plot_width),
                    round(now_at, 1) if 0 <= now_at <= plot_width else None,
                    runs, merged_px, merged_px / scale, len(names) - len(shown),
                    hidden_runs, {s: counts[s] for s in STACK if counts.get(s)})


def _bar_y(lane: int) -> float:
    return TOP + lane * LANE_HEIGHT + (LANE_HEIGHT - BAR_HEIGHT) / 2 + 2


def _single_texts(row: WindowRun, state: str) -> tuple[str, str]:
    """The title and link of a run's bar, kept across requests (`_TEXTS`)."""
    key = (row[0], state, *row[11:16])
    texts = _TEXTS.get(key)
    if texts is None:
        _room(_TEXTS)
        texts = _TEXTS[key] = _run_texts(row, state)
    return texts


def _run_texts(row: WindowRun, state: str) -> tuple[str, str]:
    task_no, task_id, kind, job, started, ended = row[0], *row[11:16]
    if task_id is None:  # rows made without `window`'s task columns: drawn, not linked
        # to a task, but to the tasks list from it
        return f"task {task_no}: {state}", f"/tasks?before={task_no + 1}"
    name = f"{kind}:{job}" if job else str(kind)
    return (f"{name} task {task_no}\nstarted {started}\n"
            + (f"ended {ended}: {state}" if ended else "running"), task_href(task_id))


class _Bar(Bar):
    """A timeline's bar: drawn as `Bar` draws itself, its escaped part (link, title,
    class) kept across requests (`_HEADS`): escaping them was most of the time of
    drawing 3,000 bars, and the window's next request draws most of them again, only
    moved."""

    __slots__ = ()

    def __html__(self) -> str:
        x, y, width, height, state, title, href, merged = self  # one unpacking: fields
        # are properties
        key = (href, title, state, merged > 1)
        head = _HEADS.get(key)
        if head is None:
            _room(_HEADS)
            head = _HEADS[key] = (
                f'<a href="{escape(href)}"><title>{escape(title)}</title>'
                f'<rect class="bar {escape(state)}{" merged" if key[3] else ""}" ')
        return f'{head}x="{x}" y="{y}" width="{width}" height="{height}"/></a>\n'


# What the bars of the last requests were drawn with, kept across requests: the window
# moves with each request, but most of its bars are the same runs (flowlord/web/timeline.py
# merges the narrow ones by slot since the epoch), only moved. Each is cleared when full;
# threads may share them (a value is the same whoever makes it).
TEXTS_KEPT = 20_000  # entries of each
_TEXTS: dict[tuple[object, ...], tuple[str, str]] = {}  # a run's title and link
_HEADS: dict[tuple[str, str, str, bool], str] = {}  # a bar's escaped part (_Bar)


def _room(kept: dict[Any, Any]) -> None:
    if len(kept) >= TEXTS_KEPT:
        kept.clear()


# The texts of merged bars drawn, by zone, file, times, runs and states (as _TEXTS):
# their texts were most of the time left in drawing them.
_MERGED_TEXTS: dict[tuple[object, ...], tuple[str, str, str]] = {}


class _Merged:
    """Merged bars of one timeline: a bar for the runs of a row's slot, its tooltip
    (how many, of which states, from when to when, on the clock of the window's zone as
    its axis is) and its link (the timeline of the hour around them). Times are seconds
    since the epoch, written out by hand: a datetime and strftime for each bar were
    most of the time of 3,000 merged bars. The link's query (`file_query`: `&file=…`
    or '') is encoded once for every bar: an RFC 3339 time needs no escaping in it."""

    def __init__(self, start: datetime, scale: float, file_query: str) -> None:
        self.scale, self.file_query = scale, file_query
        self.epoch = start.timestamp()
        self.zone = start.tzinfo
        offset = start.utcoffset()
        # a zone of one offset (UTC: the default window's) needs no look-up by time
        self.fixed = offset.total_seconds() if isinstance(self.zone, timezone) and \
            offset is not None else None
        self.offsets: dict[int, float] = {}  # the zone's offset by minute since the epoch
        self.dates: dict[int, str] = {}  # 'YYYY-MM-DDT' by UTC day since the epoch

    def texts(self, row: WindowRun, x1: float, x2: float) -> tuple[str, str, str]:
        """The class, title and link of the bar of a row's merged runs (`row`: how
        many, by state) from x1 to x2, kept across requests (`_MERGED_TEXTS`)."""
        # kept by the times before they are rounded (which tell the rounded ones): a
        # round to the µs of a time since the epoch costs more than the rest
        at, until = self.epoch + x1 / self.scale, self.epoch + x2 / self.scale
        key = (self.zone, self.file_query, at, until, row[5:11])
        texts = _MERGED_TEXTS.get(key)
        if texts is None:
            _room(_MERGED_TEXTS)
            tally = {s: k for s, k in zip(STATE_COLUMNS, row[6:11], strict=True) if k}
            texts = _MERGED_TEXTS[key] = self._texts(
                tally, row[5], round(at, 6), round(until, 6))  # to the µs, as a datetime is
        return texts

    def _texts(self, tally: dict[str, int], n: int, first: float, last: float
               ) -> tuple[str, str, str]:
        """The class, title and link of the merged bar of these runs, from `first` to
        `last` (seconds since the epoch)."""
        # the colour of most of them: `tally` is in STATE_COLUMNS' order, STACK's, and
        # max keeps the first of equals
        most = max(tally, key=tally.__getitem__)
        failed = "error" in tally or "alert" in tally
        title = (f"{n} runs merged, {self._clock(first)}–{self._clock(last)}: "
                 + ", ".join([f"{tally[s]} {s}" for s in STATES if s in tally])
                 + "\n(the timeline of that hour draws them apart)")
        # the hour around them: it ends half an hour after their middle, whole seconds
        day, t = divmod(math.floor((first + last) / 2 + 1800), 86400)
        date = self.dates.get(day)
        if date is None:
            date = self.dates[day] = datetime.fromtimestamp(day * 86400, UTC).strftime(
                "%Y-%m-%dT")
        return (most + (" failed" if failed and most not in ("error", "alert") else ""),
                title, f"/timeline?hours=1&end={date}{t // 3600:02d}:{t // 60 % 60:02d}:"
                f"{t % 60:02d}Z{self.file_query}")

    def _clock(self, at: float) -> str:
        """HH:MM:SS of the epoch second `at` in the window's zone (cut, as strftime
        cuts the microseconds)."""
        offset = self.fixed
        if offset is None:
            minute = int(at // 60)
            offset = self.offsets.get(minute)
            if offset is None:
                found = datetime.fromtimestamp(minute * 60, self.zone).utcoffset()
                offset = self.offsets[minute] = found.total_seconds() if found else 0.0
        t = math.floor(at + offset) % 86400
        return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"
