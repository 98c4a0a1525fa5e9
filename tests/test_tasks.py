"""Telling grpc's own CancelledError from a real cancellation; tasks that let go of
what they held when they end by an exception."""

from __future__ import annotations

import asyncio
import sys
import traceback
import weakref
from collections.abc import Callable

import anyio
import pytest

from conngrpc._tasks import clear_frames, clearing_frames, reraise_if_cancelled
from tests._garbage import collector_paused

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


async def test_a_cancelled_error_nobody_asked_for_is_absorbed() -> None:
    absorbed = False
    try:
        raise asyncio.CancelledError  # as grpc.aio raises for a call it cancelled
    except asyncio.CancelledError:
        await reraise_if_cancelled()
        absorbed = True
    assert absorbed


def cancelled_scope() -> anyio.CancelScope:
    scope = anyio.CancelScope()
    scope.cancel()
    return scope


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param(cancelled_scope, id="a-real-cancellation"),
        pytest.param(lambda: anyio.move_on_after(0.01), id="a-deadline-that-passed"),
    ],
)
async def test_a_cancellation_of_the_task_is_raised_again(
    scope: Callable[[], anyio.CancelScope],
) -> None:
    reached_after = False
    with scope() as cancelling:
        try:
            await anyio.sleep(10)
        except asyncio.CancelledError:
            await reraise_if_cancelled()
            reached_after = True
    assert cancelling.cancelled_caught
    assert not reached_after


class Held:
    """Something a task holds, like a channel, whose freeing a weak reference sees."""


async def hold(thing: Held, started: anyio.Event) -> None:
    also_held = thing  # a local of its own, besides the argument  # noqa: F841
    started.set()
    await anyio.sleep_forever()


async def hold_and_crash(thing: Held) -> None:
    also_held = thing  # noqa: F841
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("crashed on purpose")


async def test_a_cancelled_task_lets_go_of_what_it_held_at_once() -> None:
    """anyio keeps a cancelled task's CancelledError, and so its frames, in a cycle."""
    with collector_paused():
        thing = Held()
        freed = weakref.ref(thing)
        started = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(clearing_frames, hold, thing, started)
            await started.wait()
            tasks.cancel_scope.cancel()
        del thing
        assert freed() is None


async def test_a_crashed_task_lets_go_of_what_it_held_and_its_traceback_still_reads() -> None:
    with collector_paused():
        thing = Held()
        freed = weakref.ref(thing)
        with pytest.raises(BaseExceptionGroup) as raised:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(clearing_frames, hold_and_crash, thing)
        del thing
        assert freed() is None  # while the crash, and its traceback, are still here
        (crash,) = raised.value.exceptions
        text = "".join(traceback.format_exception(type(crash), crash, crash.__traceback__))
        assert "in hold_and_crash" in text
        assert 'raise RuntimeError("crashed on purpose")' in text


def raised_holding(thing: Held) -> ValueError:
    """An error whose traceback's frames hold ``thing``."""

    def failing(held: Held) -> None:
        raise ValueError("holds")

    try:
        failing(thing)
    except ValueError as error:
        return error
    raise AssertionError("failing() returned")


def test_clear_frames_follows_causes_contexts_and_group_members() -> None:
    first, second = Held(), Held()
    freed = [weakref.ref(first), weakref.ref(second)]
    error = RuntimeError("top")
    error.__cause__ = BaseExceptionGroup("group", [raised_holding(first)])
    error.__context__ = raised_holding(second)
    del first, second
    assert [ref() is not None for ref in freed] == [True, True]
    clear_frames(error)
    assert [ref() is None for ref in freed] == [True, True]
