"""A `flowlord worker` posts a result and takes its next task in one round trip
(flowlord/bus/wire.py, POST_AND_TAKE), against a real redis-server: what the script
writes, what it answers for the next message, and a worker that acts on it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowlord.bus.wire import (
    DONE_STREAM,
    RUN_MARK_TTL_MS,
    WORKERS_GROUP,
    cancel_key,
    encode_done,
    encode_task,
    ensure_group,
    mark_value,
    post_and_take,
    run_key,
    task_stream,
)
from flowlord.bus.worker import CANCELLED
from flowlord.model import Done
from tests.redis_server import RedisServer
from tests.test_bus import RedisHarness, results, stored, worker

pytestmark = pytest.mark.slow

STREAM = task_stream("t")


def published(client: Any, *task_nos: int | str) -> list[str]:
    """Task messages on the topic's stream, as a daemon publishes them (a task number
    given as text is written as it is); their ids."""
    ensure_group(client, STREAM, WORKERS_GROUP)
    ids = []
    for no in task_nos:
        fields = encode_task(stored(int(no)), None, DONE_STREAM)
        fields["task_no"] = str(no)
        ids.append(client.xadd(STREAM, fields))
    return ids


def taken(client: Any, consumer: str = "w") -> str:
    """The next message read by `consumer`, marked as TAKE_RUN marks it; its id."""
    [[_, [(receipt, fields)]]] = client.xreadgroup(WORKERS_GROUP, consumer, {STREAM: ">"},
                                                   count=1)
    client.set(run_key(DONE_STREAM, int(fields["task_no"])), mark_value(receipt, consumer),
               px=RUN_MARK_TTL_MS)
    return str(receipt)


def done(no: int) -> Done:
    return Done(no, "complete", "", "2026-12-04T00:00:01.000Z", "2026-12-04T00:00:00.000Z")


def test_the_result_is_posted_its_mark_released_and_the_next_task_taken(
        redis_server: RedisServer) -> None:
    client = redis_server.client()
    first, second = published(client, 1, 2)
    assert taken(client) == first
    answer = post_and_take(client, STREAM, "w", first, (DONE_STREAM, done(1)), read=True)
    assert answer is not None
    receipt, fields, checked = answer
    assert (receipt, checked) == (second, (False, True))
    assert fields == encode_task(stored(2), None, DONE_STREAM)
    [(_, posted)] = client.xrange(DONE_STREAM)
    assert posted == encode_done(done(1))
    assert client.get(run_key(DONE_STREAM, 1)) is None  # released with the result
    assert client.get(run_key(DONE_STREAM, 2)) == mark_value(second, "w")
    assert 0 < client.pttl(run_key(DONE_STREAM, 2)) <= RUN_MARK_TTL_MS
    assert [e[0] for e in client.xrange(STREAM)] == [second]  # the first deleted
    assert [p["message_id"] for p in client.xpending_range(
        STREAM, WORKERS_GROUP, "-", "+", 10)] == [second]  # and acknowledged


def test_the_next_task_cancelled_or_run_by_another_message_is_said_so(
        redis_server: RedisServer) -> None:
    client = redis_server.client()
    ids = published(client, 1, 2, 3, 4)
    receipt = taken(client)
    client.sadd(cancel_key(DONE_STREAM), 2)
    client.set(run_key(DONE_STREAM, 3), "1-1 another-worker")  # another message's run
    # a worker gone quiet ran the fourth from this same message: taken over
    client.set(run_key(DONE_STREAM, 4), mark_value(ids[3], "gone-quiet"))
    answers = []
    for no in (1, 2, 3):
        answer = post_and_take(client, STREAM, "w", receipt, (DONE_STREAM, done(no)),
                               read=True)
        assert answer is not None
        receipt = answer[0]
        answers.append((answer[0], answer[2]))
    assert answers == [(ids[1], (True, True)), (ids[2], (False, False)),
                       (ids[3], (False, True))]
    assert client.get(run_key(DONE_STREAM, 3)) == "1-1 another-worker"  # left as it was
    assert client.get(run_key(DONE_STREAM, 4)) == mark_value(ids[3], "w")


def test_a_run_another_run_superseded_posts_nothing_and_leaves_that_runs_mark(
        redis_server: RedisServer) -> None:
    client = redis_server.client()
    [first] = published(client, 1)
    assert taken(client) == first
    client.set(run_key(DONE_STREAM, 1), "9-9 the-other-run")
    assert post_and_take(client, STREAM, "w", first, None, read=True) is None
    assert client.xlen(DONE_STREAM) == 0
    assert client.get(run_key(DONE_STREAM, 1)) == "9-9 the-other-run"
    assert client.xlen(STREAM) == 0  # its message is done with all the same


def test_a_task_number_flowlord_never_writes_is_left_to_the_worker_to_check(
        redis_server: RedisServer) -> None:
    """The marks' keys are made from the task number read as a number: the script takes
    no mark for a number written otherwise (`007`), and says it did not check."""
    client = redis_server.client()
    first, odd = published(client, 1, "007")
    assert taken(client) == first
    answer = post_and_take(client, STREAM, "w", first, (DONE_STREAM, done(1)), read=True)
    assert answer is not None and answer[0] == odd and answer[2] is None
    assert list(client.scan_iter("flowlord:run:*")) == []
    # a field given twice counts as the worker reads it: the last
    twice = client.execute_command("XADD", STREAM, "*", "task_no", "5", "task_no", "6")
    answer = post_and_take(client, STREAM, "w", odd, (DONE_STREAM, done(7)), read=True)
    assert answer is not None and answer[0] == twice and answer[1]["task_no"] == "6"
    assert list(client.scan_iter("flowlord:run:*")) == [run_key(DONE_STREAM, 6)]
    # and without a next message, none is read
    assert post_and_take(client, STREAM, "w", twice, None, read=True) is None
    assert client.xlen(DONE_STREAM) == 2


def test_a_worker_does_not_start_a_task_its_daemon_ended_while_it_waited(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """With one slot, the second task is read by the round trip that posts the first's
    result: the cancel it answers keeps the second from running."""
    go, ran = tmp_path / "go", tmp_path / "ran"
    script = ("import os, sys, time\n"
              "open(sys.argv[2], 'a').write(sys.argv[3] + '\\n')\n"
              "while sys.argv[3] == 'first' and not os.path.exists(sys.argv[1]):\n"
              "    time.sleep(0.01)\n")
    harness = RedisHarness(redis_server, {"t": worker(sys.executable, "-c", script, str(go),
                                                     str(ran), "{info}", concurrency=1)})
    try:
        harness.send([(stored(1, info="first"), None), (stored(2, info="second"), None)])
        end = time.monotonic() + 30
        while not ran.exists():  # the first runs; the second waits for the slot
            assert time.monotonic() < end, "the first task did not start"
            time.sleep(0.01)
        assert harness.bus.stop(2, "cancelled")
        go.touch()
        first, second = results(harness, 2)
    finally:
        harness.close(0)
    assert (first.result, second.result, second.msg) == ("complete", "error", CANCELLED)
    assert ran.read_text() == "first\n"


def test_an_unreadable_next_message_is_dropped_and_the_mark_it_was_given_released(
        redis_server: RedisServer, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = ("import os, sys, time\n"
              "while not os.path.exists(sys.argv[1]):\n"
              "    time.sleep(0.01)\n")
    harness = RedisHarness(redis_server, {"t": worker(sys.executable, "-c", script, str(go),
                                                     concurrency=1)})
    client = redis_server.client()
    try:
        harness.send([(stored(1), None)])
        # read with the first one's result: a task number as flowlord writes it, no task
        client.xadd(STREAM, {"task_no": "2", "task": "not json", "reply_to": DONE_STREAM})
        go.touch()
        [first] = results(harness, 1)
        end = time.monotonic() + 30
        while client.xlen(STREAM):  # acknowledged and deleted once dropped
            assert time.monotonic() < end, "the unreadable message was not dropped"
            time.sleep(0.01)
    finally:
        harness.close(0)
    assert first.result == "complete"
    assert list(client.scan_iter("flowlord:run:*")) == []
