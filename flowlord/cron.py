"""Cron rules read exactly like flowlord (robfig/cron v3, optional leading seconds).

Grammar, robfig's day-of-month / day-of-week rule and the daylight-saving policy
are decided here. Each rule comes down to a canonical 6-field text (seconds first,
values and ranges only; croniter's reading of it is robfig's meaning), and the
calendar on naive wall-clock datetimes that finds the first time it matches is
`_next_wall`, here too: croniter did that before, but importing it (with
dateutil) was a tenth of a restart of 100,000 phases (bench/daemon.py), and a
search of our own needs no lock around a shared cursor.

DST policy, in the schedule's zone:

* hour field made of explicit hours only (values, ranges, lists): each matching
  wall-clock time fires once; a time inside a skipped hour fires at the instant
  the gap ends, a repeated time fires at its first occurrence;
* hour field with ``*``, ``?`` or a step (``/``): the rule follows real elapsed
  time, so a repeated hour fires twice and a skipped hour not at all.

Both policies assume a zone's transitions are further apart than their size,
which holds for every IANA zone since 1900.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo

from flowlord.clock import local_zone
from flowlord.durations import DurationError, parse_duration

__all__ = ["CronError", "CronSchedule", "fire_times", "next_fire", "parse_cron", "schedule_zone"]


class CronError(ValueError):
    """A cron rule flowlord would reject, or one that can never fire."""


_FIELDS = ("second", "minute", "hour", "day of month", "month", "day of week")
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: tuple[dict[str, int], ...] = (
    {}, {}, {}, {},
    {name: i + 1 for i, name in enumerate(_MONTHS)},
    {name: i for i, name in enumerate(_WEEKDAYS)},
)
# robfig matches descriptors case-sensitively, so these keys are exact.
_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
_TICK = timedelta(microseconds=1)
_MAX_STEPS = 64  # wall-clock candidates per call; real zones need at most three


@dataclass(frozen=True)
class CronSchedule:
    """A parsed rule. Value tuples are sorted; empty for ``@every``."""

    expr: str
    zone: str | None
    every: timedelta | None
    seconds: tuple[int, ...] = ()
    minutes: tuple[int, ...] = ()
    hours: tuple[int, ...] = ()
    days: tuple[int, ...] = ()
    months: tuple[int, ...] = ()
    weekdays: tuple[int, ...] = ()
    dom_star: bool = False  # robfig's star bit: the field does not restrict the day
    dow_star: bool = False
    fixed_hour: bool = False  # see the module docstring for what this changes
    canonical: str | None = None  # 6-field, seconds-first text for the calendar (_calendar)


class _Field(NamedTuple):
    values: tuple[int, ...]
    star: bool  # robfig's star bit: `*` or `?`, unstepped
    periodic: bool  # uses `*`, `?` or a step
    text: str  # canonical form (_calendar)


def _number(text: str, field: int, names: bool = True) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    value = _NAMES[field].get(text.lower()) if names else None
    if value is None:
        raise CronError(f"{_FIELDS[field]}: invalid value {text!r}")
    return value


@functools.lru_cache(maxsize=2048)  # field texts repeat across phases far more than rules do
def _field(text: str, field: int) -> _Field:
    low, high = _BOUNDS[field]
    if text in ("*", "?"):
        return _Field(tuple(range(low, high + 1)), True, True, "*")
    values: set[int] = set()
    star = periodic = False
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = _number(step_text, field, names=False) if slash else 1
        if step == 0:
            raise CronError(f"{_FIELDS[field]}: step must be positive in {part!r}")
        periodic = periodic or bool(slash)
        if span in ("*", "?"):
            start, end = low, high
            star = star or step == 1  # robfig: */n with n > 1 clears the star bit
            periodic = True
        else:
            first, dash, last = span.partition("-")
            start = _number(first, field)
            end = _number(last, field) if dash else (high if slash else start)
            if start < low or end > high:
                raise CronError(f"{_FIELDS[field]}: {part!r} out of range {low}-{high}")
            if start > end:
                raise CronError(f"{_FIELDS[field]}: range {part!r} runs backwards")
        values.update(range(start, end + 1, step))
    ordered = tuple(sorted(values))
    return _Field(ordered, star, periodic, _compress(ordered, field))


def _compress(values: tuple[int, ...], field: int) -> str:
    if len(values) == _BOUNDS[field][1] - _BOUNDS[field][0] + 1:
        return "*"
    runs: list[str] = []
    start = prev = values[0]
    for value in (*values[1:], -2):
        if value != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = value
        prev = value
    return ",".join(runs)


def _parse_every(text: str) -> timedelta:
    """A Go duration (plus ``d`` for days), as robfig's ``@every`` uses it.

    The interval is rounded like robfig's ``Every()``: sub-second parts are
    dropped and anything shorter than a second becomes one second.
    """
    try:
        interval = parse_duration(text)
    except DurationError as exc:
        raise CronError(str(exc)) from exc
    if interval <= timedelta(0):
        raise CronError(f"@every needs a positive duration, got {text!r}")
    return timedelta(seconds=max(int(interval.total_seconds()), 1))


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> tzinfo:
    if name == "Local":  # robfig/cron's name for the machine's zone
        return local_zone()
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError) as exc:
        raise CronError(f"unknown time zone: {name}") from exc


@functools.lru_cache(maxsize=4096)
def parse_cron(expr: str) -> CronSchedule:
    """Parse a flowlord cron rule without evaluating it. Raises CronError."""
    if not isinstance(expr, str):
        raise CronError("cron expression must be a string")
    spec, zone = expr.strip(), None
    if not spec:
        raise CronError("empty cron expression")
    if spec.startswith(("TZ=", "CRON_TZ=")):
        head, *rest = spec.split(None, 1)
        zone = head.partition("=")[2]
        if not rest:
            raise CronError(f"no schedule after {head}")
        _zone(zone)
        spec = rest[0]
    if spec.startswith("@"):
        words = spec.split()
        if words[0] == "@every":
            if len(words) != 2:
                raise CronError("@every takes exactly one duration")
            return CronSchedule(expr, zone, _parse_every(words[1]))
        if spec not in _DESCRIPTORS:
            raise CronError(f"unrecognized descriptor: {spec}")
        spec = _DESCRIPTORS[spec]
    texts = spec.split()
    if len(texts) == 5:
        texts.insert(0, "0")
    elif len(texts) != 6:
        raise CronError(f"expected 5 or 6 fields, found {len(texts)}")
    sec, minute, hour, dom, month, dow = (_field(text, i) for i, text in enumerate(texts))
    days, day_text = dom.values, dom.text
    longest = 31 if len(month.values) == 12 else max(_MAX_DAYS[m] for m in month.values)
    if days[-1] > longest:
        # These days never come; dropping them keeps the calendar from searching years.
        days = tuple(d for d in days if d <= longest)
        day_text = _compress(days, 3) if days else ""
    if dom.star or dow.star:  # robfig: the day must match both fields
        if not days:
            raise CronError(f"day {dom.values[0]} never occurs in the allowed months")
        dom_text = "*" if dom.star else day_text
        dow_text = "*" if dow.star else dow.text
    elif not days:  # either field may match, but the day-of-month side never can
        dom_text, dow_text = "*", dow.text
    elif len(days) == 31 or len(dow.values) == 7:  # one side alone matches every day
        dom_text = dow_text = "*"
    else:  # a literal `*` reads as "unrestricted" (_calendar): both must stay lists
        dom_text, dow_text = day_text, dow.text
    canonical = f"{sec.text} {minute.text} {hour.text} {dom_text} {month.text} {dow_text}"
    return CronSchedule(expr, zone, None, sec.values, minute.values, hour.values, dom.values,
                        month.values, dow.values, dom.star, dow.star, not hour.periodic, canonical)


def schedule_zone(expr: str | CronSchedule, default: tzinfo) -> tzinfo:
    """The zone a rule runs in: its TZ=/CRON_TZ= prefix, else ``default``."""
    sched = expr if isinstance(expr, CronSchedule) else parse_cron(expr)
    return _zone(sched.zone) if sched.zone is not None else default


class _Calendar(NamedTuple):
    """A canonical text's values, for `_next_wall`: sorted, and as sets."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    second_set: frozenset[int]
    minute_set: frozenset[int]
    hour_set: frozenset[int]
    month_set: frozenset[int]
    days: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    either: bool  # both day fields restricted: a day matches either (else it must match both)


def _values(text: str, low: int, high: int) -> tuple[int, ...]:
    if text == "*":
        return tuple(range(low, high + 1))
    found: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return tuple(sorted(found))


@functools.lru_cache(maxsize=1024)
def _calendar(canonical: str) -> _Calendar:
    """The canonical text read as croniter reads it: `*` is every value, and a day must
    match both day fields unless neither is `*` (then either will do); `parse_cron`
    writes the text so that this is robfig's rule."""
    sec, minute, hour, dom, month, dow = canonical.split()
    seconds, minutes = _values(sec, 0, 59), _values(minute, 0, 59)
    hours, months = _values(hour, 0, 23), _values(month, 1, 12)
    return _Calendar(seconds, minutes, hours, months, frozenset(seconds), frozenset(minutes),
                     frozenset(hours), frozenset(months), frozenset(_values(dom, 1, 31)),
                     frozenset(_values(dow, 0, 6)), dom != "*" and dow != "*")


_DAY, _HOUR, _MINUTE = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
_MAX_YEARS = 400  # the Gregorian calendar repeats: a rule that can match does within this


def _next_wall(cal: _Calendar, wall: datetime) -> datetime:
    """First matching naive wall-clock time strictly after ``wall``: each field in turn
    from the month down, a field that does not match moving to its next value (and
    the smaller fields to their first). Past year 9999 datetime raises, which
    `next_fire` turns into a CronError."""
    t = wall.replace(microsecond=0) + _SECOND
    last_year = t.year + _MAX_YEARS
    while t.year <= last_year:
        if t.month not in cal.month_set:
            i = bisect_right(cal.months, t.month)
            t = (datetime(t.year, cal.months[i], 1) if i < len(cal.months)
                 else datetime(t.year + 1, cal.months[0], 1))
        elif not ((t.day in cal.days or t.isoweekday() % 7 in cal.weekdays) if cal.either
                  else (t.day in cal.days and t.isoweekday() % 7 in cal.weekdays)):
            t = datetime(t.year, t.month, t.day) + _DAY
        elif t.hour not in cal.hour_set:
            i = bisect_right(cal.hours, t.hour)
            t = (t.replace(hour=cal.hours[i], minute=0, second=0) if i < len(cal.hours)
                 else datetime(t.year, t.month, t.day) + _DAY)
        elif t.minute not in cal.minute_set:
            i = bisect_right(cal.minutes, t.minute)
            t = (t.replace(minute=cal.minutes[i], second=0) if i < len(cal.minutes)
                 else t.replace(minute=0, second=0) + _HOUR)
        elif t.second not in cal.second_set:
            i = bisect_right(cal.seconds, t.second)
            t = (t.replace(second=cal.seconds[i]) if i < len(cal.seconds)
                 else t.replace(second=0) + _MINUTE)
        else:
            return t
    raise CronError("no fire time found")


def _offset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("time zone gives no UTC offset")
    return offset


def _local(utc: datetime, tz: tzinfo) -> datetime:
    return tz.fromutc(utc.replace(tzinfo=tz))


def _resolve(wall: datetime, tz: tzinfo) -> tuple[int, datetime, datetime]:
    """Classify a wall time: 0 normal, 1 repeated, -1 skipped; plus its fold 0/1 instants.

    For a skipped time, fold 1 lands before the gap and fold 0 after it (PEP 495).
    """
    first = _offset(wall.replace(tzinfo=tz, fold=0))
    second = _offset(wall.replace(tzinfo=tz, fold=1))
    kind = 0 if first == second else (1 if first > second else -1)
    return kind, wall - first, wall - second


def _transition(low: datetime, high: datetime, tz: tzinfo) -> datetime:
    """The UTC instant in (low, high] where the offset changes; transitions are whole seconds."""
    before = _offset(_local(low, tz))
    low = low.replace(microsecond=0)
    high = high if not high.microsecond else high.replace(microsecond=0) + _SECOND
    while high - low > _SECOND:
        middle = low + (high - low) // _SECOND // 2 * _SECOND
        if _offset(_local(middle, tz)) == before:
            low = middle
        else:
            high = middle
    return high


def _next_fixed(engine: _Calendar, after: datetime, tz: tzinfo) -> datetime:
    local = _local(after, tz)
    wall = local.replace(tzinfo=None, fold=0)
    if local.fold:  # second pass of a repeated hour: its wall times already fired
        _, early, late = _resolve(wall, tz)
        start = _transition(after - (late - early), after, tz)
        wall = _local(start, tz).replace(tzinfo=None, fold=0) + (late - early) - _TICK
    for _ in range(_MAX_STEPS):
        wall = _next_wall(engine, wall)
        kind, early, late = _resolve(wall, tz)
        instant = _transition(late, early, tz) if kind < 0 else early
        if instant > after:
            return instant
    raise CronError("no fire time found")


def _next_elapsed(engine: _Calendar, after: datetime, tz: tzinfo) -> datetime:
    local = _local(after, tz)
    wall = local.replace(tzinfo=None, fold=0)
    kind, early, late = _resolve(wall, tz)
    if kind > 0 and not local.fold:
        # First pass of a repeated hour: the clock will jump back, so wall times
        # before `after` come round again before anything past the repeat.
        size = late - early
        repeat_start = _local(_transition(after, after + size, tz), tz).replace(tzinfo=None, fold=0)
        candidate = _next_wall(engine, wall)
        if candidate < repeat_start + size:
            return _resolve(candidate, tz)[1]
        again = _next_wall(engine, repeat_start - _TICK)
        if again < repeat_start + size:
            return _resolve(again, tz)[2]
    for _ in range(_MAX_STEPS):
        wall = _next_wall(engine, wall)
        kind, early, late = _resolve(wall, tz)
        if kind < 0:  # skipped wall times never happen; resume at the end of the gap
            wall = _local(_transition(late, early, tz), tz).replace(tzinfo=None) - _TICK
            continue
        for instant in (early, late):
            if instant > after:
                return instant
    raise CronError("no fire time found")


@functools.lru_cache(maxsize=8192)  # phases sharing a rule usually share `after` too
def _next_instant(canonical: str, fixed_hour: bool, tz: tzinfo, after: datetime) -> datetime:
    policy = _next_fixed if fixed_hour else _next_elapsed
    return policy(_calendar(canonical), after, tz)


def next_fire(expr: str | CronSchedule, after: datetime, tz: tzinfo) -> datetime:
    """The first fire time strictly after ``after`` (aware), in the schedule's zone.

    ``tz`` is used unless the rule has its own TZ=/CRON_TZ= zone. ``@every``
    rules fire at whole multiples of the interval since 1970-01-01T00:00:00Z,
    so their fire times do not depend on when the daemon started.
    """
    sched = expr if isinstance(expr, CronSchedule) else parse_cron(expr)
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    zone = schedule_zone(sched, tz)
    utc = (after - _offset(after)).replace(tzinfo=None)
    try:
        if sched.every is not None:
            step = sched.every // _TICK
            instant = _EPOCH + ((utc - _EPOCH) // _TICK // step + 1) * step * _TICK
        else:
            instant = _next_instant(sched.canonical or "", sched.fixed_hour, zone, utc)
        return instant.replace(tzinfo=UTC).astimezone(zone)
    except CronError:
        raise
    except (OverflowError, ValueError) as exc:  # past year 9999
        raise CronError(f"no fire time after {after.isoformat()}: {exc}") from exc


def fire_times(expr: str | CronSchedule, after: datetime, tz: tzinfo, n: int) -> list[datetime]:
    """The next ``n`` fire times after ``after``, each strictly after the previous."""
    sched = expr if isinstance(expr, CronSchedule) else parse_cron(expr)
    times: list[datetime] = []
    for _ in range(n):
        after = next_fire(sched, after, tz)
        times.append(after)
    return times
