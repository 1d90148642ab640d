"""The Cache API on a real SQLite file and real files: refresh, search, get, children."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from flowlord.loader import Loader, LoaderError
from flowlord.loader import read_workflow as real_read
from flowlord.model import Task
from flowlord.store import Store, write_txn
from flowlord.validate import VALIDATOR
from tests.helpers import store_rows as query_rows


def rows(store: Store) -> dict[str, list[str]]:
    return {f[0]: [p.task for p in store.phases(file_path=f[0])] for f in store.files()}


def status(store: Store, key: str) -> str:
    return {f[0]: f[1] for f in store.files()}[key]


def test_upstream_fixtures_load_unchanged(upstream: Path, store: Store) -> None:
    loader = Loader(str(upstream / "workflow"), store)
    assert sorted(loader.refresh()) == ["+f1.toml", "+f2.toml", "+f3.toml", "+jobs.toml"]
    assert rows(store)["f1.toml"] == [
        "task1:t2", "task2", "task3", "task4", "task1:t4", "task5:t5", "task6"]
    assert rows(store)["jobs.toml"] == [
        "worker:parent_job", "worker:child1", "worker:child2", "worker:child3", "worker:job"]
    hashes = {f[0]: f[2] for f in store.files()}
    assert hashes["f1.toml"] == "4422274d9c9f7e987c609687a7702651"
    assert hashes["jobs.toml"] == "1e023bac592ea343e981d838f880e117"
    assert all(f[1] == "" for f in store.files())


def test_nested_directories_give_relative_keys(upstream: Path, store: Store) -> None:
    loader = Loader(str(upstream / "parent"), store)
    assert loader.refresh() == ["+f1.toml", "+group/f3.toml"]
    assert loader.is_dir()


def test_single_file_mode_uses_the_base_name_and_prunes_others(
        upstream: Path, store: Store) -> None:
    Loader(str(upstream / "parent"), store).refresh()
    single = Loader(str(upstream / "workflow" / "f3.toml"), store)
    assert not single.is_dir()
    assert single.refresh() == ["+f3.toml", "-f1.toml", "-group/f3.toml"]
    assert list(rows(store)) == ["f3.toml"]


def test_invalid_upstream_file_gets_a_row_with_line_and_column(
        upstream: Path, wf: Path, loader: Loader, store: Store) -> None:
    shutil.copy(upstream / "invalid.toml", wf / "invalid.toml")
    assert loader.refresh() == ["+invalid.toml"]
    assert status(store, "invalid.toml").startswith("parse error: ")
    assert "line 1 column 5" in status(store, "invalid.toml")
    assert rows(store)["invalid.toml"] == []


def later(loader: Loader) -> Loader:
    """The same loader with a clock 10 s ahead: files just written count as settled."""
    return Loader(loader.root, loader.store, now_ns=lambda: time.time_ns() + 10**10)


def test_unchanged_files_are_not_read_again(
        wf: Path, loader: Loader, monkeypatch: pytest.MonkeyPatch) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    settled = later(loader)
    assert settled.refresh() == ["+a.toml"]

    def no_read(path: str, st: object = None) -> None:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr("flowlord.loader.read_workflow", no_read)
    assert settled.refresh() == []


def test_statuses_written_by_other_code_are_written_again_and_only_those(
        wf: Path, loader: Loader, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    (wf / "b.toml").write_text('[[phase]]\ntask = "b"\nrule = "cron=0 * * * *"\n')
    settled = later(loader)
    assert settled.refresh() == ["+a.toml", "+b.toml"]
    assert {s.validator for s in store.file_states().values()} == {VALIDATOR}
    # a.toml as an older release left it: its own validator, a status it no longer writes
    with write_txn(store.conn):
        store.conn.execute("UPDATE workflow_files SET validator = '0.0.9' "
                           "WHERE file_path = 'a.toml'")
        store.conn.execute("UPDATE workflow_phases SET status = 'stale', severity = "
                           "'warning' WHERE file_path IN ('a.toml', 'b.toml')")
    read: list[str] = []
    monkeypatch.setattr("flowlord.loader.read_workflow",
                        lambda path, st=None: read.append(path) or real_read(path, st))
    assert settled.refresh() == ["~a.toml"]  # validated again, though its bytes are the same
    assert [Path(p).name for p in read] == ["a.toml"]  # b.toml's bytes were not read
    assert store.file_states()["a.toml"].validator == VALIDATOR
    assert query_rows(store, "SELECT file_path, status, severity FROM workflow_phases "
                             "ORDER BY file_path") == [("a.toml", "", "ok"),
                                                       ("b.toml", "stale", "warning")]
    assert settled.refresh() == []  # and then it is skipped again


def test_a_just_written_file_is_hashed_again_on_the_next_rescan(
        wf: Path, loader: Loader, store: Store) -> None:
    f = wf / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\n')
    assert loader.refresh() == ["+a.toml"]
    assert store.file_states()["a.toml"].stat_token is None  # too fresh to trust
    f.write_text('[[phase]]\ntask = "b"\n')  # same size, maybe the same mtime tick
    assert loader.refresh() == ["~a.toml"]
    assert later(loader).refresh() == []
    assert store.file_states()["a.toml"].stat_token is not None


def test_an_edit_with_its_mtime_restored_is_seen(wf: Path, loader: Loader,
                                                 store: Store) -> None:
    f = wf / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\n')
    os.utime(f, ns=(10**18, 10**18))
    settled = later(loader)
    settled.refresh()
    f.write_text('[[phase]]\ntask = "b"\n')  # what `rsync -t` or `cp -p` leave behind
    os.utime(f, ns=(10**18, 10**18))
    assert settled.refresh() == ["~a.toml"]
    assert rows(store) == {"a.toml": ["b"]}


def test_a_file_readable_again_with_its_old_bytes_is_ok_again(
        tmp_path: Path, wf: Path, loader: Loader, store: Store) -> None:
    (wf / ".real").mkdir()  # hidden: not a workflow itself, and inside the directory
    target = wf / ".real" / "target.toml"
    target.write_text('[[phase]]\ntask = "a"\n')
    (wf / "a.toml").symlink_to(target)
    loader.refresh()
    target.rename(wf / ".real" / "away.toml")
    assert loader.refresh() == ["~a.toml"]
    assert "dangling symbolic link" in status(store, "a.toml")
    assert rows(store) == {"a.toml": ["a"]}  # the last good phases stay
    (wf / ".real" / "away.toml").rename(target)
    assert loader.refresh() == ["~a.toml"]
    assert status(store, "a.toml") == ""


def test_touch_without_change_is_not_a_change(wf: Path, loader: Loader, store: Store) -> None:
    f = wf / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    loader.refresh()
    loaded_at = store.files()[0][3]
    os.utime(f, ns=(1, 1_000_000_000))
    assert loader.refresh() == []
    assert store.files()[0][3] == loaded_at
    assert store.files()[0][4] == "1970-01-01T00:00:01.000000000Z"


def test_changed_file_replaces_its_phases(wf: Path, loader: Loader, store: Store) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    (wf / "b.toml").write_text('[[phase]]\ntask = "b"\nrule = "cron=0 * * * *"\n')
    loader.refresh()
    (wf / "a.toml").write_text('[[phase]]\ntask = "x"\nrule = "cron=0 * * * *"\n'
                               '[[phase]]\ntask = "y"\ndependsOn = "x"\n')
    assert loader.refresh() == ["~a.toml"]
    assert rows(store) == {"a.toml": ["x", "y"], "b.toml": ["b"]}


def test_removed_file_takes_its_phases_by_cascade(wf: Path, loader: Loader, store: Store) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    loader.refresh()
    (wf / "a.toml").unlink()
    assert loader.refresh() == ["-a.toml"]
    assert store.phases() == []
    assert store.files() == []


def test_bad_new_bytes_keep_the_last_good_phases(wf: Path, loader: Loader, store: Store) -> None:
    f = wf / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    loader.refresh()
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *\n')  # unterminated string
    assert loader.refresh() == ["~a.toml"]
    assert rows(store) == {"a.toml": ["a"]}
    assert "line 3" in status(store, "a.toml")
    assert loader.refresh() == []  # the same bad bytes are not reported again
    f.write_text('[[phase]]\ntask = "b"\nrule = "cron=0 * * * *"\n')
    assert loader.refresh() == ["~a.toml"]
    assert rows(store) == {"a.toml": ["b"]}
    assert status(store, "a.toml") == ""


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x00\xff\xfe garbage \x80", "not UTF-8"),
        (b'[[phase]]\ntask = "a"\n' + b"rule = \"\xe9\"\n", "line 3 column 9"),
        (b'[[phase]]\ntask = "a"\nretry = "three"\n',
         "retry must be an integer, found string at line 3 column 9"),
        (b'[[phase]]\ntask = 5\n', "task must be a string, found integer at line 2 column 8"),
        (b'phase = "x"\n', "phase must be an array of tables"),
        (b'[[phase]]\ntask = "a"\ntask = "b"\n', "line 3"),
    ],
)
def test_bad_bytes_get_a_status_and_leave_other_files_alone(
        wf: Path, loader: Loader, store: Store, data: bytes, expected: str | None) -> None:
    (wf / "good.toml").write_text('[[phase]]\ntask = "g"\nrule = "cron=0 * * * *"\n')
    loader.refresh()
    (wf / "bad.toml").write_bytes(data)
    assert loader.refresh() == ["+bad.toml"]
    if expected is None:
        assert status(store, "bad.toml") == ""
    else:
        assert status(store, "bad.toml").startswith("parse error: ")
        assert expected in status(store, "bad.toml")
    assert rows(store)["good.toml"] == ["g"]


def test_ten_megabyte_file_is_refused_with_a_status(wf: Path, loader: Loader,
                                                     store: Store) -> None:
    (wf / "big.toml").write_bytes(b"# " + b"x" * (10 * 1024 * 1024) + b"\n")
    assert loader.refresh() == ["+big.toml"]
    assert "file too large" in status(store, "big.toml")


def test_unreadable_file_gets_a_status_and_is_retried(wf: Path, loader: Loader,
                                                       store: Store) -> None:
    if os.geteuid() == 0:
        # root reads anything: make the file unreadable as a symlink loop instead
        (wf / "loop.toml").symlink_to(wf / "loop.toml")
        assert loader.refresh() == ["+loop.toml"]
        assert "cannot read file" in status(store, "loop.toml")
        (wf / "loop.toml").unlink()
        assert loader.refresh() == ["-loop.toml"]
        return
    f = wf / "secret.toml"
    f.write_text('[[phase]]\ntask = "a"\n')
    f.chmod(0)
    assert loader.refresh() == ["+secret.toml"]
    assert "Permission denied" in status(store, "secret.toml")
    f.chmod(0o644)
    assert loader.refresh() == ["~secret.toml"]
    assert rows(store)["secret.toml"] == ["a"]


def test_symlink_loop_of_directories_ends(wf: Path, loader: Loader, store: Store) -> None:
    (wf / "sub").mkdir()
    (wf / "sub" / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    (wf / "sub" / "again").symlink_to(wf)
    changes = loader.refresh()
    assert "+sub/a.toml" in changes
    assert all(c.count("again") <= 1 for c in changes)


def test_hidden_editor_and_other_files_are_ignored(wf: Path, loader: Loader) -> None:
    for name in [".hidden.toml", "a.toml~", ".a.toml.swp", "a.toml.tmp", "#a.toml#",
                 "README.md", "notes.txt"]:
        (wf / name).write_text("not toml at all [[[")
    (wf / ".git").mkdir()
    (wf / ".git" / "x.toml").write_text("[[[")
    (wf / "dir.toml").mkdir()  # a directory named like a workflow is walked, not read
    (wf / "dir.toml" / "inner.toml").write_text('[[phase]]\ntask = "i"\n')
    (wf / "real.toml").write_text('[[phase]]\ntask = "r"\n')
    assert loader.refresh() == ["+dir.toml/inner.toml", "+real.toml"]


def test_missing_workflow_path_is_an_error_that_changes_nothing(
        tmp_path: Path, store: Store) -> None:
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    Loader(str(wf), store).refresh()
    shutil.rmtree(wf)
    with pytest.raises(LoaderError, match="workflow path not found"):
        Loader(str(wf), store).refresh()
    assert rows(store) == {"a.toml": ["a"]}


def test_targeted_refresh_looks_only_at_the_given_paths(wf: Path, loader: Loader,
                                                        store: Store) -> None:
    (wf / "a.toml").write_text('[[phase]]\ntask = "a"\n')
    (wf / "b.toml").write_text('[[phase]]\ntask = "b"\n')
    loader.refresh()
    (wf / "a.toml").write_text('[[phase]]\ntask = "a2"\n')
    (wf / "b.toml").unlink()
    assert loader.refresh([str(wf / "a.toml")]) == ["~a.toml"]
    assert loader.refresh([str(wf / "b.toml")]) == ["-b.toml"]
    (wf / "sub").mkdir()
    (wf / "sub" / "c.toml").write_text('[[phase]]\ntask = "c"\n')
    assert loader.refresh([str(wf / "sub")]) == ["+sub/c.toml"]
    shutil.rmtree(wf / "sub")
    assert loader.refresh([str(wf / "sub")]) == ["-sub/c.toml"]
    assert rows(store) == {"a.toml": ["a2"]}


# --- lookups, as docs/compatibility.md, Task and phase identity, describes them -------------------


@pytest.fixture
def loaded(upstream: Path, store: Store) -> Loader:
    loader = Loader(str(upstream / "workflow"), store)
    loader.refresh()
    return loader


def test_search_by_topic_and_job(loaded: Loader) -> None:
    key, phase = loaded.search("task1", "t4")
    assert (key, phase and phase.task) == ("f1.toml", "task1:t4")
    key, phase = loaded.search("task1")  # no job: the first phase of the topic, any job
    assert (key, phase and phase.task) == ("f1.toml", "task1:t2")
    assert loaded.search("nope") == ("", None)


def test_get_looks_in_the_tasks_own_workflow_first(loaded: Loader) -> None:
    phase = loaded.get(Task(type="task2", meta="workflow=f3.toml"))
    assert phase is not None
    assert (phase.file_path, phase.depends_on) == ("f3.toml", "task1")
    phase = loaded.get(Task(type="task2", meta="workflow=f2.toml"))
    assert phase is not None and phase.file_path == "f2.toml"


def test_get_without_job_matches_a_jobbed_phase(loaded: Loader) -> None:
    phase = loaded.get(Task(type="worker", meta="workflow=jobs.toml"))
    assert phase is not None and phase.task == "worker:parent_job"
    phase = loaded.get(Task(type="worker", job="child2", meta="workflow=jobs.toml"))
    assert phase is not None and phase.task == "worker:child2"
    phase = loaded.get(Task(type="worker", meta="workflow=jobs.toml&job=child3"))
    assert phase is not None and phase.task == "worker:child3"


def test_children_come_from_the_tasks_own_file_in_file_order(loaded: Loader) -> None:
    kids = loaded.children(Task(type="task1", job="t2", meta="workflow=f1.toml"))
    assert [k.task for k in kids] == ["task2", "task5:t5"]
    kids = loaded.children(Task(type="task1", job="t4", meta="workflow=f1.toml"))
    assert [k.task for k in kids] == ["task2"]
    kids = loaded.children(Task(type="task1", meta="workflow=f3.toml"))
    assert [k.task for k in kids] == ["task2"]
    kids = loaded.children(Task(type="worker", job="parent_job", meta="workflow=jobs.toml"))
    assert [k.task for k in kids] == ["worker:child1", "worker:child2"]
    assert loaded.children(Task(type="task1", job="t2")) == []  # no workflow meta
    assert loaded.children(Task(type="", meta="workflow=f1.toml")) == []


def test_huge_retry_is_a_parse_error_not_a_crash(wf: Path, loader: Loader, store: Store) -> None:
    (wf / "ok.toml").write_text('[[phase]]\ntask = "a"\n')
    (wf / "big.toml").write_text('[[phase]]\ntask = "a"\nretry = 99999999999999999999\n')
    assert loader.refresh() == ["+big.toml", "+ok.toml"]
    assert "retry is too large at line 3 column 9" in status(store, "big.toml")
    assert rows(store)["ok.toml"] == ["a"]


def test_fifos_and_undecodable_names_are_not_loaded(wf: Path, loader: Loader) -> None:
    os.mkfifo(wf / "pipe.toml")
    (wf / os.fsdecode(b"\xff.toml")).write_text('[[phase]]\ntask = "a"\n')
    (wf / "ok.toml").write_text('[[phase]]\ntask = "a"\n')
    assert loader.refresh() == ["+ok.toml"]
    assert loader.problems == ["file name is not UTF-8, ignored: '\\udcff.toml'"]
    assert loader.refresh([str(wf / "pipe.toml")]) == []


def test_targeted_refresh_ignores_hidden_directories(wf: Path, loader: Loader) -> None:
    (wf / ".git").mkdir()
    (wf / ".git" / "x.toml").write_text('[[phase]]\ntask = "a"\n')
    assert loader.refresh([str(wf / ".git" / "x.toml")]) == []
    assert loader.refresh([str(wf / ".git")]) == []


def test_refused_bytes_keep_loaded_at(wf: Path, loader: Loader, store: Store) -> None:
    f = wf / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\n')
    loader.refresh()
    store.conn.execute("UPDATE workflow_files SET loaded_at = '2000-01-01T00:00:00Z'")
    f.write_text("[[phase]\n")
    loader.refresh()
    assert store.files()[0][3] == "2000-01-01T00:00:00Z"
    f.write_text('[[phase]]\ntask = "b"\n')
    loader.refresh()
    assert store.files()[0][3] > "2000-01-01T00:00:00Z"


def test_children_leave_out_broken_phases(wf: Path, loader: Loader) -> None:
    (wf / "a.toml").write_text(
        '[[phase]]\ntask = "p"\nrule = "cron=0 * * * *"\n'
        '[[phase]]\ntask = "good"\ndependsOn = "p"\n'
        '[[phase]]\ntask = "bad"\ndependsOn = "p"\nrule = "offset=soon"\n')
    loader.refresh()
    assert [k.task for k in loader.children(Task(type="p", meta="workflow=a.toml"))] == ["good"]


def test_a_world_writable_file_is_refused_unless_allowed(wf: Path, store: Store) -> None:
    f = wf / "open.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    loader = Loader(str(wf), store)
    loader.refresh()
    assert [p.task for p in store.phases()] == ["a"]
    f.chmod(0o666)
    assert loader.refresh() == ["~open.toml"]
    assert store.phases() == []  # its last good phases go too: anyone could have edited them
    status = store.files()[0][1]
    assert status == "parse error: refused: writable by any user (o+w)"
    assert loader.problems == [f"open.toml: {status}"]
    assert loader.refresh() == [] and loader.problems == []  # said once, not every rescan
    allowed = Loader(str(wf), store, allow_world_writable=True)
    assert allowed.refresh() == ["~open.toml"]
    assert [p.task for p in store.phases()] == ["a"] and store.files()[0][1] == ""


def test_a_symlink_out_of_the_directory_is_refused(tmp_path: Path, wf: Path,
                                                   store: Store) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    (wf / "inside.toml").write_text('[[phase]]\ntask = "b"\nrule = "cron=0 * * * *"\n')
    (wf / "link.toml").symlink_to(outside)
    (wf / "alias.toml").symlink_to(wf / "inside.toml")  # inside: fine
    Loader(str(wf), store).refresh()
    rows = {f[0]: f[1] for f in store.files()}
    assert rows["link.toml"] == ("parse error: refused: symbolic link out of the workflow "
                                 f"directory: {outside}")
    assert rows["inside.toml"] == rows["alias.toml"] == ""
    assert sorted((p.file_path, p.task) for p in store.phases()) == [
        ("alias.toml", "b"), ("inside.toml", "b")]


def test_a_directory_symlink_out_of_the_directory_is_refused_each_refresh_anew(
        tmp_path: Path, wf: Path, store: Store) -> None:
    """Each directory's real path is resolved once a refresh, and again the next."""
    outside, inside = tmp_path / "outside", wf / "team"
    outside.mkdir()
    inside.mkdir()
    for d in (outside, inside):
        (d / "a.toml").write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
        (d / "b.toml").write_text('[[phase]]\ntask = "b"\nrule = "cron=0 * * * *"\n')
    (wf / "link").symlink_to(outside)
    loader = Loader(str(wf), store)
    loader.refresh()
    rows = {f[0]: f[1] for f in store.files()}
    assert rows["link/a.toml"] == ("parse error: refused: symbolic link out of the workflow "
                                   f"directory: {outside / 'a.toml'}")
    assert rows["link/b.toml"].startswith("parse error: refused: symbolic link out")
    assert rows["team/a.toml"] == rows["team/b.toml"] == ""
    (wf / "link").unlink()
    (wf / "link").symlink_to(inside)  # a deployment swaps it: the files are inside now
    loader.refresh()
    assert {f[0]: f[1] for f in store.files()}["link/a.toml"] == ""


def test_a_new_database_is_private_to_owner_and_group(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        Store(str(tmp_path / "new.db")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o640


def test_a_world_writable_file_loaded_when_allowed_is_refused_once_no_longer_allowed(
        wf: Path, store: Store) -> None:
    f = wf / "open.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    f.chmod(0o666)
    Loader(str(wf), store, allow_world_writable=True).refresh()
    assert [p.task for p in store.phases()] == ["a"]
    assert Loader(str(wf), store).refresh() == ["~open.toml"]  # same bytes, same stat
    assert store.phases() == []
    assert store.files()[0][1] == "parse error: refused: writable by any user (o+w)"


def test_files_in_a_directory_any_user_can_write_to_are_refused(wf: Path, store: Store) -> None:
    shared = wf / "shared"
    shared.mkdir()
    f = shared / "a.toml"
    f.write_text('[[phase]]\ntask = "a"\nrule = "cron=0 * * * *"\n')
    loader = Loader(str(wf), store)
    loader.refresh()
    assert [p.task for p in store.phases()] == ["a"]
    shared.chmod(0o777)  # anyone could drop a workflow in: like cron, refuse
    assert loader.refresh() == ["~shared/a.toml"]
    assert store.phases() == []
    assert store.files()[0][1] == ("parse error: refused: in a directory any user can write "
                                   f"to: {shared}")
    shared.chmod(0o1777)  # the sticky bit does not help: anyone can still add a file
    assert loader.refresh() == []
    assert store.phases() == []
    shared.chmod(0o755)
    assert loader.refresh() == ["~shared/a.toml"]
    assert [p.task for p in store.phases()] == ["a"]
