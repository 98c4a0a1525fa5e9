"""The command line: ``python -m conngrpc demo`` and ``python -m conngrpc probe ADDRESS``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import structlog

from . import _health, telemetry
from ._checks import check_seconds
from ._server import ServerProcess, peer_of
from .channel import ChannelConfig, ExponentialBackoff
from .channel.connector import raw_unary
from .errors import NotConnectedError
from .pool import Pool
from .supervisor import Supervisor

_DEMO_EVENTS = [
    ("conngrpc", "channel", "connected"),
    ("conngrpc", "channel", "disconnected"),
    ("conngrpc", "channel", "connection_failed"),
    ("conngrpc", "supervisor", "child_terminated"),
    ("conngrpc", "supervisor", "child_restarted"),
]


def _configure_logging() -> None:
    """The command line is an application: it may set structlog up (the library never does)."""

    def quieter(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        # The demo tells its story through telemetry: keep only the library's errors,
        # without their tracebacks.
        if str(event.get("logger", "")).startswith("conngrpc.") and event["level"] != "error":
            raise structlog.DropEvent
        event.pop("exc_info", None)
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
            quieter,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


# --- demo ---------------------------------------------------------------------------


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


# --- probe ----------------------------------------------------------------------------


def _connections() -> dict[str, tuple[int, str]]:
    """grpc's channelz view of this process: channel id -> (calls started, local address).

    Best effort: channelz is read through grpc's internal module; {} when unavailable.
    """
    try:
        cygrpc = importlib.import_module("grpc._cython.cygrpc")
        found: dict[str, tuple[int, str]] = {}
        for channel in json.loads(cygrpc.channelz_get_top_channels(0)).get("channel", []):
            local = "?"
            for ref in channel.get("subchannelRef", []):
                sub = json.loads(cygrpc.channelz_get_subchannel(int(ref["subchannelId"])))
                for sock_ref in sub["subchannel"].get("socketRef", []):
                    sock = json.loads(cygrpc.channelz_get_socket(int(sock_ref["socketId"])))
                    local = _address(sock["socket"].get("local", {}))
            calls = int(channel["data"].get("callsStarted", 0))
            found[channel["ref"]["channelId"]] = (calls, local)
        return found
    except Exception:
        return {}


def _address(endpoint: Mapping[str, Any]) -> str:
    tcp = endpoint.get("tcpipAddress")
    if not tcp:
        return "?"
    raw = base64.b64decode(tcp.get("ipAddress", ""))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, raw)}:{tcp.get('port', 0)}"


async def _probe(address: str, pool_size: int, timeout: float) -> int:  # noqa: ASYNC109
    failures: dict[int, str] = {}
    began = time.monotonic()

    def on_failure(_: Any, __: Any, metadata: Mapping[str, Any], ___: Any) -> None:
        # Said as it happens (on stderr: stdout is the table), once per channel and reason,
        # so a refused or unresolvable address does not wait its whole timeout in silence.
        index, reason = metadata["channel_index"], metadata["reason"]
        if failures.get(index) != reason:
            elapsed = time.monotonic() - began
            print(f"{elapsed:6.2f} s  channel {index}: {reason}", file=sys.stderr, flush=True)
        failures[index] = reason

    telemetry.attach("conngrpc-probe", ("conngrpc", "channel", "connection_failed"), on_failure)
    spec = Pool.child_spec(
        name="conngrpc-probe",
        pool_size=pool_size,
        channel={"address": address, "connect_timeout": timeout},
        telemetry_interval=3600,
    )
    rows: list[tuple[int, str, str, str]] = []
    healthy = 0
    try:
        async with Supervisor([spec], name="probe"):
            with contextlib.suppress(NotConnectedError):  # the table says which failed
                await Pool.wait_connected("conngrpc-probe", timeout=timeout)
            workers = {w.index: w for w in Pool.get_all_workers("conngrpc-probe")}
            for index in range(pool_size):
                worker = workers.get(index)
                if worker is None or worker.channel is None:
                    reason = failures.get(index, f"not connected within {timeout:g} s")
                    rows.append((index, "-", "-", f"NOT CONNECTED: {reason}"))
                    continue
                before = _connections()
                check = raw_unary(worker.channel, _health.CHECK_METHOD)
                begin = time.perf_counter()
                try:
                    answer = await check(_health.encode_request(), timeout=timeout)
                    status = _health.STATUS_NAMES.get(_health.decode_response(answer), "?")
                except grpc.aio.AioRpcError as error:
                    status = f"{error.code().name}: {error.details()}"
                latency = f"{(time.perf_counter() - begin) * 1000:.2f} ms"
                after = _connections()
                used = [after[k][1] for k in after if after[k][0] > before.get(k, (0, ""))[0]]
                rows.append((index, used[0] if len(used) == 1 else "?", latency, status))
                healthy += status == "SERVING"
    finally:
        telemetry.detach("conngrpc-probe")
    print(f"probe {address}: {pool_size} channel(s)")
    print(f"{'channel':>7}  {'local address':<22} {'latency':>10}  status")
    for index, local, latency, status in rows:
        print(f"{index:>7}  {local:<22} {latency:>10}  {status}")
    print(f"{healthy} of {pool_size} SERVING")
    return 0 if healthy == pool_size else 1


# --- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conngrpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a pool against a local server, kill it, watch it heal")
    probe = commands.add_parser("probe", help="health-check every channel of a pool to ADDRESS")
    probe.add_argument("address", help="host:port or any grpc target")
    probe.add_argument("--pool-size", type=int, default=4)
    probe.add_argument("--timeout", type=_seconds("--timeout"), default=5.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _configure_logging()
    if args.command == "demo":
        asyncio.run(_Demo().run())
        return 0
    if args.pool_size < 1:
        parser.error(f"--pool-size: expected at least 1, got {args.pool_size}")
    try:
        ChannelConfig(args.address)
    except ValueError as error:
        parser.error(str(error).replace("ChannelConfig.address", "ADDRESS"))
    return asyncio.run(_probe(args.address, args.pool_size, args.timeout))


def _seconds(option: str) -> Callable[[str], float]:
    """An argparse type: seconds as conngrpc bounds them, or a usage error naming ``option``."""

    def parse(text: str) -> float:
        try:
            return check_seconds(option, float(text))
        except ValueError as error:
            message = str(error) if option in str(error) else f"{option}: expected seconds"
            raise argparse.ArgumentTypeError(message) from None

    return parse


if __name__ == "__main__":
    sys.exit(main())
