"""Shared fixtures: anyio backends, gRPC servers on 127.0.0.1, telemetry recorders."""

from __future__ import annotations

import os

# grpc core's info lines (a GOAWAY seen, ...) would drown the output of -s runs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import itertools
from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest

from conngrpc._server import ServerProcess, start_server
from tests._probe import EventLog, recording

pytest_plugins = ["tests._time_limits"]

_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests/live last: once its session-long asyncio loop exists, anyio's pytest
    plugin would run every later async test on it, trio ones included."""
    items.sort(key=lambda item: "/tests/live/" in str(item.path))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Backend-neutral tests run once on asyncio and once on trio.

    Modules that use grpc.aio (asyncio only) override this with ``"asyncio"``.
    """
    return str(request.param)


@pytest.fixture
def pool_name(request: pytest.FixtureRequest) -> str:
    """A pool name no other test uses (pools register their names process-wide)."""
    return f"{request.node.name}-{next(_names)}"


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    """A gRPC server in a child process, which the test may kill, pause and restart."""
    with ServerProcess() as server:
        yield server


@pytest.fixture
async def grpc_server() -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    """An in-process grpc.aio server on 127.0.0.1 and its address."""
    server, port = await start_server()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


CHANNEL_EVENTS = [
    ("conngrpc", "channel", "connected"),
    ("conngrpc", "channel", "connection_failed"),
    ("conngrpc", "channel", "disconnected"),
    ("conngrpc", "channel", "health_changed"),
    ("conngrpc", "channel", "get"),
    ("conngrpc", "pool", "get_channel"),
    ("conngrpc", "pool", "status"),
]


@pytest.fixture
def channel_events() -> Iterator[EventLog]:
    """Every channel and pool telemetry event emitted during the test."""
    with recording(CHANNEL_EVENTS) as log:
        yield log
