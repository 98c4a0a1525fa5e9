"""A fleet member for the benchmarks: says who answered, and can be told to stop serving.

``python -m bench._fleet_server --port 0`` prints ``PORT <n>`` once it listens. It
answers ``Sleep`` (waits the milliseconds given, plus ``--delay-ms``, and returns its
own port, so the client can tally each backend's share), grpcio-health-checking's
``Health`` service (SERVING; SIGUSR1 turns it NOT_SERVING, SIGUSR2 SERVING again, as an
operator draining a replica would), ``Stats`` (JSON: calls received, and calls received
while it was NOT_SERVING, counted on the server's side) and ``Count`` (a response stream
of as many messages as the request says, as fast as the client reads them).

A replica gone bad takes the flags of ``conngrpc._server`` (by default none): ``--fail
CODE`` (Sleep fails with that status), ``--hang`` (it never answers, so each call waits
for its deadline) or ``--stall`` (it answers as usual, ``--fail-after-ms`` late: a slow
replica's tail), for ``--fail-percent`` of the calls (evenly spread), after
``--fail-after-ms``. ``--stall --fail-after-ms 250 --fail-percent 10`` answers one call in
ten 250 ms late.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from conngrpc._server import Fault, add_fault_arguments, fault_from

SERVICE = "conngrpc.demo.v1.Demo"
STATS_METHOD = f"/{SERVICE}/Stats"
COUNT_METHOD = f"/{SERVICE}/Count"


async def serve(port: int, delay_ms: float, fault: Fault | None = None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    counts = {"calls": 0, "not_serving_calls": 0}
    serving = [True]
    answer = str(bound).encode()

    async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        counts["calls"] += 1
        if not serving[0]:
            counts["not_serving_calls"] += 1
        if fault is not None and fault.strikes():
            await fault.strike(context)
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every Sleep")
    add_fault_arguments(parser)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay_ms, fault_from(args, parser)))


if __name__ == "__main__":
    main()
