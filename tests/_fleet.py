"""A fleet of real gRPC servers in this process, each knowing who called it.

Each :class:`Backend` is a grpc.aio server on 127.0.0.1 with grpcio-health-checking's
own ``Health`` service (its status set by the test) and these methods, all in raw
bytes:

- ``Peer`` records the caller's address as this server sees it (one per connection)
  and returns ``<port>|<peer>``;
- ``Sleep`` waits the milliseconds given and returns the port;
- ``Count`` (unary-stream) answers ``b"<n>:<ms>"`` with n messages, ms apart;
- ``Collect`` (stream-unary) returns how many messages it received;
- ``Echo`` (stream-stream) returns each message as it comes;
- every method records the invocation metadata it saw (``metadata``).

So a test proves from the servers' side where a pool's connections and calls went.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from conngrpc import NotConnectedError, Pool
from conngrpc._server import PEER_METHOD, SLEEP_METHOD
from conngrpc._tasks import reraise_if_cancelled
from conngrpc.channel.connector import raw_unary
from tests._probe import EventLog

SERVICE = "conngrpc.demo.v1.Demo"
COUNT_METHOD = f"/{SERVICE}/Count"
COLLECT_METHOD = f"/{SERVICE}/Collect"
ECHO_METHOD = f"/{SERVICE}/Echo"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Backend:
    """One server of the fleet: its address, the peers and calls it saw, its health."""

    def __init__(self, *, with_health: bool = True) -> None:
        self.with_health = with_health
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.peers: set[str] = set()
        self.calls = 0
        self.in_flight = 0  # calls running in a handler now
        self.metadata: list[tuple[str, str | bytes]] = []
        self.health = health.aio.HealthServicer()

    def __repr__(self) -> str:
        return f"<Backend {self.address} calls={self.calls} peers={len(self.peers)}>"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(
        self, port: int = 0, credentials: grpc.ServerCredentials | None = None
    ) -> Backend:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((self._handlers(),))
        if self.with_health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        where = f"127.0.0.1:{port or self.port}"
        if credentials is None:
            self.port = server.add_insecure_port(where)
        else:
            self.port = server.add_secure_port(where, credentials)
        assert self.port != 0, f"could not listen on {where}"
        await server.start()
        self.server = server
        return self

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        self.peers.clear()

    async def set_health(self, status: int, service: str = "") -> None:
        await self.health.set(service, status)

    def _handlers(self) -> grpc.GenericRpcHandler:
        def seen(context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
            self.calls += 1
            self.metadata.extend(context.invocation_metadata() or ())

        async def peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            seen(context)
            self.peers.add(context.peer())
            return f"{self.port}|{context.peer()}".encode()

        async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            seen(context)
            self.in_flight += 1
            try:
                await asyncio.sleep(float(request or b"0") / 1000)
            finally:
                self.in_flight -= 1
            return str(self.port).encode()

        async def count(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            seen(context)
            n, ms = request.split(b":")
            for index in range(int(n)):
                await asyncio.sleep(float(ms) / 1000)
                yield str(index).encode()

        async def collect(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            seen(context)
            received = 0
            async for _ in requests:
                received += 1
            return str(received).encode()

        async def echo(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            seen(context)
            async for request in requests:
                yield request

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Peer": grpc.unary_unary_rpc_method_handler(peer),
                "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
                "Count": grpc.unary_stream_rpc_method_handler(count),
                "Collect": grpc.stream_unary_rpc_method_handler(collect),
                "Echo": grpc.stream_stream_rpc_method_handler(echo),
            },
        )


@asynccontextmanager
async def fleet(count: int, **options: Any) -> AsyncIterator[list[Backend]]:
    """``count`` backends, started, stopped at the end."""
    backends = [await Backend(**options).start() for _ in range(count)]
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.stop()


async def where(channel: grpc.aio.Channel) -> int:
    """The port of the backend that answered a call over ``channel``."""
    answer = await raw_unary(channel, PEER_METHOD)(b"", timeout=5)
    return int(answer.decode().split("|", 1)[0])


async def ports_of_every_channel(name: str) -> list[int]:
    """The backend port each connected channel of the pool reaches, in worker order."""
    return [await where(w.channel) for w in Pool.get_all_workers(name) if w.channel is not None]


def spread(ports: list[int]) -> list[int]:
    """How many channels each backend holds, largest first."""
    return sorted(Counter(ports).values(), reverse=True)


def backend_finder(name: str) -> Callable[[grpc.aio.Channel], str | None]:
    """For :func:`load`: the backend a channel of pool ``name`` is on, read as it is
    handed out (a channel that is no longer handed out has none)."""

    def backend_of(channel: grpc.aio.Channel) -> str | None:
        for worker in Pool.get_all_workers(name):
            if worker.channel is channel:
                return worker.backend
        return None

    return backend_of


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed call: its kind, the backend its channel was on when handed out (None
    when the load was not told how to find it out), and when it began and ended."""

    kind: str
    backend: str | None
    began: float
    ended: float


@dataclass(frozen=True, slots=True)
class Kill:
    """A backend killed (SIGKILL) while a load ran, and when (``time.monotonic()``, taken
    just before the signal)."""

    backend: str
    at: float


@dataclass
class Load:
    """What callers saw: successes (in all, and by backend when told how to find it
    out, with when each ended), errors by kind, every failed call, the slowest call."""

    ok: int = 0
    ok_by_backend: Counter[str | None] = field(default_factory=Counter)
    answered: list[tuple[str | None, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    worst: float = 0.0

    @property
    def not_connected(self) -> int:
        return self.errors["NotConnectedError"]


#: How grpc ends a call that a kill caught: UNAVAILABLE (its connection reset, or its
#: reconnect refused), DEADLINE_EXCEEDED (sent to the restarted process before it
#: answered), or cancelled (a bare CancelledError) with the channel the pool closed
#: under it.
CAUGHT_BY_A_KILL = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CancelledError"})


def kill_windows(load: Load, kills: list[Kill], events: EventLog) -> list[tuple[Kill, float]]:
    """Each kill, with when its backend was back (see :func:`unexplained`)."""
    windows: list[tuple[Kill, float]] = []
    for index, kill in enumerate(kills):
        later = [k.at for k in kills[index + 1 :] if k.backend == kill.backend]
        until = min(later, default=math.inf)
        lost = [
            at / 1e9
            for (event, _, meta), at in zip(events.events, events.at, strict=True)
            if event[-1] == "disconnected"
            and meta.get("reason") == "connection_lost"
            and meta.get("backend") == kill.backend
            and kill.at <= at / 1e9 < until
        ]
        answered = [
            ended for backend, ended in load.answered if backend == kill.backend and ended > kill.at
        ]
        windows.append((kill, max(max(lost, default=kill.at), min(answered, default=math.inf))))
    return windows


def unexplained(load: Load, kills: list[Kill], events: EventLog) -> list[Failure]:
    """The failed calls of ``load`` that no kill accounts for.

    A kill accounts for a failed call on its backend that ended after it and began
    before the backend was back: before the pool had taken the last of its lost channels
    out of the hand-out (their ``disconnected`` events, reason ``connection_lost``), or
    before the restarted backend had answered a call. That is a call in flight at the
    kill, one handed out in the instant before the pool heard of it, or one sent to the
    restarted process before it served (its port listens, and a busy machine may keep it
    from answering for a while). Such a call fails when grpc says so: at once when the
    kernel resets its connection, or at its deadline; how long that takes on a busy
    machine is not the pool's to bound, so no time bound is put on it.
    """
    windows = kill_windows(load, kills, events)
    return [
        failure
        for failure in load.failures
        if not any(
            failure.backend == kill.backend and kill.at <= failure.ended and failure.began <= back
            for kill, back in windows
        )
    ]


@asynccontextmanager
async def load(
    name: str,
    callers: int,
    *,
    method: str = SLEEP_METHOD,
    request: bytes = b"5",
    deadline: float = 1.0,
    get_channel: Callable[[str], grpc.aio.Channel] = Pool.get_channel,
    backend_of: Callable[[grpc.aio.Channel], str | None] | None = None,
) -> AsyncIterator[Load]:
    """``callers`` tasks calling through the pool until the block ends.

    ``backend_of`` (see :func:`backend_finder`) names the backend of each channel as it
    is handed out, so that each call, failed or not, says where it went.
    """
    seen = Load()
    stop = anyio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                channel = get_channel(name)
            except NotConnectedError:
                seen.errors["NotConnectedError"] += 1
                await anyio.sleep(0.01)
                continue
            backend = backend_of(channel) if backend_of is not None else None
            began = time.monotonic()
            try:
                await raw_unary(channel, method)(request, timeout=deadline)
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                if isinstance(error, grpc.aio.AioRpcError):
                    kind = error.code().name
                else:
                    # grpc.aio's bare CancelledError for a call it cancelled itself (its
                    # channel closed): let out, it would end the task group's body in
                    # silence. A cancellation of this task is raised again here.
                    await reraise_if_cancelled()
                    kind = "CancelledError"
                seen.errors[kind] += 1
                seen.failures.append(Failure(kind, backend, began, time.monotonic()))
            else:
                seen.ok += 1
                seen.ok_by_backend[backend] += 1
                seen.answered.append((backend, time.monotonic()))
            seen.worst = max(seen.worst, time.monotonic() - began)

    async with anyio.create_task_group() as tasks:
        for _ in range(callers):
            tasks.start_soon(caller)
        try:
            yield seen
        finally:
            stop.set()
