"""A small grpc.aio server for the demo, the tests and the benchmarks (private).

It answers the standard ``grpc.health.v1.Health/Check`` (SERVING), ``Peer`` (the
caller's address as the server sees it, so a test can tell connections apart) and
``Sleep`` (waits the milliseconds given as ASCII, then answers empty, or ``--name``).

``python -m conngrpc._server --port 0`` prints ``PORT <n>`` once it listens and
stops on SIGTERM (gracefully, within ``--grace`` seconds) or SIGINT. A replica that
goes bad, for the tests of ejection and retries: ``--fail CODE`` (Sleep fails with that
status), ``--hang`` (Sleep never answers) or ``--stall`` (Sleep answers, but late), for
``--fail-percent`` of the calls, after ``--fail-after-ms``; SIGUSR2 turns the fault off
(the replica recovers), SIGUSR1 on again (as bench/_fleet_server.py's SIGUSR1 takes a
replica out and SIGUSR2 brings it back).
:class:`ServerProcess` runs it in a child process that a test or the demo can kill,
pause and restart on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from . import _health
from .channel.connector import raw_unary

__all__ = ["PEER_METHOD", "SLEEP_METHOD", "Fault", "ServerProcess", "peer_of", "start_server"]

DEMO_SERVICE = "conngrpc.demo.v1.Demo"
PEER_METHOD = f"/{DEMO_SERVICE}/Peer"
SLEEP_METHOD = f"/{DEMO_SERVICE}/Sleep"


async def _check(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return _health.encode_response(1)


async def _peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return context.peer().encode()


@dataclass(slots=True)
class Fault:
    """What ``Sleep`` does instead of answering, to some of its calls.

    ``code``: it fails with that status; ``hang``: it never answers (the call ends at
    its deadline); ``stall``: it answers as usual, but ``after_ms`` late (a slow
    replica's tail, for hedging). One of the three. ``percent``: exactly that many of
    every 100 calls, evenly spread (for 30: the 4th, 7th, 10th, ...), so that a test's
    counts are exact; ``after_ms``: how long it waits first. ``on``: whether it strikes
    now (SIGUSR1 sets it, SIGUSR2 clears it).
    """

    code: grpc.StatusCode | None = None
    hang: bool = False
    stall: bool = False
    percent: int = 100
    after_ms: float = 0.0
    on: bool = True
    calls: int = field(default=0, init=False)  # struck at, while on

    def __post_init__(self) -> None:
        if (self.code is not None) + self.hang + self.stall != 1:
            raise ValueError(
                "expected one of a status code, hang or stall, got "
                f"code={self.code!r}, hang={self.hang!r}, stall={self.stall!r}"
            )
        if self.code is grpc.StatusCode.OK:
            raise ValueError("expected a status code other than OK to fail with")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"expected a percentage from 0 to 100, got {self.percent!r}")
        if self.after_ms < 0:
            raise ValueError(f"expected milliseconds >= 0, got {self.after_ms!r}")
        if self.stall and not self.after_ms:
            raise ValueError("expected milliseconds > 0 for a stall, got 0: it would stall nothing")

    def strikes(self) -> bool:
        """Whether the call that came now fails (or hangs, or stalls)."""
        if not self.on:
            return False
        self.calls += 1
        return self.calls * self.percent // 100 > (self.calls - 1) * self.percent // 100

    async def strike(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        """What a call it strikes gets: after ``after_ms``, its status, no answer, or
        (a stall) nothing more: the call then goes on as any other."""
        await asyncio.sleep(self.after_ms / 1000)
        if self.stall:
            return
        if self.code is None:
            await asyncio.get_running_loop().create_future()  # until the deadline
        else:
            await context.abort(self.code, f"the server fails {self.percent}% of calls")


def _handlers(fault: Fault | None = None, name: str = "") -> tuple[grpc.GenericRpcHandler, ...]:
    answer = name.encode()

    async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if fault is not None and fault.strikes():
            await fault.strike(context)
        await asyncio.sleep(float(request or b"0") / 1000)
        return answer

    def unary(behaviour: Any) -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    return (
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": unary(_check)}),
        grpc.method_handlers_generic_handler(
            DEMO_SERVICE, {"Peer": unary(_peer), "Sleep": unary(sleep)}
        ),
    )


async def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_concurrent_streams: int | None = None,
    options: Sequence[tuple[str, Any]] = (),
    fault: Fault | None = None,
    name: str = "",
) -> tuple[grpc.aio.Server, int]:
    """Start the server in this process; return it and the port it listens on.

    ``fault``: what Sleep does to some calls instead of answering; ``name``: what it
    answers (empty by default).
    """
    merged: dict[str, Any] = {"grpc.so_reuseport": 0}
    if max_concurrent_streams is not None:
        merged["grpc.max_concurrent_streams"] = max_concurrent_streams
    merged.update(options)
    server = grpc.aio.server(options=list(merged.items()))
    server.add_generic_rpc_handlers(_handlers(fault, name))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not listen on {host}:{port}")
    await server.start()
    return server, bound


async def peer_of(channel: grpc.aio.Channel, timeout: float = 5.0) -> str:
    """Where this server sees a call over ``channel`` come from (one peer per connection)."""
    return (await raw_unary(channel, PEER_METHOD)(b"", timeout=timeout)).decode()


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, int(value) if value.lstrip("-").isdigit() else value


async def _serve(args: argparse.Namespace) -> None:
    fault: Fault | None = args.fault
    server, port = await start_server(
        args.host,
        args.port,
        max_concurrent_streams=args.max_streams,
        options=args.option,
        fault=fault,
        name=args.name,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if fault is not None:
        loop.add_signal_handler(signal.SIGUSR1, setattr, fault, "on", True)
        loop.add_signal_handler(signal.SIGUSR2, setattr, fault, "on", False)
    print(f"PORT {port}", flush=True)
    await stop.wait()
    await server.stop(args.grace)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conngrpc._server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-streams", type=int, default=None)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--option", type=_option, action="append", default=[])
    parser.add_argument("--name", default="", help="what Sleep answers (default: nothing)")
    add_fault_arguments(parser)
    args = parser.parse_args(argv)
    args.fault = fault_from(args, parser)
    asyncio.run(_serve(args))


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a replica gone bad: ``--fail CODE``, ``--hang`` or ``--stall``,
    ``--fail-percent``, ``--fail-after-ms`` (read back with :func:`fault_from`)."""
    bad = parser.add_mutually_exclusive_group()
    bad.add_argument("--fail", type=_status_code, metavar="CODE", help="Sleep fails so")
    bad.add_argument("--hang", action="store_true", help="Sleep never answers")
    bad.add_argument(
        "--stall", action="store_true", help="Sleep answers, --fail-after-ms late (needs it)"
    )
    parser.add_argument("--fail-percent", type=int, help="of the calls (default 100)")
    parser.add_argument(
        "--fail-after-ms", type=float, help="before it fails, or how late it answers (default 0)"
    )


def fault_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Fault | None:
    """The fault the flags of :func:`add_fault_arguments` name, if any; the parser's
    usage error (it exits) where they make none."""
    if args.fail is not None or args.hang or args.stall:
        percent = 100 if args.fail_percent is None else args.fail_percent
        after_ms = args.fail_after_ms or 0.0
        try:
            return Fault(args.fail, args.hang, args.stall, percent, after_ms)
        except ValueError as error:
            parser.error(str(error))
    elif args.fail_percent is not None or args.fail_after_ms is not None:
        parser.error("--fail-percent and --fail-after-ms need --fail, --hang or --stall")
    return None


def _status_code(name: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        names = ", ".join(code.name for code in grpc.StatusCode)
        raise argparse.ArgumentTypeError(f"expected one of {names}, got {name!r}") from None


class ServerProcess:
    """The server in a child process on 127.0.0.1: start, kill, pause, restart on its port.

    Example::

        with ServerProcess() as server:
            address = server.address
            server.kill()
            server.start()  # the same port again
    """

    def __init__(
        self, port: int = 0, *, args: Sequence[str] = (), module: str = "conngrpc._server"
    ) -> None:
        self.port = port
        self.args = list(args)
        self.module = module  # another server that prints PORT <n> the same way
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ServerProcess 127.0.0.1:{self.port} {state}>"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server process has not been started")
        return self.process.pid

    def start(self, timeout: float = 20.0) -> int:
        """Start the server (on the port it had before, if any); return the port.

        :raises RuntimeError: it did not report its port within ``timeout`` seconds.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is running already")
        command = [sys.executable, "-m", self.module, "--port", str(self.port)]
        environment = {**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")}
        process = subprocess.Popen([*command, *self.args], stdout=subprocess.PIPE, env=environment)
        self.process = process
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while not selector.select(max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RuntimeError(f"the server did not start within {timeout:g} s")
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.kill()
            raise RuntimeError(f"the server failed to start (said {line!r})")
        self.port = int(line.split()[1])
        return self.port

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process, if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, its connections reset by the kernel."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM: the server stops gracefully (GOAWAY, in-flight calls finish)."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering without closing anything."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server carries on."""
        self.signal(signal.SIGCONT)


if __name__ == "__main__":
    main()
