"""Where to draw the dashboard's pictures of time: a phase's recent runs (a bar per run,
its height the run time, with the p50 and p95 lines), its tasks per hour, and the
timeline of a window (a row per topic, or per phase of a file; a bar per run from its
start to its end, the fires marked).

Pure geometry from rows `flowlord.store.history` reads: the templates (phase.html,
timeline.html) draw it as SVG, escaping every name, as `flowlord.web.drawing` is drawn
by graph.html. A bar's state names its colour, the class of the badges in style.css.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple
from urllib.parse import quote, urlencode

from markupsafe import escape

from flowlord.clock import rfc3339
from flowlord.store.history import STATE_COLUMNS, Run, WindowRun
from flowlord.store.reads import nearest_rank

WIDTH = 1200  # every chart: fits a 1280 px laptop screen beside the page's margins
AXIS_LEFT = 64  # room for the value axis' labels
LANE_LEFT = 200  # the timeline's row names
LANE_HEIGHT = 22
BAR_HEIGHT = 14
TOP = 26  # the time axis' labels, above the plot
LABEL_CHARS = 26  # longer row names are cut, with the whole name in the row's <title>
MAX_BARS = 3000  # a timeline draws at most this many bars: narrow runs are merged
MAX_LANES = 150  # rows of a timeline; the rest are counted, not drawn
# worst first: the order a merged bar's tooltip counts them in
STATES = ("error", "alert", "warn", "running", "waiting", "complete")
STACK = ("complete", "warn", "alert", "error", "running", "waiting")  # bottom to top
DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                  21600, 43200, 86400)
TIME_STEPS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800,
              604800)


class Bar(NamedTuple):
    """A bar of a chart. It draws itself (`__html__`: what `{{ bar }}` writes in
    pages/charts.html), its title, link and class escaped: the template's ten
    expressions a bar cost 10 µs each bar, 30 ms of a timeline of 3,000 bars. A tuple:
    made thousands of times a page, a frozen dataclass costs four times as much."""

    x: float
    y: float
    width: float
    height: float
    state: str  # the class that colours it: a result, 'running', 'waiting'
    title: str
    href: str
    merged: int = 1  # how many runs it stands for

    def __html__(self) -> str:
        merged = " merged" if self.merged > 1 else ""
        return (f'<a href="{escape(self.href)}"><title>{escape(self.title)}</title>'
                f'<rect class="bar {escape(self.state)}{merged}" x="{self.x}" y="{self.y}" '
                f'width="{self.width}" height="{self.height}"/></a>\n')


@dataclass(frozen=True)
class Tick:
    at: float  # x of a time axis' tick, y of a value axis'
    label: str


@dataclass(frozen=True)
class Rule:
    """A horizontal line across the plot: a percentile of the run times."""
    y: float
    name: str  # 'p50', 'p95': its class and label
    label: str


@dataclass(frozen=True)
class Chart:
    """A chart of bars over a value axis (run time, or tasks per hour)."""
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    rules: list[Rule] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # runs by state: the legend


@dataclass(frozen=True)
class Lane:
    name: str
    y: float
    href: str
    fires: str  # the SVG path of its fire marks ('' for none)
    fire_count: int

    @property
    def label(self) -> str:
        return cut(self.name)


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    lanes: list[Lane]
    bars: list[Bar]
    ticks: list[Tick]
    now_x: float | None  # where now is, when it is inside the window
    runs: int  # runs in the window (of the drawn rows)
    merged_below: float  # runs narrower than this many px were merged (0: none)
    merged_seconds: float  # the same as a time
    hidden_lanes: int  # rows beyond MAX_LANES, not drawn
    hidden_runs: int  # their runs
    counts: dict[str, int]  # runs by state: the legend


def cut(name: str, chars: int = LABEL_CHARS) -> str:
    return name if len(name) <= chars else name[:chars - 1] + "…"


def duration(seconds: float) -> str:
    """A run time for a person: '0.4 s', '42 s', '3 min 5 s', '2 h 10 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    hours, rest = divmod(whole, 3600)
    return f"{hours} h" + (f" {rest // 60} min" if rest // 60 else "")


def nice_step(top: float, ticks: int, steps: Sequence[float] = ()) -> float:
    """The smallest step of `steps` (or of 1, 2, 5 × 10ⁿ) that splits 0..top into at
    most `ticks` parts."""
    wanted = max(top, 1e-9) / ticks
    for step in steps:
        if step >= wanted:
            return float(step)
    if steps:
        return float(math.ceil(wanted / steps[-1]) * steps[-1])
    power = 10.0 ** math.floor(math.log10(wanted))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= wanted)


def value_axis(top: float, height: int, ticks: int = 4, steps: Sequence[float] = (),
               label: Callable[[float], str] = lambda v: f"{v:g}"
               ) -> tuple[float, list[Tick]]:
    """The axis' end (a whole number of steps at or above `top`) and its ticks, y from
    the plot's top (0 at the bottom, `height`)."""
    step = nice_step(top, ticks, steps)
    end = max(step, math.ceil(top / step - 1e-9) * step)
    return end, [Tick(height - height * k * step / end, label(k * step))
                 for k in range(round(end / step) + 1)]


def time_ticks(start: datetime, seconds: float, width: float, at_most: int = 10
               ) -> list[Tick]:
    """Ticks at whole UTC steps of a time axis `seconds` long, `width` px wide: 'HH:MM',
    with the date at midnight or on the first tick when the axis spans days."""
    step = nice_step(seconds, at_most, TIME_STEPS)
    origin = start.timestamp()
    first = math.ceil(origin / step) * step
    days = seconds > 86400 or (start + timedelta(seconds=seconds)).date() != start.date()
    ticks: list[Tick] = []
    at = first
    while at <= origin + seconds:
        when = datetime.fromtimestamp(at, start.tzinfo)
        text = when.strftime("%H:%M")
        if days and (not ticks or (when.hour == 0 and when.minute == 0)):
            text = when.strftime("%b %d") if step >= 86400 else when.strftime("%b %d %H:%M")
        ticks.append(Tick(round((at - origin) / seconds * width, 1), text))
        at += step
    return ticks


def task_href(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def phase_href(file: str, task: str) -> str:
    return f"/phases/{quote(file, safe='/')}/{quote(task, safe='')}"


def timeline_href(end: datetime, hours: int, file: str | None = None) -> str:
    query = {"hours": hours, "end": rfc3339(end)} | ({"file": file} if file else {})
    return "/timeline?" + urlencode(query)


# --- a phase's recent runs ----------------------------------------------------------


def runs_chart(runs: Sequence[Run], name: str, height: int = 200) -> Chart:
    """A bar per run, oldest left (`runs` come newest first, as `recent_runs` reads
    them), its height the run time; the p50 and p95 of the ended runs as lines."""
    ordered = list(reversed(runs))
    plot_width, plot_height = WIDTH - AXIS_LEFT - 10, height - TOP - 24
    times = sorted(max(0.0, r.seconds or 0.0) for r in ordered if r.ended is not None)
    longest = max((max(0.0, r.seconds or 0.0) for r in ordered), default=0.0)
    end, y_ticks = value_axis(max(longest, 1.0), plot_height, steps=DURATION_STEPS,
                              label=duration)
    slot = plot_width / max(len(ordered), 1)
    bars: list[Bar] = []
    counts: dict[str, int] = {}
    for i, r in enumerate(ordered):
        state = r.result or "running"
        counts[state] = counts.get(state, 0) + 1
        seconds = max(0.0, r.seconds or 0.0)
        h = max(plot_height * seconds / end, 1.0)
        title = (f"{name} task {r.task_no}\nstarted {r.started}\n"
                 + (f"ended {r.ended}: {state}" if r.ended else "running")
                 + f"\nrun time {duration(seconds)}")
        bars.append(Bar(round(i * slot + slot * 0.1, 2), round(plot_height - h, 2),
                        round(max(slot * 0.8, 1.0), 2), round(h, 2), state, title,
                        task_href(r.id)))
    rules = []
    if times:
        for percent in (50, 95):
            value = nearest_rank(times, percent)
            rules.append(Rule(round(plot_height - plot_height * value / end, 2),
                              f"p{percent}", f"p{percent} {duration(value)}"))
    every = max(1, math.ceil(len(ordered) / 6))
    x_ticks = [Tick(round(i * slot + slot / 2, 1), (r.started or "")[5:16].replace("T", " "))
               for i, r in enumerate(ordered) if i % every == 0]
    return Chart(WIDTH, height, AXIS_LEFT, TOP, plot_width, plot_height, bars, x_ticks,
                 y_ticks, rules, counts)


# --- a phase's tasks per hour -------------------------------------------------------


def hourly_chart(counts: Iterable[tuple[str, str, int]], since: datetime, hours: int,
                 file: str, height: int = 180) -> Chart:
    """Tasks per hour created from `since` (a whole hour) for `hours` hours, stacked by
    state; each bar links to the timeline of that hour of the file."""
    plot_width, plot_height = WIDTH - AXIS_LEFT - 10, height - TOP - 24
    by_hour: dict[str, dict[str, int]] = {}
    for hour, state, n in counts:
        by_hour.setdefault(hour, {})[state] = by_hour.get(hour, {}).get(state, 0) + n
    most = max((sum(s.values()) for s in by_hour.values()), default=0)
    end, y_ticks = value_axis(max(most, 1), plot_height,
                              steps=(1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000))
    slot = plot_width / hours
    bars: list[Bar] = []
    totals: dict[str, int] = {}
    for i in range(hours):
        start = since + timedelta(hours=i)
        states = by_hour.get(start.strftime("%Y-%m-%dT%H"), {})
        y = float(plot_height)
        for state in STACK:
            n = states.get(state, 0)
            if not n:
                continue
            totals[state] = totals.get(state, 0) + n
            h = plot_height * n / end
            y -= h
            bars.append(Bar(round(i * slot, 2), round(y, 2), round(max(slot - 1, 1.0), 2),
                            round(h, 2), state,
                            f"{start:%Y-%m-%d %H}:00–{start + timedelta(hours=1):%H}:00 UTC: "
                            f"{n} {state}",
                            timeline_href(start + timedelta(hours=1), 1, file)))
    return Chart(WIDTH, height, AXIS_LEFT, TOP, plot_width, plot_height, bars,
                 time_ticks(since, hours * 3600, plot_width, 8), y_ticks, [], totals)


# --- the timeline of a window -------------------------------------------------------


MERGE_STEPS = 11  # merge widths tried: 1, 2, 4 … 1024 px (wider than the plot)


def timeline_width() -> int:
    """The timeline's plot, in px: what a second is worth on it."""
    return WIDTH - LANE_LEFT - 10


def merge_steps() -> list[tuple[int, int]]:
    """(w, slots) for each merge width tried, w = 1, 2, 4 … px: at most `slots` merged
    bars in a row when the runs narrower than w are merged per w px of it (one more: a
    run's start and end need not fall on the grid)."""
    return [(2 ** k, math.ceil(timeline_width() / 2 ** k) + 1) for k in range(MERGE_STEPS)]


def merge_width(runs: int, lanes: int, wide: Sequence[int], max_bars: int = MAX_BARS
                ) -> float:
    """How narrow a run must be, in px, to be merged with the others of its row and
    slot (0: none is). `wide[k]`: how many runs are at least 2**k px wide. Every run
    alone while they are at most `max_bars`; else the first width at which the bars
    surely fit: the wider runs, and at most one bar per slot of each row. (The rule
    `flowlord.store.history.window` applies in SQL, with `merge_steps`.)"""
    if runs <= max_bars:
        return 0.0
    steps = merge_steps()
    for (w, slots), n in zip(steps, wide, strict=True):
        if n + lanes * slots <= max_bars:
            return float(w)
    return float(steps[-1][0])


def timeline(rows: Iterable[WindowRun], fires: Iterable[tuple[str, int]], *,
             start: datetime, seconds: float, now: datetime,
             lanes: Sequence[str] | None = None, file: str | None = None,
             merged_px: float = 0.0) -> Timeline:
    """Rows of bars over [start, start + seconds), from the bars of
    `flowlord.store.history.window` (a run, or the runs narrower than `merged_px` in
    one slot of a row) and its fire marks (row, px): `lanes` in their order (a file's
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
    marks: dict[int, list[int]] = {}
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
        # the colour of most of them: `tally` is in STATE_COLUMNS' order, STACK's, and
        # max keeps the first of equals
        most = max(tally, key=tally.__getitem__)
        failed = "error" in tally or "alert" in tally
        first = round(self.epoch + x1 / self.scale, 6)  # to the µs, as a datetime is
        last = round(self.epoch + x2 / self.scale, 6)
        title = (f"{n} runs merged, {self._clock(first)}–{self._clock(last)}: "
                 + ", ".join([f"{tally[s]} {s}" for s in STATES if s in tally])
                 + "\n(the timeline of that hour draws them apart)")
        # the hour around them: it ends half an hour after their middle, whole seconds
        day, t = divmod(math.floor((first + last) / 2 + 1800), 86400)
        date = self.dates.get(day)
        if date is None:
            date = self.dates[day] = datetime.fromtimestamp(day * 86400, UTC).strftime(
                "%Y-%m-%dT")
        return Bar(round(x1, 2), y, round(max(x2 - x1, 1.0), 2), BAR_HEIGHT,
                   most + (" failed" if failed and most not in ("error", "alert") else ""),
                   title, f"/timeline?hours=1&end={date}{t // 3600:02d}:{t // 60 % 60:02d}:"
                   f"{t % 60:02d}Z{self.file_query}", merged=n)

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
