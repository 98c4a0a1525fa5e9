"""Telling grpc's own CancelledError from a real cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest

from conngrpc._tasks import reraise_if_cancelled

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
