"""File events, from real processes, through the real inotify observer into the database.

Only the paths the watcher reports are refreshed (never a full rescan), so each
test shows that the events alone bring the database in step with the directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlord.loader import Loader, list_workflows
from flowlord.store import Store
from flowlord.watcher import Watcher


def phase(task: str) -> str:
    return f'[[phase]]\ntask = "{task}"\nrule = "cron=0 * * * *"\n'


@pytest.fixture
def watched(wf: Path, loader: Loader) -> Iterator[tuple[Watcher, list[str]]]:
    (wf / "a.toml").write_text(phase("a"))
    (wf / "b.toml").write_text(phase("b"))
    loader.refresh()
    watcher = Watcher(str(wf), quiet=0.1)
    watcher.start()
    changes: list[str] = []
    try:
        yield watcher, changes
    finally:
        watcher.stop()


def in_step(root: Path, store: Store) -> bool:
    """The database holds exactly the directory's files, with their current bytes."""
    on_disk = {key: hashlib.md5(Path(path).read_bytes()).hexdigest()
               for key, path in list_workflows(str(root)).files.items()}
    stored = {f[0]: f[2] for f in store.files()}
    return stored == on_disk


def sync(watcher: Watcher, loader: Loader, changes: list[str], root: Path,
         deadline: float = 15.0) -> None:
    """Refresh the reported paths until the database is in step, or fail at the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        paths = watcher.changed_paths(timeout=0.3)
        if paths:
            changes += loader.refresh(paths)
        elif in_step(root, loader.store):
            return
    raise AssertionError(f"not in step after {deadline} s: {changes}")


def sh(command: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", command], cwd=cwd, check=True, timeout=30)


def tasks(store: Store) -> dict[str, list[str]]:
    return {f[0]: [p.task for p in store.phases(file_path=f[0])] for f in store.files()}


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("cp ../outside/c.toml c.toml", {"a.toml": ["a"], "b.toml": ["b"], "c.toml": ["c"]}),
        ("mv ../outside/c.toml c.toml", {"a.toml": ["a"], "b.toml": ["b"], "c.toml": ["c"]}),
        ("mv a.toml ../outside/", {"b.toml": ["b"]}),
        ("mv a.toml z.toml", {"b.toml": ["b"], "z.toml": ["a"]}),
        ("rm a.toml", {"b.toml": ["b"]}),
        ("sed -i 's/\"a\"/\"a2\"/' a.toml", {"a.toml": ["a2"], "b.toml": ["b"]}),
        (": > a.toml && sleep 0.05 && printf '[[phase]]\\ntask = \"t\"\\n' >> a.toml",
         {"a.toml": ["t"], "b.toml": ["b"]}),
        ("mkdir sub && cp ../outside/c.toml sub/ && cp ../outside/c.toml sub/d.toml",
         {"a.toml": ["a"], "b.toml": ["b"], "sub/c.toml": ["c"], "sub/d.toml": ["c"]}),
        # an atomic save: a hidden temp file, then os.replace
        ("python3 -c \"import os; open('.a.toml.tmp', 'w')"
         ".write('[[phase]]\\ntask = \\\"n\\\"\\n');"
         " os.replace('.a.toml.tmp', 'a.toml')\"", {"a.toml": ["n"], "b.toml": ["b"]}),
        # a vim-style save: swap file, original renamed away, new file written, backup removed
        ("printf x > .a.toml.swp && mv a.toml a.toml~ && printf '[[phase]]\\ntask = \"v\"\\n'"
         " > a.toml && rm a.toml~ .a.toml.swp", {"a.toml": ["v"], "b.toml": ["b"]}),
    ],
    ids=["cp-in", "mv-in", "mv-out", "rename", "rm", "sed-i", "truncate-then-write",
         "new-subdir", "atomic-save", "vim-save"],
)
def test_file_operations_reach_the_database(
        tmp_path: Path, wf: Path, loader: Loader, store: Store,
        watched: tuple[Watcher, list[str]], command: str,
        expected: dict[str, list[str]]) -> None:
    watcher, changes = watched
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.toml").write_text(phase("c"))
    sh(command, wf)
    sync(watcher, loader, changes, wf)
    assert tasks(store) == expected


def test_touch_without_change_reloads_nothing(
        wf: Path, loader: Loader, watched: tuple[Watcher, list[str]]) -> None:
    watcher, _ = watched
    sh("touch a.toml", wf)
    paths = watcher.changed_paths(timeout=10)
    assert str(wf / "a.toml") in paths
    assert loader.refresh(paths) == []


def test_reads_do_not_wake_the_watcher(
        wf: Path, loader: Loader, watched: tuple[Watcher, list[str]]) -> None:
    watcher, _ = watched
    sh("cat a.toml b.toml > /dev/null", wf)
    sh("printf '[[phase]]\\ntask = \"z\"\\n' > z.toml", wf)  # a marker that must arrive
    paths = watcher.changed_paths(timeout=10)
    assert paths == {str(wf / "z.toml")}


# --- what settles a path: its last event, not a debounce -------------------------------
# These watchers wait a minute for a path still being written (quiet=60): a path given
# back within the test's few seconds was taken for its definitive event alone.


@pytest.fixture
def patient(wf: Path) -> Iterator[Watcher]:
    (wf / "a.toml").write_text(phase("a"))
    watcher = Watcher(str(wf), quiet=60)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def taken(watcher: Watcher, seconds: float) -> set[str]:
    """What `take_paths` gives within `seconds`, once something was given."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if paths := watcher.take_paths():
            return paths
        time.sleep(0.005)
    return set()


@pytest.mark.parametrize(
    "command",
    ["printf '[[phase]]\\ntask = \"b\"\\n' > b.toml",  # created, written, closed
     "sed -i 's/\"a\"/\"a2\"/' a.toml",  # rename into place
     "mv ../outside/c.toml c.toml",  # moved in from outside the tree
     "rm a.toml",
     "chmod o+w a.toml"],
    ids=["closed", "renamed-into-place", "moved-in", "deleted", "chmod"])
def test_a_definitive_event_needs_no_quiet_period(
        tmp_path: Path, wf: Path, patient: Watcher, command: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.toml").write_text(phase("c"))
    sh(command, wf)
    assert taken(patient, 10) & {str(wf / n) for n in ("a.toml", "b.toml", "c.toml")}


def test_a_file_still_open_for_writing_waits_for_its_close(
        wf: Path, patient: Watcher) -> None:
    with open(wf / "big.toml", "w") as f:
        f.write('[[phase]]\ntask = "big"\n')
        f.flush()  # half of it is on disk; the writer holds it open
        assert taken(patient, 0.5) == set()
        f.write('rule = "cron=0 * * * *"\n')
    assert taken(patient, 10) == {str(wf / "big.toml")}


def test_a_file_renamed_while_still_written_waits_for_its_close(
        wf: Path, patient: Watcher) -> None:
    with open(wf / "part.toml", "w") as f:
        f.write('[[phase]]\ntask = "p"\n')
        f.flush()
        os.rename(wf / "part.toml", wf / "whole.toml")
        assert str(wf / "whole.toml") not in taken(patient, 0.5)
        f.write('rule = "cron=0 * * * *"\n')
    assert str(wf / "whole.toml") in taken(patient, 10) | taken(patient, 0.1)


def test_a_burst_is_taken_together(wf: Path, patient: Watcher) -> None:
    """Files written back to back by one process come out in few takes, not one each."""
    sh("for i in $(seq 200); do printf '[[phase]]\\ntask = \"t\"\\n' > f$i.toml; done", wf)
    takes: list[set[str]] = []
    while sum(map(len, takes)) < 200:
        paths = taken(patient, 10)
        assert paths, f"only {sum(map(len, takes))} of 200 files were taken"
        takes.append(paths)
    assert len(takes) < 100
