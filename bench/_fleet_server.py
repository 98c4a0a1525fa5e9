"""A fleet member for the benchmarks: says who answered, and can be told to stop serving.

``python -m bench._fleet_server --port 0`` prints ``PORT <n>`` once it listens. It
answers ``Sleep`` (waits the milliseconds given, plus ``--delay-ms``, and returns its
own port, so the client can tally each backend's share), grpcio-health-checking's
``Health`` service (SERVING; SIGUSR1 turns it NOT_SERVING, SIGUSR2 SERVING again, as an
operator draining a replica would), ``Stats`` (JSON: calls received, and calls received
while it was NOT_SERVING, counted on the server's side) and ``Count`` (a response stream
of as many messages as the request says, as fast as the client reads them).

Fault modes, for a replica gone bad (by default none): ``--fail-code INTERNAL
--fail-percent 30 --fail-after-ms 20`` fails that share of the ``Sleep`` calls, drawn at
random but the same ones in every process (the Nth call a fresh replica receives fails or
not alike), with that code after that long, the error's details being the replica's port
(so the client can tell who failed); ``--hang`` never answers ``Sleep``, so each call
waits for its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

SERVICE = "conngrpc.demo.v1.Demo"
STATS_METHOD = f"/{SERVICE}/Stats"
COUNT_METHOD = f"/{SERVICE}/Count"


@dataclass(frozen=True)
class Fault:
    """How a bad replica answers ``Sleep``: fails a share of calls, or never answers."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    percent: float = 0.0
    after_ms: float = 0.0
    hang: bool = False


async def serve(port: int, delay_ms: float, fault: Fault) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    counts = {"calls": 0, "not_serving_calls": 0}
    serving = [True]
    answer = str(bound).encode()
    draw = random.Random(0).random  # one sequence: clients each given a fresh replica see it

    async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        counts["calls"] += 1
        if not serving[0]:
            counts["not_serving_calls"] += 1
        if fault.hang:
            await asyncio.Event().wait()  # until the client's deadline cancels the call
        if fault.percent and draw() * 100 < fault.percent:
            await asyncio.sleep(fault.after_ms / 1000)
            await context.abort(fault.code, str(bound))
        await asyncio.sleep((float(request or b"0") + delay_ms) / 1000)
        return answer

    async def stats(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(counts).encode()

    async def count(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for _ in range(int(request)):
            yield answer

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
                    "Stats": grpc.unary_unary_rpc_method_handler(stats),
                    "Count": grpc.unary_stream_rpc_method_handler(count),
                },
            ),
        )
    )
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def set_serving(value: bool) -> None:
        serving[0] = value
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if value
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        loop.create_task(servicer.set("", status))  # noqa: RUF006 - the loop keeps it

    loop.add_signal_handler(signal.SIGUSR1, set_serving, False)
    loop.add_signal_handler(signal.SIGUSR2, set_serving, True)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {bound}", flush=True)
    await stop.wait()
    await server.stop(0)


def _status_code(name: str) -> grpc.StatusCode:
    codes = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}
    if name not in codes:
        expected = ", ".join(codes)
        raise argparse.ArgumentTypeError(f"expected one of {expected}, got {name!r}")
    return codes[name]


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every Sleep")
    parser.add_argument(
        "--fail-code",
        type=_status_code,
        default=grpc.StatusCode.INTERNAL,
        help="the status code of the calls that fail (default INTERNAL)",
    )
    parser.add_argument(
        "--fail-percent", type=_percent, default=0.0, help="share of Sleep calls that fail, in %%"
    )
    parser.add_argument(
        "--fail-after-ms", type=float, default=0.0, help="how long a failing call takes"
    )
    parser.add_argument("--hang", action="store_true", help="never answer Sleep")
    args = parser.parse_args()
    fault = Fault(args.fail_code, args.fail_percent, args.fail_after_ms, args.hang)
    asyncio.run(serve(args.port, args.delay_ms, fault))


if __name__ == "__main__":
    main()
