"""flowlord's template tokens, with their case rules (docs/compatibility.md, Templates).

Two passes: the time pass replaces date tokens from a time, the meta pass
replaces `{meta:name}` tokens from a lookup. Where both run, time runs first,
so meta values are never time-expanded.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import unquote

_SLUGS = (("{SLUG}", "{HOUR_SLUG}"), ("{HOUR_SLUG}", "{YYYY}/{MM}/{DD}/{HH}"),
          ("{DAY_SLUG}", "{YYYY}/{MM}/{DD}"), ("{MONTH_SLUG}", "{YYYY}/{MM}"))
_YEAR = re.compile(r"\{[Yy]{4}\}")
_SHORT_YEAR = re.compile(r"\{[Yy]{2}\}")
_MONTH = re.compile(r"\{[Mm]{2}\}")  # {mm} is the month, {min} the minute
_DAY = re.compile(r"\{[Dd]{2}\}")
_HOUR = re.compile(r"\{[Hh]{2}\}")
_HOST = re.compile(r"\{host\}", re.IGNORECASE)
_POD = re.compile(r"\{pod\}", re.IGNORECASE)
_META = re.compile(r"\{meta:([0-9A-Za-z_]+)\}")


def hostname() -> str:
    return socket.gethostname() or "hostname"


def pod_name(host: str) -> str:
    """The last two `-`-separated parts of a Kubernetes pod's hostname."""
    parts = host.split("-")
    return "-".join(parts[-2:]) if len(parts) > 1 else host


def render_time(template: str, t: datetime | None) -> str:
    """The time pass. `t` None (no time known) leaves every token as it is."""
    if t is None or "{" not in template:
        return template
    fmt, literals, kinds = _rendering(template)
    if fmt is not None:  # only the tokens of _time_values: one str.format_map
        return fmt.format_map(_time_values(t))
    if not kinds:
        return template
    values = _time_values(t)
    parts = [literals[0]]
    for kind, literal in zip(kinds, literals[1:], strict=True):
        parts.append(values[kind] if kind in values else _OTHER_VALUES[kind](t))
        parts.append(literal)
    return "".join(parts)


# Every time token, found in one pass. flowlord replaces them one kind after another;
# as no value contains a brace, no replacement can form a new token, and one pass
# gives the same text. Year, month, day and hour take any case, host and pod too.
_TIME_TOKEN = re.compile(
    r"\{(TS|[Yy]{4}|[Yy]{2}|[Mm]{2}|[Dd]{2}|[Hh]{2}|min|(?i:host|pod)|uuid)\}")
_OTHER_VALUES: dict[str, Callable[[datetime], str]] = {  # rare, or new at each use
    "ts": lambda t: t.strftime("%Y%m%dT%H%M%S"),
    "host": lambda t: hostname(),
    "pod": lambda t: pod_name(hostname()),
    "uuid": lambda t: uuid.uuid4().hex[:8],
}
_last_values: tuple[datetime | None, dict[str, str]] = (None, {})


def _time_values(t: datetime) -> dict[str, str]:
    """The value of each time token at `t`. The siblings of one parent render with the
    same time object, so the last one's values are kept (compared by identity: equal
    datetimes in different zones give different values)."""
    global _last_values
    last, values = _last_values
    if last is not t:
        year = str(t.year)
        values = {"yyyy": year, "yy": year[2:], "mm": f"{t.month:02d}",
                  "dd": f"{t.day:02d}", "hh": f"{t.hour:02d}", "min": f"{t.minute:02d}"}
        _last_values = (t, values)
    return values


@lru_cache(maxsize=4096)
def _rendering(template: str) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """How render_time renders the template: (format text, literals, kinds). The format
    text is over the names of _time_values, or None when the template has another
    token (ts, host, pod, uuid) or none: then the literals around its tokens and their
    kinds (`_compile`). Worked out once per template, as a burst of results renders
    the same children's templates thousands of times. A burst of fires renders 10,000
    templates once each: the usual one (lower-case date tokens, no other brace, no
    `#`) is known by one match, and is its own format text."""
    if _PLAIN.fullmatch(template):
        return template, (), ()
    literals, kinds = _compile(template)
    if not kinds or not set(kinds) <= _SIMPLE_KINDS:
        return None, literals, kinds
    fmt = "".join(_brace_escaped(literal) + "{" + kind + "}"
                  for literal, kind in zip(literals, kinds, strict=False))
    return fmt + _brace_escaped(literals[-1]), literals, kinds


_PLAIN = re.compile(r"[^{}#]*(?:\{(?:yyyy|yy|mm|dd|hh|min)\}[^{}#]*)*")


def _compile(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The template as literal text around its time tokens: (literals, token kinds),
    with one literal more than kinds."""
    comment = ""
    cut = template.find("#")
    if cut > 0:  # everything from a '#' after the start is kept verbatim
        template, comment = template[:cut], template[cut:]
    if "SLUG}" in template:
        for token, expansion in _SLUGS:
            template = template.replace(token, expansion)
    literals, kinds = [], []
    start = 0
    uuid_seen = False
    for m in _TIME_TOKEN.finditer(template):
        kind = m.group(1).lower()
        if kind == "uuid":
            if uuid_seen:  # flowlord replaces the first {uuid} only
                continue
            uuid_seen = True
        literals.append(template[start:m.start()])
        kinds.append(kind)
        start = m.end()
    literals.append(template[start:] + comment)
    return tuple(literals), tuple(kinds)


_SIMPLE_KINDS = frozenset(("yyyy", "yy", "mm", "dd", "hh", "min"))  # tokens _time_values has


def _brace_escaped(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def render_meta(text: str, get: Callable[[str], str]) -> tuple[str, list[str]]:
    """The meta pass: `{meta:name}` → get(name); also the names used, in token order."""
    names = _META.findall(text)
    for name in dict.fromkeys(names):
        text = text.replace("{meta:" + name + "}", get(name))
    return text, names


# A template of lower-case date tokens and `{meta:name}` tokens only (no other brace, no
# `#`) renders as one format text: each `{meta:name}` becomes the field `meta name`.
_ONE_PASS = re.compile(
    r"[^{}#]*(?:\{(?:yyyy|yy|mm|dd|hh|min|meta:[0-9A-Za-z_]+)\}[^{}#]*)*")
_UNRENDERED = {kind: "{" + kind + "}" for kind in _SIMPLE_KINDS}  # no time: tokens stay


def one_pass(template: str) -> str | None:
    """The template as a format text over `rendering_values`, or None when it has
    another token or a `#` (render_time and render_meta render it then). Both passes
    in one: time values hold no brace, so the time pass can make no meta token."""
    if not _ONE_PASS.fullmatch(template):
        return None
    return template.replace("{meta:", "{meta ")


class _Values(dict[str, str]):
    """rendering_values: a meta name the task does not have renders as ''."""

    def __missing__(self, key: str) -> str:
        return ""


def rendering_values(t: datetime | None, meta: dict[str, str]) -> dict[str, str] | None:
    """What a one_pass text formats with: the time tokens' values at `t` (None: each
    token left as it is, as render_time leaves it) and meta's values. None when a meta
    value holds a brace: render_meta replaces one name after another, so a value holding
    `{meta:y}` is itself replaced when y's turn comes, where a format puts it as it is."""
    values = _Values(_time_values(t) if t is not None else _UNRENDERED)
    for name, value in meta.items():
        if "{" in value:
            return None
        values["meta " + name] = value
    return values


def meta_names(text: str) -> list[str]:
    return _META.findall(text)


def cron_hour(t: datetime) -> str:
    """The `cron=` meta value: the task's data time as `YYYY-MM-DDTHH`."""
    values = _time_values(t)
    return f"{values['yyyy']}-{values['mm']}-{values['dd']}T{values['hh']}"


# --- the time of a task (docs/compatibility.md, Task time) ---------------------------------

# re.ASCII: Go's \d is [0-9], not every Unicode digit
_INFO_SECOND = re.compile(
    r"(?:day|date|time|timestamp)[=:](\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)", re.ASCII)
_INFO_HOUR = re.compile(r"(?:date|hour|hour_utc)[=:](\d{4}-\d{2}-\d{2}T\d{2})", re.ASCII)
_INFO_DAY = re.compile(r"(?:day|date)[=:](\d{4}-\d{2}-\d{2})", re.ASCII)
_CRON_HOUR = re.compile(r"\d{4}-\d{2}-\d{2}T\d{1,2}", re.ASCII)  # Go's "2006-01-02T15"
_PATH_RULES = (  # (pattern, strptime format, file name only)
    (re.compile(r"\d{8}T\d{6}", re.ASCII), "%Y%m%dT%H%M%S", True),
    (re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}", re.ASCII), "%Y/%m/%d/%H", False),
    (re.compile(r"\d{4}/\d{2}/\d{2}", re.ASCII), "%Y/%m/%d", False),
    (re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII), "%Y-%m-%d", False),
    (re.compile(r"\d{4}/\d{2}", re.ASCII), "%Y/%m", False),
)
# Go's url.Parse, as far as it decides whether an info parses and what its path is
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URL_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_PORT = re.compile(r"(?::[0-9]*)?")
_URL_USERINFO = re.compile(r"[-A-Za-z0-9._:~!$&'()*+,;=%@]*")
# in a host: these ASCII characters, any other character, %-escapes of non-ASCII bytes, %25
_URL_HOST = re.compile(
    r"(?:[-A-Za-z0-9!$&'()*+,;=:\[\]<>\"_.~]|[^\x00-\x7f]|%25|%[89A-Fa-f][0-9A-Fa-f])*")


def _parse(text: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(text, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def task_time(meta: dict[str, str], info: str) -> datetime | None:
    """A task's data time: meta `cron=` (YYYY-MM-DDTHH), else from its info."""
    cron = meta.get("cron", "")
    t = _cron_time(cron) if _CRON_HOUR.fullmatch(cron) else None
    return t or info_time(info)


def _cron_time(text: str) -> datetime | None:
    """`YYYY-MM-DDTH[H]` without strptime, which costs more than the rest of a child."""
    try:
        return datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:]),
                        tzinfo=UTC)
    except ValueError:  # month 13, hour 24, …
        return None


def info_time(info: str) -> datetime | None:
    """A time written in the info (`day=`, `date=`, `hour=` …), else from its path;
    an info Go's url.Parse refuses has no time."""
    path = _url_path(info)
    if path is None:
        return None
    for pattern, fmt in ((_INFO_SECOND, "%Y-%m-%dT%H:%M:%SZ"), (_INFO_HOUR, "%Y-%m-%dT%H"),
                         (_INFO_DAY, "%Y-%m-%d")):
        m = pattern.search(info)
        if m and (t := _parse(m.group(1), fmt)):
            return t
    return path_time(path)


def _url_path(url: str) -> str | None:
    """Go's url.Parse(url).Path (unescaped), or None where url.Parse fails."""
    url, _, fragment = url.partition("#")
    if _URL_CONTROL.search(url) or _URL_BAD_ESCAPE.search(fragment) or url.startswith(":"):
        return None  # a control character, a bad escape, "missing protocol scheme"
    scheme = _URL_SCHEME.match(url)
    rest = (url[scheme.end():] if scheme else url).partition("?")[0]
    if not rest.startswith("/"):
        if scheme:
            return ""  # opaque (`mailto:x`): no path
        if ":" in rest.partition("/")[0]:
            return None  # "first path segment in URL cannot contain colon"
    if rest.startswith("//") and (scheme or not rest.startswith("///")):
        authority, slash, path = rest[2:].partition("/")
        if not _authority_ok(authority):
            return None
        rest = slash + path
    if _URL_BAD_ESCAPE.search(rest):
        return None
    return unquote(rest)


def _authority_ok(authority: str) -> bool:
    userinfo, at, host = authority.rpartition("@")
    if at and (not _URL_USERINFO.fullmatch(userinfo) or _URL_BAD_ESCAPE.search(userinfo)):
        return False
    if host.startswith("["):
        close = host.rfind("]")
        if close < 0:
            return False  # "missing ']' in host"
        port = host[close + 1:]
    else:
        port = host[host.rfind(":"):] if ":" in host else ""
    return bool(_URL_PORT.fullmatch(port) and _URL_HOST.fullmatch(host))


def path_time(path: str) -> datetime | None:
    """The time in a path: the first rule that matches decides, valid or not."""
    for pattern, fmt, name_only in _PATH_RULES:
        m = pattern.search(path.rsplit("/", 1)[-1] if name_only else path)
        if m:
            return _parse(m.group(0), fmt)
    return None
