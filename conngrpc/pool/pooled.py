"""PooledChannel: one ``grpc.aio.Channel`` for stubs, each call sent to the least-loaded connection.

``Pool.channel(name)`` returns one; build stubs on it once, at start-up, even before the
pool has connected::

    stub = InventoryStub(InventoryPool.channel())
    ...
    await stub.GetItem(request)   # goes to the pool's least-loaded connection

Every multicallable it returns picks a connection per call: among the channels the
pool hands out now (READY and, when health-checked, SERVING), the one with the fewest
calls in flight (exactly, by a scan, in a small pool; by the power of two choices in a
large one), ties taking turns. A call counts from the moment it starts until grpc says
it is done, whatever the ending: success, error, deadline, cancellation (``cancel()``,
or a cancelled task that awaits it). The counts are in ``Pool.status(name).in_flight``.

A stream dropped unfinished does not end: grpc.aio keeps the call object alive (so it
is not collected, and not cancelled) and its stream open, and counted here, until its
deadline or until its channel closes; even a stream the server has finished stays open
while responses are left unread. Give streams a deadline (``timeout=``), or
cancel the ones you stop reading (``call.cancel()``), as on any grpc.aio channel.

With no channel connected, a call fails at once with ``grpc.aio.AioRpcError``
(UNAVAILABLE, the details naming the pool and why), as an unavailable server would;
with ``wait_for_ready=True`` it waits, within its timeout, for a channel to join (and
with ``max_calls_per_channel``, a call waits for room). A waiting call answers every
method of a grpc.aio call: ``cancel()`` ends the wait, and awaiting it then raises
``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import grpc
import grpc.aio

from .._tasks import reraise_if_cancelled
from .runtime import Kind, PoolRuntime, Slot, channels, pools, wait_registered

__all__ = ["PooledChannel"]

_READY = grpc.ChannelConnectivity.READY
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
#: grpc.aio's own details for a call its application cancelled
_LOCALLY_CANCELLED = "Locally cancelled by application!"


class PooledChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose calls go through a pool, each to its least-loaded channel.

    It belongs to no connection: the pool owns its channels, and :meth:`close` only
    detaches this facade (later calls raise ``grpc.aio.UsageError``).
    """

    def __init__(self, name: str, kind: Kind = "pool") -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"PooledChannel: expected a pool name as a non-empty str, got {name!r}")
        self.name = name
        self.kind: Kind = kind
        self._registry = pools if kind == "pool" else channels
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.get_state().name
        return f"<PooledChannel {self.kind} {self.name!r} {state}>"

    # --- the pool behind it -------------------------------------------------------------

    def runtime(self) -> PoolRuntime | None:
        """The running pool, or None; raises once the facade is closed."""
        if self.closed:
            raise grpc.aio.UsageError(f"the PooledChannel of {self.kind} {self.name!r} is closed")
        return self._registry.get(self.name)

    def unavailable(self, runtime: PoolRuntime | None) -> _FailedCall:
        if runtime is None:
            reason = f"no {self.kind} of that name is running"
        else:
            reason = runtime.not_connected().reason
        details = f"conngrpc {self.kind} {self.name!r}: {reason}"
        return _FailedCall(grpc.aio.AioRpcError(_UNAVAILABLE, details=details))

    async def ready_slot(self, deadline: float | None) -> Slot:
        """Wait until the pool hands out a channel, until ``deadline`` (monotonic)."""
        with anyio.fail_after(None if deadline is None else max(0.0, deadline - time.monotonic())):
            while True:
                runtime = self.runtime()
                if runtime is None:
                    await wait_registered(self.kind)
                    continue
                slot = runtime.pick()
                if slot is not None:
                    return slot
                await runtime.wait_changed()

    # --- grpc.aio.Channel ------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while the pool hands out a channel; SHUTDOWN once closed.

        Otherwise CONNECTING while its channels try for the first time, and
        TRANSIENT_FAILURE once one has failed; IDLE while no pool of that name runs.
        """
        if self.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        runtime = self._registry.get(self.name)
        if runtime is None:
            return grpc.ChannelConnectivity.IDLE
        if runtime.workers:
            return _READY
        if any(record.last_failure for record in runtime.records):
            return grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return grpc.ChannelConnectivity.CONNECTING

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() is last_observed_state and not self.closed:
            runtime = self._registry.get(self.name)
            if runtime is None:
                await wait_registered(self.kind)
            else:
                await runtime.wait_changed()

    async def channel_ready(self) -> None:
        """Wait until the pool hands out a channel (the pool may start later)."""
        await self.ready_slot(None)

    async def close(self, grace: float | None = None) -> None:
        """Detach this facade; the pool and its channels (and calls in flight) go on."""
        self.closed = True

    async def __aenter__(self) -> PooledChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self, "stream_stream", method, request_serializer, response_deserializer
        )


class _Multicallable:
    """One method of the facade: each call goes to the slot the pool picks now."""

    __slots__ = ("_deserializer", "_facade", "_kind", "_method", "_serializer")

    def __init__(
        self,
        facade: PooledChannel,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._facade = facade
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def __repr__(self) -> str:
        return f"<pooled {self._kind} {self._method} via {self._facade!r}>"

    def _real(self, slot: Slot) -> Any:
        """The slot's channel's own multicallable for this method, made once per channel."""
        real = slot.callables.get(self)
        if real is None:
            make = getattr(slot.channel, self._kind)
            real = slot.callables[self] = make(
                self._method,
                request_serializer=self._serializer,
                response_deserializer=self._deserializer,
            )
        return real

    def __call__(self, *request: Any, **options: Any) -> Any:
        """Start the call on the pool's least-loaded channel, with grpc's own arguments:
        the request (a request iterator, or none, for a client stream), ``timeout``,
        ``metadata``, ``credentials``, ``wait_for_ready``, ``compression``."""
        facade = self._facade
        runtime = facade.runtime()
        if runtime is not None and runtime.mock is not None and runtime.workers:
            make = getattr(runtime.mock(), self._kind)  # the test's stand-in answers
            return make(
                self._method,
                request_serializer=self._serializer,
                response_deserializer=self._deserializer,
            )(*request, **options)
        slot = runtime.pick() if runtime is not None else None
        if slot is None:
            if options.get("wait_for_ready"):
                return _DeferredCall(self._start_when_ready, request, options)
            return facade.unavailable(runtime)
        assert runtime is not None
        if not runtime.has_room(slot):  # every channel is at max_calls_per_channel
            return _DeferredCall(
                functools.partial(self._start_when_room, runtime), request, options
            )
        return runtime.track(slot, self._real(slot)(*request, **options))

    def _start_on(
        self, request: tuple[Any, ...], options: dict[str, Any], deadline: float | None, slot: Slot
    ) -> Any:
        """Start the call on ``slot``, counted against it, with what is left of ``deadline``."""
        return slot.runtime.track(slot, self._real(slot)(*request, **_within(options, deadline)))

    async def _start_when_room(
        self,
        runtime: PoolRuntime,
        request: tuple[Any, ...],
        options: dict[str, Any],
        deadline: float | None,
    ) -> Any:
        """Wait (until ``deadline``) for a channel under the cap; the pool starts the call
        on it the moment it has room."""
        start = functools.partial(self._start_on, request, options, deadline)
        try:
            call = await runtime.room(start, deadline)
        except TimeoutError:
            details = (
                f"conngrpc {self._facade.kind} {self._facade.name!r}: every channel had "
                f"max_calls_per_channel={runtime.call_cap} calls in flight until the deadline"
            )
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details=details) from None
        if call is None:
            details = (
                f"conngrpc {self._facade.kind} {self._facade.name!r}: it stopped while the call "
                f"waited for room ({runtime.stopped})"
            )
            raise grpc.aio.AioRpcError(_UNAVAILABLE, details=details)
        return call

    async def _start_when_ready(
        self, request: tuple[Any, ...], options: dict[str, Any], deadline: float | None
    ) -> Any:
        """Wait (until ``deadline``) for a channel to join, then start the call on it."""
        try:
            slot = await self._facade.ready_slot(deadline)
        except TimeoutError:
            details = f"conngrpc {self._facade.kind} {self._facade.name!r}: no channel joined"
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details=details) from None
        runtime = slot.runtime
        if not runtime.has_room(slot):  # a channel joined, but every one is at the cap
            return await self._start_when_room(runtime, request, options, deadline)
        return self._start_on(request, options, deadline, slot)


def _within(options: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """``options`` with the ``timeout`` left until ``deadline`` (monotonic)."""
    if deadline is None:
        return options
    return {**options, "timeout": max(0.0, deadline - time.monotonic())}


_Start = Callable[[tuple[Any, ...], dict[str, Any], "float | None"], Awaitable[Any]]


class _DeferredCall:
    """A call that waits for a channel (``wait_for_ready=True``) or for room under
    ``max_calls_per_channel`` before it starts: a grpc.aio call in every method.

    The wait begins when the call is first used (awaited, iterated, read, written, or
    asked for its status or metadata), in a task of its own, started once; every
    method then answers from the real call, or from the wait's outcome: an
    ``AioRpcError`` (DEADLINE_EXCEEDED) if the deadline, counted from the call's
    creation, passed first. :meth:`cancel` ends the wait at once (awaiting or
    iterating raises ``asyncio.CancelledError``, as a cancelled grpc.aio call does),
    or cancels the real call once started: the pool starts a call waiting for room
    the moment room frees, so a cancel that comes just then cancels a call already
    sent. Cancelling a task that waits on it, in any method, cancels the call, as for
    a grpc.aio call being awaited.
    """

    __slots__ = ("_begin", "_call", "_callbacks", "_deadline", "_task")

    def __init__(self, start: _Start, request: tuple[Any, ...], options: dict[str, Any]) -> None:
        timeout = options.get("timeout")
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._begin = functools.partial(start, request, options, self._deadline)
        #: the real call once started, or a stand-in for how the wait ended
        self._call: Any = None
        self._task: asyncio.Task[Any] | None = None
        self._callbacks: list[Callable[[Any], None]] = []

    def __repr__(self) -> str:
        if self._call is not None:
            return f"<pooled call {self._call!r}>"
        return f"<pooled call {'not begun' if self._task is None else 'waiting'}>"

    async def _started(self) -> Any:
        """The real call (or how the wait ended), once the wait is over."""
        if self._call is not None:
            return self._call
        task = self._task
        if task is None:
            # A task, as grpc.aio makes one per call: the wait must be cancellable from
            # any task (cancel()) and shared by all that use the call (a reader and a
            # writer). It lives only while awaited: a cancelled awaiter cancels it.
            task = self._task = asyncio.get_running_loop().create_task(self._wait())
            task.add_done_callback(self._ended)  # runs before any awaiter resumes
        try:
            return await task
        except asyncio.CancelledError:
            self.cancel()  # the awaiter was cancelled, so is the call (as grpc.aio's)
            await reraise_if_cancelled()  # a cancel scope's, raised anew for it to catch
            raise

    async def _wait(self) -> Any:
        try:
            call = await self._begin()
        except grpc.aio.AioRpcError as error:
            call = _FailedCall(error)
        self._settle(call)
        return call

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """The wait's task is over: record a cancellation or a crash (retrieving it)."""
        if self._call is not None:
            return
        if task.cancelled():
            self._settle(_CancelledCall())
        else:
            error = task.exception()  # a success settled already, in _wait
            assert error is not None
            self._settle(_FailedCall(error))

    def _settle(self, call: Any) -> None:
        self._call = call
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._forward(call, callback)

    def _forward(self, call: Any, callback: Callable[[Any], None]) -> None:
        call.add_done_callback(lambda _: callback(self))

    # --- grpc.aio.Call ------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._started())

    def __aiter__(self) -> _DeferredCall:
        return self

    async def __anext__(self) -> Any:
        return await (await self._started()).__aiter__().__anext__()

    async def read(self) -> Any:
        return await (await self._started()).read()

    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()

    async def wait_for_connection(self) -> None:
        await (await self._started()).wait_for_connection()

    async def code(self) -> grpc.StatusCode:
        return await (await self._started()).code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await (await self._started()).details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await (await self._started()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._started()).trailing_metadata()

    def cancel(self) -> bool:
        """Cancel the call: its wait, or the real call once started; False once done."""
        task = self._task
        if self._call is None and task is not None and task.done():
            self._ended(task)  # over, but its done callback has not run yet
        if self._call is not None:
            return bool(self._call.cancel())
        self._settle(_CancelledCall())
        if task is not None:
            task.cancel()
        return True

    def cancelled(self) -> bool:
        return self._call is not None and bool(self._call.cancelled())

    def done(self) -> bool:
        return self._call is not None and bool(self._call.done())

    def time_remaining(self) -> float | None:
        call = self._call
        if call is not None and not isinstance(call, _FailedCall):
            return call.time_remaining()  # type: ignore[no-any-return]
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call is done (at once, if it is)."""
        if self._call is None:
            self._callbacks.append(callback)
        else:
            self._forward(self._call, callback)


class _FailedCall:
    """A call that failed before it began: no channel to send it on, or none in time."""

    __slots__ = ("_error",)

    def __init__(self, error: BaseException) -> None:
        self._error = error

    def __await__(self) -> Generator[Any, None, Any]:
        return self._raise().__await__()

    async def _raise(self) -> Any:
        raise self._error

    def __aiter__(self) -> _FailedCall:
        return self

    async def __anext__(self) -> Any:
        raise self._error

    async def read(self) -> Any:
        raise self._error

    async def write(self, request: Any) -> None:
        raise self._error

    async def done_writing(self) -> None:
        raise self._error

    async def code(self) -> grpc.StatusCode:
        error = self._error
        return error.code() if isinstance(error, grpc.aio.AioRpcError) else _UNKNOWN

    async def details(self) -> str | None:
        error = self._error
        if isinstance(error, grpc.aio.AioRpcError):
            return error.details()
        return f"{type(error).__name__}: {error}"

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def wait_for_connection(self) -> None:
        raise self._error

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)


class _CancelledCall(_FailedCall):
    """A call cancelled before it started: it answers as a cancelled grpc.aio call does."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(grpc.aio.AioRpcError(_CANCELLED, details=_LOCALLY_CANCELLED))

    async def _raise(self) -> Any:
        raise asyncio.CancelledError

    async def __anext__(self) -> Any:
        raise asyncio.CancelledError

    async def read(self) -> Any:
        raise asyncio.CancelledError

    async def wait_for_connection(self) -> None:
        raise asyncio.CancelledError

    async def write(self, request: Any) -> None:
        raise asyncio.InvalidStateError("RPC already finished.")

    async def done_writing(self) -> None:
        pass  # as grpc.aio's, for a call that is done

    def cancelled(self) -> bool:
        return True
