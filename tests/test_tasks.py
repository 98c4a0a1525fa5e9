"""Telling grpc's own CancelledError from a real cancellation."""

from __future__ import annotations

import asyncio

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


async def test_a_real_cancellation_is_raised_again() -> None:
    reached_after = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(10)
        except asyncio.CancelledError:
            await reraise_if_cancelled()
            reached_after = True
    assert scope.cancelled_caught
    assert not reached_after


async def test_a_deadline_that_passed_is_raised_again() -> None:
    reached_after = False
    with anyio.move_on_after(0.01) as scope:
        try:
            await anyio.sleep(10)
        except asyncio.CancelledError:
            await reraise_if_cancelled()
            reached_after = True
    assert scope.cancelled_caught
    assert not reached_after
