"""The example's gRPC backend: what ``app.py``'s ``DemoStub`` calls, on grpcio alone.

It serves ``conngrpc.demo.v1.Demo`` with two methods, plain bytes in and out (so it
needs no generated code): ``Peer`` answers the caller's address as the server sees it
(one per connection, so a reply tells the pool's connections apart) and ``Sleep`` waits
the milliseconds given as ASCII digits, then answers empty. Run it from the repository
root::

    python -m examples.fastapi_service.backend --port 50051

It prints ``PORT <n>`` once it listens (``--port 0`` lets the system choose) and stops
on SIGTERM or Ctrl-C, giving calls in flight a second to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import grpc.aio

SERVICE = "conngrpc.demo.v1.Demo"


async def peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return context.peer().encode()


async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await asyncio.sleep(int(request or b"0") / 1000)
    return b""


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    methods = {"Peer": peer, "Sleep": sleep}
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {name: grpc.unary_unary_rpc_method_handler(m) for name, m in methods.items()},
            ),
        )
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:  # older grpcio says so by returning 0 rather than raising
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"PORT {bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_service.backend")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=50051, help="default: %(default)s")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
