"""Tests against live gRPC servers share one asyncio event loop.

grpc.aio binds its completion-queue poller to the event loop that first uses it; a
later loop may then receive events for a closed one ("Event loop is closed"). So every
test in this folder runs in one session-long loop (the root conftest orders them after
all other tests, whose trio runs must not land on this asyncio runner).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio is asyncio-only


@pytest.fixture(scope="session")
async def _one_event_loop_for_grpc() -> AsyncIterator[None]:
    yield  # noqa: PT022 - the yield keeps the loop alive for the whole session


@pytest.fixture(autouse=True)
def _async_tests_share_the_loop(request: pytest.FixtureRequest) -> None:
    """Async tests run on the session's loop; sync ones need none (pytest refuses a sync
    test an async fixture, so that one cannot be autouse itself)."""
    function = request.function
    # A hypothesis test is a sync wrapper around the async test it runs.
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    if inspect.iscoroutinefunction(function):
        request.getfixturevalue("_one_event_loop_for_grpc")
