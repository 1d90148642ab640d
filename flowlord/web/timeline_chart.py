"""Where the timeline's bars go: a row per topic, or per phase of a file; a bar per run
from its start to its end, or per slot of a row's runs narrower than the grain; the
fires marked. From the bars `flowlord.web.timeline` reads; timeline.html draws it, as
charts.html draws the others (flowlord/web/charts.py: the shared pieces)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timezone
from urllib.parse import urlencode

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
    runs = hidden_runs = 0
    for row in rows:
        task_no, name, begin, end, result, n = row[:6]
        lane = index.get(name)
        if lane is None:
            hidden_runs += n
            continue
        runs += n
        x1 = min(max(begin * scale, 0.0), plot_width)
        x2 = min(max(end * scale, x1), plot_width)
        if n == 1:
            state = result or "running"
            counts[state] += 1
            bars.append(_single(row, round(x1, 2), ys[lane], round(max(x2 - x1, 1.0), 2),
                                state))
        else:
            tally = {s: k for s, k in zip(STATE_COLUMNS, row[6:11], strict=True) if k}
            for state, k in tally.items():
                counts[state] += k
            bars.append(merged.bar(tally, n, x1, x2, ys[lane]))
    marks: dict[int, list[float]] = {}
    for name, at in fires:
        if name in index and 0 <= at <= plot_width:
            marks.setdefault(index[name], []).append(at)
    lane_rows = []
    for i, name in enumerate(shown):
        y = TOP + i * LANE_HEIGHT
        xs = sorted(marks.get(i, ()))
        lane_rows.append(Lane(name, y, phase_href(file, name) if file else
                              "/tasks?" + urlencode({"type": name}),
                              "".join(f"M{x},{y + 1}v4" for x in xs), len(xs)))
    now_at = (now - start).total_seconds() * scale
    return Timeline(WIDTH, TOP + max(len(shown), 1) * LANE_HEIGHT + 6, LANE_LEFT, TOP,
                    plot_width, lane_rows, bars, time_ticks(start, seconds, plot_width),
                    round(now_at, 1) if 0 <= now_at <= plot_width else None,
                    runs, merged_px, merged_px / scale, len(names) - len(shown),
                    hidden_runs, {s: counts[s] for s in STACK if counts.get(s)})


def _bar_y(lane: int) -> float:
    return TOP + lane * LANE_HEIGHT + (LANE_HEIGHT - BAR_HEIGHT) / 2 + 2


def _single(row: WindowRun, x: float, y: float, width: float, state: str) -> Bar:
    task_no, task_id, kind, job, started, ended = row[0], *row[11:16]
    if task_id is None:  # rows made without `window`'s task columns: drawn, not linked
        # to a task, but to the tasks list from it
        return Bar(x, y, width, BAR_HEIGHT, state, f"task {task_no}: {state}",
                   f"/tasks?before={task_no + 1}")
    name = f"{kind}:{job}" if job else str(kind)
    return Bar(x, y, width, BAR_HEIGHT, state,
               f"{name} task {task_no}\nstarted {started}\n"
               + (f"ended {ended}: {state}" if ended else "running"),
               task_href(task_id))


# The texts of merged bars drawn, by zone, file, times, runs and states: the window moves
# with each request, but most of its merged bars (flowlord/web/timeline.py merges them
# by slot since the epoch) are the same runs as in the last one, and their texts were
# most of the time left in drawing them. Cleared when full; threads may share it (a
# text is the same whoever makes it).
MERGED_TEXTS_KEPT = 20_000
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

    def bar(self, tally: dict[str, int], n: int, x1: float, x2: float, y: float) -> Bar:
        first = round(self.epoch + x1 / self.scale, 6)  # to the µs, as a datetime is
        last = round(self.epoch + x2 / self.scale, 6)
        key = (self.zone, self.file_query, first, last, n, *tally.items())
        texts = _MERGED_TEXTS.get(key)
        if texts is None:
            if len(_MERGED_TEXTS) >= MERGED_TEXTS_KEPT:
                _MERGED_TEXTS.clear()
            texts = _MERGED_TEXTS[key] = self._texts(tally, n, first, last)
        return Bar(round(x1, 2), y, round(max(x2 - x1, 1.0), 2), BAR_HEIGHT, *texts, merged=n)

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
