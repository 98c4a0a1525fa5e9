"""The Pool behind a faulty network path: one test per fault of ``tests._proxy.FaultProxy``.

Each test runs a real server in this process (the proxy is what fails, not the
server) and a pool connected through the proxy, injects one fault and checks four
things: the pool's state (a channel behind a broken connection is never handed out),
the telemetry (what happened and why), the calls (each succeeds or fails fast with a
clear error) and the recovery (the pool heals and every channel serves again).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import ExponentialBackoff, NotConnectedError, Pool, telemetry
from conngrpc._server import SLEEP_METHOD, peer_of, start_server
from conngrpc.channel.connector import raw_unary
from tests._net import established_sockets
from tests._pools import live_pool
from tests._probe import EventLog, wait_until
from tests._proxy import FaultProxy

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Exception)

CONNECT_TIMEOUT = 0.5
SHUTDOWN_GRACE = 0.5
#: Every call's deadline; no call may take longer than this plus SLACK.
CALL_DEADLINE = 1.0
#: How much later than its bound a call ends, or a fault is noticed, at most.
SLACK = 0.5
#: A bound for healing, generous on purpose: the speed of recovery is not under test
#: here (backoff of at most 0.3 s, then a connect of at most CONNECT_TIMEOUT).
HEAL_WITHIN = 5.0
#: A backoff that the tests it is given to never wait out: one attempt per channel.
NO_SECOND_ATTEMPT = ExponentialBackoff(min=60, max=60)
#: How soon after a worker gave up on a hung connect every socket it opened is closed:
#: generous, for grpc closes each at its own attempt's deadline (connect_timeout, then
#: growing by 1.6 from the second attempt), and without conngrpc's setting it would hold
#: the socket for 20 s.
SOCKETS_CLOSED_WITHIN = 5.0
#: Pause between two calls of the background caller.
CALL_INTERVAL = 0.02
#: Pause between two looks at the wire.
POLL = 0.001
#: Opt-in keepalive for fast detection of a silent peer (docs/reliability.md,
#: "Recommended keepalive settings").
KEEPALIVE_TIME = 1.0
PING_TIMEOUT = 1.0
KEEPALIVE = [
    ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
    ("grpc.keepalive_timeout_ms", int(PING_TIMEOUT * 1000)),
    ("grpc.http2.ping_timeout_ms", int(PING_TIMEOUT * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
#: What the server must allow for those pings on idle connections.
SERVER_PERMITS_KEEPALIVE = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
]
#: One-way latency the proxy adds; a call crosses it twice.
LATENCY = 0.15
#: How long calls run under latency: past a keepalive ping and its timeout.
LATENCY_WINDOW = KEEPALIVE_TIME + PING_TIMEOUT
#: The in-flight call that the connection is closed under.
SLEEP_MS = 3000
#: Call outcomes that count as failing fast and clearly.
CLEAR_FAILURES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "NotConnectedError"}


async def peer_port(channel: grpc.aio.Channel) -> int:
    """The port the server sees a call over ``channel`` come from (the proxy's socket)."""
    peer = await peer_of(channel, timeout=CALL_DEADLINE)
    return int(peer.rsplit(":", 1)[1])


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A server in this process that accepts the keepalive pings of KEEPALIVE."""
    server, port = await start_server(options=SERVER_PERMITS_KEEPALIVE)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


pool = functools.partial(live_pool, connect_timeout=CONNECT_TIMEOUT, shutdown_grace=SHUTDOWN_GRACE)


@asynccontextmanager
async def proxied_pool(
    name: str, upstream: str, size: int, **channel: Any
) -> AsyncIterator[FaultProxy]:
    """A proxy in front of ``upstream`` and a connected pool of ``size`` through it."""
    async with FaultProxy(upstream) as proxy, pool(name, proxy.address, size, **channel):
        await Pool.wait_connected(name, timeout=HEAL_WITHIN)
        yield proxy


@dataclass(frozen=True)
class Departure:
    """A ``disconnected`` event, with what the pool handed out at that very moment."""

    index: int
    reason: str
    state: str | None
    at: float
    handed_out: tuple[int, ...]
    current_size: int


@contextmanager
def departures(pool_name: str) -> Iterator[list[Departure]]:
    """Every channel of the pool that disconnects during the block, as it happens."""
    seen: list[Departure] = []

    def witness(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if metadata["pool_name"] == pool_name:
            workers = Pool.get_all_workers(pool_name)
            seen.append(
                Departure(
                    metadata["channel_index"],
                    metadata["reason"],
                    metadata.get("state"),
                    time.monotonic(),
                    tuple(w.index for w in workers),
                    Pool.status(pool_name).current_size,
                )
            )

    handler_id = ("test-faults-departures", pool_name)
    telemetry.attach(handler_id, ("conngrpc", "channel", "disconnected"), witness)
    try:
        yield seen
    finally:
        telemetry.detach(handler_id)


def assert_left_the_pool(seen: list[Departure], indexes: set[int]) -> None:
    """Each of ``indexes`` lost its connection and was not handed out from then on."""
    lost = [d for d in seen if d.reason == "connection_lost"]
    assert {d.index for d in lost} == indexes, seen
    for departure in lost:
        assert departure.index not in departure.handed_out, departure
        assert departure.current_size == len(departure.handed_out), departure


@asynccontextmanager
async def calling(pool_name: str) -> AsyncIterator[list[tuple[str, float]]]:
    """Call the pool back to back during the block; record each outcome and its time.

    The caller is told to stop rather than cancelled: a grpc.aio call cancelled under
    anyio can surface as a bare CancelledError.
    """
    outcomes: list[tuple[str, float]] = []
    done = anyio.Event()

    async def caller() -> None:
        while not done.is_set():
            begin = time.monotonic()
            try:
                await peer_port(Pool.get_channel(pool_name))
                outcome = "ok"
            except NotConnectedError:
                outcome = "NotConnectedError"
            except grpc.aio.AioRpcError as error:
                outcome = error.code().name
            outcomes.append((outcome, time.monotonic() - begin))
            with anyio.move_on_after(CALL_INTERVAL):
                await done.wait()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(caller)
        try:
            yield outcomes
        finally:
            done.set()


def assert_fast_and_clear(outcomes: list[tuple[str, float]]) -> None:
    """Every call succeeded or failed clearly, none past its deadline plus SLACK."""
    assert outcomes
    slowest = max(elapsed for _, elapsed in outcomes)
    print(f"calls: {dict(Counter(o for o, _ in outcomes))}, slowest {slowest:.3f} s")
    assert {outcome for outcome, _ in outcomes} <= {"ok", *CLEAR_FAILURES}, outcomes
    assert max(elapsed for _, elapsed in outcomes) <= CALL_DEADLINE + SLACK, outcomes


@contextmanager
def raises(kind: type[E]) -> Iterator[list[E]]:
    """``pytest.raises`` whose miss is an AssertionError, not pytest's ``Failed``.

    ``Failed`` is a BaseException: wrapped in a task group's BaseExceptionGroup, it
    ends the session's shared asyncio runner, and every later test errors.
    """
    caught: list[E] = []
    try:
        yield caught
    except kind as error:
        caught.append(error)
    else:
        raise AssertionError(f"expected {kind.__name__}, but nothing was raised")


def assert_not_connected(pool_name: str) -> None:
    assert Pool.status(pool_name).current_size == 0
    assert Pool.get_all_workers(pool_name) == []
    with raises(NotConnectedError):
        Pool.get_channel(pool_name)


async def assert_healed(pool_name: str, proxy: FaultProxy, size: int) -> set[int]:
    """The pool is whole again and each channel serves on its own connection, which is
    exactly one the proxy forwards (once those a fault left behind have closed)."""
    await Pool.wait_connected(pool_name, timeout=HEAL_WITHIN)
    channels = [worker.channel for worker in Pool.get_all_workers(pool_name)]
    ports = {await peer_port(channel) for channel in channels if channel is not None}
    assert len(ports) == size
    await wait_until(lambda: proxy.upstream_ports == ports, timeout=HEAL_WITHIN)
    return ports


async def assert_no_connection_left_behind(proxy: FaultProxy, size: int) -> None:
    """The client holds ``size`` sockets to the proxy, and the proxy as many links."""
    await wait_until(
        lambda: proxy.open == size and established_sockets(proxy.port) == size,
        timeout=HEAL_WITHIN,
    )


def open_sockets() -> set[str]:
    """The sockets this process holds, by inode."""
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # the listing's own descriptor, gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                sockets.add(target)
    return sockets


def failures(log: EventLog) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each ``connection_failed`` event: its measurements and metadata."""
    return [(m, meta) for event, m, meta in log.events if event[-1] == "connection_failed"]


# --- refuse ---------------------------------------------------------------------------


async def test_a_refusing_port_is_reported_as_refused_and_the_pool_connects_once_it_listens(
    pool_name: str, upstream: str, channel_events: EventLog
) -> None:
    async with FaultProxy(upstream) as proxy:
        proxy.refuse()
        async with pool(pool_name, proxy.address, 2), calling(pool_name) as calls:
            await wait_until(
                lambda: {meta["channel_index"] for _, meta in failures(channel_events)} == {0, 1},
                timeout=HEAL_WITHIN,
            )
            assert_not_connected(pool_name)
            assert channel_events.of("connected") == []
            assert proxy.accepted == 0
            # The caller's first turn may come after both failures: the wait above can be
            # over before it begins, when the refusals came as the pool started.
            await wait_until(lambda: "NotConnectedError" in {outcome for outcome, _ in calls})

            proxy.heal()
            await assert_healed(pool_name, proxy, 2)
            await assert_no_connection_left_behind(proxy, 2)
        assert_fast_and_clear(calls)
    reasons = {meta["reason"] for _, meta in failures(channel_events)}
    assert all("Connection refused" in reason for reason in reasons), reasons


async def test_refusing_new_connections_leaves_the_connected_channels_serving(
    pool_name: str, upstream: str, channel_events: EventLog
) -> None:
    async with proxied_pool(pool_name, upstream, 2) as proxy:
        before = {await peer_port(Pool.get_channel(pool_name)) for _ in range(2)}
        proxy.refuse()
        with raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port)).close()
        assert {await peer_port(Pool.get_channel(pool_name)) for _ in range(2)} == before
        assert Pool.status(pool_name).current_size == 2
        assert (proxy.accepted, proxy.open) == (2, 2)
    assert {m["reason"] for m in channel_events.of("disconnected")} == {"shutdown"}


# --- accept and hang --------------------------------------------------------------------


async def test_a_port_that_accepts_and_hangs_fails_each_connect_at_connect_timeout(
    pool_name: str, upstream: str, channel_events: EventLog
) -> None:
    async with FaultProxy(upstream) as proxy:
        proxy.accept_and_hang()
        async with pool(pool_name, proxy.address, 2), calling(pool_name) as calls:
            await wait_until(
                lambda: {meta["channel_index"] for _, meta in failures(channel_events)} == {0, 1},
                timeout=CONNECT_TIMEOUT + HEAL_WITHIN,
            )
            assert_not_connected(pool_name)
            assert proxy.accepted >= 2
            assert proxy.upstream_ports == set()  # nothing went through
            assert proxy.bytes_upstream == 0

            proxy.heal()
            # (hung sockets stay open as long as their client keeps them: see the next test)
            await assert_healed(pool_name, proxy, 2)
        assert_fast_and_clear(calls)
    for measurements, meta in failures(channel_events):
        assert "connect_timeout" in meta["reason"], meta
        took = measurements["duration"] / 1e9
        assert CONNECT_TIMEOUT <= took <= CONNECT_TIMEOUT + SLACK
        print(f"hung connect -> connection_failed: {took:.3f} s")


async def test_a_connect_given_up_at_connect_timeout_leaves_no_socket_open(
    pool_name: str, upstream: str, channel_events: EventLog
) -> None:
    """The worker closes the channel it gave up on; its sockets must go with it, or a
    hung server collects sockets from every channel at every attempt.

    Within one attempt of the worker, grpc makes attempts of its own: each ends at grpc's
    connect deadline, which conngrpc sets to connect_timeout (grpc's own is 20 s), and grpc
    starts the next one at once. A worker whose event loop is late to give up (a busy
    machine) finds a second one open, as a run beside four busy loops did; its socket
    must close too, at its own deadline.
    """
    async with FaultProxy(upstream) as proxy:
        proxy.accept_and_hang()
        async with pool(pool_name, proxy.address, 1, backoff=NO_SECOND_ATTEMPT):
            await wait_until(lambda: failures(channel_events) != [], timeout=HEAL_WITHIN)
            ((measurements, _),) = failures(channel_events)
            attempt = measurements["duration"] / 1e9
            gave_up = time.monotonic()
            with anyio.move_on_after(SOCKETS_CLOSED_WITHIN):
                while established_sockets(proxy.port) > 0:
                    await anyio.sleep(POLL)
            left = established_sockets(proxy.port)
            assert left == 0, (
                f"the connect abandoned at connect_timeout={CONNECT_TIMEOUT:g} s still holds "
                f"{left} socket(s) to the server {time.monotonic() - gave_up:.2f} s later"
            )
            await wait_until(lambda: proxy.open == 0)
            # Each of grpc's attempts lasted connect_timeout: no more began than fit in the
            # worker's attempt (one, unless the worker was late).
            assert 1 <= proxy.accepted <= 1 + int(attempt / CONNECT_TIMEOUT), attempt


# --- blackhole ----------------------------------------------------------------------------


async def test_a_blackholed_path_is_noticed_within_keepalive_time_plus_ping_timeout(
    pool_name: str, upstream: str
) -> None:
    async with proxied_pool(pool_name, upstream, 2, options=KEEPALIVE) as proxy:
        with departures(pool_name) as seen:
            async with calling(pool_name) as calls:
                proxy.blackhole()
                silent = time.monotonic()
                await wait_until(
                    lambda: Pool.status(pool_name).current_size == 0,
                    timeout=KEEPALIVE_TIME + PING_TIMEOUT + SLACK,
                )
                print(f"blackhole -> pool empty: {time.monotonic() - silent:.3f} s")
                assert_not_connected(pool_name)

                proxy.heal()
                await assert_healed(pool_name, proxy, 2)
                await assert_no_connection_left_behind(proxy, 2)
            assert_fast_and_clear(calls)
        assert_left_the_pool(seen, {0, 1})
        for departure in seen:
            print(f"blackhole -> channel {departure.index} left: {departure.at - silent:.3f} s")
            assert departure.at - silent <= KEEPALIVE_TIME + PING_TIMEOUT + SLACK


# --- latency ----------------------------------------------------------------------------


async def test_latency_slows_each_call_by_the_round_trip_and_no_channel_leaves(
    pool_name: str, upstream: str
) -> None:
    async with proxied_pool(pool_name, upstream, 2, options=KEEPALIVE) as proxy:
        with departures(pool_name) as seen:
            proxy.latency(LATENCY * 1000)
            took: list[float] = []
            end = time.monotonic() + LATENCY_WINDOW
            while time.monotonic() < end:
                begin = time.monotonic()
                await peer_port(Pool.get_channel(pool_name))
                took.append(time.monotonic() - begin)
            print(f"calls under {LATENCY * 1000:g} ms each way: {min(took):.3f}-{max(took):.3f} s")
            assert all(2 * LATENCY - 0.01 <= t <= 2 * LATENCY + SLACK for t in took), took
            assert Pool.status(pool_name).current_size == 2

            proxy.heal()
            begin = time.monotonic()
            await peer_port(Pool.get_channel(pool_name))
            assert time.monotonic() - begin < 2 * LATENCY
            await assert_healed(pool_name, proxy, 2)
            await assert_no_connection_left_behind(proxy, 2)
        assert seen == []
        assert proxy.accepted == 2  # no reconnect


# --- reset ------------------------------------------------------------------------------


async def test_a_reset_connection_leaves_the_pool_at_once_and_comes_back_fresh(
    pool_name: str, upstream: str
) -> None:
    async with proxied_pool(pool_name, upstream, 3) as proxy:
        before = {await peer_port(Pool.get_channel(pool_name)) for _ in range(3)}
        with departures(pool_name) as seen:
            async with calling(pool_name) as calls:
                reset = time.monotonic()
                await proxy.reset()
                await wait_until(lambda: len(seen) == 3, timeout=SLACK)
                print(f"RST -> all 3 left: {max(d.at for d in seen) - reset:.3f} s")
                after = await assert_healed(pool_name, proxy, 3)
                await assert_no_connection_left_behind(proxy, 3)
            assert_fast_and_clear(calls)
        assert_left_the_pool(seen, {0, 1, 2})
        assert not before & after  # fresh connections
        assert proxy.accepted >= 6


# --- close mid-call ---------------------------------------------------------------------


async def test_closing_the_connection_mid_call_fails_the_call_as_unavailable_and_it_returns(
    pool_name: str, upstream: str
) -> None:
    async with proxied_pool(pool_name, upstream, 2) as proxy:
        sleep = raw_unary(Pool.get_channel(pool_name), SLEEP_METHOD)
        with departures(pool_name) as seen:
            sent = proxy.bytes_upstream
            call = sleep(str(SLEEP_MS).encode(), timeout=SLEEP_MS / 1000 + CALL_DEADLINE)
            await wait_until(lambda: proxy.bytes_upstream > sent)  # the call is on the wire
            closed = time.monotonic()
            await proxy.close_mid_call()
            # bounded by the call's own deadline: an anyio timeout around a grpc.aio
            # call can surface as a bare CancelledError
            with raises(grpc.aio.AioRpcError) as failed:
                await call
            took = time.monotonic() - closed
            print(f"FIN -> in-flight call failed: {took:.3f} s")
            assert failed[0].code() is grpc.StatusCode.UNAVAILABLE, failed[0]
            assert took <= SLACK
            await wait_until(lambda: len(seen) == 2, timeout=SLACK)
            await assert_healed(pool_name, proxy, 2)
            await assert_no_connection_left_behind(proxy, 2)
        assert_left_the_pool(seen, {0, 1})


# --- the proxy itself -------------------------------------------------------------------


async def test_the_proxy_closes_every_socket_and_task_it_started() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # never accepts: no fds of its own
        upstream = f"127.0.0.1:{server.getsockname()[1]}"
        sockets, tasks = open_sockets(), asyncio.all_tasks()
        clients = []
        async with FaultProxy(upstream) as proxy:
            for fault in (proxy.heal, proxy.accept_and_hang, proxy.blackhole):
                fault()
                clients.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=1))
                clients[-1].sendall(b"x")
                await wait_until(lambda: proxy.accepted == len(clients))  # under this fault
            assert proxy.open == 3
            assert len(proxy.upstream_ports) == 2  # the hung one never connected upstream
        for client in clients:
            assert client.recv(1) == b""  # the proxy closed its end
            client.close()
        assert proxy.open == 0
        # what grpc left from earlier tests may close meanwhile, so: nothing new
        assert open_sockets() - sockets == set()
        assert asyncio.all_tasks() - tasks == set()
