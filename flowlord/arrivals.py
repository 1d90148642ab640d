"""Files that arrive for `files=` phases (flowlord-reference §3.4, §5.9).

A path (seen by the daemon's own watch, or reported by `flowlord notify`) is
matched against every valid `files=` pattern with Go's `filepath.Match` rules
(`*` and `?` stop at `/`, classes, `\\` escapes, the whole path must match); each
match builds one task: the time from the path, meta = the rule's keys plus
`file=`, `filename=` and `workflow=`. The file is recorded in `file_messages`
with its tasks, in one transaction.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.events import FileSystemEventHandler as _Handler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from flowlord.model import NewTask, Phase, Task
from flowlord.rules import parse_query, parse_rule
from flowlord.store import Store, utc_now
from flowlord.tasks import Context, encode_meta, rfc3339
from flowlord.templates import path_time, render_meta, render_time

_GLOB_CHARS = re.compile(r"[*?\[\\]")
MOVED_IN_AFTER = 0.5  # seconds: a created file not written or closed by then was moved in


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """Go's filepath.Match as a regex; None for a malformed pattern (it matches nothing)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 == len(pattern):
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "") else i + 1)
            if end < 0:
                return None
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            if not body:
                return None
            chars = "".join("\\" + ch if ch in "\\]" else ch for ch in body)
            out.append(f"[^/{chars}]" if negate else f"[{chars}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matches(pattern: str, path: str) -> bool:
    regex = _glob_regex(pattern)
    return bool(regex and regex.match(path))


def watch_root(pattern: str) -> tuple[str, bool] | None:
    """The local directory to watch for a pattern, and whether below it recursively;
    None for a pattern that is not an absolute local path (gs://…, relative)."""
    if not pattern.startswith("/"):
        return None
    first = _GLOB_CHARS.search(pattern)
    if first is None:  # one fixed file
        return os.path.dirname(pattern) or "/", False
    directory = pattern[:first.start()].rsplit("/", 1)[0] or "/"
    return directory, "/" in pattern[first.start():]


def file_tasks(phase: Phase, path: str, ctx: Context) -> list[NewTask]:
    """The task a `files=` phase builds for an arrived file (none when it does not match)."""
    rule = parse_rule(phase.rule)
    if not rule.files or not matches(rule.files, path):
        return []
    meta: dict[str, str] = {}
    for key, value in parse_query(phase.rule)[0]:
        meta.setdefault(key, value)
    meta.update(file=path, filename=path.rsplit("/", 1)[-1], workflow=phase.file_path)
    info, _ = render_meta(render_time(phase.template, path_time(path)), _getter(meta))
    task = Task(type=phase.topic, job=phase.job, info=info,
                meta=encode_meta(sorted(meta.items())), id=str(uuid.uuid4()),
                created=rfc3339(ctx.created))
    return [NewTask(task, phase.file_path, phase.task)]


def _getter(meta: dict[str, str]) -> Callable[[str], str]:
    return lambda name: meta.get(name, "")


def record_arrival(store: Store, phases: Sequence[Phase], path: str, source: str,
                   ctx: Context) -> list[NewTask]:
    """The file message and the tasks of every matching phase; call inside write_txn."""
    tasks = [t for phase in phases for t in file_tasks(phase, path, ctx)]
    file_no = store.add_file_message(path, utc_now(), source)
    store.add_tasks([NewTask(t.task, t.file_path, t.phase, file_no=file_no) for t in tasks])
    return tasks


class _Arrived(_Handler):
    """A file counts when it is closed after writing, or moved in: not on every write.

    inotify reports a file moved in from an unwatched directory as created, with no
    close after it. A created file that is neither written nor closed within
    MOVED_IN_AFTER seconds therefore counts as moved in.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.paths: list[str] = []
        self.created: dict[str, float] = {}  # path → when; not yet written or closed
        self.lock = threading.Lock()
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        kind = type(event)
        path = _text(event.dest_path if kind is FileMovedEvent else event.src_path)
        with self.lock:
            if kind is FileCreatedEvent:
                self.created[path] = time.monotonic()
                return
            if kind is FileModifiedEvent:  # being written: it counts when closed
                self.created.pop(path, None)
                return
            if kind not in (FileClosedEvent, FileMovedEvent):
                return  # opened, read, deleted…: not an arrival
            self.created.pop(path, None)
            self.paths.append(path)
        self.wake()

    def take(self) -> list[str]:
        moved_in_before = time.monotonic() - MOVED_IN_AFTER
        with self.lock:
            paths, self.paths = self.paths, []
            for path, when in list(self.created.items()):
                if when <= moved_in_before:
                    del self.created[path]
                    paths.append(path)
        return paths


def _text(path: str | bytes) -> str:
    return path if isinstance(path, str) else path.decode()


class ArrivalWatcher:
    """watchdog on the directories of the `files=` patterns; follows pattern changes."""

    def __init__(self, log: Any, wake: Callable[[], None]) -> None:
        self.log = log
        self.handler = _Arrived(wake)
        self.observer: BaseObserver | None = None
        self.roots: set[tuple[str, bool]] = set()

    def follow(self, phases: Sequence[Phase]) -> None:
        roots = {root for p in phases if (pattern := parse_rule(p.rule).files)
                 if (root := watch_root(pattern)) and os.path.isdir(root[0])}
        if roots == self.roots:
            return
        self.stop()
        self.roots = roots
        if not roots:
            return
        observer = Observer()
        for directory, recursive in sorted(roots):
            try:
                observer.schedule(self.handler, directory, recursive=recursive)
            except OSError as e:
                self.log.warning("cannot watch for files", path=directory, error=str(e))
        observer.start()
        self.observer = observer

    def arrived(self) -> list[str]:
        return self.handler.take()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join()
            self.observer = None
