"""Benchmark of the workflow loader: cold load, rescans, one changed file, against the
physical limit measured in the same run.

    python bench/refresh.py [--files N] [--phases M] [--quick] [--seed S] [--profile]

Every figure comes from one run, on files generated into a temporary directory that
is removed at the end. The page cache cannot be dropped here, so every file is read
once before anything is measured: the loader and the limit both run warm.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import io
import pstats
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowlord.loader import Loader  # noqa: E402
from flowlord.store import Store, write_txn  # noqa: E402

FILES_PER_DIR = 100
EDITS = 20  # edits timed for each kind of one-file refresh
TARGET_RATIO = 3.0  # cold load within 3× the physical limit
GOAL_RATIO = 2.5  # the second round of speed: cold load within 2.5× the limit, every run
ROUNDS = 3  # cold loads, each with its limit measured right after
TARGET_RESCAN = 0.3  # seconds for a rescan of 10,000 unchanged files
TARGET_ONE_FILE = 0.020  # seconds for the targeted refresh of one changed file

TOPICS = ("extract", "load", "transform", "audit", "report", "export", "sync", "score",
          "train", "index", "notify", "archive")
TEMPLATES = (
    "s3://lake/{topic}/{{yyyy}}/{{mm}}/{{dd}}/{{hh}}/*.json.gz",
    "?date={{yyyy}}-{{mm}}-{{dd}}T{{hh}}&source={topic}",
    "{{meta:file}}?day={{yyyy}}{{mm}}{{dd}}",
    "gs://warehouse/{topic}/dt={{yyyy}}-{{mm}}-{{dd}}/part-{{hh}}.parquet",
    "/data/{topic}/{{yyyy}}/{{mm}}/{{dd}}.csv",
)


# --- workflow files ---------------------------------------------------------------------


def workflow(rng: random.Random, name: str, phases: int) -> str:
    """One workflow: a root on cron and a chain or tree of dependents below it."""
    shape = rng.choice(("chain", "tree", "tree", "two roots"))
    lines = [f"# {name}: {shape} of {phases} phases", ""]
    tasks: list[str] = []  # as stored (normalized): what a dependsOn may name
    for i in range(phases):
        topic = f"{TOPICS[(i + len(name)) % len(TOPICS)]}{i}"
        job = name if rng.random() < 0.3 else ""
        rule = []
        parent = ""
        if i == 0 or (shape == "two roots" and i == phases // 2):
            minute, hour = rng.randrange(60), rng.randrange(24)
            rule.append("cron=" + rng.choice((
                f"{minute} {hour} * * *", f"{minute} */{rng.choice((2, 3, 4, 6))} * * *",
                f"0 {minute} {hour} * * {rng.randrange(7)}",
                f"{minute} {hour} {rng.randint(1, 28)} * *")))
            if rng.random() < 0.5:
                rule.append(f"offset=-{rng.randint(1, 12)}h")
        else:
            first = phases // 2 if shape == "two roots" and i > phases // 2 else 0
            parent = tasks[i - 1] if shape == "chain" else tasks[rng.randrange(first, i)]
            if rng.random() < 0.2:
                rule.append("require={meta:file}")
        if rng.random() < 0.6:
            rule.append(f"retry_delay={rng.choice(('30s', '1m', '5m', '90s', '1h'))}")
        if not job and rng.random() < 0.1:
            job = f"j{i}"
            rule.append(f"job={job}")
            task = topic
        else:
            task = f"{topic}:{job}" if job else topic
        lines.append("[[phase]]")
        lines.append(f'task = "{task}"')
        if parent:
            lines.append(f'dependsOn = "{parent}"')
        lines.append(f'rule = "{"&".join(rule)}"')
        lines.append(f"retry = {rng.choice((0, 0, 1, 2, 3, 5))}")
        lines.append(f'template = "{rng.choice(TEMPLATES).format(topic=topic)}"')
        lines.append("")
        tasks.append(f"{topic}:{job}" if job else topic)
    return "\n".join(lines)


def generate(root: Path, files: int, phases: int, rng: random.Random) -> list[Path]:
    paths = []
    for i in range(files):
        team, group = divmod(i // FILES_PER_DIR, 10)
        path = root / f"team{team:02d}" / f"group{group}" / f"wf{i:05d}.toml"
        if i % FILES_PER_DIR == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(workflow(rng, f"w{i}", phases))
        paths.append(path)
    return paths


# --- measuring --------------------------------------------------------------------------


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def cpu_timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall clock, this process's CPU time) of the action, in seconds."""
    started, cpu_started = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - cpu_started


def read_and_hash(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(hashlib.md5(f.read()).hexdigest())
    return total


def bulk_insert(store: Store, files: list[tuple[object, ...]],
                phases: list[tuple[object, ...]]) -> None:
    """The same rows in one transaction, into the same schema: no parsing, no logic.
    File rows first: the phases' foreign key names them."""
    with write_txn(store.conn):
        store.conn.executemany(
            "INSERT INTO workflow_files (file_path, file_hash, loaded_at, last_modified, "
            "status, stat_token) VALUES (?, ?, ?, ?, ?, ?)", files)
        store.conn.executemany(
            "INSERT INTO workflow_phases (file_path, task, depends_on, rule, template, "
            "retry, status, severity, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", phases)


class Round(NamedTuple):
    """A cold load into a new database, then its limit (seconds)."""

    cold: float
    cold_cpu: float
    read: float  # read + MD5 of every file
    insert: float  # the bulk insert of the rows loaded
    limit_cpu: float
    files: int  # rows loaded
    phases: int
    rss: float  # peak RSS (MiB) so far, right after the cold load: the first round's is
    # the cold load's own, the others' are at least that

    @property
    def ratio(self) -> float:
        return self.cold / (self.read + self.insert)


def cold_round(wf: Path, paths: list[Path], where: Path) -> Round:
    """A cold load into a new database in `where`, then its limit. The parsing caches
    are emptied first, as a starting daemon's are: otherwise a later round's load finds
    the rules and templates parsed (2,000 files: a fifth of the load's CPU)."""
    for module in [m for name, m in sys.modules.items() if name.startswith("flowlord.")]:
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    where.mkdir()
    started, cpu_started = time.perf_counter(), time.process_time()
    loader = Loader(str(wf), Store(str(where / "flowlord.db")))  # opened and migrated
    loaded = loader.refresh()
    cold, cold_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rss = peak_rss_mib()
    try:
        assert len(loaded) == len(paths), f"a cold load loaded {len(loaded)} of {len(paths)}"
        rows = (loader.store.conn.execute(
            "SELECT file_path, file_hash, loaded_at, last_modified, status, stat_token "
            "FROM workflow_files").fetchall(), loader.store.conn.execute(
            "SELECT file_path, task, depends_on, rule, template, retry, status, severity, "
            "position FROM workflow_phases").fetchall())
    finally:
        loader.close()
    read_time, read_cpu = cpu_timed(lambda: read_and_hash(paths))
    limit_store = Store(str(where / "limit.db"))  # new: the loader's own schema
    try:
        insert_time, insert_cpu = cpu_timed(lambda: bulk_insert(limit_store, *rows))
    finally:
        limit_store.close()
    return Round(cold, cold_cpu, read_time, insert_time, read_cpu + insert_cpu,
                 len(rows[0]), len(rows[1]), rss)


def edit(path: Path, n: int) -> None:
    """New bytes (and a new size) in place, as an editor saving a change would."""
    text = path.read_text()
    first, _, rest = text.partition("\n")
    path.write_text(f"{first.split(' [edit')[0]} [edit {n}{'!' * (n % 3)}]\n{rest}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def profile_cold_load(wf: str, db: str) -> str:
    profiler = cProfile.Profile()
    loader = Loader(wf, Store(db))
    try:
        profiler.runcall(loader.refresh)
    finally:
        loader.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(15)
    return out.getvalue()


def run(files: int, phases: int, seed: int, profile: bool) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="flowlord-bench-") as tmp:
        wf = Path(tmp) / "workflows"
        paths = generate(wf, files, phases, rng)
        read_and_hash(paths)  # warm: both sides read from the page cache
        size = sum(p.stat().st_size for p in paths)
        print(f"flowlord refresh benchmark: {files} files x {phases} phases "
              f"({size / 2**20:.1f} MiB) in {files // FILES_PER_DIR or 1} directories, "
              f"seed {seed}")
        print("page cache: cannot be dropped here, so every file was read once first: "
              "loader and limit both run warm")

        # the cold load and its limit back to back, ROUNDS times, each into a new
        # database; the round of the median ratio is the one printed (a cold load and a
        # limit measured once each gave from 2.1 to 2.8 in runs of one day here)
        rounds = [cold_round(wf, paths, Path(tmp) / f"round{k}") for k in range(ROUNDS)]
        median = sorted(rounds, key=lambda r: r.ratio)[ROUNDS // 2]
        cold, read_time, insert_time = median.cold, median.read, median.insert
        limit, ratio, stored = read_time + insert_time, median.ratio, median.phases
        rss_after_cold = rounds[0].rss
        loader = Loader(str(wf), Store(str(Path(tmp) / "round0" / "flowlord.db")))
        try:
            rescan = min(timed(loader.refresh)[0] for _ in range(3))
            assert loader.refresh() == [], "a rescan of unchanged files found changes"

            targeted, full = [], []
            for n, path in enumerate(rng.sample(paths, min(2 * EDITS, len(paths)))):
                edit(path, n)
                key = path.relative_to(wf).as_posix()
                if n % 2 == 0:
                    took, changes = timed(functools.partial(loader.refresh, [str(path)]))
                    targeted.append(took)
                else:
                    took, changes = timed(loader.refresh)
                    full.append(took)
                assert changes == [f"~{key}"], f"the edit of {key} was not seen: {changes}"
        finally:
            loader.close()
        one_targeted, one_full = statistics.median(targeted), statistics.median(full)
        rescan_target = TARGET_RESCAN * files / 10_000

        print()
        print(f"cold load:                  {cold:8.3f} s  {files / cold:9.0f} files/s  "
              f"{stored / cold:9.0f} phases/s  ({stored} phases; Store() + refresh())")
        print(f"no-change rescan:           {rescan:8.3f} s  (best of 3)")
        print(f"one changed file, targeted: {one_targeted * 1000:8.2f} ms "
              f"(refresh([path]), median of {len(targeted)})")
        print(f"one changed file, full:     {one_full * 1000:8.2f} ms "
              f"(refresh(), median of {len(full)})")
        print(f"peak RSS:                   {rss_after_cold:8.1f} MiB after the cold load, "
              f"{peak_rss_mib():.1f} MiB at the end")
        print(f"physical limit:             {limit:8.3f} s  (read + MD5 {read_time:.3f} s, "
              f"bulk insert of the same {median.files} file and {median.phases} phase "
              f"rows {insert_time:.3f} s)")
        print(f"ratio cold load / limit:    {ratio:8.2f}  (the median of "
              f"{' '.join(f'{r.ratio:.2f}' for r in rounds)}: {ROUNDS} rounds, "
              "each a cold load and its limit back to back)")
        print(f"the same in CPU time:       {median.cold_cpu / median.limit_cpu:8.2f}  "
              f"(cold load {median.cold_cpu:.3f} s, limit {median.limit_cpu:.3f} s: on a machine "
              "shared with other work it moves less than the wall clock)")
        print()
        checks = [
            (ratio <= TARGET_RATIO,
             f"target cold load <= {TARGET_RATIO:g}x limit: {ratio:.2f}x"),
            (rescan < rescan_target,
             f"target no-change rescan < {rescan_target:.3f} s "
             f"({TARGET_RESCAN} s per 10,000 files): {rescan:.3f} s"),
            (one_targeted < TARGET_ONE_FILE,
             f"target one changed file (targeted) < {TARGET_ONE_FILE * 1000:.0f} ms: "
             f"{one_targeted * 1000:.2f} ms"),
        ]
        for ok, text in checks:
            print(f"{verdict(ok)}  {text}")
        print(f"{'PASS' if ratio <= GOAL_RATIO else 'FAIL'}  goal cold load / limit <= "
              f"{GOAL_RATIO:g} (second round of speed): {ratio:.2f}")

        if profile:
            print()
            print("cProfile of a second cold load:")
            print(profile_cold_load(str(wf), str(Path(tmp) / "profile.db")))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--phases", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="500 files: proves the script runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of a cold load (top 15, cumulative)")
    args = parser.parse_args(argv)
    if args.quick:
        args.files = 500
    if args.files < 1 or args.phases < 1:
        parser.error("--files and --phases must be at least 1")
    return run(args.files, args.phases, args.seed, args.profile)


if __name__ == "__main__":
    sys.exit(main())
