"""The catch-up of files that arrived unwatched (flowlord/catch_up.py), in-process: the
listing, and the daemon's turns with a fake clock started at the real time (file
times are real)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowlord import file_triggers
from flowlord.catch_up import changed_files, changed_ns, ns_of
from flowlord.clock import FakeClock
from flowlord.store import Store
from flowlord.tasks import Context
from tests.helpers import stepped, store_rows, turn, wait_for


@pytest.fixture(autouse=True)
def no_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-up waits for its watch to run a second: not here (no file is written
    while a listing runs)."""
    monkeypatch.setattr(file_triggers, "QUIET", 0.0)


def test_changed_files_are_those_changed_in_the_window_oldest_first(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    old, new, deep = tmp_path / "old.csv", tmp_path / "new.csv", tmp_path / "sub" / "d.csv"
    for path in (old, new, deep):
        path.write_text("x\n")
    (tmp_path / "other.txt").write_text("x\n")
    since = changed_ns(os.stat(old))
    new.write_text("again\n")  # changed after `since`
    until = max(changed_ns(os.stat(p)) for p in (new, deep))

    def csv(path: str) -> bool:
        return path.endswith(".csv")

    found, total = changed_files(str(tmp_path), False, since, until, csv)
    assert [p for p, _ in found] == [str(new)] and total == 2
    found, total = changed_files(str(tmp_path), True, since - 1, until, csv)
    assert sorted(p for p, _ in found) == sorted(map(str, (old, new, deep))) and total == 3
    assert [c for _, c in found] == sorted(c for _, c in found)  # oldest first
    assert changed_files(str(tmp_path), True, None, until, csv) == ([], 3)  # counted only
    assert changed_files(str(tmp_path / "gone"), True, 0, until, csv) == ([], 0)


def test_a_file_moved_in_with_an_old_mtime_counts_by_its_ctime(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "a.csv").write_text("x\n")
    os.utime(tmp_path / "a.csv", (0, 0))
    since = ns_of(datetime.now(UTC)) - 1_000_000_000
    (tmp_path / "a.csv").rename(tmp_path / "in" / "a.csv")
    found, _ = changed_files(str(tmp_path / "in"), False, since, ns_of(datetime.now(UTC)),
                             lambda _: True)
    assert [p for p, _ in found] == [str(tmp_path / "in" / "a.csv")]


@pytest.fixture
def inbox(tmp_path: Path, wf: Path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    (wf / "a.toml").write_text(f'[[phase]]\ntask = "load"\nrule = "files={path}/*.csv"\n')
    return path


def paths(store: Store) -> list[str]:
    return sorted(str(r[0]).rsplit("/", 1)[-1]
                  for r in store_rows(store, "SELECT path FROM file_messages"))


def watched(store: Store, inbox: Path) -> str:
    rows = store_rows(store, f"SELECT watched_until FROM watched_dirs "
                             f"WHERE directory = '{inbox}'")
    return str(rows[0][0]) if rows else ""


def test_a_restart_catches_up_in_batches_each_file_once(
        tmp_path: Path, wf: Path, inbox: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    with stepped(tmp_path, wf, clock) as d:
        wait_for(lambda: turn(d, clock, 0.01) >= 0 and watched(d.store, inbox) != "")
        (inbox / "seen.csv").write_text("x\n")  # recorded live
        wait_for(lambda: turn(d, clock, 0.01) >= 0 and paths(d.store) == ["seen.csv"])
    for n in range(1200):  # while it is down
        (inbox / f"f{n:04d}.csv").write_text("x\n")
    clock = FakeClock(datetime.now(UTC))
    with stepped(tmp_path, wf, clock) as d:
        counts, before = [1], watched(d.store, inbox)

        def caught_up() -> bool:
            turn(d, clock, 0.01)
            counts.append(len(paths(d.store)))
            if str(inbox) in d.file_triggers.caught_up:
                return True
            assert watched(d.store, inbox) == before  # not moved on before the end
            return False

        wait_for(caught_up)
        assert counts[-1] == 1201
        assert max(b - a for a, b in zip(counts, counts[1:], strict=False)) == 500
        assert len(set(paths(d.store))) == 1201
        assert len(store_rows(d.store, "SELECT 1 FROM tasks WHERE type = 'load'")) == 1201


def test_a_standby_catches_up_what_arrived_while_it_stood_by_at_a_takeover(
        tmp_path: Path, wf: Path, inbox: Path) -> None:
    (inbox / "old.csv").write_text("there before the first watch\n")
    clock = FakeClock(datetime.now(UTC))
    with stepped(tmp_path, wf, clock) as d:
        ft = d.file_triggers

        def context() -> Context:  # the file times are real
            clock.advance(max(0.01, (datetime.now(UTC) - clock.now()).total_seconds()))
            return d._context(clock.now())

        def stood_by() -> bool:
            ft.drop(d.store, context())
            return watched(d.store, inbox) != "" and ft.scan is None

        wait_for(stood_by)  # a standby knows the directory from its first watch
        known = watched(d.store, inbox)
        (inbox / "while-standby.csv").write_text("x\n")
        seen: list[str] = []
        wait_for(lambda: bool(seen.extend(ft.watch.arrived())) or
                 str(inbox / "while-standby.csv") in seen)  # seen live, and dropped
        ft.drop(d.store, context())
        assert paths(d.store) == [] and watched(d.store, inbox) == known  # it records nothing

        def took_over() -> bool:
            ft.record(d.store, context())
            return str(inbox) in ft.caught_up

        wait_for(took_over)
        assert paths(d.store) == ["while-standby.csv"]
