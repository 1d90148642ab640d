"""flowlord/aside.py: one job aside per key, freed however the job or its thread ends."""

from __future__ import annotations

import threading

import pytest

from flowlord.aside import Aside
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
