"""The fleet's servers (tests/_fleet.py) for tests whose body blocks: ``conngrpc.sync``'s.

A sync test calls and waits in its own thread, so the servers cannot share its event
loop as the asyncio tests' do: :class:`ServerLoop` runs them on an event loop of a
thread of its own, and every method blocks until the loop has done what it asks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from tests._fleet import Backend
from tests._probe import WAIT_LIMIT

__all__ = ["ServerLoop", "sync_fleet"]

T = TypeVar("T")


class ServerLoop:
    """An event loop on a thread of its own, for servers a blocking test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test servers", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop; its result (within WAIT_LIMIT seconds)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT_LIMIT)

    def start(
        self,
        backend: Backend | None = None,
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        **options: Any,
    ) -> Backend:
        """Start ``backend`` (a new one made with ``options`` if None) on ``port``, over
        TLS with ``credentials``."""
        chosen = backend if backend is not None else Backend(**options)
        return self.run(chosen.start(port=port, credentials=credentials))

    def stop(self, backend: Backend, grace: float | None = None) -> None:
        self.run(backend.stop(grace))

    def set_health(self, backend: Backend, status: int, service: str = "") -> None:
        self.run(backend.set_health(status, service))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_LIMIT)
        self.loop.close()


@contextmanager
def sync_fleet(count: int, **options: Any) -> Iterator[tuple[list[Backend], ServerLoop]]:
    """``count`` backends on a :class:`ServerLoop`, stopped at the end."""
    servers = ServerLoop()
    backends: list[Backend] = []
    try:
        for _ in range(count):
            backends.append(servers.start(**options))
        yield backends, servers
    finally:
        for backend in backends:
            servers.stop(backend)
        servers.close()
