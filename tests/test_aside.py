"""flowlord/aside.py: one job aside per key, freed however the job or its thread ends."""

from __future__ import annotations

import sys
import threading

import pytest

from flowlord.aside import COURTEOUS_SWITCH, Aside
from tests.helpers import wait_for


def test_a_key_runs_one_job_at_a_time_and_is_free_once_it_ends() -> None:
    aside, gate, ran = Aside("test-aside"), threading.Event(), []

    def held() -> None:
        assert gate.wait(30)
        ran.append("first")
    assert aside.run("k", held, lambda: None)
    assert not aside.run("k", lambda: ran.append("second"), lambda: None)  # under way
    assert aside.run("other", lambda: ran.append("other"), lambda: None)
    gate.set()
    wait_for(lambda: not aside.busy("k") and not aside.busy("other"))
    assert sorted(ran) == ["first", "other"]
    assert aside.run("k", lambda: ran.append("again"), lambda: None)
    wait_for(lambda: "again" in ran)


def test_a_job_that_raises_calls_failed_quietly_and_frees_its_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    aside, failed, hooked = Aside("test-aside"), threading.Event(), []
    monkeypatch.setattr(threading, "excepthook", hooked.append)  # a traceback would go here

    def broken() -> None:
        raise RuntimeError("cannot compute")
    assert aside.run("k", broken, failed.set)
    assert failed.wait(30)
    wait_for(lambda: not aside.busy("k"))
    assert hooked == []


def test_no_thread_to_be_had_leaves_the_key_free(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")
    aside = Aside("test-aside")
    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", refused)
        assert not aside.run("k", lambda: None, lambda: None)
    assert not aside.busy("k")
    done = threading.Event()
    assert aside.run("k", done.set, lambda: None)  # a later request tries again
    assert done.wait(30)


def test_while_any_job_runs_aside_threads_switch_often_and_as_before_once_none_does(
        ) -> None:
    """A request waits for the interpreter after each read of the database: at the usual
    5 ms switch interval, behind a job of seconds of Python, an agenda page took 650 ms."""
    # a job of a test before may still be running aside; none may have left it set
    wait_for(lambda: sys.getswitchinterval() != COURTEOUS_SWITCH)
    usual = sys.getswitchinterval()
    aside, gates, seen = Aside("test-aside"), [threading.Event(), threading.Event()], []

    def job(gate: threading.Event) -> None:
        seen.append(sys.getswitchinterval())
        assert gate.wait(30)

    def broken() -> None:
        seen.append(sys.getswitchinterval())
        raise RuntimeError("cannot compute")
    assert aside.run("a", lambda: job(gates[0]), lambda: None)
    wait_for(lambda: len(seen) == 1)
    assert aside.run("b", lambda: job(gates[1]), lambda: None)
    wait_for(lambda: len(seen) == 2)
    gates[0].set()  # one of two ends: the other still runs
    wait_for(lambda: not aside.busy("a"))
    assert sys.getswitchinterval() == COURTEOUS_SWITCH
    gates[1].set()
    wait_for(lambda: not aside.busy("b"))
    assert sys.getswitchinterval() == usual
    failed = threading.Event()
    assert aside.run("c", broken, failed.set)  # a job that raises gives it back too
    assert failed.wait(30)
    wait_for(lambda: not aside.busy("c"))
    assert seen == [COURTEOUS_SWITCH] * 3 and sys.getswitchinterval() == usual
