"""Arrived files: pattern matching, watch roots, the tasks a file starts, and how an
arrival is recorded (docs/compatibility.md, File triggers)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowlord.arrivals import file_tasks, matches, record_arrival, watch_root
from flowlord.model import Phase
from flowlord.outcomes import decode_meta
from flowlord.store import Store, write_txn
from flowlord.tasks import Context
from tests.helpers import store_rows

# --- a reference: Go's path/filepath.Match (Unix), translated line by line --------------


class BadPattern(Exception):
    """Go's filepath.ErrBadPattern."""


def go_scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern, star = pattern[1:], True
    inrange, i = False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            inrange = True
        elif c == "]":
            inrange = False
        elif c == "*" and not inrange:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def go_get_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern
    r, rest = chunk[0], chunk[1:]
    if not rest:
        raise BadPattern
    return r, rest


def go_match_chunk(chunk: str, s: str) -> tuple[str, bool]:
    failed = False  # after a failure the chunk is still read to the end, for its errors
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            match, nrange = False, 0
            while True:
                if chunk.startswith("]") and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = go_get_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = go_get_esc(chunk[1:])
                if lo <= r <= hi:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif c == "?":
            if not failed:
                failed = s[0] == "/"
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise BadPattern
            if not failed:
                failed = chunk[0] != s[0]
                s = s[1:]
            chunk = chunk[1:]
    return ("", False) if failed else (s, True)


def go_match(pattern: str, name: str) -> bool:
    """filepath.Match; raises BadPattern where Go returns ErrBadPattern."""
    while pattern:
        star, chunk, pattern = go_scan_chunk(pattern)
        if star and not chunk:  # a trailing star matches the rest unless it has a /
            return "/" not in name
        t, ok = go_match_chunk(chunk, name)
        if ok and (not t or pattern):
            name = t
            continue
        if star:
            found, i = False, 0
            while i < len(name) and name[i] != "/":  # a star cannot skip a /
                t, ok = go_match_chunk(chunk, name[i + 1:])
                i += 1
                if ok:
                    if not pattern and t:  # the last chunk must use up the name
                        continue
                    name, found = t, True
                    break
            if found:
                continue
        while pattern:  # no match: the rest of the pattern must still be well formed
            _, chunk, pattern = go_scan_chunk(pattern)
            go_match_chunk(chunk, "")
        return False
    return not name


def go_matches(pattern: str, name: str) -> bool:
    """What flowlord does with filepath.Match: an error counts as no match."""
    try:
        return go_match(pattern, name)
    except BadPattern:
        return False


# --- matches -------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "path", "expected"), [
    # * is any run of characters but /
    ("/data/in/*.csv", "/data/in/a.csv", True),
    ("/data/in/*.csv", "/data/in/.csv", True),
    ("/data/in/*.csv", "/data/in/sub/a.csv", False),
    ("/data/*/in/*.csv", "/data/x/in/a.csv", True),
    ("/data/*/in/*.csv", "/data/x/y/in/a.csv", False),
    ("/data/*", "/data/", True),
    ("/data/*", "/data/a/b", False),
    ("*", "abc", True),
    ("*", "", True),
    ("*", "a/b", False),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "abc", True),
    ("a*b*c", "a/bc", False),
    # ? is exactly one character but /
    ("/in/?.txt", "/in/a.txt", True),
    ("/in/?.txt", "/in/ab.txt", False),
    ("/in/?.txt", "/in/.txt", False),
    ("a?b", "a/b", False),
    # classes, ranges, negation
    ("/in/[abc].txt", "/in/b.txt", True),
    ("/in/[abc].txt", "/in/d.txt", False),
    ("/in/[a-c][0-9].txt", "/in/b7.txt", True),
    ("/in/[a-c][0-9].txt", "/in/d7.txt", False),
    ("/in/[^a-c].txt", "/in/d.txt", True),
    ("/in/[^a-c].txt", "/in/b.txt", False),
    ("/in/[a-cx-z]", "/in/y", True),
    ("/in/[z-a]", "/in/m", False),  # an empty range matches nothing (not an error)
    ("[*]", "*", True),  # * in a class is a plain member
    ("[*]", "a", False),
    ("[[]", "[", True),
    ("[a^]", "^", True),
    # \ escapes a special character, inside classes too
    (r"/in/\*.txt", "/in/*.txt", True),
    (r"/in/\*.txt", "/in/a.txt", False),
    (r"/in/\?", "/in/?", True),
    (r"/in/\[a]", "/in/[a]", True),
    (r"\a\b", "ab", True),
    (r"[\]]", "]", True),
    (r"[\]]", "\\", False),
    (r"[\^a]", "^", True),
    (r"[\-a]", "-", True),
    (r"[\--\/]", ".", True),  # a range between two escaped characters
    (r"[^\]]", "]", False),
    ("a]b", "a]b", True),  # a ] outside a class is an ordinary character
    # the whole path must match, not a prefix or a part
    ("/data/in/a.csv", "/data/in/a.csv", True),
    ("/data/in/a", "/data/in/a.csv", False),
    ("in/a.csv", "/data/in/a.csv", False),
    ("/data/in/*", "/data/in/a.csv.tmp/", False),
    ("", "", True),
    ("", "a", False),
    # no **: it is two stars, which is one star
    ("/data/**/a.csv", "/data/x/a.csv", True),
    ("/data/**/a.csv", "/data/x/y/a.csv", False),
    ("/data/**", "/data/x/y", False),
    # a malformed pattern matches nothing, whatever the path
    ("/in/[abc", "/in/a", False),
    ("/in/[abc", "/in/[abc", False),
    ("/in/a\\", "/in/a\\", False),
    ("/in/a\\", "/in/a", False),
    ("/in/[]", "/in/[]", False),
    ("/in/[^]", "/in/[^]", False),
    ("/in/[a-]", "/in/a", False),
    ("/in/[-a]", "/in/a", False),
    ("/in/[a-z-9]", "/in/a", False),
    ("/in/*/[", "/in/x/[", False),
    ("/nomatch/*/x[", "/in/a", False),  # malformed after a part that fails: still no match
    # Go: a ] right after [ or [^ is an error, not a member of the class
    ("[]a]", "]", False),
    ("[]a]", "a", False),
    ("[^]a]", "b", False),
    # patterns compare literally with the path
    ("./folder/*.txt", "./folder/a.txt", True),
    ("./folder/*.txt", "folder/a.txt", False),
    ("./folder/*.txt", "/work/folder/a.txt", False),
    ("folder/*.txt", "./folder/a.txt", False),
    ("/data//in/*.csv", "/data/in/a.csv", False),
    # scheme paths
    ("gs://bucket/dir/*.json", "gs://bucket/dir/a.json", True),
    ("gs://bucket/dir/*.json", "gs://bucket/dir/sub/a.json", False),
    ("gs://bucket/dir/*.json", "s3://bucket/dir/a.json", False),
    ("gs://*/dir/*.json", "gs://any/dir/a.json", True),
    ("gs:/*/*/dir/*.json", "gs://bucket/dir/a.json", True),  # gs: / "" / bucket
])
def test_matches(pattern: str, path: str, expected: bool) -> None:
    assert go_matches(pattern, path) is expected  # the reference agrees with the spec
    assert matches(pattern, path) is expected


@pytest.mark.parametrize(("pattern", "path"), [
    ("a[^x]b", "a/b"),  # Go's classes do not exclude / (only * and ? do)
    ("a[/]b", "a/b"),
    ("a[.-0]b", "a/b"),  # . - 0 includes /
])
def test_a_class_can_match_a_slash(pattern: str, path: str) -> None:
    assert go_matches(pattern, path)
    assert matches(pattern, path)


def test_a_star_keeps_the_first_place_its_chunk_fits() -> None:
    """Go does not backtrack into an earlier star: `*[^x]` takes the `a` of `a/b`,
    and the second star cannot cross the `/` that is left."""
    assert not go_matches("*[^x]*b", "a/b")
    assert not matches("*[^x]*b", "a/b")
    assert go_matches("*[^x]*b", "ab")
    assert matches("*[^x]*b", "ab")


def test_matches_non_ascii() -> None:
    assert matches("/in/?.csv", "/in/é.csv")
    assert matches("/in/[à-ü].csv", "/in/é.csv")
    assert not matches("/in/[^à-ü].csv", "/in/é.csv")
    assert matches("/in/*/x", "/in/日本/x")


PATTERN_CHARS = "ab/*?[]^-\\"
NAME_CHARS = "ab/*?[]^-\\"


@settings(max_examples=3000, deadline=None)
@given(st.text(PATTERN_CHARS, max_size=10),
       st.text("ab/", max_size=6) | st.text(NAME_CHARS, max_size=8))
@example("[]a]", "]")
@example(r"[\]]", "]")
@example("[a-]", "-")
@example("*[^a]*b", "b/b")
@example("[[]", "[")
def test_matches_agrees_with_go(pattern: str, name: str) -> None:
    assert matches(pattern, name) is go_matches(pattern, name)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "/", "*", "?", "[ab]", "[^a]", "[a-b]", r"\*"]),
                max_size=6),
       st.text("ab/*", max_size=8))
def test_matches_agrees_with_go_on_well_formed_patterns(parts: list[str], name: str) -> None:
    pattern = "".join(parts)
    assert matches(pattern, name) is go_matches(pattern, name)


# --- watch_root ------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "expected"), [
    ("/data/in/*.csv", ("/data/in", False)),
    ("/data/in/?.csv", ("/data/in", False)),
    ("/data/in/[ab].csv", ("/data/in", False)),
    ("/data/*/in/*.csv", ("/data", True)),
    ("/data/in*/x.csv", ("/data", True)),
    ("/data/in/file.csv", ("/data/in", False)),
    ("/*.csv", ("/", False)),
    ("/*/x.csv", ("/", True)),
    ("/file.csv", ("/", False)),
    ("data/in/*.csv", None),
    ("./data/in/*.csv", None),
    ("*.csv", None),
    ("gs://bucket/dir/*.json", None),
    ("", None),
])
def test_watch_root(pattern: str, expected: tuple[str, bool] | None) -> None:
    assert watch_root(pattern) == expected


@pytest.mark.parametrize("pattern", ["/data/in/*.csv", "/data/*/in/*.csv", "/data/in/f.csv",
                                     "/*.csv", "/a/b/c/[xy]/*/z"])
def test_watch_root_covers_every_match(pattern: str) -> None:
    root = watch_root(pattern)
    assert root is not None
    directory, recursive = root
    for path in ["/data/in/a.csv", "/data/x/in/a.csv", "/data/in/f.csv", "/a.csv",
                 "/a/b/c/x/q/z"]:
        if matches(pattern, path):
            parent = path.rsplit("/", 1)[0] or "/"
            assert parent == directory or recursive and path.startswith(
                directory.rstrip("/") + "/"), (pattern, path)


# --- file_tasks -------------------------------------------------------------------------------

CREATED = datetime(2026, 3, 9, 6, 30, 15, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(zone=UTC, meta_dir=str(tmp_path), created=CREATED)


def csv_phase(**kw: str) -> Phase:
    fields = {"file_path": "ingest/csv.toml", "task": "load:csv",
              "rule": "files=/in/*/*/*/*.csv&owner=ops",
              "template": "?day={yyyy}-{mm}-{dd}&src={meta:file}&name={meta:filename}"}
    fields.update(kw)
    return Phase(**fields)  # type: ignore[arg-type]


def test_file_task_from_a_path(ctx: Context) -> None:
    path = "/in/2026/03/08/x.csv"
    [new] = file_tasks(csv_phase(), path, ctx)
    task = new.task
    assert task.type == "load"
    assert task.job == "csv"
    assert task.info == "?day=2026-03-08&src=/in/2026/03/08/x.csv&name=x.csv"
    assert decode_meta(task.meta) == {
        "files": "/in/*/*/*/*.csv", "owner": "ops", "file": path, "filename": "x.csv",
        "workflow": "ingest/csv.toml"}
    assert [pair.split("=", 1)[0] for pair in task.meta.split("&")] == [
        "file", "filename", "files", "owner", "workflow"]  # keys sorted
    assert task.created == "2026-03-09T06:30:15.000Z"
    assert task.id and task.id != file_tasks(csv_phase(), path, ctx)[0].task.id
    assert (new.file_path, new.phase) == ("ingest/csv.toml", "load:csv")
    assert new.file_no is None and new.parent_no is None and new.attempt == 0


@pytest.mark.parametrize(("path", "info"), [
    ("/in/2026/03/08/x.csv", "2026-03-08T00"),
    ("/in/2026/03/08/14/x.csv", "2026-03-08T14"),
    ("/in/a/b/20260102T031734.csv", "2026-01-02T03"),
    ("/in/a/2026-05-06/x.csv", "2026-05-06T00"),
    ("/in/a/2026/07/x.csv", "2026-07-01T00"),
])
def test_file_task_time_comes_from_the_path(ctx: Context, path: str, info: str) -> None:
    depth = path.count("/") - 2  # the directories below /in
    phase = csv_phase(rule="files=/in/" + "*/" * depth + "*.csv",
                      template="{yyyy}-{mm}-{dd}T{hh}")
    [new] = file_tasks(phase, path, ctx)
    assert new.task.info == info


def test_file_task_without_a_time_in_the_path_keeps_the_tokens(ctx: Context) -> None:
    [new] = file_tasks(csv_phase(rule="files=/in/*.csv", template="{yyyy}/{meta:filename}"),
                       "/in/x.csv", ctx)
    assert new.task.info == "{yyyy}/x.csv"


def test_file_task_meta_is_encoded_only_where_needed(ctx: Context) -> None:
    path = "/in/a b&c=d+e%f;g/x~y,z.csv"
    phase = csv_phase(rule="files=/in/*/*.csv&note=semi%3Bcolon&plain=a-b_c.d/e:f",
                      template="{meta:file}")
    [new] = file_tasks(phase, path, ctx)
    meta = new.task.meta
    assert "file=/in/a%20b%26c%3Dd%2Be%25f%3Bg/x~y,z.csv" in meta.split("&")
    assert "filename=x~y,z.csv" in meta.split("&")
    assert "note=semi%3Bcolon" in meta.split("&")
    assert "plain=a-b_c.d/e:f" in meta.split("&")
    assert decode_meta(meta)["file"] == path
    assert decode_meta(meta)["note"] == "semi;colon"
    assert new.task.info == path  # the meta pass puts the raw value in the info


def test_file_task_meta_file_keys_win_over_the_rule(ctx: Context) -> None:
    phase = csv_phase(rule="files=/in/*.csv&file=other&filename=other&workflow=other")
    [new] = file_tasks(phase, "/in/x.csv", ctx)
    meta = decode_meta(new.task.meta)
    assert (meta["file"], meta["filename"], meta["workflow"]) == (
        "/in/x.csv", "x.csv", "ingest/csv.toml")


def test_file_task_for_a_gs_path(ctx: Context) -> None:
    phase = csv_phase(task="load", rule="files=gs://bucket/*/*.json",
                      template="gs://out/{yyyy}/{mm}/{meta:filename}")
    [new] = file_tasks(phase, "gs://bucket/2026-02-03/a.json", ctx)
    assert new.task.job == ""
    assert new.task.info == "gs://out/2026/02/a.json"
    assert decode_meta(new.task.meta)["filename"] == "a.json"


def test_file_task_filename_is_the_base_name(ctx: Context) -> None:
    """Go's filepath.Base: trailing slashes do not count."""
    [new] = file_tasks(csv_phase(rule="files=/in/*/"), "/in/dir/", ctx)
    assert decode_meta(new.task.meta)["filename"] == "dir"


def test_file_task_of_a_job_from_the_rule(ctx: Context) -> None:
    phase = csv_phase(task="load:daily", rule="files=/in/*.csv&job=daily")
    [new] = file_tasks(phase, "/in/x.csv", ctx)
    assert (new.task.type, new.task.job) == ("load", "daily")
    assert decode_meta(new.task.meta)["job"] == "daily"


@pytest.mark.parametrize("path", ["/in/2026/03/08/x.txt", "/in/2026/03/x.csv",
                                  "/in/2026/03/08/09/x.csv", "in/2026/03/08/x.csv", ""])
def test_file_task_for_a_path_that_does_not_match(ctx: Context, path: str) -> None:
    assert file_tasks(csv_phase(), path, ctx) == []


@pytest.mark.parametrize("rule", ["", "cron=0 * * * *", "job=csv", "file=/in/x.csv",
                                  "files=", "Files=/in/*.csv"])
def test_a_phase_without_files_starts_nothing(ctx: Context, rule: str) -> None:
    assert file_tasks(csv_phase(rule=rule), "/in/x.csv", ctx) == []


def test_a_malformed_files_pattern_starts_nothing(ctx: Context) -> None:
    assert file_tasks(csv_phase(rule="files=/in/[x.csv"), "/in/[x.csv", ctx) == []


# --- record_arrival ---------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    store = Store(str(tmp_path / "f.db"))
    yield store
    store.close()


def test_record_arrival_stores_the_file_and_its_task(db: Store, ctx: Context) -> None:
    path = "/in/2026/03/08/x.csv"
    with write_txn(db.conn):
        [new] = record_arrival(db, [csv_phase()], path, "watch", ctx)
    [(file_no, stored_path, source, received)] = store_rows(
        db, "SELECT file_no, path, source, received FROM file_messages")
    assert (stored_path, source) == (path, "watch")
    assert isinstance(received, str) and received.endswith("Z")
    [task] = store_rows(db, "SELECT id, type, job, info, meta, created, file_path, phase, attempt, "
                            "scheduled_for, started, file_no FROM tasks")
    assert task == (new.task.id, "load", "csv", new.task.info, new.task.meta,
                    "2026-03-09T06:30:15.000Z", "ingest/csv.toml", "load:csv", 0, None, None,
                    file_no)
    assert store_rows(db, "SELECT path, source, tasks, started FROM file_arrivals") == [
        (path, "watch", 1, "load:csv")]


def test_record_arrival_starts_every_matching_phase(db: Store, ctx: Context) -> None:
    phases = [
        csv_phase(),
        csv_phase(file_path="other.toml", task="copy", rule="files=/in/*/*/*/x.csv",
                  template="{meta:file}"),
        csv_phase(file_path="other.toml", task="audit:csv", rule="files=/in/2026/*/*/*",
                  template=""),
        csv_phase(file_path="third.toml", task="skip", rule="files=/in/*/*/*/*.txt"),
        csv_phase(file_path="third.toml", task="cron", rule="cron=0 * * * *"),
    ]
    with write_txn(db.conn):
        started = record_arrival(db, phases, "/in/2026/03/08/x.csv", "notify", ctx)
    assert [(n.file_path, n.phase) for n in started] == [
        ("ingest/csv.toml", "load:csv"), ("other.toml", "copy"), ("other.toml", "audit:csv")]
    [(file_no,)] = store_rows(db, "SELECT file_no FROM file_messages")
    assert store_rows(db, "SELECT file_path, phase, type, job, file_no FROM tasks "
                          "ORDER BY task_no") == [
        ("ingest/csv.toml", "load:csv", "load", "csv", file_no),
        ("other.toml", "copy", "copy", "", file_no),
        ("other.toml", "audit:csv", "audit", "csv", file_no)]
    assert len({n.task.id for n in started}) == 3
    [(tasks, names, source)] = store_rows(db, "SELECT tasks, started, source FROM file_arrivals")
    assert (tasks, source) == (3, "notify")
    assert sorted(str(names).split(" ")) == ["audit:csv", "copy", "load:csv"]


def test_record_arrival_of_a_file_nothing_wants(db: Store, ctx: Context) -> None:
    with write_txn(db.conn):
        assert record_arrival(db, [csv_phase()], "/elsewhere/x.csv", "notify", ctx) == []
        assert record_arrival(db, [], "/in/2026/03/08/x.csv", "watch", ctx) == []
    assert store_rows(db, "SELECT path, source, tasks, started FROM file_arrivals") == [
        ("/in/2026/03/08/x.csv", "watch", 0, ""), ("/elsewhere/x.csv", "notify", 0, "")]
    assert store_rows(db, "SELECT count(*) FROM tasks") == [(0,)]


def test_each_arrival_is_its_own_file_message(db: Store, ctx: Context) -> None:
    path = "/in/2026/03/08/x.csv"
    with write_txn(db.conn):
        record_arrival(db, [csv_phase()], path, "watch", ctx)
        record_arrival(db, [csv_phase()], path, "watch", ctx)
    counts = store_rows(db, "SELECT m.file_no, count(t.task_no) FROM file_messages m "
                            "JOIN tasks t ON t.file_no = m.file_no GROUP BY m.file_no")
    assert len(counts) == 2 and all(n == 1 for _, n in counts)


def test_record_arrival_is_rolled_back_with_its_transaction(db: Store, ctx: Context) -> None:
    with pytest.raises(RuntimeError), write_txn(db.conn):
        record_arrival(db, [csv_phase()], "/in/2026/03/08/x.csv", "watch", ctx)
        raise RuntimeError("later step failed")
    assert store_rows(db, "SELECT count(*) FROM file_messages") == [(0,)]
    assert store_rows(db, "SELECT count(*) FROM tasks") == [(0,)]


def test_an_arrived_file_follows_its_phases_overlap(db: Store, ctx: Context) -> None:
    skip = csv_phase(rule="files=/in/*/*/*/*.csv&overlap=skip")
    with write_txn(db.conn):
        first = record_arrival(db, [skip], "/in/2026/03/08/a.csv", "watch", ctx)
        second = record_arrival(db, [skip], "/in/2026/03/08/b.csv", "watch", ctx)
    assert (len(first), second) == (1, [])  # the first file's task has not ended
    assert store_rows(db, "SELECT path, tasks FROM file_arrivals ORDER BY path") == [
        ("/in/2026/03/08/a.csv", 1), ("/in/2026/03/08/b.csv", 0)]
    replace = csv_phase(rule="files=/in/*/*/*/*.csv&overlap=replace")
    with write_txn(db.conn):
        [third] = record_arrival(db, [replace], "/in/2026/03/08/c.csv", "watch", ctx)
    assert store_rows(db, "SELECT info LIKE '%a.csv%', result, msg FROM tasks ORDER BY 1") == [
        (0, None, ""), (1, "error", "cancelled by overlap")]
