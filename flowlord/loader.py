"""The workflow cache of flowlord, kept in SQLite: refresh, search, get, children.

`refresh()` makes the database match the workflow path: unchanged files are
skipped on their stat alone (size, inode, mtime, ctime), changed bytes are
hashed (MD5) and only different bytes are parsed, and a file's row and phases
change in one transaction. Bytes that do not parse never replace a file's last
good phases. A file whose statuses other code wrote (its row's `validator`: an
upgrade) is read and validated again, whatever its stat.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import apsw

from flowlord import collector
from flowlord.clock import mtime_text
from flowlord.model import Phase, Task, split_task
from flowlord.parse import WorkflowParseError, parse_workflow
from flowlord.rules import decode_meta
from flowlord.store import FileOp, FileState, FileVersion, Store, write_txn
from flowlord.validate import VALIDATOR, validate_file

MAX_FILE_BYTES = 4 * 1024 * 1024
_FILES_PER_TRANSACTION = 500  # keeps the write lock short during a cold load
_RACY_NS = 2_000_000_000  # younger files are hashed again at the next rescan


class LoaderError(Exception):
    """The workflow path cannot be used at all; str(e) is one line."""


def is_workflow_name(name: str) -> bool:
    """`.toml` files that are not hidden (README.md, A workflow file); editor leftovers
    (`*~`, `*.swp`, `*.tmp`, `#*#`) never end in `.toml`."""
    return name.endswith(".toml") and not name.startswith(".")


def is_workflow_key(key: str) -> bool:
    """A key whose every directory is visible too, and that SQLite can store (UTF-8)."""
    parts = key.split("/")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return is_workflow_name(parts[-1]) and not any(p.startswith(".") for p in parts[:-1])


def read_workflow(path: str, st: os.stat_result | None = None) -> tuple[os.stat_result, bytes]:
    """The bytes of a workflow file: regular files only (never a FIFO or a device),
    and no more than MAX_FILE_BYTES of them. Raises OSError or WorkflowParseError."""
    st = st or os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise WorkflowParseError(f"file too large: {st.st_size} bytes (limit {MAX_FILE_BYTES})")
    # os.read on the descriptor, not open(): a file object (FileIO, a buffer, another
    # fstat) took half the time of reading a cold load's 10,000 files
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, st.st_size + 1)  # all of it, usually
        while len(data) <= MAX_FILE_BYTES and (more := os.read(fd, 65536)):
            data += more  # it grew since the stat: load_bytes refuses it past the limit
        return st, data
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Listing:
    files: dict[str, str]  # key → path, names sorted in each directory, depth first
    unlisted: list[str]    # key prefixes of directories that could not be read
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # saves a second stat
    unnamed: list[str] = field(default_factory=list)  # .toml names that are not UTF-8
    # keys that are symbolic links themselves; None: not known (look at each file)
    links: set[str] | None = None


def workflow_key(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def list_workflows(root: str, start: str | None = None) -> Listing:
    """Every workflow file under `start` (default: root), following directory
    symlinks once each, so a symlink loop ends the walk instead of recursing."""
    files: dict[str, str] = {}
    stats: dict[str, os.stat_result] = {}
    unlisted: list[str] = []
    unnamed: list[str] = []
    links: set[str] = set()
    seen: set[tuple[int, int]] = set()

    def walk(directory: str, prefix: str) -> None:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            unlisted.append(prefix or "./")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                walk(entry.path, f"{prefix}{entry.name}/")
            elif not is_workflow_key(prefix + entry.name):
                if entry.name.endswith(".toml") and not entry.name.startswith("."):
                    unnamed.append(ascii(prefix + entry.name))
            elif (link := entry.is_symlink()) or entry.is_file(follow_symlinks=False):
                key = prefix + entry.name  # (a FIFO is neither)
                files[key] = entry.path
                if link:
                    links.add(key)
                with contextlib.suppress(OSError):  # _examine reports it
                    stats[key] = entry.stat()

    start = start or root
    key = workflow_key(root, start)
    walk(start, "" if key == "." else key + "/")
    return Listing(files, unlisted, stats, unnamed, links)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether `key` is one of `prefixes` (a file) or below one (ending in `/`; `` is all)."""
    return any(p in ("./", "", key) or (p.endswith("/") and key.startswith(p))
               for p in prefixes)


class Refusals:
    """Why a workflow file must not be loaded even if it parses, like cron: any user can
    write it or add files beside it (unless allowed), or it is a symbolic link out of the
    workflow directory. Directory answers are kept until `forget()`."""

    def __init__(self, root: str, allow_world_writable: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.allow_world_writable = allow_world_writable
        self._is_dir = os.path.isdir(self.root)
        self._real_root = os.path.realpath(self.root)
        self._dir_open: dict[str, bool] = {}  # directory → any user may add files to it
        self._open_above: dict[str, str] = {}  # a file's directory → open_directory's answer
        self._real_dirs: dict[str, str] = {}  # a file's directory → its real path

    def forget(self) -> None:
        """Look at the directories again (a refresh): modes and symlinks may have changed."""
        self._real_root = os.path.realpath(self.root)  # a deployment may swap a symlink
        self._dir_open.clear()
        self._open_above.clear()
        self._real_dirs.clear()

    def reason(self, path: str, st: os.stat_result, link: bool | None = None) -> str:
        """'' when the file may be loaded; `link`: whether the path is a symbolic link
        itself, when the listing knows (None: look)."""
        if self.world_writable(st):
            return "writable by any user (o+w)"
        if directory := self.open_directory(path):
            return f"in a directory any user can write to: {directory}"
        if self._is_dir:
            real = self.real_path(path, link)
            if not real.startswith(self._real_root + os.sep):
                return f"symbolic link out of the workflow directory: {real}"
        return ""

    def real_path(self, path: str, link: bool | None = None) -> str:
        """`os.path.realpath(path)`, each directory resolved once: a cold load resolved
        every directory of every path again, a quarter of its time. Only a file that is
        a link itself (`link`, from the listing; else one lstat tells) is resolved
        whole."""
        head, _, name = path.rpartition(os.sep)
        if not head or name in ("", ".", "..") or (
                os.path.islink(path) if link is None else link):
            return os.path.realpath(path)
        real = self._real_dirs.get(head)
        if real is None:
            real = self._real_dirs[head] = os.path.realpath(head)
        return os.path.join(real, name)

    def world_writable(self, st: os.stat_result) -> bool:
        return bool(st.st_mode & stat.S_IWOTH) and not self.allow_world_writable

    def open_directory(self, path: str) -> str:
        """The first directory from the file's up to the workflow directory that any user
        may add files to (o+w, even with the sticky bit); '' when there is none."""
        if self.allow_world_writable or not self._is_dir:
            return ""
        # a hundred files to a directory: asked once for them all, by the directory as
        # the path names it (abspath per file was most of a no-change rescan's time)
        head = path.rpartition(os.sep)[0]
        found = self._open_above.get(head)
        if found is None:
            found = self._open_above[head] = self._first_open(
                os.path.dirname(os.path.abspath(path)))
        return found

    def _first_open(self, directory: str) -> str:
        while True:
            if directory not in self._dir_open:
                try:
                    mode = os.stat(directory).st_mode
                except OSError:
                    mode = 0
                self._dir_open[directory] = bool(mode & stat.S_IWOTH)
            if self._dir_open[directory]:
                return directory
            if directory == self.root or len(directory) <= len(self.root):
                return ""
            directory = os.path.dirname(directory)


class Loader:
    """The Cache API of the seed plan, on a Store."""

    def __init__(self, workflow_path: str, store: Store,
                 now_ns: Callable[[], int] = time.time_ns, *,
                 allow_world_writable: bool = False) -> None:
        self.root = os.path.abspath(workflow_path)
        self.store = store
        self.refusals = Refusals(self.root, allow_world_writable)
        self.now_ns = now_ns  # the clock, for telling fresh files from settled ones
        self.problems: list[str] = []  # of the last refresh, for logs and the CLI
        try:
            self._is_dir = os.path.isdir(self.root)
        except OSError:
            self._is_dir = False

    def is_dir(self) -> bool:
        return self._is_dir

    def close(self) -> None:
        self.store.close()

    # --- refresh --------------------------------------------------------------------

    def refresh(self, paths: Iterable[str] | None = None) -> list[str]:
        """Sync the database with the workflow path; returns `+key`, `~key`, `-key`.

        With `paths` (from file events) only those files, or directories, are looked at.
        """
        with collector.paused():
            return self._refresh(paths)

    def _refresh(self, paths: Iterable[str] | None) -> list[str]:
        self.problems = []
        self.refusals.forget()
        if paths is None:
            listing, scope = self._list_all(), [""]
        else:
            listing, scope = self._list_some(paths)
        states = self.store.file_states(scope)
        ops: list[FileOp] = []
        changes: list[str] = []
        # each transaction's files written once read: memory holds their phases, not a
        # cold load's 100,000 (bench/refresh.py's peak RSS: 92 MiB before, 50 MiB after)
        several = len(listing.files) > _FILES_PER_TRANSACTION  # then one checkpoint
        with self.store.checkpoints_deferred() if several else contextlib.nullcontext():
            for key, path in listing.files.items():
                link = None if listing.links is None else key in listing.links
                change = self._examine(key, path, listing.stats.get(key), states.get(key),
                                       ops, link)
                if change:
                    changes.append(change + key)
                if len(ops) >= _FILES_PER_TRANSACTION:
                    self._commit(ops)
                    ops = []
            for key in states:
                if key not in listing.files and not _under(key, listing.unlisted):
                    ops.append(FileOp("remove", FileVersion(key, "", None, None)))
                    changes.append("-" + key)
            self._commit(ops)
        return changes

    def _list_all(self) -> Listing:
        if not os.path.exists(self.root):
            raise LoaderError(f"workflow path not found: {self.root}")
        if not os.path.isdir(self.root):
            return Listing({os.path.basename(self.root): self.root}, [])
        listing = list_workflows(self.root)
        if "./" in listing.unlisted:
            raise LoaderError(f"cannot read workflow directory: {self.root}")
        self.problems.extend(f"cannot read directory: {p}" for p in listing.unlisted)
        self.problems.extend(f"file name is not UTF-8, ignored: {n}" for n in listing.unnamed)
        return listing

    def _list_some(self, paths: Iterable[str]) -> tuple[Listing, list[str]]:
        if not self._is_dir:
            return self._list_all(), [""]
        files: dict[str, str] = {}
        unlisted: list[str] = []
        scope: list[str] = []
        for p in paths:
            path = os.path.abspath(p)
            key = workflow_key(self.root, path)
            if key.startswith("../") or key == "..":
                continue
            if os.path.isdir(path):
                sub = list_workflows(self.root, path)
                files.update(sub.files)
                unlisted.extend(sub.unlisted)
                scope.append("" if key == "." else key + "/")
            else:
                scope.extend([key, key + "/"])  # a file, or a directory that is gone
                if is_workflow_key(key) and (os.path.islink(path) or os.path.isfile(path)):
                    files[key] = path
        return Listing(files, unlisted), scope

    def _examine(self, key: str, path: str, st: os.stat_result | None, state: FileState | None,
                 ops: list[FileOp], link: bool | None = None) -> str:
        """Queue the write one file needs; returns '+', '~', '-' or '' (no change).
        `link`: whether the path is a symbolic link itself, if the listing knows."""
        try:
            st = st or os.stat(path)
            # ctime too: `rsync -t` or `touch -r` can restore an mtime, never a ctime
            token = f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            # statuses written by other code (an upgrade) are written again from the bytes
            current = state is not None and state.validator == VALIDATOR
            # o+w is checked even on unchanged files: the config may have stopped allowing it
            if (current and state and state.stat_token == token
                    and not self.refusals.world_writable(st)
                    and not self.refusals.open_directory(path)):
                return ""
            last_modified = mtime_text(st.st_mtime_ns)
            refusal = self.refusals.reason(path, st, link)
            if refusal:
                return self._refuse(key, state, refusal, last_modified, ops)
            st, data = read_workflow(path, st)
        except WorkflowParseError as e:  # too large: refused without reading it
            version = FileVersion(key, "", None, last_modified)
            ops.append(FileOp("reject", version, status=str(e)))
            return "~" if state else "+"
        except FileNotFoundError:
            if not os.path.lexists(path):  # vanished since the listing: as if never listed
                if state:
                    ops.append(FileOp("remove", FileVersion(key, "", None, None)))
                    return "-"
                return ""
            return self._unreadable(key, state, "dangling symbolic link", ops)
        except OSError as e:
            return self._unreadable(key, state, e.strerror or str(e), ops)
        # A file changed in the last moments may change again within the same
        # timestamp tick: leave its token unrecorded so the next rescan hashes it again.
        racy = self.now_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
        version = FileVersion(key, hashlib.md5(data).hexdigest(), None if racy else token,
                              last_modified)
        if state and state.file_hash == version.file_hash and current:
            if (state.stat_token, state.last_modified) != (version.stat_token, last_modified):
                ops.append(FileOp("touch", version))
            return ""
        outcome = load_bytes(key, data)
        if isinstance(outcome, str):
            ops.append(FileOp("reject", version, status=outcome))
        else:
            ops.append(FileOp("replace", version, phases=outcome))
        return "~" if state else "+"

    def _refuse(self, key: str, state: FileState | None, reason: str,
                last_modified: str, ops: list[FileOp]) -> str:
        """A refused file keeps its row, with the reason, and loses its phases. No stat
        token: each rescan looks again, as the config may now allow it."""
        status = f"parse error: refused: {reason}"
        if state and state.status == status:
            return ""
        self.problems.append(f"{key}: {status}")
        version = FileVersion(key, "", None, last_modified)
        ops.append(FileOp("replace", version, status=status))
        return "~" if state else "+"

    def _unreadable(self, key: str, state: FileState | None, reason: str,
                    ops: list[FileOp]) -> str:
        status = f"parse error: cannot read file: {reason}"
        if state and state.status == status:
            return ""
        # no hash, size or mtime: the next rescan reads it again (chmod changes no mtime),
        # and once it can, the bytes count as new even if they are the last good ones
        version = FileVersion(key, "", None, None)
        ops.append(FileOp("reject", version, status=status))
        return "~" if state else "+"

    def _commit(self, ops: list[FileOp]) -> None:
        """One transaction of a refresh's writes."""
        if not ops:
            return
        try:
            with write_txn(self.store.conn):
                self.store.apply(ops, VALIDATOR)
        except apsw.Error as e:
            raise LoaderError(f"cannot write database {self.store.path}: {e}") from e

    # --- lookups --------------------------------------------------------------------

    def search(self, topic: str, job: str = "") -> tuple[str, Phase | None]:
        """The first phase of `topic` (and `job`, when given) in file-key order."""
        for phase in self.store.phases(topic=topic):
            if not job or phase.job == job:
                return phase.file_path, phase
        return "", None

    def get(self, task: Task) -> Phase | None:
        """The phase a task came from: looked up in its own workflow file first."""
        meta = decode_meta(task.meta)
        job = task.job or meta.get("job", "")
        key = meta.get("workflow", "")
        if task.type and key and key != "*":
            for phase in self.store.phases(file_path=key, topic=task.type):
                if not job or phase.job == job:
                    return phase
        return self.search(task.type, job)[1] if task.type else None

    def children(self, task: Task) -> list[Phase]:
        """Phases of the task's own workflow file that depend on it, in file order.

        Phases with severity `error` are left out: they never run (README.md, Status
        messages).
        """
        meta = decode_meta(task.meta)
        key = meta.get("workflow", "")
        if not task.type or not key:
            return []
        job = task.job or meta.get("job", "")
        found = []
        for phase in self.store.dependents(key, task.type):
            parent_topic, parent_job = split_task(phase.depends_on)
            if (parent_topic == task.type and (not parent_job or parent_job == job)
                    and phase.severity != "error"):
                found.append(phase)
        return found


def load_bytes(key: str, data: bytes) -> list[Phase] | str:
    """A file's validated phases, or the `parse error: …` status of its row."""
    try:
        if len(data) > MAX_FILE_BYTES:  # it grew while being read
            raise WorkflowParseError(f"file too large: more than {MAX_FILE_BYTES} bytes")
        return validate_file(key, parse_workflow(data))
    except WorkflowParseError as e:
        return str(e)

