"""A TCP proxy for tests that forwards to a server and breaks the path on command.

Example::

    async with FaultProxy("127.0.0.1:50051") as proxy:
        channel = grpc.aio.insecure_channel(proxy.address)
        proxy.blackhole()        # no byte moves either way; every socket stays open
        proxy.heal()             # plain forwarding again
        await proxy.reset()      # RST every connection open now

The proxy runs in the caller's event loop (anyio, so it runs on asyncio and trio):
one task accepts, and each connection runs a task per direction, all under the task
group that the ``async with`` block owns. Leaving the block stops every task and
closes every socket the proxy opened.

Faults that are modes (they last until :meth:`FaultProxy.heal`): :meth:`refuse`,
:meth:`accept_and_hang`, :meth:`blackhole`, :meth:`latency`. Faults that are actions
(they hit the connections open at the call, then forwarding carries on):
:meth:`reset`, :meth:`close_mid_call`.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
from contextlib import AsyncExitStack, suppress
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["FaultProxy"]

Mode = Literal["forward", "refuse", "hang", "blackhole"]
Chunk = tuple[float, bytes]  # when it may be passed on, and the bytes (b"" is EOF)

_CHUNK = 65536
_BACKLOG = 128
# SO_LINGER on with a zero timeout: close() sends RST and drops unsent data.
_LINGER_ZERO = struct.pack("ii", 1, 0)


class _Link:
    """One accepted connection: the client's socket, the proxy's socket upstream."""

    __slots__ = ("abort", "client", "closed", "hung", "scope", "upstream")

    def __init__(self, client: socket.socket, *, hung: bool) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.hung = hung  # accepted under accept_and_hang: never forwarded
        self.scope = anyio.CancelScope()
        self.abort = False  # close with RST rather than FIN
        self.closed = anyio.Event()

    def close(self) -> None:
        """Close both sockets: RST if ``abort``, else FIN (after draining what came in)."""
        for sock in (self.client, self.upstream):
            if sock is None or sock.fileno() < 0:
                continue
            if self.abort:
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            else:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                # close() with unread bytes would send RST instead of the FIN
                with suppress(OSError):
                    while sock.recv(_CHUNK):
                        pass
            sock.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (``"ip:port"``) that injects faults.

    ``accepted`` counts the connections accepted since the proxy started, ``open`` the
    ones open now (hung and blackholed ones included), ``upstream_ports`` the local
    ports of the proxy's connections to the server (the peers the server sees).
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host.strip("[]"), int(port))
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.accepted = 0
        self.bytes_upstream = 0  # bytes written to the server so far
        self.mode: Mode = "forward"
        self.delay = 0.0  # seconds each chunk is held, in each direction
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._listening = anyio.Event()
        self._flowing = anyio.Event()
        self._stack = AsyncExitStack()

    def __repr__(self) -> str:
        delay = f" delay={self.delay * 1000:g}ms" if self.delay else ""
        return (
            f"<FaultProxy {self.address} -> {self._upstream[0]}:{self._upstream[1]} "
            f"{self.mode}{delay} accepted={self.accepted} open={self.open}>"
        )

    # --- the wire as the proxy sees it ---------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to; it stays the proxy's while it refuses."""
        if self._listener is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: where clients connect."""
        return f"127.0.0.1:{self.port}"

    @property
    def open(self) -> int:
        """Connections accepted and not yet closed."""
        return len(self._links)

    @property
    def upstream_ports(self) -> set[int]:
        """Local ports of the open connections to the server."""
        return {
            link.upstream.getsockname()[1]
            for link in self._links
            if link.upstream is not None and link.upstream.fileno() >= 0
        }

    # --- faults that last until heal() -----------------------------------------------

    def refuse(self) -> None:
        """Stop listening (the port stays ours): new connections get ECONNREFUSED.

        Connections open now carry on; ones that the kernel had queued but the proxy
        had not accepted yet are reset.
        """
        self._switch("refuse")

    def accept_and_hang(self) -> None:
        """Accept new connections but never connect upstream nor forward a byte.

        A hung connection stays hung, even after heal(), until its client closes it.
        """
        self._switch("hang")

    def blackhole(self) -> None:
        """Stop moving bytes both ways on every connection, open or new; close nothing.

        Bytes wait in the kernel's buffers and flow again after heal(), as over a
        network path that drops everything for a while.
        """
        self._switch("blackhole")

    def latency(self, milliseconds: float) -> None:
        """Hold every chunk ``milliseconds`` before passing it on, in each direction.

        A request and its response then take twice that longer. Chunks keep their
        order and are not serialised behind each other's delay.
        """
        if not 0 <= milliseconds < math.inf:
            raise ValueError(f"latency: expected milliseconds >= 0, got {milliseconds!r}")
        self.delay = milliseconds / 1000

    def heal(self) -> None:
        """Back to plain forwarding: listen, move bytes, no delay."""
        self._switch("forward")
        self.delay = 0.0

    def _switch(self, mode: Mode) -> None:
        """Enter ``mode``, leaving the previous one (latency is kept: it is not a mode)."""
        assert self._listener is not None, "the proxy is not running"
        self.mode = mode
        if mode == "refuse":
            if self._listening.is_set():
                self._listening = anyio.Event()
                # Linux: a listening socket shut down for reading stops listening but
                # keeps a port bound by number, so listen() can take it up again.
                self._listener.shutdown(socket.SHUT_RD)
        elif not self._listening.is_set():
            self._listener.listen(_BACKLOG)
            self._listening.set()
        if mode == "blackhole":
            if self._flowing.is_set():
                self._flowing = anyio.Event()
        else:
            self._flowing.set()

    # --- faults that hit the connections open now --------------------------------------

    async def reset(self) -> None:
        """Reset every open connection, both ends (SO_LINGER 0, close); wait until done."""
        await self._close_links(abort=True)

    async def close_mid_call(self) -> None:
        """Close every open connection cleanly (FIN to both ends); wait until done.

        Named for its use: a test calls it while a call is in flight.
        """
        await self._close_links(abort=False)

    async def _close_links(self, *, abort: bool) -> None:
        links = list(self._links)
        for link in links:
            link.abort = abort
            link.scope.cancel()
        for link in links:
            await link.closed.wait()

    # --- running ---------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        async with AsyncExitStack() as stack:
            self._listener = listener = _bind_a_port_of_our_own()
            self._port: int = listener.getsockname()[1]
            stack.callback(listener.close)
            self._switch("forward")
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)  # on exit, first stop every task
            tasks.start_soon(self._accept, tasks)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    async def _accept(self, tasks: TaskGroup) -> None:
        assert self._listener is not None
        while True:
            await self._listening.wait()
            await anyio.wait_readable(self._listener)
            if self.mode == "refuse":
                continue
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, hung=self.mode == "hang")
            self._links.add(link)
            self.accepted += 1
            tasks.start_soon(self._serve, link)

    async def _serve(self, link: _Link) -> None:
        try:
            with link.scope:
                if link.hung:
                    await _swallow(link.client)
                    return
                link.upstream = socket.socket(self._family, socket.SOCK_STREAM)
                await _connect(link.upstream, self._upstream)
                link.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._direction, link, link.client, link.upstream, False)
                    tasks.start_soon(self._direction, link, link.upstream, link.client, True)
        except OSError:
            link.abort = True
        finally:
            self._links.discard(link)
            link.close()
            link.closed.set()

    async def _direction(
        self, link: _Link, source: socket.socket, sink: socket.socket, to_client: bool
    ) -> None:
        """Move bytes from ``source`` to ``sink`` until EOF, each chunk after its delay."""
        send, receive = anyio.create_memory_object_stream[Chunk](math.inf)
        with send, receive:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._guarded, link, self._read, source, send)
                await self._guarded(link, self._write, receive, sink, to_client)

    @staticmethod
    async def _guarded(link: _Link, function: Any, *args: Any) -> None:
        """Run ``function``; a socket error (reset, broken pipe) aborts the whole link."""
        try:
            await function(*args)
        except OSError:
            link.abort = True
            link.scope.cancel()

    async def _read(self, source: socket.socket, chunks: MemoryObjectSendStream[Chunk]) -> None:
        while True:
            await anyio.wait_readable(source)
            if not self._flowing.is_set():
                await self._flowing.wait()
                continue
            try:
                data = source.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue
            await chunks.send((anyio.current_time() + self.delay, data))
            if not data:
                return

    async def _write(
        self, chunks: MemoryObjectReceiveStream[Chunk], sink: socket.socket, to_client: bool
    ) -> None:
        async for due, data in chunks:
            await anyio.sleep_until(due)
            if not data:
                while not self._flowing.is_set():
                    await self._flowing.wait()
                sink.shutdown(socket.SHUT_WR)
                return
            view = memoryview(data)
            while view:
                await anyio.wait_writable(sink)
                if not self._flowing.is_set():
                    await self._flowing.wait()
                    continue
                try:
                    sent = sink.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                view = view[sent:]
                if not to_client:
                    self.bytes_upstream += sent


def _bind_a_port_of_our_own() -> socket.socket:
    """A socket bound to a free port *by number*, so that it keeps the port while not
    listening (a port picked by bind(0) is given back when listening stops)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))  # both REUSEADDR, neither listening: allowed
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
    return listener


async def _connect(sock: socket.socket, address: tuple[str, int]) -> None:
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error not in (0, errno.EINPROGRESS):
        raise OSError(error, os.strerror(error))
    await anyio.wait_writable(sock)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


async def _swallow(sock: socket.socket) -> None:
    """Read and drop everything until the peer closes (so a hung link notices it)."""
    while True:
        await anyio.wait_readable(sock)
        try:
            if not sock.recv(_CHUNK):
                return
        except (BlockingIOError, InterruptedError):
            continue
