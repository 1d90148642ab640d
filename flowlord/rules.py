"""A phase's rule (a URL query string) → typed values, with the status messages of
README.md, Status messages.

Parsing follows Go's `url.ParseQuery`, which flowlord uses (docs/compatibility.md,
Rules): pairs split on `&`, key and value at the first `=`, `+` is a space, a bad
`%` escape or a `;` makes the whole string invalid. Keys are case-sensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from urllib.parse import unquote_plus

from flowlord.cron import CronError, CronSchedule, parse_cron
from flowlord.durations import DurationError, parse_duration
from flowlord.model import Issue

KNOWN_KEYS = frozenset(
    {
        "cron", "offset", "job", "files", "require", "retry_delay", "no_alert",
        "for", "by", "meta", "meta-file", "catchup", "timeout",
        # the scheduling policy (README.md, Scheduling policy)
        "overlap", "max_active", "deadline", "jitter",
    }
)
# keys whose repeated values are all used; for the others the first value wins
_MULTI_KEYS = frozenset({"meta", "require"})
BY_STEPS = {
    "hour": "hour", "hourly": "hour", "day": "day", "daily": "day", "": "day",
    "week": "week", "weekly": "week", "month": "month", "monthly": "month",
}
CATCHUP = frozenset({"none", "last", "all"})
OVERLAP = frozenset({"allow", "skip", "queue", "replace"})
MAX_ACTIVE = 1_000_000
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class QueryError(ValueError):
    pass


def _unescape(s: str) -> str:
    if "%" not in s and "+" not in s:
        return s
    if _BAD_ESCAPE.search(s):
        raise QueryError(f"invalid escape in {s!r}")
    return unquote_plus(s)


def parse_query(text: str) -> tuple[list[tuple[str, str]], bool]:
    """(pairs, ok): the well-formed pairs, and whether the whole string was well-formed.

    Like Go, a malformed pair does not stop the others from being read, so a
    broken rule can still name the job that identifies its phase.
    """
    pairs: list[tuple[str, str]] = []
    ok = True
    for part in text.split("&"):
        if not part:
            continue
        if ";" in part:
            ok = False
            continue
        key, _, value = part.partition("=")
        try:
            pairs.append((_unescape(key), _unescape(value)))
        except QueryError:
            ok = False
    return pairs, ok


def decode_meta(text: str) -> dict[str, str]:
    """A query string (task meta, a rule) as a dict: the first value of a repeated key;
    encoded and raw forms both read."""
    meta: dict[str, str] = {}
    for key, value in parse_query(text)[0]:
        meta.setdefault(key, value)
    return meta


@dataclass(frozen=True)
class Rule:
    text: str
    cron: CronSchedule | None = None
    offset: timedelta = timedelta(0)
    job: str = ""
    files: str = ""
    require: str = ""
    retry_delay: timedelta | None = None
    no_alert: bool = False
    for_: timedelta = timedelta(0)
    by: str = "day"
    meta: tuple[tuple[str, tuple[str, ...]], ...] = ()
    meta_file: str = ""
    catchup: str | None = None
    timeout: timedelta | None = None
    # while an earlier task of the phase is unfinished, a new slot: allow, skip, queue,
    # replace (flowlord/overlap.py)
    overlap: str = "allow"
    max_active: int | None = None  # tasks of the phase running at once, at most
    deadline: timedelta | None = None  # a slot not complete by slot + deadline is late
    jitter: timedelta | None = None  # the phase starts this much after its slot, at most
    has_cron: bool = False  # a cron= was written, valid or not
    issues: tuple[Issue, ...] = ()


def parse_meta(value: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`key:a,b|val:1,2` → ((key, (a, b)), (val, (1, 2))); every key needs as many values."""
    entries: list[tuple[str, tuple[str, ...]]] = []
    for entry in value.split("|"):
        if not entry:
            continue
        key, colon, values = entry.partition(":")
        if not colon or not key.strip():
            raise ValueError(f"entry without key: {entry}")
        entries.append((key.strip(), tuple(values.split(",")) if values else ()))
    lengths = {len(v) for _, v in entries}
    if len(lengths) > 1:
        raise ValueError("inconsistent lengths")
    return tuple(entries)


def _duration(key: str, value: str, issues: list[Issue], *, positive: bool = False,
              non_negative: bool = False) -> timedelta | None:
    try:
        d = parse_duration(value)
    except DurationError:
        issues.append(Issue("error", f"invalid {key}: {value}"))
        return None
    if (positive and d <= timedelta(0)) or (non_negative and d < timedelta(0)):
        issues.append(Issue("error", f"invalid {key}: {value}"))
        return None
    return d


def _files_pattern_ok(pattern: str) -> bool:
    # Go's filepath.Match rejects unbalanced character classes; an empty glob matches nothing.
    depth = 0
    for ch in pattern:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    return bool(pattern.strip()) and depth == 0


@lru_cache(maxsize=8192)
def parse_rule(text: str) -> Rule:
    """Never raises: every problem becomes an Issue on the returned Rule."""
    pairs, ok = parse_query(text)
    issues: list[Issue] = []
    if not ok:
        issues.append(Issue("error", f"invalid rule format: {text}"))
    first: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in KNOWN_KEYS:
            issues.append(Issue("warning", f"warning: ignored rule: {key}={value}"))
        elif key in _MULTI_KEYS:
            multi.setdefault(key, []).append(value)
        elif key in first:
            issues.append(Issue("warning", f"warning: ignored rule: {key}={value}"))
        else:
            first[key] = value
    fields: dict[str, object] = {"text": text, "job": first.get("job", "")}

    if "cron" in first:
        fields["has_cron"] = True
        try:
            fields["cron"] = parse_cron(first["cron"])
        except CronError as e:
            issues.append(Issue("error", f"no valid rule found: cron={first['cron']} ({e})"))
    if "offset" in first:
        fields["offset"] = _duration("offset", first["offset"], issues) or timedelta(0)
    if "retry_delay" in first:
        fields["retry_delay"] = _duration(
            "retry_delay", first["retry_delay"], issues, non_negative=True)
    if "for" in first:
        fields["for_"] = _duration("for", first["for"], issues) or timedelta(0)
    if "timeout" in first:
        fields["timeout"] = _duration("timeout", first["timeout"], issues, positive=True)
    if "by" in first:
        step = BY_STEPS.get(first["by"].strip().lower())
        if step is None:
            issues.append(Issue("error", f"invalid by: {first['by']}"))
        else:
            fields["by"] = step
    if "catchup" in first:
        if first["catchup"] in CATCHUP:
            fields["catchup"] = first["catchup"]
        else:
            issues.append(Issue("error", f"invalid catchup: {first['catchup']}"))
    if "overlap" in first:
        if first["overlap"] in OVERLAP:
            fields["overlap"] = first["overlap"]
        else:
            issues.append(Issue("error", f"invalid overlap: {first['overlap']}"))
    if "max_active" in first:
        value = first["max_active"]
        if (value.isascii() and value.isdigit() and len(value) <= 7  # int() of 5,000
                and 1 <= int(value) <= MAX_ACTIVE):                  # digits raises
            fields["max_active"] = int(value)
        else:
            issues.append(Issue("error", f"invalid max_active: {value}"))
    if "deadline" in first:
        fields["deadline"] = _duration("deadline", first["deadline"], issues, positive=True)
    if "jitter" in first:
        fields["jitter"] = _duration("jitter", first["jitter"], issues, positive=True)
    if "files" in first:
        fields["files"] = first["files"]
        if not _files_pattern_ok(first["files"]):
            issues.append(Issue("error", f"invalid files: {first['files']}"))
    if "meta" in multi:
        value = "|".join(multi["meta"])
        try:
            fields["meta"] = parse_meta(value)
        except ValueError as e:
            issues.append(Issue("error", f"invalid meta: {value} ({e})"))
    if "meta-file" in first:
        fields["meta_file"] = first["meta-file"]
        if not first["meta-file"].strip():
            issues.append(Issue("error", "invalid meta-file: "))
    if "meta" in multi and "meta-file" in first:
        issues.append(Issue("error", "invalid rule: meta and meta-file together"))
    if "require" in multi:
        fields["require"] = ",".join(multi["require"])
    # flowlord: a bare `no_alert` (no value) does not turn alerts off
    fields["no_alert"] = bool(first.get("no_alert", ""))
    fields["issues"] = tuple(issues)
    return Rule(**fields)  # type: ignore[arg-type]
