"""The Pool against real gRPC servers on 127.0.0.1.

Servers that a test kills, pauses or restarts run in child processes
(``conngrpc._server.ServerProcess``); the others run in the test's own event loop.
"""

from __future__ import annotations

import functools
import time

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import ExponentialBackoff, NotConnectedError, Pool
from conngrpc._server import ServerProcess, peer_of, start_server
from tests._net import closed_port, established_sockets
from tests._pools import live_pool
from tests._probe import SUPERVISOR_EVENTS, EventLog, recording, wait_until

pytestmark = pytest.mark.anyio

#: How long an idle pool is watched for churn: the behaviour under test is time passing.
IDLE_SECONDS = 10.5
BACKOFF_MIN = 0.3
BACKOFF_MAX = 1.0
#: Opt-in keepalive for fast detection of a silent peer (docs/reliability.md,
#: "Recommended keepalive settings").
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
#: Long enough for two rotations of 0.5 s connections (and the 5 s backoff's absence).
ROTATION_BOUND = 5.0
#: What the server must allow for those pings on idle connections.
SERVER_PERMITS_KEEPALIVE = [
    "--option=grpc.keepalive_permit_without_calls=1",
    "--option=grpc.http2.min_ping_interval_without_data_ms=500",
]


pool = functools.partial(live_pool, backoff=ExponentialBackoff(min=BACKOFF_MIN, max=BACKOFF_MAX))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def test_each_pooled_channel_owns_its_own_connection(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    async with pool(pool_name, address, 4):
        await Pool.wait_connected(pool_name, timeout=5)
        peers = [await peer_of(Pool.get_channel(pool_name)) for _ in range(8)]
        assert len(set(peers)) == 4
        assert peers[:4] == peers[4:]  # round-robin: the same four connections in turn
        assert established_sockets(port_of(address)) == 4


async def test_naive_channels_with_identical_arguments_share_one_connection(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    """The trap the pool avoids: grpc core reuses one connection for identical channels."""
    _, address = grpc_server
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    try:
        peers = {await peer_of(channel) for channel in channels}
        assert len(peers) == 1
        assert established_sockets(port_of(address)) == 1
    finally:
        for channel in channels:
            await channel.close()


async def test_leaving_the_supervisor_leaves_no_socket_to_the_server(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    async with pool(pool_name, address, 3):
        await Pool.wait_connected(pool_name, timeout=5)
        assert established_sockets(port_of(address)) == 3
    await wait_until(lambda: established_sockets(port_of(address)) == 0, timeout=2)


async def test_a_killed_server_makes_get_channel_raise_not_connected_within_half_a_second(
    pool_name: str, server_process: ServerProcess
) -> None:
    async with pool(pool_name, server_process.address, 3):
        await Pool.wait_connected(pool_name, timeout=5)
        killed = time.monotonic()
        server_process.kill()

        def not_connected() -> bool:
            try:
                Pool.get_channel(pool_name)
            except NotConnectedError:
                return True
            return False

        await wait_until(not_connected, timeout=0.5)
        print(f"kill -> NotConnectedError: {(time.monotonic() - killed) * 1000:.1f} ms")


async def test_a_restarted_server_brings_the_whole_pool_back_within_the_backoff(
    pool_name: str, server_process: ServerProcess, channel_events: EventLog
) -> None:
    async with pool(pool_name, server_process.address, 4):
        await Pool.wait_connected(pool_name, timeout=5)
        before = {await peer_of(Pool.get_channel(pool_name)) for _ in range(4)}
        server_process.kill()
        await wait_until(lambda: Pool.status(pool_name).current_size == 0)
        await anyio.to_thread.run_sync(server_process.start)
        restarted = time.monotonic()
        # Each worker's next attempt comes within the backoff in force: the first (min)
        # after a quick restart, up to max * 1.2 when the new server took long enough to
        # start (a loaded machine) that more attempts were refused meanwhile.
        await Pool.wait_connected(pool_name, timeout=BACKOFF_MAX * 1.2 + 0.3)
        print(f"restart -> whole pool connected: {time.monotonic() - restarted:.3f} s")
        after = {await peer_of(Pool.get_channel(pool_name)) for _ in range(4)}
        assert len(after) == 4
        assert not before & after  # fresh connections
    lost = [m for m in channel_events.of("disconnected") if m["reason"] == "connection_lost"]
    assert len(lost) == 4


@pytest.mark.slow
async def test_an_idle_pool_with_default_options_keeps_its_connections(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str], channel_events: EventLog
) -> None:
    """No idle timeout and no keepalive pings a default server would punish."""
    _, address = grpc_server
    async with pool(pool_name, address, 2, backoff=ExponentialBackoff()):
        await Pool.wait_connected(pool_name, timeout=5)
        peers = {await peer_of(Pool.get_channel(pool_name)) for _ in range(2)}
        await anyio.sleep(IDLE_SECONDS)
        assert Pool.status(pool_name).current_size == 2
        assert established_sockets(port_of(address)) == 2
        assert {await peer_of(Pool.get_channel(pool_name)) for _ in range(2)} == peers
    assert [m["reason"] for m in channel_events.of("disconnected")] == ["shutdown", "shutdown"]


async def test_a_silent_server_is_noticed_with_keepalive_options_and_the_pool_recovers(
    pool_name: str,
) -> None:
    with ServerProcess(args=SERVER_PERMITS_KEEPALIVE) as server:
        async with pool(pool_name, server.address, 2, options=KEEPALIVE, connect_timeout=1.0):
            await Pool.wait_connected(pool_name, timeout=5)
            server.pause()
            paused = time.monotonic()
            # keepalive time 1 s + ping timeout 1 s, and half a second of slack
            await wait_until(lambda: Pool.status(pool_name).current_size == 0, timeout=2.5)
            print(f"SIGSTOP -> pool empty: {time.monotonic() - paused:.3f} s")
            server.resume()
            await Pool.wait_connected(pool_name, timeout=5)
            assert len({await peer_of(Pool.get_channel(pool_name)) for _ in range(2)}) == 2


async def test_a_refused_connection_is_a_reported_failed_attempt_not_a_crash(
    pool_name: str, server_process: ServerProcess, channel_events: EventLog
) -> None:
    address = server_process.address
    server_process.kill()
    async with pool(pool_name, address, 1, backoff=ExponentialBackoff(min=0.01, max=0.02)) as sup:
        await wait_until(lambda: len(channel_events.of("connection_failed")) >= 3)
        assert sup.which_children()[0].running
    reason = channel_events.of("connection_failed")[0]["reason"]
    assert "Connection refused" in reason


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("nonexistent.invalid:50051", "nonexistent.invalid"),
        (f"127.0.0.1:{closed_port()}", "Connection refused"),
        ("unix:/nonexistent/conngrpc.sock", "No such file or directory"),
    ],
)
async def test_a_bad_address_becomes_connection_failed_with_the_reason_and_backs_off(
    pool_name: str, channel_events: EventLog, address: str, reason: str
) -> None:
    with recording(SUPERVISOR_EVENTS) as supervisor_events:
        async with pool(pool_name, address, 1, backoff=ExponentialBackoff(min=0.01, max=0.02)):
            await wait_until(lambda: len(channel_events.of("connection_failed")) >= 2)
    assert reason in channel_events.of("connection_failed")[0]["reason"]
    assert supervisor_events.of("child_restarted") == []
    assert {m["reason"] for m in supervisor_events.of("child_terminated")} == {"shutdown"}


async def test_a_connection_rotated_by_the_server_is_reopened_at_once(
    pool_name: str, channel_events: EventLog
) -> None:
    """A server's max_connection_age sends GOAWAY to healthy connections: no backoff gap,
    even for connections rotated after half a second (under a second, they once waited)."""
    server, port = await start_server(
        options=[("grpc.max_connection_age_ms", 500), ("grpc.max_connection_age_grace_ms", 500)]
    )
    try:
        # A 5 s backoff would show as a 5 s gap; a rotated connection must not wait for it.
        async with pool(pool_name, f"127.0.0.1:{port}", 2, backoff=ExponentialBackoff(5, 10)):
            await Pool.wait_connected(pool_name, timeout=5)
            await wait_until(
                lambda: len(channel_events.of("connected")) >= 4, timeout=ROTATION_BOUND
            )
    finally:
        await server.stop(None)
    gaps = channel_events.reconnect_gaps()
    print(f"rotation gaps: {[f'{gap * 1000:.1f} ms' for gap in gaps]}")
    assert gaps
    assert max(gaps) < 1.0
