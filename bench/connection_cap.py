"""gRFC A105's connection cap: 10 by default, changed by a channel argument.

A channel asks for ``maxConnectionsPerSubchannel`` connections through its service
config; grpc core clamps that to the channel argument
``grpc.max_connections_per_subchannel_cap`` (10 when unset). A server in this process
allows 2 concurrent streams per connection and answers each call, after a pause, with
the caller's address as it sees it, so the server itself counts the client's
connections (one client port each).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import grpc
import grpc.aio

from tests._net import established_sockets

from ._common import Section

#: The environment variable that first guarded A105's service-config switch.
GUARD_VARIABLE = "GRPC_EXPERIMENTAL_MAX_CONCURRENT_STREAMS_CONNECTION_SCALING"
#: The channel argument grpc core clamps A105 with (GRPC_ARG_MAX_CONNECTIONS_PER_SUBCHANNEL_CAP).
CAP_ARGUMENT = "grpc.max_connections_per_subchannel_cap"
#: grpc core's clamp when the argument is unset.
DEFAULT_CAP = 10
STREAMS_PER_CONNECTION = 2
_SERVICE = "bench.v1.Cap"
_METHOD = f"/{_SERVICE}/SleepThenPeer"
#: Bursts of calls at most; they stop once a burst opens no new connection.
_BURSTS = 5


async def _sleep_then_peer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(float(request) / 1000)
    return context.peer().encode()


async def _connections(port: int, wanted: int, cap: int | None, pause: bytes) -> tuple[int, int]:
    """Connections the server saw from one A105 channel, and the client's sockets to it."""
    config = {"connectionScaling": {"maxConnectionsPerSubchannel": wanted}}
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(config)),
        # grpc core leaves the clamp out of a subchannel's identity: without a pool of its
        # own, a row's channel could share the previous row's subchannel and connections.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if cap is not None:
        options.append((CAP_ARGUMENT, cap))
    calls = 2 * STREAMS_PER_CONNECTION * max(wanted, cap or 0, DEFAULT_CAP)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        await channel.channel_ready()
        call = channel.unary_unary(_METHOD)
        peers: set[bytes] = set()
        for _ in range(_BURSTS):  # connections open one at a time, while calls wait
            before = len(peers)
            peers.update(await asyncio.gather(*(call(pause, timeout=30) for _ in range(calls))))
            if len(peers) == before:
                break
        sockets = established_sockets(port)
    return len(peers), sockets


async def connection_cap(quick: bool) -> Section:
    cases: list[tuple[int, int | None]] = [(16, None), (16, 16), (16, 4)]
    if not quick:
        cases.append((32, 32))
    pause = b"100" if quick else b"300"
    section = Section(
        "gRFC A105's connection cap: a default that a channel argument changes",
        [
            "maxConnectionsPerSubchannel (service config)",
            f"`{CAP_ARGUMENT}`",
            "expected: the smaller of the two",
            "connections the server saw",
            "client sockets",
        ],
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
            ("grpc.http.overload_protection", 0),
            ("grpc.so_reuseport", 0),
        ]
    )
    handler = grpc.unary_unary_rpc_method_handler(_sleep_then_peer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, {"SleepThenPeer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reached = []  # (seen, expected) per row
    try:
        for wanted, cap in cases:
            expected = min(wanted, DEFAULT_CAP if cap is None else cap)
            seen, sockets = await _connections(port, wanted, cap, pause)
            reached.append((seen, expected))
            section.add(
                wanted, f"unset ({DEFAULT_CAP})" if cap is None else cap, expected, seen, sockets
            )
    finally:
        await server.stop(None)
    seen, expected = min(reached, key=lambda row: row[0] / row[1])
    section.target(
        "connections the server saw, the row furthest from its clamp",
        seen,
        "=",
        1.0,
        "expected: the smaller of the two",
        expected,
    )
    guard = os.environ.get(GUARD_VARIABLE)
    environment = (
        "without that variable set"
        if guard is None
        else f"with `{GUARD_VARIABLE}={guard}` set in the environment"
    )
    section.notes.append(
        f"One grpc.aio channel per row against a server in this process that allows"
        f" {STREAMS_PER_CONNECTION} concurrent streams per connection; bursts of calls (until"
        f" one opens no new connection, {_BURSTS} at most), each call pausing"
        f" {pause.decode()} ms and answering with the caller's address as the server sees it."
        " 'Connections the server saw': distinct client addresses in the answers. Each"
        " channel has a subchannel pool of its own (`grpc.use_local_subchannel_pool`):"
        " grpc core leaves the clamp out of a subchannel's identity and shares subchannels"
        " between channels, and a shared subchannel keeps the largest count any of its"
        " channels asks for (gRFC A105), so a channel clamped to 4 can ride on another's 16"
        " connections. The clamp is read in grpc core's client channel"
        " (`GRPC_ARG_MAX_CONNECTIONS_PER_SUBCHANNEL_CAP`, default 10); gRFC A105 says gRPC"
        " provides a channel-level setting to raise or lower it. The service-config switch"
        f" itself was at first guarded by the environment variable `{GUARD_VARIABLE}`"
        " (gRFC A105); gRPC Core 1.84.0's release notes list it as enabled ('[subchannel]"
        " enable connection scaling service config fields', grpc/grpc#43116), and the grpcio"
        f" named under 'Machine' ran these rows {environment}. Which earlier release first"
        " accepted the switch behind that variable was not established."
    )
    return section
