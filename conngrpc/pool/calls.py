"""The call objects a PooledChannel hands back when grpc's own call will not do (private).

A call that waits (for a channel, for room), that failed before it began, or whose
response stream must end once nobody holds it: each answers every method of a grpc.aio
call as grpc's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Generator
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from .._tasks import reraise_if_cancelled

__all__ = [
    "Attempted",
    "CancelledCall",
    "ClientStreamCall",
    "DeferredCall",
    "FailedCall",
    "Requests",
    "Start",
    "StreamCall",
    "deadline_of",
    "within",
]

_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
#: grpc.aio's own details for a call its application cancelled
_LOCALLY_CANCELLED = "Locally cancelled by application!"
#: grpc.aio's own words for writing to a call that is over
_RPC_ALREADY_FINISHED = "RPC already finished."
#: grpc.aio's own words for writing to a call given a request iterator
_API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
_T = TypeVar("_T")


def deadline_of(options: dict[str, Any]) -> float | None:
    """When a call made now with ``options`` is due (monotonic), or None."""
    timeout = options.get("timeout")
    return None if timeout is None else time.monotonic() + timeout


def within(options: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """``options`` with the ``timeout`` left until ``deadline`` (monotonic)."""
    if deadline is None:
        return options
    return {**options, "timeout": max(0.0, deadline - time.monotonic())}


class StreamCall:
    """A grpc.aio call with a response stream, cancelled once nobody holds it any more.

    grpc.aio keeps such a call running (and its stream open) when its caller drops it
    unfinished: an ``async for`` over ``stub.Stream(request)`` left by ``break``,
    ``return`` or an exception. This object is what the caller holds, and what its
    iterators hold while they are used: once none is left before the stream's end, the
    call is cancelled. Its iterators read through grpc.aio's one iterator per call, so each
    resumes where the last stopped; every other method is the call's own.
    """

    __slots__ = ("__weakref__", "_call", "_loop")

    def __init__(self, call: Any) -> None:
        self._call = call
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<pooled stream {self._call!r}>"

    def __del__(self) -> None:
        call = self._call
        if not call.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed: so is the call
                self._loop.call_soon_threadsafe(call.cancel)

    def __aiter__(self) -> Responses:
        return Responses(self)

    async def read(self) -> Any:
        return await self._call.read()

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    async def code(self) -> grpc.StatusCode:
        return await self._call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._call.details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call is done.

        The callback does not keep this object alive (a dropped stream is still
        cancelled); should it be gone by then, the callback gets grpc's own call.
        """
        held = weakref.ref(self)
        self._call.add_done_callback(lambda call: callback(held() or call))


class Responses:
    """The responses of a :class:`StreamCall`, through grpc.aio's own iterator of the
    call (one per call: each resumes where the last stopped); it holds the stream while
    it is used, so the stream lives as long as someone iterates it."""

    __slots__ = ("_messages", "_stream")

    def __init__(self, stream: StreamCall) -> None:
        self._stream = stream
        self._messages = stream._call.__aiter__()

    def __aiter__(self) -> Responses:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._messages.__anext__()  # type: ignore[no-any-return]


class Attempted(Protocol):
    """What counts a call's attempts (:class:`~conngrpc.pool.retry.Attempts`)."""

    sent: int


Start = Callable[[tuple[Any, ...], dict[str, Any], "float | None"], Awaitable[Any]]


class DeferredCall:
    """A call that waits for a channel (while the pool starts, or ``wait_for_ready=True``)
    or for room under ``max_calls_per_channel`` before it starts: a grpc.aio call in
    every method.

    It begins to wait when it is made, in a task of its own (as grpc.aio makes one per
    call), so a call nobody awaits still starts, ends, runs its done callbacks and
    meets its deadline. Every method answers from the real call once it started, or from
    the wait's outcome: an ``AioRpcError`` (DEADLINE_EXCEEDED) if the deadline, counted
    from the call's creation, passed first. :meth:`cancel` ends the wait at once
    (awaiting or iterating raises ``asyncio.CancelledError``, as a cancelled grpc.aio
    call does), or cancels the real call once started: the pool starts a call waiting
    for room the moment room frees, so a cancel that comes just then cancels a call
    already sent. Cancelling a task that waits on it, in any method, cancels the call,
    as for a grpc.aio call being awaited.
    """

    __slots__ = ("__weakref__", "_attempts", "_call", "_callbacks", "_deadline", "_task")

    def __init__(
        self,
        start: Start,
        request: tuple[Any, ...],
        options: dict[str, Any],
        attempts: Attempted | None = None,
    ) -> None:
        self._deadline = deadline_of(options)
        self._attempts = attempts
        #: the real call once started, or a stand-in for how the wait ended
        self._call: Any = None
        self._callbacks: list[Callable[[Any], None]] = []
        # A task the caller does not own, as grpc.aio makes one per call: the wait must
        # go on without anyone awaiting it, be cancellable from any task (cancel()) and
        # be shared by all that use the call (a reader and a writer).
        wait = self._wait(start, request, options)
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(wait)
        self._task.add_done_callback(self._ended)  # runs before any awaiter resumes

    def __repr__(self) -> str:
        if self._call is not None:
            return f"<pooled call {self._call!r}>"
        return "<pooled call waiting>"

    @property
    def attempts(self) -> int:
        """How many attempts the call sent (more than 1 only under a retry or a hedging
        policy): readable in its done callbacks, which get this object."""
        attempts = self._attempts
        return 1 if attempts is None else attempts.sent

    async def _started(self) -> Any:
        """The real call (or how the wait ended), once the wait is over."""
        if self._call is not None:
            return self._call
        return await self._cancelling(asyncio.shield(self._task))

    async def _cancelling(self, step: Awaitable[_T]) -> _T:
        """Await ``step``: a task cancelled meanwhile cancels the call, as grpc.aio's."""
        try:
            return await step
        except asyncio.CancelledError:
            self.cancel()  # the awaiter was cancelled, so is the call (as grpc.aio's)
            await reraise_if_cancelled()  # a cancel scope's, raised anew for it to catch
            raise

    async def _wait(self, start: Start, request: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            call = await start(request, options, self._deadline)
        except grpc.aio.AioRpcError as error:
            call = FailedCall(error, self._deadline)
        self._settle(call)
        return call

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """The wait's task is over: record a cancellation or a crash (retrieving it)."""
        if self._call is not None:
            if not task.cancelled():
                task.exception()  # retrieved: a crash after the settle is not news
            return
        if task.cancelled():
            self._settle(CancelledCall(self._deadline))
        else:
            error = task.exception()  # a success settled already, in _wait
            assert error is not None
            self._settle(FailedCall(error, self._deadline))

    def _settle(self, call: Any) -> None:
        self._call = call
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._forward(call, callback)

    def _forward(self, call: Any, callback: Callable[[Any], None]) -> None:
        if isinstance(call, StreamCall):
            # As StreamCall's own: the callback does not keep a stream alive (one nobody
            # holds is cancelled); should this be gone by then, it gets what ended.
            held = weakref.ref(self)
            call.add_done_callback(lambda done: callback(held() or done))
        else:
            call.add_done_callback(lambda _: callback(self))

    # --- grpc.aio.Call ------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._started())

    def __aiter__(self) -> DeferredCall:
        return self

    async def __anext__(self) -> Any:
        # The started call's own iterator, the same at every step (grpc.aio's is one per
        # call), so reading resumes where it stopped.
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
        if self._call is None and task.done():
            self._ended(task)  # over, but its done callback has not run yet
        if self._call is not None:
            return bool(self._call.cancel())
        self._settle(CancelledCall(self._deadline))
        task.cancel()
        return True

    def cancelled(self) -> bool:
        return self._call is not None and bool(self._call.cancelled())

    def done(self) -> bool:
        return self._call is not None and bool(self._call.done())

    def time_remaining(self) -> float | None:
        call = self._call
        if call is not None:
            return call.time_remaining()  # type: ignore[no-any-return]
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call is done (at once, if it is)."""
        if self._call is None:
            self._callbacks.append(callback)
        else:
            self._forward(self._call, callback)


class Requests(Protocol):
    """What sends a client stream's requests to its attempts
    (:class:`~conngrpc.pool.retry.Replay`)."""

    async def write(self, request: Any) -> None: ...

    async def done_writing(self) -> None: ...

    async def wait_for_connection(self) -> None: ...

    def end(self, answer: Any) -> None:
        """The call is over: ``answer`` is what it settled on."""


class ClientStreamCall(DeferredCall):
    """A client-stream call sent as attempts: a :class:`DeferredCall` whose requests go
    through ``requests`` to each attempt as it goes out, not to the call that answers.

    Given a request iterator, it consumes it itself, in a task, as grpc.aio's call does:
    ``write()`` and ``done_writing()`` then raise ``grpc.aio.UsageError``, a write that
    fails with the call's status ends the iterator's reading, and anything else (the
    iterator raised, the call is over) cancels the call.
    """

    __slots__ = ("_feeding", "_requests")

    def __init__(
        self,
        start: Start,
        requests: Requests,
        iterator: Any,
        options: dict[str, Any],
        attempts: Attempted | None = None,
    ) -> None:
        self._requests = requests
        super().__init__(start, (), options, attempts)
        self._feeding: asyncio.Task[None] | None = None
        if iterator is not None:
            # A task the caller does not own, as grpc.aio's request poller; it holds the
            # call weakly, so that a stream nobody holds is still cancelled (StreamCall).
            feed = _feed(weakref.ref(self), requests, iterator)
            self._feeding = asyncio.get_running_loop().create_task(feed)

    def _settle(self, call: Any) -> None:
        self._requests.end(call)
        super()._settle(call)

    async def write(self, request: Any) -> None:
        if self._feeding is not None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        await self._cancelling(self._requests.write(request))

    async def done_writing(self) -> None:
        if self._feeding is not None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        await self._cancelling(self._requests.done_writing())

    async def wait_for_connection(self) -> None:
        await self._cancelling(self._requests.wait_for_connection())

    def cancel(self) -> bool:
        """Cancel the call (as :meth:`DeferredCall.cancel`) and the reading of its
        request iterator."""
        cancelled = super().cancel()
        if cancelled and self._feeding is not None:
            self._feeding.cancel()
        return cancelled


async def _feed(held: weakref.ref[ClientStreamCall], requests: Requests, iterator: Any) -> None:
    """Write the requests of ``iterator`` (sync or async), then close: grpc.aio's own
    request poller, through ``requests``."""
    try:
        if isinstance(iterator, AsyncIterable):
            async for request in iterator:
                if not await _sent(requests, request):
                    return
        else:
            for request in iterator:
                if not await _sent(requests, request):
                    return
        await requests.done_writing()
    except (Exception, asyncio.CancelledError):
        call = held()
        if call is not None:
            call.cancel()


async def _sent(requests: Requests, request: Any) -> bool:
    """Write ``request``; False if the call ended first (its status says how)."""
    try:
        await requests.write(request)
    except grpc.aio.AioRpcError:
        return False
    return True


class FailedCall:
    """A call that failed before it began: no channel to send it on, or none in time.

    It answers as a grpc.aio call that is over does: awaiting, reading or waiting for
    its connection raises the error; writing raises ``asyncio.InvalidStateError``;
    ``done_writing()`` returns; ``time_remaining()`` is what is left of its deadline.
    """

    __slots__ = ("_deadline", "error")

    def __init__(self, error: BaseException, deadline: float | None) -> None:
        self.error = error
        self._deadline = deadline

    def __await__(self) -> Generator[Any, None, Any]:
        return self._raise().__await__()

    async def _raise(self) -> Any:
        # A turn of the event loop first, as grpc's failed call takes: a caller retrying
        # at once would otherwise starve the loop, and with it the workers that heal.
        await asyncio.sleep(0)
        raise self.error

    def __aiter__(self) -> FailedCall:
        return self

    async def __anext__(self) -> Any:
        return await self._raise()

    async def read(self) -> Any:
        return await self._raise()

    async def wait_for_connection(self) -> None:
        await self._raise()

    async def write(self, request: Any) -> None:
        raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)

    async def done_writing(self) -> None:
        pass  # as grpc.aio's, for a call that is done

    async def code(self) -> grpc.StatusCode:
        error = self.error
        return error.code() if isinstance(error, grpc.aio.AioRpcError) else _UNKNOWN

    async def details(self) -> str | None:
        error = self.error
        if isinstance(error, grpc.aio.AioRpcError):
            return error.details()
        return f"{type(error).__name__}: {error}"

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)


class CancelledCall(FailedCall):
    """A call cancelled before it started: it answers as a cancelled grpc.aio call does."""

    __slots__ = ()

    def __init__(self, deadline: float | None) -> None:
        super().__init__(grpc.aio.AioRpcError(_CANCELLED, details=_LOCALLY_CANCELLED), deadline)

    async def _raise(self) -> Any:
        raise asyncio.CancelledError

    def cancelled(self) -> bool:
        return True
