"""The fixtures of "Testing your code" (docs/testing.md), run as a user runs them.

pytest-asyncio sets an async fixture up in one task and tears it down in another;
anyio's pytest plugin does both in one. A pool in a fixture must serve the test and
stop cleanly at teardown under both: an error at teardown fails the run. Each fixture
here is written as in the docs, against a grpc.aio server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
import pytest_asyncio
from anyio.abc import TaskStatus

from conngrpc import (
    ChildSpec,
    Pool,
    PoolNotStartedError,
    Supervisor,
    SupervisorGaveUpError,
)
from conngrpc._server import peer_of, start_server
from tests._probe import wait_until


async def _serve() -> AsyncIterator[str]:
    server, port = await start_server()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _a_call_is_served(name: str) -> None:
    await Pool.wait_connected(name, timeout=10)
    peer = await peer_of(Pool.get_channel(name))
    assert peer.startswith("ipv4:127.0.0.1:")


def _stopped(sup: Supervisor, name: str) -> None:
    """What teardown must have done: the pool is gone, every child ended."""
    assert "stopped" in repr(sup)
    assert not any(info.running for info in sup.which_children())
    with pytest.raises(PoolNotStartedError):
        Pool.get_channel(name)


# --- pytest-asyncio: set-up and teardown in two tasks -----------------------------------


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    async for address in _serve():
        yield address


@pytest_asyncio.fixture
async def after_teardown(pool_name: str) -> AsyncIterator[list[Supervisor]]:
    """Torn down after the pool fixture that requests it: checks that it stopped."""
    seen: list[Supervisor] = []
    yield seen
    (sup,) = seen
    _stopped(sup, pool_name)


@pytest_asyncio.fixture
async def pool(
    server: str, pool_name: str, after_teardown: list[Supervisor]
) -> AsyncIterator[Supervisor]:
    async with Supervisor(
        [Pool.child_spec(name=pool_name, pool_size=2, channel={"address": server})]
    ) as sup:
        after_teardown.append(sup)
        yield sup


@pytest_asyncio.fixture
async def started_pool(
    server: str, pool_name: str, after_teardown: list[Supervisor]
) -> AsyncIterator[Supervisor]:
    sup = Supervisor([Pool.child_spec(name=pool_name, pool_size=2, channel={"address": server})])
    await sup.start()
    after_teardown.append(sup)
    try:
        yield sup
    finally:
        await sup.aclose()


@pytest.mark.asyncio
async def test_a_pool_in_a_pytest_asyncio_fixture_serves_and_stops(
    pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)


@pytest.mark.asyncio
async def test_a_pool_started_and_closed_in_a_pytest_asyncio_fixture_serves_and_stops(
    started_pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)


async def _crash(*, task_status: TaskStatus[None]) -> None:
    task_status.started()
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("crashes at once")


@pytest.mark.asyncio
async def test_a_give_up_is_raised_where_the_block_is_left_in_another_task() -> None:
    """As pytest-asyncio does: entered in one task, left in another, each then gone."""
    sup = Supervisor([ChildSpec("fragile", _crash)], max_restarts=0, name="fragile")
    await asyncio.create_task(sup.__aenter__())
    await wait_until(lambda: "stopped" in repr(sup))
    with pytest.raises(SupervisorGaveUpError, match="'fragile' gave up"):
        await asyncio.create_task(sup.__aexit__(None, None, None))


# --- anyio's plugin: set-up and teardown in one task --------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio is asyncio-only


@pytest.fixture
async def anyio_server() -> AsyncIterator[str]:
    async for address in _serve():
        yield address


@pytest.fixture
async def anyio_pool(anyio_server: str, pool_name: str) -> AsyncIterator[Supervisor]:
    async with Supervisor(
        [Pool.child_spec(name=pool_name, pool_size=2, channel={"address": anyio_server})]
    ) as sup:
        yield sup
    _stopped(sup, pool_name)


@pytest.mark.anyio
async def test_a_pool_in_an_anyio_fixture_serves_and_stops(
    anyio_pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)
