"""The keepalive recipe of docs/reliability.md ("Recommended keepalive settings"), measured
on the installed grpcio.

    python -m bench.keepalive      # about 100 s; not part of ``make bench``

Part 1, detection: a pool of one connects to a server in a child process, which is then
stopped with SIGSTOP (its socket stays open and nothing answers). Both cases ping after
1 s without traffic and set ``grpc.keepalive_timeout_ms`` to 1 s; only the first also
sets ``grpc.http2.ping_timeout_ms``. The figure is the time from SIGSTOP until the
channel's ``disconnected`` event. The second case waits for grpc's own default ping
timeout (a minute), which is why this is not part of ``make bench``.

Part 2, what a server accepts: an idle pool of two pings every second without calls
for 12 s, against a server with default options, with the recipe's server options, and
with the interval option misspelt as the docs once had it (grpc ignores unknown names).
The figure is how often a connection was lost (the server's GOAWAY ``too_many_pings``;
the worker reconnects each time).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio
import grpc

from conngrpc import ExponentialBackoff, Pool, Supervisor, telemetry
from conngrpc._server import ServerProcess
from conngrpc.channel.worker import DISCONNECTED

KEEPALIVE: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
PING_TIMEOUT: tuple[str, Any] = ("grpc.http2.ping_timeout_ms", 1000)
SERVER_PERMITS_PINGS = [
    "--option=grpc.keepalive_permit_without_calls=1",
    "--option=grpc.http2.min_ping_interval_without_data_ms=500",
]
SERVERS = {
    "default grpc server options": [],
    "the recipe's server options": SERVER_PERMITS_PINGS,
    "grpc.http2.min_recv_ping_interval_without_data_ms (misspelt)": [
        "--option=grpc.keepalive_permit_without_calls=1",
        "--option=grpc.http2.min_recv_ping_interval_without_data_ms=500",
    ],
}
IDLE_S = 12.0
#: How long to wait for the pool to empty before giving up on a case.
GIVE_UP_S = 150.0


async def _unnoticed_for(name: str, options: list[tuple[str, Any]]) -> float:
    """Seconds from SIGSTOP until the channel's disconnect is reported (inf past GIVE_UP_S)."""
    lost = anyio.Event()

    def on_disconnected(_event: Any, _measurements: Any, metadata: Any, _config: Any) -> None:
        if metadata.get("pool_name") == name:
            lost.set()

    with ServerProcess(args=SERVER_PERMITS_PINGS) as server:
        channel = {
            "address": server.address,
            "options": options,
            "backoff": ExponentialBackoff(min=0.3, max=1.0),
            "connect_timeout": 1.0,
        }
        async with Supervisor([Pool.child_spec(name=name, pool_size=1, channel=channel)]):
            await Pool.wait_connected(name, timeout=5)
            telemetry.attach(f"bench-keepalive-{name}", DISCONNECTED, on_disconnected)
            server.pause()
            stopped = time.monotonic()
            try:
                with anyio.move_on_after(GIVE_UP_S):
                    await lost.wait()
                    return time.monotonic() - stopped
                return float("inf")
            finally:
                telemetry.detach(f"bench-keepalive-{name}")
                server.resume()


async def _closed_while_idle(name: str, server_args: list[str]) -> int:
    """How often an idle, pinging pool of two lost a connection in IDLE_S seconds."""
    lost = 0

    def on_disconnected(_event: Any, _measurements: Any, metadata: Any, _config: Any) -> None:
        nonlocal lost
        if metadata.get("pool_name") == name and metadata.get("reason") != "shutdown":
            lost += 1

    with ServerProcess(args=server_args) as server:
        channel = {
            "address": server.address,
            "options": [*KEEPALIVE, PING_TIMEOUT],
            "backoff": ExponentialBackoff(min=0.3, max=1.0),
        }
        async with Supervisor([Pool.child_spec(name=name, pool_size=2, channel=channel)]):
            await Pool.wait_connected(name, timeout=5)
            telemetry.attach(f"bench-keepalive-{name}", DISCONNECTED, on_disconnected)
            try:
                await anyio.sleep(IDLE_S)
            finally:
                telemetry.detach(f"bench-keepalive-{name}")
    return lost


async def main() -> None:
    print(f"grpcio {grpc.__version__}; keepalive time 1 s, keepalive timeout 1 s")
    for name, options in (
        ("with grpc.http2.ping_timeout_ms=1000", [*KEEPALIVE, PING_TIMEOUT]),
        ("without grpc.http2.ping_timeout_ms", KEEPALIVE),
    ):
        seconds = await _unnoticed_for(name.replace(" ", "-"), options)
        print(f"{name}: disconnected {seconds:.2f} s after SIGSTOP", flush=True)
    for index, (name, server_args) in enumerate(SERVERS.items()):
        lost = await _closed_while_idle(f"bench-keepalive-idle-{index}", server_args)
        print(f"{name}: {lost} disconnects of an idle pool of 2 in {IDLE_S:g} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # An application: keep the library's warning about the lost connection out of the figures.
    logging.getLogger("conngrpc").setLevel(logging.ERROR)  # the figures, not the faults
    anyio.run(main)
