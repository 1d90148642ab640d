"""Crash safety of `flowlord refresh`: SIGKILL at random moments, real files, real processes.

After every kill the database (a copy of it, so the next run still finds what the
killed process left) must be sound, and every file row must agree with its phases:
a file's row and its phases change together or not at all. After the kills one
clean refresh must make the database match the directory exactly.

Kill moments come from a seeded random.Random (FLOWLORD_CRASH_SEED picks another
seed); the log of where each kill landed is printed, and shown on failure.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from flowlord.model import Phase
from flowlord.parse import WorkflowParseError, parse_workflow
from flowlord.validate import validate_file
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("FLOWLORD_CRASH_SEED", "1917"))
FILES = 2000
ROUNDS = 12
# per round: more than one transaction of work (the loader writes 500 files in each)
EDITS, DELETES, ADDS = 600, 50, 80
SUBDIRS = ("etl", "etl/hourly", "ingest", "reports", "ml/train", "ml/score")
INVALID = b'[[phase]]\ntask = "broken\nrule = "cron=0 * * * *"\n'  # unterminated string
PHASE_SQL = ("SELECT file_path, task, depends_on, rule, template, retry, status, severity, "
             "position FROM workflow_phases WHERE file_path = ? ORDER BY position")


# --- workflow files ---------------------------------------------------------------------


def workflow(rng: random.Random, stem: str, revision: int) -> bytes:
    """A small valid workflow: 2-5 phases, a chain, a tree or independent cron phases."""
    shape = rng.choice(("chain", "tree", "flat"))
    lines = [f"# {stem}, revision {revision}, {shape}"]
    for i in range(rng.randint(2, 5)):
        lines += ["", "[[phase]]", f'task = "{stem}_{i}"']
        if i and shape != "flat":
            lines.append(f'dependsOn = "{stem}_{i - 1 if shape == "chain" else 0}"')
            lines.append(f'rule = "retry_delay={rng.randint(1, 90)}s"')
        else:
            offset = rng.choice(("", "&offset=-4h", "&offset=30m"))
            lines.append(f'rule = "cron={rng.randint(0, 59)} {rng.randint(0, 23)} * * *{offset}"')
        lines.append(f"retry = {rng.randint(0, 3)}")
        lines.append(f'template = "s3://bucket/{stem}/{{yyyy}}/{{mm}}/{{dd}}/{{hh}}.json"')
    return ("\n".join(lines) + "\n").encode()


def disk_files(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every .toml file under root (found independently of the
    loader's own listing code)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(".toml"):
                path = Path(directory) / name
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def expected_phases(key: str, data: bytes) -> list[Phase] | None:
    """What a refresh must store for these bytes; None when they do not parse."""
    try:
        return validate_file(key, parse_workflow(data))
    except WorkflowParseError:
        return None


class Tree:
    """The workflow directory and every version of every file ever written to it."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.versions: dict[str, bytes] = {}  # md5 → bytes
        self.broken: set[str] = set()  # keys whose bytes do not parse
        self.count = 0

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.versions[hashlib.md5(data).hexdigest()] = data

    def add(self, subdir: str) -> str:
        self.count += 1
        key = f"{subdir}/wf{self.count:05d}.toml"
        self.write(key, workflow(self.rng, f"wf{self.count}", 0))
        return key

    def mutate(self, round_no: int) -> None:
        """Edit some files, delete some, add some, break one, mend one."""
        rng = self.rng
        keys = sorted(disk_files(self.root))
        valid = [k for k in keys if k not in self.broken]
        for n, key in enumerate(rng.sample(valid, EDITS)):
            if n % 4 == 0:  # same size, new bytes: only the mtime tells the change
                old = (self.root / key).read_bytes()
                at = old.index(b"retry = ") + len(b"retry = ")
                new = old[:at] + b"0123"[(old[at] - ord("0") + 1) % 4:][:1] + old[at + 1:]
            else:
                new = workflow(rng, Path(key).stem, round_no)
            self.write(key, new)
        for key in rng.sample(keys, DELETES):
            (self.root / key).unlink()
            self.broken.discard(key)
        for _ in range(ADDS):
            self.add(rng.choice((*SUBDIRS, f"new/round{round_no}")))
        if self.broken:
            key = rng.choice(sorted(self.broken))
            self.write(key, workflow(rng, Path(key).stem, round_no))
            self.broken.discard(key)
        key = rng.choice([k for k in valid if (self.root / k).exists()])
        self.write(key, INVALID + f"# round {round_no}\n".encode())
        self.broken.add(key)


# --- the database -----------------------------------------------------------------------


def stored_phases(conn: apsw.Connection, key: str) -> list[Phase]:
    return [Phase(*row) for row in conn.execute(PHASE_SQL, (key,))]


def soundness_problems(conn: apsw.Connection, versions: dict[str, bytes]) -> list[str]:
    """integrity_check, foreign_key_check, and each file row agreeing with its phases."""
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
    problems += [f"foreign key: {r}" for r in conn.execute("PRAGMA foreign_key_check")]
    for row in conn.execute("SELECT file_path, file_hash, status FROM workflow_files"):
        key, file_hash, status = (str(v) for v in row)
        if file_hash not in versions:
            problems.append(f"{key}: hash {file_hash} is of no bytes ever written")
            continue
        want = expected_phases(key, versions[file_hash])
        if want is None:
            if not status.startswith("parse error:"):
                problems.append(f"{key}: bytes do not parse but status is {status!r}")
        elif status != "":
            problems.append(f"{key}: bytes are valid but status is {status!r}")
        elif stored_phases(conn, key) != want:
            problems.append(f"{key}: phases are not those of the bytes with its hash")
    return problems


def check_copy(db: Path, scratch: Path,
               versions: dict[str, bytes]) -> tuple[dict[str, str] | None, list[str]]:
    """Stored hashes (None: no schema yet) and problems of what the killed process left.

    A copy (file, -wal, -shm) is opened, so that closing it here does not checkpoint
    away the WAL that the next refresh must recover from.
    """
    copy = scratch / "copy.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", f"{copy}{suffix}")
    conn = apsw.Connection(str(copy))
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
        if "workflow_files" not in tables:  # killed before the migration committed
            return None, [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        hashes = dict(conn.execute("SELECT file_path, file_hash FROM workflow_files"))
        return hashes, soundness_problems(conn, versions)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def out_of_date(wf: Path, hashes: dict[str, str]) -> int:
    """How many files the database has yet to add, change or remove."""
    disk = {k: hashlib.md5(v).hexdigest() for k, v in disk_files(wf).items()}
    return sum(hashes.get(k) != h for k, h in disk.items()) + len(set(hashes) - set(disk))


# --- the processes ----------------------------------------------------------------------


def refresh_command(wf: Path, db: Path) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWLORD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "flowlord", "refresh", "-w", str(wf), "--db", str(db)], env


def run_to_end(wf: Path, db: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd, env = refresh_command(wf, db)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def wal_state(db: Path) -> tuple[int, int, int] | None:
    """What changes when a transaction is written to the WAL (it need not grow: a new
    write may start over at its beginning)."""
    try:
        st = os.stat(f"{db}-wal")
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def measure_cold_load(wf: Path, db: Path, cwd: Path) -> tuple[float, float, int]:
    """One cold refresh into a new database, run to its end while its WAL is watched:
    (seconds it took, seconds it spent writing workflow rows, lines printed)."""
    cmd, env = refresh_command(wf, db)
    writes: list[float] = []  # when the WAL changed
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.DEVNULL)
        last = wal_state(db)
        while proc.poll() is None:  # until the process ends
            if wal_state(db) != last:
                writes.append(time.monotonic() - started)
                last = wal_state(db)
            time.sleep(0.0005)
        took = time.monotonic() - started
        out.seek(0)
        lines = len(out.read().splitlines())
    assert proc.returncode == 0
    # the first writes make the schema; the rows come after the parse, the longest pause
    gaps = [(b - a, i + 1) for i, (a, b) in enumerate(zip(writes, writes[1:], strict=False))]
    rows_from = writes[max(gaps)[1]] if gaps else 0.0
    return took, writes[-1] - rows_from if writes else 0.0, lines


def group_members(pgid: int) -> dict[int, int]:
    """Live (not zombie) processes of a process group, from /proc: pid → parent pid."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            state, ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
            if state != "Z" and int(pgrp) == pgid:
                found[int(name)] = int(ppid)
    return found


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll `condition` until it holds or the deadline passes; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def run_and_kill(wf: Path, db: Path, cwd: Path, delay: float, *,
                 after_first_write: bool = False) -> int:
    """Start a refresh and SIGKILL it `delay` seconds later, or `delay` seconds after it
    first writes to the WAL, unless it has ended by then; its exit status.

    The refresh runs in a process group of its own and the whole group is killed, as a
    service manager kills a service; no process of the group may outlive it.
    """
    cmd, env = refresh_command(wf, db)
    wal = wal_state(db)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            if after_first_write:  # not the empty WAL that opening the database makes
                wait_until(lambda: proc.poll() is not None or (
                    (now := wal_state(db)) is not None and now[1] > 0 and now != wal), 120)
            proc.wait(timeout=delay)  # the process ending early is the condition waited for
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            gone = wait_until(lambda: not group_members(proc.pid), 30)
            if not gone:
                os.killpg(proc.pid, signal.SIGKILL)
        err.seek(0)
        message = err.read().decode(errors="replace")
    assert gone, f"processes of the refresh outlived it: {message}"
    assert proc.returncode in (0, -signal.SIGKILL), message
    return proc.returncode


# --- the tests --------------------------------------------------------------------------


def test_refresh_killed_at_random_moments_leaves_a_sound_database(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    wf, db = tmp_path / "workflows", tmp_path / "flowlord.db"
    tree = Tree(wf, rng)
    for i in range(FILES):
        tree.add(SUBDIRS[i % len(SUBDIRS)])
    (wf / "README.md").write_text("not a workflow\n")

    # one full cold refresh, measured, into a database of its own
    cold, writing, lines = measure_cold_load(wf, tmp_path / "measure.db", tmp_path)
    assert lines == FILES

    log: list[str] = []
    hashes: dict[str, str] | None = None  # no database yet
    for round_no in range(1, ROUNDS + 1):
        before = out_of_date(wf, hashes or {})
        if round_no % 2 or hashes is None:
            # anywhere from the start of the process to the end of a cold load
            delay, when = rng.uniform(0.0, cold), "from start"
            code = run_and_kill(wf, db, tmp_path, delay)
        else:
            # the rows are written in a few percent of the run, after every file is parsed:
            # uniform draws would seldom land there, so count from the first write
            delay, when = rng.uniform(0.0, writing * 1.2), "from first write"
            code = run_and_kill(wf, db, tmp_path, delay, after_first_write=True)
        if db.exists():
            hashes, problems = check_copy(db, scratch, tree.versions)
            assert not problems, "\n".join(log + problems[:20])
        after = out_of_date(wf, hashes or {})
        log.append(f"round {round_no}: kill {delay:.3f}s {when} (cold load {cold:.3f}s, "
                   f"writing {writing:.3f}s): {'killed' if code else 'had finished'}, "
                   f"files out of date {before} -> {after}"
                   f"{' (partial)' if 0 < after < before else ''}")
        tree.mutate(round_no)
    print("\n".join(log))

    # a kill that came after the process had ended would prove nothing
    assert any(": killed" in line for line in log), "\n".join(log)

    final = run_to_end(wf, db, tmp_path)
    assert final.returncode == 0, final.stderr
    on_disk = disk_files(wf)
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT file_path, file_hash, status FROM workflow_files")}
        assert set(rows) == set(on_disk)
        invalid = 0
        for key, data in sorted(on_disk.items()):
            file_hash, status = rows[key]
            assert file_hash == hashlib.md5(data).hexdigest(), key
            want = expected_phases(key, data)
            if want is None:
                invalid += 1
                assert status.startswith("parse error:"), (key, status)
            else:
                assert status == "", (key, status)
                stored = stored_phases(conn, key)
                assert [p.task for p in stored] == [p.task for p in want], key
                assert stored == want, key
        assert invalid >= 1  # the mutations left at least one broken file to check
        assert not soundness_problems(conn, tree.versions)
    finally:
        conn.close()
