"""Where to draw the dashboard's pictures of time: a phase's recent runs (a bar per run,
its height the run time, with the p50 and p95 lines), its tasks per hour, and what the
timeline (flowlord/web/timeline_chart.py) and the agenda (agenda_chart.py) share.

Pure geometry from rows `flowlord.store.history` reads: the templates (phase.html,
timeline.html) draw it as SVG, escaping every name, as `flowlord.web.drawing` is drawn
by graph.html. A bar's state names its colour, the class of the badges in style.css.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from urllib.parse import quote, urlencode

from markupsafe import escape

from flowlord.clock import rfc3339
from flowlord.store.history import Run
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
    surely fit: the wider runs, and at most one bar per slot of each row
    (flowlord/web/timeline.py counts them)."""
    if runs <= max_bars:
        return 0.0
    steps = merge_steps()
    for (w, slots), n in zip(steps, wide, strict=True):
        if n + lanes * slots <= max_bars:
            return float(w)
    return float(steps[-1][0])
