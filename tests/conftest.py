"""Shared fixtures: anyio backends, gRPC servers on 127.0.0.1, telemetry recorders."""

from __future__ import annotations

import os

# grpc core's info lines (a GOAWAY seen, ...) would drown the output of -s runs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import itertools
from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest
import structlog

from conngrpc._server import ServerProcess, start_server
from tests._probe import EventLog, recording

pytest_plugins = ["tests._time_limits"]

_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests/live last: once its session-long asyncio loop exists, anyio's pytest
    plugin would run every later async test on it, trio ones included."""
    items.sort(key=lambda item: "/tests/live/" in str(item.path))


@pytest.fixture(autouse=True)
def _structlog_unconfigured() -> Iterator[None]:
    """Each test starts with structlog as a fresh process has it: not configured.

    structlog.testing.capture_logs leaves structlog configured (with its default
    processors) when it ends, and conngrpc logs through a configured structlog: every
    later test's crash logs were then rendered by structlog's development renderer, whose
    tracebacks (rich, with each frame's source and locals) took 0.14 to 0.54 s of CPU
    each. A crash-loop test took 1.4 to 1.9 s on a quiet machine instead of 20 ms, and
    ran past its 5 s waits on a busy one.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio: grpc.aio, and so every pool, is asyncio-only.

    A module marked ``both_backends`` runs its async tests on trio too (see below).
    """
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each async test of a module marked ``both_backends`` (backend-neutral code: the
    supervisor, the registry) runs once on asyncio and once on trio, unless the test
    parametrizes ``anyio_backend`` itself."""
    if "anyio_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_backends") is None:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "anyio_backend" in names:
            return
    metafunc.parametrize("anyio_backend", ["asyncio", "trio"])


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
