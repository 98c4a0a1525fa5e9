"""``python -m conngrpc demo``: a pool of 5 against a local server, killed and healed.

The demo needs a server to kill and restart, so it starts conngrpc's small test
server (``conngrpc._server``) in a child process: that is why the server ships in the
wheel. Its story is told as log lines on stdout. Ctrl-C (SIGINT) or SIGTERM stops it
at any point: the pool is closed and the server killed, and the command exits 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import anyio
import structlog

from .. import telemetry
from .._server import ServerProcess, peer_of
from ..channel import ChannelConfig, ExponentialBackoff
from ..errors import NotConnectedError
from ..pool import Pool
from ..supervisor import Supervisor
from .signals import stopping_on_signals

__all__ = ["run_demo"]

_DEMO_EVENTS = [
    ("conngrpc", "channel", "connected"),
    ("conngrpc", "channel", "disconnected"),
    ("conngrpc", "channel", "connection_failed"),
    ("conngrpc", "supervisor", "child_terminated"),
    ("conngrpc", "supervisor", "child_restarted"),
]


class _Demo:
    """The demo's story, told in the log: connect, round-robin, kill, crash, recover."""

    def __init__(self) -> None:
        self.log = structlog.get_logger("demo")
        self.crash_next_connect = False

    def on_telemetry(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        _: Any,
    ) -> None:
        name = event[-1]
        if event[1] == "supervisor":
            if metadata["supervisor"] == "DemoPool" and metadata.get("reason") != "shutdown":
                self.log.info(
                    f"telemetry {name}",
                    child=metadata["child_id"],
                    error=repr(metadata.get("error")),
                )
            return
        fields: dict[str, Any] = {"channel": metadata["channel_name"]}
        if "duration" in measurements:
            key = "up_s" if name == "disconnected" else "took_ms"
            value = measurements["duration"] / (1e9 if key == "up_s" else 1e6)
            fields[key] = round(value, 3 if key == "up_s" else 2)
        if name == "disconnected":
            fields["reason"] = metadata["reason"]
        if name == "connection_failed":
            fields["reason"] = metadata["reason"]
        self.log.info(f"telemetry {name}", **fields)

    def on_connect(self) -> None:
        if self.crash_next_connect:
            self.crash_next_connect = False
            raise RuntimeError("on_connect raised on purpose: the worker crashes")

    async def show_round_robin(self, calls: int) -> None:
        index_of = {id(w.channel): w.index for w in Pool.get_all_workers("DemoPool")}
        for call in range(1, calls + 1):
            channel = Pool.get_channel("DemoPool")
            peer = await peer_of(channel)
            self.log.info(
                "get_channel",
                call=call,
                channel=index_of.get(id(channel)),
                server_saw=peer,
            )

    async def run(self) -> None:
        began = time.monotonic()
        server = ServerProcess()
        await anyio.to_thread.run_sync(server.start)
        self.log.info("server started", address=server.address, pid=server.pid)
        config = ChannelConfig(
            server.address,
            backoff=ExponentialBackoff(min=0.5, max=2.0),
            on_connect=self.on_connect,
            connect_timeout=2.0,
        )

        class DemoPool(Pool, pool_size=5, channel=config, telemetry_interval=60):
            """The demo's pool: five channels, each on its own connection."""

        telemetry.attach_many("conngrpc-demo", _DEMO_EVENTS, self.on_telemetry)
        try:
            async with Supervisor([DemoPool], name="demo"):
                status = await DemoPool.wait_connected(timeout=10)
                self.log.info(
                    "pool connected", connected=status.current_size, expected=status.expected_size
                )
                await self.show_round_robin(7)

                self.log.info("killing the server (SIGKILL)")
                killed = time.monotonic()
                await anyio.to_thread.run_sync(server.kill)
                with anyio.fail_after(5):
                    while True:
                        try:
                            DemoPool.get_channel()
                        except NotConnectedError as error:
                            self.log.info(
                                "get_channel raised NotConnectedError",
                                after_ms=round((time.monotonic() - killed) * 1000, 1),
                                error=str(error),
                            )
                            break
                        await anyio.sleep(0.005)

                self.log.info("the next on_connect will raise: its worker crashes and is restarted")
                self.crash_next_connect = True
                await anyio.to_thread.run_sync(server.start)
                restarted = time.monotonic()
                self.log.info("server restarted on the same port", address=server.address)
                await DemoPool.wait_connected(timeout=15)
                self.log.info(
                    "pool back",
                    connected=DemoPool.status().current_size,
                    seconds_after_restart=round(time.monotonic() - restarted, 2),
                )
                await self.show_round_robin(5)
                self.log.info("leaving the supervisor: every channel is closed")
        finally:
            telemetry.detach("conngrpc-demo")
            server.kill()
        self.log.info("demo done", seconds=round(time.monotonic() - began, 1))


async def run_demo() -> None:
    """Tell the demo's story (about 10 s); Ctrl-C or SIGTERM ends it early, cleanly."""
    with anyio.CancelScope() as scope, stopping_on_signals(scope.cancel, "stopping the demo"):
        try:
            await _Demo().run()
        except asyncio.CancelledError:
            # A grpc.aio call cancelled under the scope re-raises a CancelledError of its
            # own, without the mark anyio knows its cancellations by: the scope would
            # let it through (and asyncio.run print it), though it is the scope's.
            if not scope.cancel_called:
                raise
