"""A refresh of many files writes them a transaction of _FILES_PER_TRANSACTION files at a
time as it reads them, with one WAL checkpoint at the end; every file and phase is
there, and the connection checkpoints as before once it is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowlord import loader as loader_module
from flowlord.loader import Loader, read_workflow
from flowlord.store import Store


def write_files(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"w{i:03d}.toml").write_text(
            f'[[phase]]\ntask = "t{i}"\nrule = "cron=0 * * * *"\n\n'
            f'[[phase]]\ntask = "c{i}"\ndependsOn = "t{i}"\n')


def test_many_files_are_written_in_several_transactions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wf"
    root.mkdir()
    write_files(root, 25)
    monkeypatch.setattr(loader_module, "_FILES_PER_TRANSACTION", 10)
    store = Store(str(tmp_path / "f.db"))
    commits: list[int] = []  # how many files each transaction wrote
    apply = store.apply
    monkeypatch.setattr(store, "apply", lambda ops, v: (commits.append(len(ops)),
                                                         apply(ops, v))[1])
    loader = Loader(str(root), store)
    assert sorted(loader.refresh()) == sorted(f"+w{i:03d}.toml" for i in range(25))
    assert commits == [10, 10, 5]
    assert store.conn.execute("SELECT count(*) FROM workflow_phases").fetchall() == [(50,)]
    assert store.conn.pragma("wal_autocheckpoint") == 1000  # as SQLite's default
    (root / "w003.toml").unlink()
    assert loader.refresh() == ["-w003.toml"]
    assert commits == [10, 10, 5, 1]
    loader.close()


def test_a_write_that_fails_stops_the_refresh(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wf"
    root.mkdir()
    write_files(root, 25)
    monkeypatch.setattr(loader_module, "_FILES_PER_TRANSACTION", 10)
    read: list[str] = []
    monkeypatch.setattr(loader_module, "read_workflow",
                        lambda path, st=None: (read.append(path), read_workflow(path, st))[1])
    store = Store(str(tmp_path / "f.db"))
    store.conn.execute("CREATE TRIGGER no_w015 BEFORE INSERT ON workflow_files "
                       "WHEN new.file_path = 'w015.toml' BEGIN SELECT RAISE(ABORT, 'no'); END")
    loader = Loader(str(root), store)
    with pytest.raises(loader_module.LoaderError, match="cannot write database"):
        loader.refresh()
    assert len(read) == 20  # the second transaction failed: the third's files not read
    assert store.conn.execute("SELECT count(*) FROM workflow_files").fetchall() == [(10,)]
    assert store.conn.pragma("wal_autocheckpoint") == 1000
    loader.close()


def test_a_file_read_to_its_end_though_it_grew_since_its_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.toml"
    path.write_bytes(b"# x\n")
    st = path.stat()
    with path.open("ab") as f:
        f.write(b"y" * 200_000)
    assert read_workflow(str(path), st)[1] == b"# x\n" + b"y" * 200_000
    monkeypatch.setattr(loader_module, "MAX_FILE_BYTES", 100_000)
    data = read_workflow(str(path), st)[1]
    assert 100_000 < len(data) <= 200_004  # read past the limit: load_bytes refuses it
    assert loader_module.load_bytes("w.toml", data) == (
        "parse error: file too large: more than 100000 bytes")
    empty = tmp_path / "e.toml"
    empty.write_bytes(b"")
    assert read_workflow(str(empty))[1] == b""
