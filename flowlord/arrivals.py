"""Files that arrive for `files=` phases (docs/compatibility.md, File triggers).

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
    DirDeletedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)
from watchdog.events import FileSystemEventHandler as _Handler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from flowlord.clock import rfc3339, rfc3339_ms
from flowlord.model import NewTask, Phase, Task
from flowlord.overlap import replace_earlier, skipped
from flowlord.rules import decode_meta, parse_rule
from flowlord.store import Store
from flowlord.tasks import Context, encode_meta
from flowlord.templates import path_time, render_meta, render_time

_GLOB_CHARS = re.compile(r"[*?\[\\]")
MOVED_IN_AFTER = 0.5  # seconds: a created file not written or closed by then was moved in


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """Go's filepath.Match as a regex; None for a malformed pattern (it matches nothing).

    Go matches the pieces between stars left to right, each at the first place it
    fits, and never goes back: a lazy star in an atomic group does the same. That
    matters because a class, unlike `*` and `?`, can match `/` (`*[^x]*b` does not
    match `a/b` in Go). The last piece must end the path.
    """
    groups: list[tuple[bool, str]] = []  # (after a star, the regex of the piece)
    star, piece, i = False, "", 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            if piece:
                groups.append((star, piece))
                piece = ""
            star = True
        elif c == "?":
            piece += "[^/]"
        elif c == "\\":
            if i == len(pattern):
                return None
            piece += re.escape(pattern[i])
            i += 1
        elif c == "[":
            negated = pattern.startswith("^", i)
            if negated:
                i += 1
            members, count = "", 0
            while not (count and pattern.startswith("]", i)):
                lo = _class_char(pattern, i)
                hi = _class_char(pattern, lo[1] + 1) if lo and pattern[lo[1]] == "-" else lo
                if lo is None or hi is None:
                    return None
                if lo[0] <= hi[0]:  # Go: a reversed range matches nothing
                    members += re.escape(lo[0]) + (
                        "-" + re.escape(hi[0]) if hi[0] != lo[0] else "")
                i, count = hi[1], count + 1
            i += 1
            if members:
                piece += f"[^{members}]" if negated else f"[{members}]"
            else:
                piece += "(?s:.)" if negated else "(?!)"
        else:
            piece += re.escape(c)
    groups.append((star, piece))
    out = [regex if not after_star
           else f"(?>[^/]*?{regex})" if n + 1 < len(groups)
           else f"[^/]*{regex}"
           for n, (after_star, regex) in enumerate(groups)]
    return re.compile("".join(out) + r"\Z")


def _class_char(pattern: str, i: int) -> tuple[str, int] | None:
    """Go's getEsc: the class member at i (`\\` escapes) and where the class goes on;
    None when the class is malformed: a bare `-` or `]` here, or nothing after it."""
    if i >= len(pattern) or pattern[i] in "-]":
        return None
    if pattern[i] == "\\":
        i += 1
    if i + 1 >= len(pattern):
        return None
    return pattern[i], i + 1


def storable(path: str) -> bool:
    """Whether a path can be stored: a file name that is not UTF-8 (bytes decoded with
    surrogate escapes) cannot."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    meta = decode_meta(phase.rule)
    # filename: Go's filepath.Base, which drops trailing slashes
    meta.update(file=path, filename=path.rstrip("/").rsplit("/", 1)[-1] or "/",
                workflow=phase.file_path)
    info, _ = render_meta(render_time(phase.template, path_time(path)), _getter(meta))
    task = Task(type=phase.topic, job=phase.job, info=info,
                meta=encode_meta(sorted(meta.items())), id=str(uuid.uuid4()),
                created=ctx.created_text)
    return [NewTask.of(task, phase.file_path, phase.task)]


def _getter(meta: dict[str, str]) -> Callable[[str], str]:
    return lambda name: meta.get(name, "")


def record_arrival(store: Store, phases: Sequence[Phase], path: str, source: str,
                   ctx: Context) -> list[NewTask]:
    """The file message and the tasks of every matching phase whose `overlap` lets it
    start (flowlord/overlap.py); call inside write_txn."""
    tasks: list[NewTask] = []
    for phase in phases:
        if skipped(store, phase, tasks):
            continue
        built = file_tasks(phase, path, ctx)
        if built:
            replace_earlier(store, phase, tasks, rfc3339_ms(ctx.created))
        tasks += built
    file_no = store.add_file_message(path, rfc3339(ctx.created), source)
    store.add_tasks([t._replace(file_no=file_no) for t in tasks])
    return tasks


class _Arrived(_Handler):
    """A file counts when it is closed after writing, or moved in: not on every write.

    inotify reports a file moved in from an unwatched directory as created, with no
    close after it. A created file that is neither opened, written nor closed within
    MOVED_IN_AFTER seconds therefore counts as moved in.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.paths: list[str] = []
        self.created: dict[str, float] = {}  # path → when; not yet written or closed
        self.roots: set[str] = set()  # the directories watched
        self.lost = False  # one of them was deleted
        self.lock = threading.Lock()
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if isinstance(event, DirDeletedEvent) and _text(event.src_path) in self.roots:
                self.lost = True  # its watch is gone with it: make it again when it is back
            return
        kind = type(event)
        path = _text(event.dest_path if kind is FileMovedEvent else event.src_path)
        with self.lock:
            if kind is FileCreatedEvent:
                self.created[path] = time.monotonic()
                return
            if kind in (FileModifiedEvent, FileOpenedEvent):  # it counts when closed
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
        self.roots: set[tuple[str, bool]] = set()  # directory, recursive
        self.since = 0.0  # monotonic: when the watch of these roots began

    def follow(self, phases: Sequence[Phase]) -> None:
        """Watch the directories the phases' patterns need (those that exist: the next
        rescan looks again); a directory deleted and made again is watched anew."""
        wanted = {root for p in phases if (root := watch_root(parse_rule(p.rule).files))}
        roots = {root for root in wanted if os.path.isdir(root[0])}
        if roots == self.roots and not self.handler.lost:
            return
        missing = sorted(root[0] for root in wanted - roots)
        if missing:
            self.log.warning("files= directories missing; not watched until they exist",
                             paths=" ".join(missing))
        self.stop()
        if not roots:
            self.roots = roots
            return
        self.handler.roots, self.handler.lost = {r[0] for r in roots}, False
        observer = Observer()
        for directory, recursive in sorted(roots):
            observer.schedule(self.handler, directory, recursive=recursive)
        try:
            observer.start()  # watchdog adds the inotify watches here
        except OSError as e:  # the watch limit, a directory gone meanwhile: rescans retry
            self.log.warning("cannot watch for files", paths=" ".join(sorted(
                r[0] for r in roots)), error=str(e))
            self.roots = set()
            return
        self.roots = roots
        self.observer = observer
        self.since = time.monotonic()
        self.log.info("watching for files", paths=" ".join(sorted(r[0] for r in roots)))

    def arrived(self) -> list[str]:
        return self.handler.take()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join()
            self.observer = None
