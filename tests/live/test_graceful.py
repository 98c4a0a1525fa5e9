"""Graceful shutdowns, at either end: calls in flight finish, within a grace.

The server's end: ``ServerProcess.terminate`` sends SIGTERM, and the server sends
GOAWAY, refuses new calls and stops once its calls are done (within ``--grace``).
The client's end: leaving the supervisor stops the pool, and each channel lets its
calls run for ``ChannelConfig.shutdown_grace`` seconds before cancelling them.

Calls are started in a task group around the pool, so that they can still be running
while the pool stops. Each test first makes sure its calls are in flight: after the
calls, a Peer call over the same connection returns, so the server has taken them
(streams on one connection arrive in order).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import NotConnectedError, Pool
from conngrpc._server import SLEEP_METHOD, ServerProcess, peer_of
from conngrpc.channel.connector import raw_unary
from tests._net import established_sockets
from tests._probe import EventLog, wait_until
from tests.live.test_pool_servers import pool, port_of

pytestmark = pytest.mark.anyio

#: How long the calls in flight take on the server.
CALL_MS = 300
#: What the server gives its calls in flight when it is told to stop.
SERVER_GRACE = 5.0
#: Slack for the timings under test (a busy 2-core machine), far below what is at stake.
SLACK = 0.8


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: "ok", a grpc status code's name, or "CancelledError"; and when."""

    result: str
    ended: float


async def sleep_call(channel: grpc.aio.Channel, ms: int, outcomes: list[Outcome]) -> None:
    """A call the server answers after ``ms`` milliseconds; its outcome goes to ``outcomes``."""
    call = raw_unary(channel, SLEEP_METHOD)
    try:
        await call(str(ms).encode(), timeout=30)
        result = "ok"
    except grpc.aio.AioRpcError as error:
        result = error.code().name
    except asyncio.CancelledError:
        if _this_task_is_being_cancelled():
            raise
        # grpc.aio raises a bare CancelledError for a call its channel cancelled.
        result = "CancelledError"
    outcomes.append(Outcome(result, time.monotonic()))


def _this_task_is_being_cancelled() -> bool:
    """Whether the CancelledError is this task's own cancellation, not grpc's for the call.

    A cancelled anyio scope around the task shows as a deadline of minus infinity, on
    every Python; a bare ``Task.cancel()`` shows only in ``Task.cancelling()`` (3.11+).
    """
    if anyio.current_effective_deadline() == -math.inf:
        return True
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return False


async def in_flight(channels: list[grpc.aio.Channel]) -> None:
    """Return once the server has taken every call started so far over ``channels``."""
    for channel in channels:
        await peer_of(channel)


async def sigterm(server: ServerProcess) -> None:
    """Stop the server gracefully and wait until it has exited (in a thread: it blocks)."""
    await anyio.to_thread.run_sync(server.terminate)


def _channel_or_none(name: str) -> grpc.aio.Channel | None:
    try:
        return Pool.get_channel(name)
    except NotConnectedError:
        return None


def lost(events: EventLog) -> list[dict[str, object]]:
    return [m for m in events.of("disconnected") if m["reason"] == "connection_lost"]


# --- the server shuts down gracefully ------------------------------------------------


async def test_calls_in_flight_complete_when_the_server_shuts_down_gracefully(
    pool_name: str,
) -> None:
    outcomes: list[Outcome] = []
    with ServerProcess(args=["--grace", str(SERVER_GRACE)]) as server:
        async with pool(pool_name, server.address, 2):
            await Pool.wait_connected(pool_name, timeout=5)
            channels = [Pool.get_channel(pool_name) for _ in range(2)]
            async with anyio.create_task_group() as tg:
                for index in range(6):
                    tg.start_soon(sleep_call, channels[index % 2], CALL_MS, outcomes)
                await in_flight(channels)
                terminated = time.monotonic()
                tg.start_soon(sigterm, server)
            print(
                f"SIGTERM -> server gone and calls done: {time.monotonic() - terminated:.3f} s; "
                f"outcomes {[o.result for o in outcomes]}"
            )
    assert len(outcomes) == 6
    assert all(o.ended > terminated for o in outcomes)  # they were in flight
    assert [o.result for o in outcomes] == ["ok"] * 6


async def test_a_draining_server_leaves_the_pool_and_its_replacement_is_reconnected_to(
    pool_name: str, channel_events: EventLog
) -> None:
    outcomes: list[Outcome] = []
    with ServerProcess(args=["--grace", str(SERVER_GRACE)]) as server:
        async with pool(pool_name, server.address, 2):
            await Pool.wait_connected(pool_name, timeout=5)
            draining = [Pool.get_channel(pool_name) for _ in range(2)]
            async with anyio.create_task_group() as tg:
                for channel in draining:  # keep both connections busy while they drain
                    tg.start_soon(sleep_call, channel, 3 * CALL_MS, outcomes)
                await in_flight(draining)
                terminated = time.monotonic()
                tg.start_soon(sigterm, server)

                await wait_until(lambda: len(lost(channel_events)) == 2, timeout=2)
                noticed = time.monotonic() - terminated
                workers_left = Pool.get_all_workers(pool_name)
                handed_out = _channel_or_none(pool_name)
            print(f"SIGTERM -> both channels left the pool: {noticed:.3f} s")
            assert workers_left == []
            assert handed_out is None

            await anyio.to_thread.run_sync(server.start)  # on the same port
            restarted = time.monotonic()
            await Pool.wait_connected(pool_name, timeout=5)
            print(f"replacement started -> pool connected: {time.monotonic() - restarted:.3f} s")
            fresh = [Pool.get_channel(pool_name) for _ in range(2)]
            assert not set(fresh) & set(draining)
            assert len({await peer_of(channel) for channel in fresh}) == 2
    reasons = sorted(m["reason"] for m in channel_events.of("disconnected"))
    assert reasons == ["connection_lost", "connection_lost", "shutdown", "shutdown"]  # no crash


# --- the client leaves the supervisor ------------------------------------------------


async def test_calls_in_flight_when_the_supervisor_is_left_finish_within_the_shutdown_grace(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    grace = 2.0
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        async with pool(pool_name, address, 2, shutdown_grace=grace):
            await Pool.wait_connected(pool_name, timeout=5)
            channels = [Pool.get_channel(pool_name) for _ in range(2)]
            for index in range(6):
                tg.start_soon(sleep_call, channels[index % 2], CALL_MS, outcomes)
            await in_flight(channels)
            leaving = time.monotonic()
        left = time.monotonic() - leaving
    print(f"leaving the supervisor with {CALL_MS} ms calls in flight took {left:.3f} s")
    assert len(outcomes) == 6
    assert all(o.ended > leaving for o in outcomes)  # they were in flight
    assert [o.result for o in outcomes] == ["ok"] * 6
    assert left < grace
    await wait_until(lambda: established_sockets(port_of(address)) == 0, timeout=2)


async def test_a_call_still_running_when_the_shutdown_grace_runs_out_is_cancelled_by_grpc(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    grace = 0.2
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        async with pool(pool_name, address, 2, shutdown_grace=grace):
            await Pool.wait_connected(pool_name, timeout=5)
            channel = Pool.get_channel(pool_name)
            tg.start_soon(sleep_call, channel, 5000, outcomes)
            await in_flight([channel])
            leaving = time.monotonic()
        left = time.monotonic() - leaving
    assert len(outcomes) == 1
    print(
        f"leaving with a 5 s call in flight and a {grace} s grace took {left:.3f} s; "
        f"the call ended after {outcomes[0].ended - leaving:.3f} s with {outcomes[0].result}"
    )
    assert grace - 0.05 <= left < grace + SLACK
    assert outcomes[0].ended - leaving < grace + SLACK
    # grpc.aio cancels the calls a closing channel still carries: the caller's await
    # raises a bare asyncio.CancelledError (documented in docs/reliability.md).
    assert outcomes[0].result == "CancelledError"
    await wait_until(lambda: established_sockets(port_of(address)) == 0, timeout=2)


async def test_calls_on_every_channel_are_cancelled_after_one_grace_not_one_per_channel(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    grace, size = 0.5, 4
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        async with pool(pool_name, address, size, shutdown_grace=grace):
            await Pool.wait_connected(pool_name, timeout=5)
            channels = [Pool.get_channel(pool_name) for _ in range(size)]
            for channel in channels:
                tg.start_soon(sleep_call, channel, 5000, outcomes)
            await in_flight(channels)
            leaving = time.monotonic()
        left = time.monotonic() - leaving
    ended = sorted(o.ended - leaving for o in outcomes)
    print(
        f"leaving a pool of {size} with a 5 s call on each channel and a {grace} s grace "
        f"took {left:.3f} s; calls ended after {', '.join(f'{t:.3f}' for t in ended)} s"
    )
    assert len(outcomes) == size
    assert left < grace + SLACK
    assert max(ended) < grace + SLACK
