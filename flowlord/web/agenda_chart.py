"""Where to draw the agenda (flowlord/agenda.py) on its page: a row per topic, a bar
per expected run from its start to its expected end (a fire's own runs and its
children's apart), a tick where the run time is unknown, a paused fire as a short
amber bar, and each backlog as a red band over its row from its first task due to
when its queue empties.

Pure geometry, drawn by pages/agenda.html as SVG with every name escaped, on the
timeline's scale and axis (flowlord/web/charts.py). Past `charts.MAX_BARS` the runs of
a row are merged into one bar per few px, with their count in its tooltip.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from flowlord.agenda import DEFAULT_HOURS, MAX_HOURS, Agenda, parse_concurrency
from flowlord.agenda_backlog import Backlog
from flowlord.agenda_cache import cache_for
from flowlord.agenda_fires import EPOCH, Planned
from flowlord.aside import Aside
from flowlord.config import Config
from flowlord.errors import BadRequest
from flowlord.store import Store
from flowlord.web import charts, params
from flowlord.web.charts import Bar, Lane, Tick

BAND = 4  # px: a backlog's band at the top of its row


@dataclass(frozen=True)
class AgendaChart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    lanes: list[Lane]
    bars: list[Bar]
    ticks: list[Tick]
    runs: int  # expected runs in the window: fires and children
    merged_below: float  # px: the bars of one row were merged per this width (0: none)
    hidden_lanes: int
    hidden_runs: int
    unknown: int  # runs drawn as a tick: no run time known, or no known start
    paused: int  # fires of paused phases


def agenda_href(hours: int, topic: str | None = None, file: str | None = None) -> str:
    query = {"hours": hours} | ({"topic": topic} if topic else {}) | (
        {"file": file} if file else {})
    return "/agenda?" + urlencode(query)


class Drawings:
    """The charts of the agenda page, one kept per view (hours, file, topic, concurrency
    given), each drawn from the minute its request fell in. A request of a later minute
    is answered from the kept chart while that was drawn from the same inputs (the same
    workflows and pauses: `Agenda.inputs`) at most `STALE` before, and the chart of its
    minute is drawn meanwhile in the background: 100,000 runs take half a second to
    draw, and 20 phases due every second several (bench/http_api.py). Any other request
    (a first one, changed inputs) draws its own."""

    STALE = timedelta(minutes=5)  # the agenda cache's slack, which its window slides by
    KEPT = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[Any, ...], tuple[tuple[Any, ...], datetime, AgendaChart]] = {}
        self._aside = Aside("agenda-chart")  # the chart of a later minute, drawn aside

    def get(self, got: Asked) -> AgendaChart:
        agenda, minute = got.agenda, got.start.replace(second=0, microsecond=0)
        view = (got.hours, got.file, got.topic, got.given)
        with self._lock:
            kept = self._kept.get(view)
        if (kept is not None and kept[0] == agenda.inputs
                and kept[1] <= minute < kept[1] + self.STALE):
            if kept[1] < minute:  # served as it is; the chart of this minute comes next
                self._draw_later(view, agenda, minute)
            return kept[2]
        return self._draw(view, agenda, minute)

    def _draw(self, view: tuple[Any, ...], agenda: Agenda, minute: datetime) -> AgendaChart:
        hours, file, topic, _ = view
        drawn = chart(agenda, agenda.shown(minute, hours, file=file, topic=topic), minute,
                      hours)
        with self._lock:
            kept = self._kept.get(view)
            # a drawing that finishes late never replaces a newer one, nor one of the same
            # minute unless the inputs changed since
            if (kept is None or kept[1] < minute
                    or (kept[1] == minute and kept[0] != agenda.inputs)):
                self._kept.pop(view, None)  # to the end: the least lately drawn go first
                self._kept[view] = (agenda.inputs, minute, drawn)
            while len(self._kept) > self.KEPT:
                self._kept.pop(next(iter(self._kept)))
        return drawn

    def _draw_later(self, view: tuple[Any, ...], agenda: Agenda, minute: datetime) -> None:
        def failed() -> None:  # no chart kept for it: the next request draws its own,
            with self._lock:  # and fails in the open if drawing does
                self._kept.pop(view, None)

        self._aside.run(view, lambda: self._draw(view, agenda, minute), failed)


def chart(agenda: Agenda, fires: Sequence[Planned], start: datetime, hours: int,
          max_bars: int = charts.MAX_BARS) -> AgendaChart:
    """The fires of (start, start + hours] with their children, and the backlogs."""
    origin = (start - EPOCH).total_seconds()
    seconds = hours * 3600.0
    plot_width = charts.timeline_width()
    scale = plot_width / seconds
    # each run with its topic as the walk knows it: 100,000 runs split no task name
    items = [(phase, topic, begin, run, tasks, own) for phase, topic, begin, run, tasks, own
             in agenda.walk(fires) if begin is not None and begin - origin <= seconds]
    paused = [f for f in fires if f.paused]
    names = sorted({item[1] for item in items} | {f.phase.topic for f in paused})
    shown = names[:charts.MAX_LANES]
    index = {name: i for i, name in enumerate(shown)}
    merge = _merge_width(len(items), len(shown), plot_width, max_bars)
    bars: list[Bar] = []
    # a lane's ticks, one per px at most: 20 phases due every second with no run time
    # known drew 1.7 million ticks, a page of 22 MB; with the number of runs they stand for
    ticks: dict[int, set[int]] = {}
    ticked: dict[int, int] = {}
    groups: dict[tuple[int, int], list[float]] = {}  # (lane, bucket) → x1, x2, runs, tasks
    hidden = unknown = 0
    for phase, topic, begin, run, tasks, own in items:
        lane = index.get(topic)
        if lane is None:
            hidden += 1
            continue
        x1 = max(0.0, (begin - origin) * scale)
        if run is None:
            unknown += 1
            ticks.setdefault(lane, set()).add(round(x1))
            ticked[lane] = ticked.get(lane, 0) + 1
            continue
        x2 = min(plot_width, max(x1, (begin + run - origin) * scale))
        if merge:
            group = groups.setdefault((lane, int(x1 // merge)), [x1, x2, 0, 0])
            group[0], group[1] = min(group[0], x1), max(group[1], x2)
            group[2] += 1
            group[3] += tasks
            continue
        when = EPOCH + timedelta(seconds=begin)
        title = (f"{phase.file_path}: {phase.task}\n{'fire' if own else 'child'}, "
                 f"{tasks} {'task' if tasks == 1 else 'tasks'}\nstarts {when:%H:%M:%S}, "
                 f"p50 {charts.duration(run)}, ends "
                 f"{when + timedelta(seconds=run):%H:%M:%S} (UTC)")
        bars.append(Bar(round(x1, 2), _bar_y(lane), round(max(x2 - x1, 1.0), 2),
                        charts.BAR_HEIGHT, "running" if own else "waiting", title,
                        charts.phase_href(phase.file_path, phase.task)))
    for (lane, _), (x1, x2, n, count) in sorted(groups.items()):
        first = start + timedelta(seconds=x1 / scale)
        bars.append(Bar(round(x1, 2), _bar_y(lane), round(max(x2 - x1, 1.0), 2),
                        charts.BAR_HEIGHT, "waiting",
                        f"{n:.0f} runs merged ({count:.0f} tasks) starting from "
                        f"{first:%H:%M:%S} UTC\n(a shorter window draws them apart)",
                        agenda_href(max(1, hours // 4), shown[lane]), merged=int(n)))
    for fire in paused:
        lane = index.get(fire.phase.topic)
        if lane is not None:
            x = max(0.0, fire.start - origin) * scale
            bars.append(Bar(round(x, 2), _bar_y(lane), 3.0, charts.BAR_HEIGHT, "warn",
                            f"{fire.phase.file_path}: {fire.phase.task}\nslot "
                            f"{fire.slot:%H:%M:%S} UTC: {fire.paused}",
                            charts.phase_href(fire.phase.file_path, fire.phase.task)))
    for warning in agenda.warnings:
        lane = index.get(warning.topic)
        if lane is not None and isinstance(warning, Backlog):
            x1 = min(plot_width, max(0.0, (warning.first_due - origin) * scale))
            x2 = min(plot_width, max(x1, (warning.clears - origin) * scale))
            if x1 < plot_width:
                bars.append(Bar(round(x1, 2), charts.TOP + lane * charts.LANE_HEIGHT + 1,
                                round(max(x2 - x1, 2.0), 2), BAND, "error", warning.text(),
                                agenda_href(hours, warning.topic)))
    lanes = []
    for i, name in enumerate(shown):
        y = charts.TOP + i * charts.LANE_HEIGHT
        lanes.append(Lane(name, y, agenda_href(hours, name),
                          "".join(f"M{x},{y + 3}v16" for x in sorted(ticks.get(i, ()))),
                          ticked.get(i, 0)))
    return AgendaChart(charts.WIDTH, charts.TOP + max(len(shown), 1) * charts.LANE_HEIGHT + 6,
                       charts.LANE_LEFT, charts.TOP, plot_width, lanes, bars,
                       charts.time_ticks(start, seconds, plot_width), len(items),
                       merge, len(names) - len(shown), hidden, unknown, len(paused))


def _bar_y(lane: int) -> float:
    return charts.TOP + lane * charts.LANE_HEIGHT + (charts.LANE_HEIGHT - charts.BAR_HEIGHT) / 2 + 2


def _merge_width(items: int, lanes: int, plot_width: int, max_bars: int) -> float:
    """0 while every run fits as a bar of its own; else the first power of two (px) at
    which one bar per slot of every row fits."""
    if items <= max_bars:
        return 0.0
    for k in range(charts.MERGE_STEPS):
        w = 2.0 ** k
        if lanes * (math.ceil(plot_width / w) + 1) <= max_bars:
            return w
    return 2.0 ** (charts.MERGE_STEPS - 1)


@dataclass(frozen=True)
class Asked:
    """An agenda request's window and filters, checked, and the fires they pick."""

    agenda: Agenda
    start: datetime
    hours: int
    file: str | None
    topic: str | None
    fires: Sequence[Planned]
    given: tuple[tuple[str, int], ...]  # ?concurrency=, sorted


def asked(store: Store, config: Config, query: dict[str, list[str]]) -> Asked:
    """?hours= (1 to 168, default 24), ?file=, ?topic=, ?concurrency=TOPIC=N (repeated),
    answered from the process's cached agenda (flowlord/agenda_cache.py)."""
    hours = params.integer(query, "hours", DEFAULT_HOURS)
    assert hours is not None
    if not 1 <= hours <= MAX_HOURS:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"hours must be from 1 to {MAX_HOURS}")
    try:
        given = parse_concurrency(v for v in query.get("concurrency", []) if v)
    except ValueError as e:
        raise BadRequest(HTTPStatus.BAD_REQUEST, str(e)) from None
    file, topic = params.one(query, "file"), params.one(query, "topic")
    now = datetime.now(UTC).replace(microsecond=0)
    found = cache_for(config).get(store, now, hours, given)
    return Asked(found, now, hours, file, topic,
                 found.shown(now, hours, file=file, topic=topic), tuple(sorted(given.items())))


def descendants(children: list[dict[str, object]]) -> int:
    """How many children, grandchildren … a fire's JSON holds."""
    count, stack = 0, list(children)
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node["children"])  # type: ignore[arg-type]
    return count
