"""Retries and hedging across a pool's connections, as gRFC A6 sets them out (private).

A method whose ``methodConfig`` entry in the pool's ``service_config`` has a
``retryPolicy`` or a ``hedgingPolicy`` sends each call as one or more attempts, each
picked anew by the pool, on a connection the call has not tried where there is one (on
a backend it has not tried, first). grpc does the same through its load balancer; a
pool's channels are one connection each, so grpc's own retries would go back to the
connection that just failed, and the pool takes them over (the channels never see the
policies).

Retries (``retryPolicy``) send one attempt at a time: after an attempt fails with one
of ``retryableStatusCodes`` while the call is uncommitted, the next goes out after a
backoff of ``random(0, min(initialBackoff * backoffMultiplier**(n-1), maxBackoff))``,
or after the server's pushback (``grpc-retry-pushback-ms``: a number of milliseconds;
a negative or unreadable one stops the retries), within ``maxAttempts`` and the call's
deadline. Hedging (``hedgingPolicy``) sends the first attempt at once and another each
``hedgingDelay`` while none has answered (at once after one fails with one of
``nonFatalStatusCodes``), within ``maxAttempts``; the first attempt that ends otherwise
(success included) is the call's answer and the others are cancelled; when all end
with non-fatal codes, the last one's status is the answer. ``retryThrottling`` is one
token bucket per pool: each attempt that fails with a retryable (non-fatal) code takes
a token, each success gives back ``tokenRatio``, and no retry or hedge goes out while
half the tokens or fewer are left.

A call commits, and is never retried again, once the pool has given its caller
something of the answer: a response message, or response headers. grpc.aio shows
Python no difference between a Trailers-Only error and headers with no metadata in them
followed by the error (``initial_metadata()`` is empty in both), so the pool reads an
error whose response brought initial metadata as committed and one that brought none
as Trailers-Only: a server that fails a call it has begun to answer should send a
metadata entry in its headers, or a message. A response stream commits at headers with
metadata in them, or at its first message, which the pool reads ahead for its caller
(until then, its ``initial_metadata()`` waits: a server that answers a stream's headers
long before its first message should put a metadata entry in them). A unary
request larger than ``grpc.per_rpc_retry_buffer_size`` goes once: grpc commits it as it
goes.

A client stream (stream-unary, stream-stream) is retried as A6 says, with its requests
kept for the next attempt (:class:`Replay`, grpc's retry buffer) while their serialized
size in all stays within ``grpc.per_rpc_retry_buffer_size`` (in the pool's channel
options; 256 KiB by default, as in grpc core); past it the call commits. Each attempt is
a call of its own, which the pool writes to: first the requests kept, in order, then
``done_writing()`` if the caller gave it, then the caller's next ones. Under a
``hedgingPolicy``, a client stream goes out once, neither hedged nor retried: copies
running side by side would each need the caller's requests as they come.

Every attempt carries ``grpc-previous-rpc-attempts`` (the attempts sent before it)
from the second on (grpc's own retry layer, on by default for its transparent retries,
drops it on the way out unless the channels' options set ``grpc.enable_retries`` to 0),
goes through the channel's interceptors, and counts against its connection (the pick,
``max_calls_per_channel``, ejection) as any call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

from .. import telemetry
from .calls import DeferredCall, FailedCall, StreamCall, deadline_of, within
from .ejection import REFUSED_STREAM

if TYPE_CHECKING:
    from .handout import Slot
    from .service_config import HedgingPolicy, RetryPolicy, RetryThrottling

__all__ = [
    "BUFFER_OPTION",
    "DEFAULT_BUFFER_SIZE",
    "HEDGE",
    "PREVIOUS_ATTEMPTS",
    "PUSHBACK",
    "RETRY",
    "STOP",
    "Attempts",
    "Ended",
    "ReadAhead",
    "Replay",
    "Throttle",
    "backoff",
    "buffer_size",
    "is_refused",
    "pushback",
    "serialized_size",
    "with_previous",
]

#: Telemetry: an attempt after the first went out under a retry policy ...
RETRY = ("conngrpc", "pool", "retry")
#: ... or under a hedging policy.
HEDGE = ("conngrpc", "pool", "hedge")
#: The server's pushback, in milliseconds, in an attempt's trailing metadata (A6).
PUSHBACK: Final = "grpc-retry-pushback-ms"
#: How many attempts went out before this one, in its metadata (A6; absent on the first).
PREVIOUS_ATTEMPTS: Final = "grpc-previous-rpc-attempts"
#: The channel option that bounds a client stream's requests kept for its next attempt ...
BUFFER_OPTION: Final = "grpc.per_rpc_retry_buffer_size"
#: ... and its default in grpc core, in bytes.
DEFAULT_BUFFER_SIZE: Final = 256 * 1024
#: grpc.aio's own words for a write after ``done_writing()``
_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
#: pushback() of a server that asked for no more attempts
STOP: Final = -1.0


class Throttle:
    """``retryThrottling``: one token bucket per pool, counted in grpc core's milli-tokens.

    It starts full (``maxTokens``); an attempt that fails with a retryable (or
    non-fatal) code takes one token, a call that succeeds gives ``tokenRatio`` back, and
    retries and hedges go out only while more than half the tokens are left.
    """

    __slots__ = ("_half", "_most", "_ratio", "tokens")

    def __init__(self, config: RetryThrottling) -> None:
        self._most = config.max_tokens * 1000
        self._half = self._most // 2
        self._ratio = round(config.token_ratio * 1000)
        self.tokens = self._most

    def __repr__(self) -> str:
        return f"<Throttle {self.tokens / 1000:g} of {self._most // 1000} tokens>"

    def failed(self) -> bool:
        """An attempt failed with a retryable code: take a token; may more go out?"""
        self.tokens = max(0, self.tokens - 1000)
        return self.tokens > self._half

    def succeeded(self) -> None:
        """A call succeeded: give back ``tokenRatio`` tokens."""
        self.tokens = min(self._most, self.tokens + self._ratio)

    def allows(self) -> bool:
        """Whether a retry or a hedge may go out now."""
        return self.tokens > self._half


def backoff(policy: RetryPolicy, retry: int, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first) since the last
    pushback: ``random(0, min(initialBackoff * backoffMultiplier**(retry-1), maxBackoff))``."""
    try:
        ceiling = policy.initial_backoff * policy.backoff_multiplier ** (retry - 1)
    except OverflowError:
        ceiling = policy.max_backoff
    return draw() * min(ceiling, policy.max_backoff)


def pushback(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The server's pushback in ``metadata`` (an attempt's trailing metadata), in seconds:
    None when there is none, :data:`STOP` when it asks for no more attempts (a negative
    or unreadable value, as A6 reads one)."""
    for key, value in metadata or ():
        if key == PUSHBACK:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return int(text) / 1000 if text.isdigit() else STOP
    return None


def is_refused(code: grpc.StatusCode | None, details: str | None) -> bool:
    """Whether a call's status says the server refused its stream before it began."""
    return code is _UNAVAILABLE and details is not None and REFUSED_STREAM in details


def with_previous(options: dict[str, Any], previous: int) -> dict[str, Any]:
    """``options`` whose metadata says ``previous`` attempts went out before this one."""
    if not previous:
        return options
    metadata = tuple(options.get("metadata") or ())
    metadata = tuple(item for item in metadata if item[0] != PREVIOUS_ATTEMPTS)
    return {**options, "metadata": (*metadata, (PREVIOUS_ATTEMPTS, str(previous)))}


def serialized_size(request: Any, serializer: Callable[[Any], bytes] | None) -> int:
    """How many bytes ``request`` takes on the wire (a protobuf message says it)."""
    size = getattr(request, "ByteSize", None)
    if size is not None:
        return int(size())
    if serializer is not None:
        return len(serializer(request))
    return len(request) if isinstance(request, bytes | bytearray | memoryview) else 0


def buffer_size(options: Iterable[tuple[str, Any]]) -> int:
    """How many bytes of a client stream's requests a call keeps for its next attempt:
    ``grpc.per_rpc_retry_buffer_size`` in a channel's ``options``, as grpc core reads it
    (the last one given; a negative one is 0; one that is not an int, the default)."""
    size = DEFAULT_BUFFER_SIZE
    for key, value in options:
        if key == BUFFER_OPTION:
            size = max(0, value) if isinstance(value, int) else DEFAULT_BUFFER_SIZE
    return size


class Ended:
    """How one attempt ended, as far as the call is concerned."""

    __slots__ = ("call", "code", "committed", "details", "metadata", "slot")

    def __init__(
        self,
        call: Any,
        slot: Slot | None,
        code: grpc.StatusCode,
        *,
        committed: bool = False,
        details: str | None = None,
        metadata: Iterable[tuple[str, str | bytes]] | None = None,
    ) -> None:
        self.call = call
        self.slot = slot
        self.code = code
        self.committed = committed
        self.details = details
        self.metadata = metadata


class ReadAhead(StreamCall):
    """A response stream the pool read from first, to know whether the call committed:
    reading gives the message read ahead (if one came), then the stream's own, through
    ``read()`` (grpc.aio forbids mixing ``read()`` with its own iterator)."""

    __slots__ = ("_first",)

    def __init__(self, call: Any, first: Any = grpc.aio.EOF) -> None:
        super().__init__(call)
        self._first = [] if first is grpc.aio.EOF else [first]

    async def read(self) -> Any:
        first = self._first
        if first:
            return first.pop()
        return await self._call.read()

    def __aiter__(self) -> Any:
        return _ReadAll(self)


class _ReadAll:
    """The messages of a :class:`ReadAhead` stream, read with ``read()``."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ReadAhead) -> None:
        self._stream = stream

    def __aiter__(self) -> _ReadAll:
        return self

    async def __anext__(self) -> Any:
        message = await self._stream.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message


class Replay:
    """A client stream's requests on their way to its attempts, kept for the next one
    (A6's retry buffer) while the call is uncommitted.

    An attempt, once it went out (:meth:`attach`), first gets the requests kept so far,
    in order, then ``done_writing()`` if the caller gave it; only then does it take new
    ones, so none reaches one attempt twice or out of order. A request is kept while the
    serialized size of those kept stays within ``limit``; past it the call commits (no
    other attempt goes out) and none is kept any more.

    A write goes to the attempt that takes requests now, and waits while none does (the
    first is on its way, or the last one ended and what follows is not decided). A
    write whose attempt ended returns once the next one went out (with it among the
    kept requests), or fails once the call is over, as grpc.aio's write fails for the
    call that answered: with its status, or ``asyncio.InvalidStateError`` once it is
    done.
    """

    __slots__ = (
        "_answer",
        "_changed",
        "_closed",
        "_latest",
        "_limit",
        "_open",
        "_opened",
        "_replaying",
        "_serialize",
        "committed",
        "kept",
        "size",
    )

    def __init__(self, serialize: Callable[[Any], bytes] | None, limit: int) -> None:
        self._serialize = serialize
        self._limit = limit
        self.kept: list[Any] = []
        self.size = 0  # the serialized size of the requests kept
        self.committed = False  # past the limit: none is kept, no other attempt goes out
        self._closed = False  # the caller called done_writing()
        self._latest: Any = None  # the last attempt that went out
        self._open: Any = None  # the attempt that takes requests now: the latest, once replayed
        self._opened = 0  # attempts that took requests so far
        #: the call that answered (an attempt's own call, or a call that failed before
        #: any went out), once the call is over
        self._answer: Any = None
        self._changed = asyncio.Event()  # set, and replaced, at each change of the above
        self._replaying: asyncio.Task[None] | None = None  # held while it runs

    def __repr__(self) -> str:
        state = "over" if self._answer is not None else f"opened={self._opened}"
        return f"<Replay {state} kept={len(self.kept)} size={self.size}/{self._limit}>"

    def attach(self, call: Any) -> None:
        """Attempt ``call`` went out: it gets the kept requests, then takes new ones."""
        self._latest = call
        kept = self.kept
        if not kept and not self._closed:
            self._take(call)
            return
        # A task the caller does not own, as grpc.aio's request poller: the kept requests
        # go out while the attempt's answer is read (a server that answers each request
        # before it reads the next needs both), and new ones wait until they have.
        self._replaying = asyncio.get_running_loop().create_task(self._replay(call, kept))

    def end(self, answer: Any) -> None:
        """The call is over: ``answer`` is the call that answered. Nothing is kept any more."""
        if self._answer is None:
            self._answer = answer._call if isinstance(answer, StreamCall) else answer
            self.kept = []
            self._fire()

    async def write(self, request: Any) -> None:
        """Send ``request`` to the attempt that takes requests now, kept for the next one
        while the call is uncommitted; once the call is over, to the call that answered.

        :raises asyncio.InvalidStateError: after :meth:`done_writing`, or once the call
            is done, as grpc.aio's write.
        :raises grpc.aio.AioRpcError: the call ended while the write waited (its status).
        """
        pending = self._answer is None  # it began before the call was over
        tried: int | None = None  # it went to an attempt that ended: attempts opened then
        while True:
            changed = self._changed
            if tried is not None and self._opened > tried:
                return  # the next attempt went out, with this request among the kept
            answer = self._answer
            if answer is not None:
                if answer.done():
                    if pending:
                        # What grpc.aio's write raises for a call that ended under it:
                        # its status (a done call's wait_for_connection raises it).
                        await answer.wait_for_connection()
                    else:
                        await answer.write(request)
                    return
                if answer is self._open and tried is None:  # committed, its kept ones sent
                    await answer.write(request)
                    return
            elif tried is None:
                call = self._open
                if call is not None and call is self._latest and not call.done():
                    if self._closed:
                        raise asyncio.InvalidStateError(_HALF_CLOSED)
                    self._keep(request)
                    tried = self._opened
                    try:
                        await call.write(request)
                    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        continue  # the attempt ended: what follows decides
                    return
            await changed.wait()

    async def done_writing(self) -> None:
        """Close the requests: now for the attempt that takes them, and after the kept
        ones for every attempt after it. Once the call is done, it does nothing."""
        answer = self._answer
        if answer is not None and answer.done():
            await answer.done_writing()
            return
        self._closed = True
        call = self._open
        if call is None or call is not self._latest or call.done():
            return  # the next attempt gets it after the kept requests (if one goes out)
        if answer is not None:
            await call.done_writing()  # the committed attempt's own
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()  # an attempt that ends meanwhile: what follows decides

    async def wait_for_connection(self) -> None:
        """Wait until an attempt went out (its headers sent); once the call is over, the
        answer's own."""
        while True:
            changed = self._changed
            answer = self._answer
            if answer is not None:
                await answer.wait_for_connection()
                return
            call = self._latest
            if call is not None and not call.done():
                with contextlib.suppress(grpc.aio.AioRpcError):  # it ended: the next, then
                    await call.wait_for_connection()
                    return
            await changed.wait()

    def _keep(self, request: Any) -> None:
        """Keep ``request`` for the next attempt, or commit the call if it is one too many."""
        if self.committed:
            return
        size = self.size + serialized_size(request, self._serialize)
        if size > self._limit:
            self.committed = True
            self.kept = []
            return
        self.size = size
        self.kept.append(request)

    async def _replay(self, call: Any, kept: list[Any]) -> None:
        """Send ``call`` the requests ``kept`` and the close, then let it take new ones."""
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for request in kept:
                    await call.write(request)
                if self._closed:
                    await call.done_writing()
        finally:  # it ended if it failed: how it ended decides what follows
            self._take(call)

    def _take(self, call: Any) -> None:
        """``call`` takes requests now (unless another attempt went out since)."""
        if call is self._latest:
            self._open = call
            self._opened += 1
            self._fire()

    def _fire(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class _Plan:
    """What a call's attempts decide between them: whether another goes out, and when."""

    __slots__ = (
        "cause",
        "codes",
        "counted",
        "free",
        "most",
        "refused_once",
        "retries",
        "retry",
        "stopped",
        "throttle",
    )

    def __init__(
        self,
        retry: RetryPolicy | None,
        hedging: HedgingPolicy | None,
        throttle: Throttle | None,
    ) -> None:
        self.retry = retry
        self.throttle = throttle
        if retry is not None:
            self.most, self.codes = retry.max_attempts, retry.retryable_status_codes
        else:
            assert hedging is not None
            self.most, self.codes = hedging.max_attempts, hedging.non_fatal_status_codes
        self.counted = 0  # attempts sent that count against maxAttempts
        self.retries = 0  # retries since the last pushback: the backoff's exponent
        self.refused_once = False  # a refused stream went out again (once, free)
        self.free = False  # the next attempt re-sends a refused stream
        self.stopped = False  # none goes out any more (throttled, or the server said so)
        #: the status of the attempt whose failure sends the next one
        self.cause: grpc.StatusCode | None = None

    def may_send(self, sent: int) -> bool:
        """Whether the next attempt may go out now (count it, if so)."""
        if self.stopped:
            return False
        if sent and not self.free and self.throttle is not None and not self.throttle.allows():
            self.stopped = True  # retryThrottling: under half the tokens left
            return False
        if not self.free:
            self.counted += 1
        self.free = False
        return True

    def sent(self) -> grpc.StatusCode | None:
        """An attempt goes out now: the status whose failure sent it (None: the first,
        or a hedge its delay sent)."""
        cause, self.cause = self.cause, None
        return cause

    def after(self, ended: Ended) -> float | None:
        """An attempt ended: None if no other goes out for it (it answers, or it failed
        for good), or the seconds to wait before the next."""
        code = ended.code
        throttle = self.throttle
        if code is _OK:
            if throttle is not None:
                throttle.succeeded()
            return None
        refused = not ended.committed and is_refused(code, ended.details)
        if code in self.codes and not refused and throttle is not None and not throttle.failed():
            self.stopped = True  # as grpc core, a failure counts before the commit
        if ended.committed:
            return None
        if refused and not self.refused_once:
            self.refused_once = self.free = True  # it never reached the application
            self.cause = code
            return 0.0
        if code not in self.codes:
            return None  # a fatal status
        server = pushback(ended.metadata)
        if server == STOP:
            self.stopped = True
        if self.stopped or self.counted >= self.most:
            return None
        self.cause = code
        if server is not None:
            self.retries = 0
            return server
        if self.retry is not None:
            self.retries += 1
            return backoff(self.retry, self.retries)
        return 0.0  # a hedge goes at once after a non-fatal failure

    def spent(self, ended: Ended) -> bool:
        """Whether ``ended`` failed with a status that lets the others go on (hedging)."""
        return ended.code in self.codes and not ended.committed


#: What sends an attempt: given the connections the call tried (it adds the one it
#: takes), the options and the call's deadline; returns the attempt's own call (a
#: response stream unwrapped) and its connection.
#:
#: :raises grpc.aio.AioRpcError: the attempt could not go out (no channel to send it on).
Send = Callable[[list["Slot"], dict[str, Any], "float | None"], Awaitable[tuple[Any, "Slot"]]]


class Attempts:
    """One call's attempts under a retry or a hedging policy, and what decides them.

    :meth:`run` is what a :class:`~conngrpc.pool.calls.DeferredCall` waits for: it returns
    the call that answers (an attempt's own call; a response stream as a
    :class:`ReadAhead`), or raises the ``AioRpcError`` that ends the call instead
    (DEADLINE_EXCEEDED between attempts). A client stream's attempts are sent without
    requests: ``requests`` writes them to each (and tells the call committed past its
    buffer).
    """

    __slots__ = (
        "_hedging",
        "_method",
        "_pool",
        "_requests",
        "_retry",
        "_send",
        "_streaming",
        "_throttle",
        "sent",
    )

    def __init__(
        self,
        send: Send,
        *,
        pool: str,
        method: str,
        retry: RetryPolicy | None = None,
        hedging: HedgingPolicy | None = None,
        throttle: Throttle | None = None,
        streaming: bool = False,
        requests: Replay | None = None,
    ) -> None:
        if (retry is None) == (hedging is None):
            raise ValueError(f"expected a retry or a hedging policy, got {retry!r}, {hedging!r}")
        if requests is not None and hedging is not None:
            raise ValueError(f"expected a retry policy for a client stream, got {hedging!r}")
        self._send = send
        self._pool = pool
        self._method = method
        self._retry = retry
        self._hedging = hedging
        self._throttle = throttle
        self._streaming = streaming
        self._requests = requests
        #: attempts sent so far (a refused stream's re-send included)
        self.sent = 0

    def __repr__(self) -> str:
        kind = "retried" if self._retry is not None else "hedged"
        return f"<Attempts {kind} {self._method} sent={self.sent}>"

    async def run(self, options: dict[str, Any], deadline: float | None) -> Any:
        """Send the attempts (with ``options``, until ``deadline``); the answer's call."""
        plan = self.plan()
        if self._retry is not None:
            return await self._one_by_one(plan, [], options, deadline)
        return await self._hedged(plan, [], options, deadline)

    def plan(self) -> _Plan:
        """What decides this call's attempts."""
        return _Plan(self._retry, self._hedging, self._throttle)

    async def resume(
        self,
        plan: _Plan,
        tried: list[Slot],
        options: dict[str, Any],
        deadline: float | None,
        last: Ended,
        pause: float,
    ) -> Any:
        """The retries after a first attempt sent without this object's help (by a
        ``conngrpc.sync`` call, from its thread) failed in a way that retries: ``last``,
        and the wait before the next; the answer's call, as :meth:`run`'s."""
        return await self._one_by_one(plan, tried, options, deadline, last, pause)

    def first(self, call: Any, slot: Slot, options: dict[str, Any]) -> Retried:
        """The call whose first attempt, ``call``, went out on ``slot`` already with
        ``options`` (a retried unary-unary call, sent at once when a channel has room):
        grpc's own call answers unless it fails in a way that retries."""
        plan = self.plan()
        plan.may_send(0)
        self.sent = 1
        return Retried(self, call, slot, plan, options)

    async def _one_by_one(
        self,
        plan: _Plan,
        tried: list[Slot],
        options: dict[str, Any],
        deadline: float | None,
        last: Ended | None = None,
        pause: float = 0.0,
    ) -> Any:
        """Retries: each attempt after the last one failed, and its backoff. ``last`` and
        ``pause``: an attempt sent already that failed, and the wait before the next."""
        if last is None:
            plan.may_send(0)  # the first always goes
        while True:
            if last is not None:
                if pause:
                    if deadline is not None and time.monotonic() + pause >= deadline:
                        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                        raise _deadline_exceeded()  # between attempts, as grpc's retries end
                    await asyncio.sleep(pause)
                if not plan.may_send(self.sent):
                    return last.call
            last = await self._attempt(tried, options, deadline, self.sent, plan.sent())
            self.sent += 1
            pause_ = plan.after(last)
            if pause_ is None:
                return last.call
            pause = pause_

    async def _hedged(
        self, plan: _Plan, tried: list[Slot], options: dict[str, Any], deadline: float | None
    ) -> Any:
        """Hedging: a copy at once, another after each ``hedgingDelay`` (or at once after a
        non-fatal failure) while none has answered; the first to answer wins."""
        hedging = self._hedging
        assert hedging is not None
        live: set[asyncio.Task[Ended]] = set()
        loop = asyncio.get_running_loop()
        send_at: float | None = time.monotonic()
        last: Ended | None = None
        try:
            while True:
                now = time.monotonic()
                if self.sent and not live and deadline is not None and now >= deadline:
                    raise _deadline_exceeded()  # between copies (a pushback's wait)
                if send_at is not None and now >= send_at:
                    send_at = None
                    if plan.may_send(self.sent):
                        copy = self._attempt(tried, options, deadline, self.sent, plan.sent())
                        live.add(loop.create_task(copy))
                        self.sent += 1
                        if plan.counted < hedging.max_attempts:
                            send_at = now + hedging.hedging_delay
                if not live:
                    if send_at is None:
                        assert last is not None  # the first copy always goes out
                        return last.call
                    wait = send_at - now
                    if deadline is not None:
                        wait = min(wait, deadline - now)
                    await asyncio.sleep(max(0.0, wait))
                    continue
                wait_for = None if send_at is None else max(0.0, send_at - now)
                done, _ = await asyncio.wait(
                    live, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    live.discard(task)
                    last = task.result()
                    pause = plan.after(last)
                    if pause is None and not plan.spent(last):
                        return last.call  # the answer: the others are cancelled
                    send_at = None if pause is None else time.monotonic() + pause
        finally:
            for task in live:
                task.cancel()
            if live:
                await asyncio.wait(live)

    async def _attempt(
        self,
        tried: list[Slot],
        options: dict[str, Any],
        deadline: float | None,
        previous: int,
        cause: grpc.StatusCode | None,
    ) -> Ended:
        """Send attempt number ``previous + 1`` and wait until it ends, or commits (a
        response stream's first message; a client stream's response headers with
        metadata in them); how it ended. ``cause``: the status of the attempt whose
        failure sent it (None: a hedge's delay)."""
        try:
            call, slot = await self._send(tried, with_previous(options, previous), deadline)
        except grpc.aio.AioRpcError as error:
            return Ended(FailedCall(error, deadline), None, error.code(), details=error.details())
        if previous:
            self._tell(previous + 1, cause, slot)
        return await self._outcome(call, slot)

    async def _outcome(self, call: Any, slot: Slot) -> Ended:
        """How an attempt sent on ``slot`` ended, or committed."""
        requests = self._requests
        try:
            if requests is not None:
                requests.attach(call)
            # Response headers with metadata in them commit the call. (Empty ones cannot
            # be told from a Trailers-Only error's: whether the call was over when they
            # came is no sign either, as grpc.aio may hand the two over apart.)
            if (requests is not None or self._streaming) and await call.initial_metadata():
                return Ended(
                    ReadAhead(call) if self._streaming else call, slot, _OK, committed=True
                )
            if self._streaming:
                call = ReadAhead(call, await call.read())
                if call._first:
                    return Ended(call, slot, _OK, committed=True)
                code = await call.code()
                return Ended(call, slot, code, details=await call.details())
            await call
        except grpc.aio.AioRpcError as error:
            return Ended(
                call if not self._streaming or isinstance(call, ReadAhead) else ReadAhead(call),
                slot,
                error.code(),
                committed=bool(error.initial_metadata())
                or (requests is not None and requests.committed),
                details=error.details(),
                metadata=error.trailing_metadata(),
            )
        except asyncio.CancelledError:
            call.cancel()
            raise
        return Ended(call, slot, _OK)

    def _tell(self, attempt: int, cause: grpc.StatusCode | None, slot: Slot) -> None:
        """Report an attempt after the first: a retry, or a hedge (under a hedging policy)."""
        telemetry.execute(
            RETRY if self._hedging is None else HEDGE,
            {"attempt": attempt},
            {
                "pool_name": self._pool,
                "method": self._method,
                "code": cause,
                "backend": slot.backend,
            },
        )


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _cancelled_here(call: Any) -> bool:
    """Whether the application cancelled ``call`` (grpc.aio's ``cancelled()`` is true of
    a CANCELLED status the server sent too, which a policy may retry)."""
    try:
        return bool(call._cython_call.is_locally_cancelled())
    except AttributeError:  # through interceptors
        return bool(call.cancelled())


def ended_now(call: Any, slot: Slot) -> Ended | None:
    """How a finished grpc.aio unary call ended, read at once from what grpc.aio keeps
    (as :func:`~conngrpc.pool.ejection.status_code` reads it); None if it cannot be
    (a call made through interceptors), or it is not over."""
    try:
        status = call._cython_call._status
        headers = call._cython_call._initial_metadata
    except AttributeError:
        return None
    if status is None:
        return None
    return Ended(
        call,
        slot,
        _CODES[status.code()],
        committed=bool(headers),
        details=status.details(),
        metadata=status.trailing_metadata(),
    )


class Retried:
    """A unary-unary call under a retry policy whose first attempt went out at once.

    grpc's own call of the first attempt answers while it runs, and for good when it
    ends in a way that does not retry (an answer, a fatal status, a commit): then no
    task is ever made for the call. When it fails in a way that retries, the retries
    go on in a :class:`~conngrpc.pool.calls.DeferredCall` of their own, and it answers
    from then on. Every method answers as a grpc.aio call's does; done callbacks get
    this object.
    """

    __slots__ = (
        "_attempts",
        "_callbacks",
        "_deadline",
        "_first",
        "_later",
        "_options",
        "_plan",
        "_settled",
        "_slot",
    )

    def __init__(
        self, attempts: Attempts, first: Any, slot: Slot, plan: _Plan, options: dict[str, Any]
    ) -> None:
        self._attempts = attempts
        self._first = first
        self._slot = slot
        self._plan = plan
        self._options = options
        self._deadline = deadline_of(options)
        #: the retries, once the first attempt failed in a way that retries
        self._later: DeferredCall | None = None
        self._settled = False  # the first attempt is the answer
        self._callbacks: list[Callable[[Any], None]] = []
        first.add_done_callback(self._first_ended)

    def __repr__(self) -> str:
        return f"<pooled call {self._later or self._first!r} attempts={self.attempts}>"

    @property
    def attempts(self) -> int:
        """How many attempts the call sent."""
        return self._attempts.sent

    def _first_ended(self, call: Any = None) -> None:
        """The first attempt ended (its done callback, or whoever saw it end first): it
        answers, or the retries begin."""
        if self._settled or self._later is not None:
            return
        first = self._first
        cancelled = _cancelled_here(first)
        ended = None if cancelled else ended_now(first, self._slot)
        pause = None if ended is None else self._plan.after(ended)
        answer: Any
        if cancelled or (ended is not None and pause is None):
            self._settled = True
            answer = first
        else:  # it retries, or (read through interceptors) it must be awaited to know
            resume = functools.partial(self._resume, ended, pause)
            options = within(self._options, self._deadline)
            self._later = answer = DeferredCall(resume, (), options, self._attempts)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            answer.add_done_callback(lambda _, callback=callback: callback(self))

    async def _resume(
        self,
        ended: Ended | None,
        pause: float | None,
        request: tuple[Any, ...],
        options: dict[str, Any],
        deadline: float | None,
    ) -> Any:
        """The retries after the first attempt (a DeferredCall's start)."""
        attempts, plan = self._attempts, self._plan
        if ended is None:
            ended = await attempts._outcome(self._first, self._slot)
            pause = plan.after(ended)
        if pause is None:
            return ended.call
        return await attempts._one_by_one(plan, [self._slot], options, deadline, ended, pause)

    async def _answer(self) -> Any:
        """The call that answers, once the first attempt is over."""
        if not (self._settled or self._later is not None):
            await self._first.code()  # until it is over
            self._first_ended()
        return self._first if self._later is None else self._later

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        if self._later is None:
            try:
                return await self._first
            except grpc.aio.AioRpcError:
                self._first_ended()
                if self._later is None:
                    raise
        return await self._later

    async def wait_for_connection(self) -> None:
        await (await self._answer()).wait_for_connection()

    async def code(self) -> grpc.StatusCode:
        return await (await self._answer()).code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await (await self._answer()).details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await (await self._answer()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._answer()).trailing_metadata()

    def cancel(self) -> bool:
        """Cancel the call: its first attempt, or its retries; False once it is done."""
        if self._later is None and not self._settled and self._first.done():
            self._first_ended()  # it ended, and its done callback has not run yet
        later = self._later
        return bool(self._first.cancel() if later is None else later.cancel())

    def cancelled(self) -> bool:
        later = self._later
        if later is not None:
            return later.cancelled()
        return self._settled and bool(self._first.cancelled())

    def done(self) -> bool:
        later = self._later
        if later is not None:
            return later.done()
        return self._settled

    def time_remaining(self) -> float | None:
        later = self._later
        return (self._first if later is None else later).time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the call is done (at once, if it is)."""
        answer: Any = (
            self._later if self._later is not None else (self._first if self._settled else None)
        )
        if answer is None:
            self._callbacks.append(callback)
        else:
            answer.add_done_callback(lambda _: callback(self))


def _deadline_exceeded() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        _DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Deadline Exceeded"
    )
