"""Commands from other threads, applied by the loop (flowlord/commands.py): in order,
each answered once; one the loop cannot apply in time is withdrawn and changes
nothing, even when a locked database keeps putting it back; the stop answers the
rest."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import apsw
import pytest

from flowlord import logs
from flowlord.commands import Commands, DaemonBusy


def looping(commands: Commands) -> tuple[threading.Event, threading.Thread]:
    """A stand-in for the daemon's loop: applies the queue until told to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.01):
            commands.apply_queued(logs.get("test"))

    thread = threading.Thread(target=loop)
    thread.start()
    return stop, thread


def test_commands_are_applied_in_order_and_answered() -> None:
    commands = Commands(lambda: None)
    stop, thread = looping(commands)
    try:
        assert [commands.ask("trigger", "t", lambda n=n: n * 2, 30) for n in range(5)] == [
            0, 2, 4, 6, 8]

        def fails() -> None:
            raise ValueError("no such phase")

        with pytest.raises(ValueError, match="no such phase"):
            commands.ask("trigger", "t", fails, 30)
    finally:
        stop.set()
        thread.join()


def test_a_command_a_locked_database_keeps_putting_back_is_withdrawn_in_time() -> None:
    commands = Commands(lambda: None)
    tries: list[int] = []

    def locked() -> None:
        tries.append(1)
        raise apsw.BusyError("database is locked")

    stop, thread = looping(commands)
    try:
        with pytest.raises(DaemonBusy, match="nothing was changed"):
            commands.ask("refresh", "t", locked, 0.3)
        assert tries and not commands.waiting  # tried, put back, then withdrawn
        assert commands.ask("refresh", "t", lambda: "next", 30) == "next"  # the queue moves
    finally:
        stop.set()
        thread.join()


def test_the_stop_answers_every_queued_command_without_applying_it() -> None:
    commands = Commands(lambda: None)
    applied: list[bool] = []
    answers: list[Any] = []

    def ask(apply: Callable[[], None]) -> None:
        try:
            commands.ask("trigger", "t", apply, 60)
        except DaemonBusy as e:
            answers.append(str(e))

    asking = threading.Thread(target=ask, args=(lambda: applied.append(True),))
    asking.start()
    while not commands.waiting:
        asking.join(0.01)
    commands.fail_queued()
    asking.join(30)
    assert not asking.is_alive()
    assert applied == [] and answers == ["the daemon stopped before the trigger; nothing "
                                         "was changed"]
