"""Where a task's command is: its PATH lookup, kept for a second.

subprocess.Popen looks a bare command up on PATH at every start (a join and an
encode per folder, a sixth of its Python here); given the file it runs it at
once. The lookup is the one Popen makes with `env`: the task environment's PATH,
os.defpath without one.
"""

from __future__ import annotations

import errno
import os
import time

KEPT = 1.0  # seconds an answer is kept: a program installed since is found a second later
_found: dict[tuple[str, str | None], tuple[float, str]] = {}  # (command, PATH) → (when, file)


def executable(command: str, search: str | None) -> str:
    """The file `command` runs: itself when it names a path, else the first executable
    file of that name on `search` (a PATH value). OSError as Popen raises it, naming
    the command: ENOENT, or EACCES when only files that cannot be run were found."""
    if "/" in command or "\0" in command:  # a path; or Popen's "embedded null byte"
        return command
    key = (command, search)
    kept = _found.get(key)
    now = time.monotonic()
    if kept is not None and now - kept[0] < KEPT:
        return kept[1]
    denied = False
    for folder in (search if search is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(folder, command)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                _found[key] = (now, candidate)
                return candidate
            denied = True
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code), command)


def forget(command: str, search: str | None) -> None:
    """The file found did not run (moved, removed): look again next time."""
    _found.pop((command, search), None)
