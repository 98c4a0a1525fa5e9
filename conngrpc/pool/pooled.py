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

Calls start when they are made, as grpc.aio's do, on the pool's event loop (a call
made from another thread or event loop raises ``RuntimeError``). While the pool is
starting (no channel has joined, none has failed yet), a call waits within its
deadline for the first channel, as grpc queues calls while it connects. Once channels
have failed and none is connected, a call fails at once with ``grpc.aio.AioRpcError``
(UNAVAILABLE, the details naming the pool and why), as an unavailable server would;
with ``wait_for_ready=True`` it waits, within its timeout, for a channel to join (and
with ``max_calls_per_channel``, a call waits for room). A waiting call answers every
method of a grpc.aio call: ``cancel()`` ends the wait, and awaiting it then raises
``asyncio.CancelledError``.

One difference from grpc.aio, on purpose: a call with a response stream (unary-stream,
stream-stream) is cancelled once nobody holds it before its end. grpc.aio keeps such a
call running, its stream open and counted here, until its deadline or its channel's
close; a pool's channel lives for hours, so streams left behind (an ``async for`` over
``stub.Stream(request)`` left by ``break``, ``return`` or an exception) would hold
their connection's streams, fill ``max_calls_per_channel`` and skew the pick for ever.
A call kept in a variable lives as long as the variable: reading resumes where it
stopped, as on grpc.aio.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc
import grpc.aio

from ..supervisor import Registry
from .admission import Admission
from .calls import ClientStreamCall, DeferredCall, FailedCall, StreamCall, deadline_of, within
from .handout import Slot
from .retry import Attempts, Replay, serialized_size
from .runtime import Kind, PoolRuntime, channels, pools, wait_registered
from .service_config import MethodPolicy

__all__ = [
    "MOST_CALLABLES_PER_CHANNEL",
    "MulticallableBase",
    "PooledChannel",
    "applied",
    "callable_key",
    "channel_callable",
    "pool_state",
]

_READY = grpc.ChannelConnectivity.READY
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: the kinds of call whose responses stream: wrapped, so that an abandoned one is cancelled
_STREAMING = frozenset({"unary_stream", "stream_stream"})
#: the kinds of call whose request is one message: sent as attempts under a policy
_UNARY_REQUEST = frozenset({"unary_unary", "unary_stream"})
_running_loop = asyncio._get_running_loop
#: A channel keeps its own multicallable for each method called through it, by what makes
#: one; serializers made anew per call (a lambda, a partial) would add one per call, so
#: past this many the oldest goes.
MOST_CALLABLES_PER_CHANNEL = 256


class PooledChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose calls go through a pool, each to its least-loaded channel.

    ``Pool.channel(name)`` (or ``DemoPool.channel()``) makes one; it is not made directly.
    Build stubs on it once, even before the pool runs: its ``unary_unary()``,
    ``unary_stream()``, ``stream_unary()`` and ``stream_stream()`` return
    multicallables as grpc.aio's do, and each call they make goes to the channel the
    pool hands out with the fewest calls in flight, on the pool's event loop (from
    another thread or event loop, a call raises ``RuntimeError``).

    While the pool starts, a call waits within its deadline for the first channel, as
    grpc queues calls while it connects; once its channels have failed and none is
    connected, a call fails at once as UNAVAILABLE (``grpc.aio.AioRpcError``, the
    details naming the pool and why), unless made with ``wait_for_ready=True``. Under
    ``max_calls_per_channel``, calls past the cap wait for room, first come first
    served. One difference from grpc.aio, on purpose: a call with a response stream is
    cancelled once nobody holds it before its end (grpc.aio keeps it running until its
    deadline or its channel's close).

    It belongs to no connection: the pool owns its channels, and :meth:`close` only
    detaches this facade (later calls raise ``grpc.aio.UsageError``).
    """

    #: the name of the pool its calls go to
    name: str
    #: ``"pool"``: what its calls go to, for conngrpc's own use
    #:
    #: :meta private:
    kind: Kind
    #: true once :meth:`close` was called
    closed: bool
    _registry: Registry[PoolRuntime]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "PooledChannel: expected to be made by Pool.channel(name) (or DemoPool.channel() "
            "for a declared pool), not called directly"
        )

    @classmethod
    def _of(cls, kind: Kind, name: object) -> PooledChannel:
        """The facade of the ``kind`` (pool or channel) named ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"PooledChannel: expected a {kind} name as a non-empty str, got {name!r}"
            )
        facade = object.__new__(cls)
        facade.name = name
        facade.kind = kind
        facade._registry = pools if kind == "pool" else channels
        facade.closed = False
        return facade

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.get_state().name
        return f"<PooledChannel {self.kind} {self.name!r} {state}>"

    # --- the pool behind it -------------------------------------------------------------

    def runtime(self) -> PoolRuntime | None:
        """The running pool, or None; raises once the facade is closed.

        :meta private:
        """
        if self.closed:
            raise grpc.aio.UsageError(f"the PooledChannel of {self.kind} {self.name!r} is closed")
        return self._registry.get(self.name)

    def unavailable(self, runtime: PoolRuntime | None, deadline: float | None) -> FailedCall:
        """A call failed at once as UNAVAILABLE: no pool runs, or no channel serves.

        :meta private:
        """
        if runtime is None:
            reason = f"no {self.kind} of that name is running"
        else:
            reason = runtime.not_connected().reason
        details = f"conngrpc {self.kind} {self.name!r}: {reason}"
        return FailedCall(grpc.aio.AioRpcError(_UNAVAILABLE, details=details), deadline)

    async def ready(
        self, deadline: float | None, wait_for_ready: bool = True
    ) -> PoolRuntime | None:
        """Wait until the pool can take a call, until ``deadline`` (monotonic): it hands a
        channel out (or, mocked, counts one as connected); return it.

        Without ``wait_for_ready``, the wait ends with None as soon as the pool's
        channels have failed or it stopped (it waits only while the pool starts).

        :raises TimeoutError: ``deadline`` passed first.
        :raises RuntimeError: the pool runs on another event loop than this wait.

        :meta private:
        """
        with anyio.fail_after(None if deadline is None else max(0.0, deadline - time.monotonic())):
            while True:
                runtime = self.runtime()
                if runtime is None:
                    if not wait_for_ready:
                        return None  # the pool it waited for stopped
                    await wait_registered(self.kind)
                    continue
                here = _running_loop()
                if here is not runtime.loop:
                    raise runtime.wrong_loop("a call", here)
                if runtime.mock is None:
                    if runtime.handout.pick() is not None:
                        return runtime
                elif runtime.table.connected_count():
                    return runtime
                if not wait_for_ready and (runtime.table.settled or runtime.stopped):
                    return None
                await runtime.wait_ready()

    # --- grpc.aio.Channel ------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while the pool hands out a channel; SHUTDOWN once closed.

        Otherwise CONNECTING while its channels try for the first time or reconnect,
        and TRANSIENT_FAILURE while one's latest attempt failed; IDLE while no pool of
        that name runs.
        """
        if self.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return pool_state(self._registry.get(self.name))

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until :meth:`get_state` says something else than ``last_observed_state``
        (or the facade is closed)."""
        while self.get_state() is last_observed_state and not self.closed:
            runtime = self._registry.get(self.name)
            if runtime is None:
                await wait_registered(self.kind)
            else:
                await runtime.wait_changed()

    async def channel_ready(self) -> None:
        """Wait until the pool hands out a channel (the pool may start later)."""
        await self.ready(None)

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
            self,
            "unary_unary",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self,
            "unary_stream",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self,
            "stream_unary",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _Multicallable(
            self,
            "stream_stream",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )


class MulticallableBase:
    """One method of a pooled facade (asyncio's or ``conngrpc.sync``'s): each call goes
    to the connection the pool picks then, through that channel's own multicallable."""

    __slots__ = ("_facade", "_key", "_kind", "_make", "_method")

    def __init__(
        self,
        facade: Any,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
        registered: bool | None,
    ) -> None:
        self._facade = facade
        self._kind = kind
        self._method = method
        self._make: dict[str, Any] = {
            "request_serializer": serializer,
            "response_deserializer": deserializer,
        }
        if registered:  # as generated stubs say it; a mock channel need not know the word
            self._make["_registered_method"] = registered
        self._key = callable_key(kind, method, serializer, deserializer, registered)

    def __repr__(self) -> str:
        return f"<pooled {self._kind} {self._method} via {self._facade!r}>"

    def _real(self, slot: Slot) -> Any:
        """The slot's channel's own multicallable for this method, made once per channel."""
        real = slot.callables.get(self._key) if self._key is not None else None
        if real is None:
            real = channel_callable(slot, self._key, self._kind, self._method, self._make)
        return real


class _Multicallable(MulticallableBase):
    """One method of the facade: each call goes to the slot the pool picks now."""

    __slots__ = ("_streaming", "_unary_request")

    _facade: PooledChannel

    def __init__(
        self,
        facade: PooledChannel,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
        registered: bool | None,
    ) -> None:
        super().__init__(facade, kind, method, serializer, deserializer, registered)
        self._streaming = kind in _STREAMING
        self._unary_request = kind in _UNARY_REQUEST

    def __call__(self, *request: Any, **options: Any) -> Any:
        """Start the call on the pool's least-loaded channel, with grpc's own arguments:
        the request (a request iterator, or none, for a client stream), ``timeout``,
        ``metadata``, ``credentials``, ``wait_for_ready``, ``compression``.

        :raises RuntimeError: it was called outside the pool's event loop.
        """
        facade = self._facade
        runtime = facade.runtime()
        here = _running_loop()
        if runtime is None:
            if here is None:
                raise RuntimeError(
                    f"conngrpc {facade.kind} {facade.name!r}: a call of {self._method} must be "
                    "made on the event loop that runs the pool, but it was made outside any "
                    "event loop"
                )
            if options.get("wait_for_ready"):
                return DeferredCall(self._start_when_ready, request, options)
            return facade.unavailable(None, deadline_of(options))
        if here is not runtime.loop:
            raise runtime.wrong_loop(f"a call of {self._method}", here)
        if runtime.mock is not None and runtime.table.connected_count():
            return self._mocked(runtime, request, options)
        if runtime.policies is not None:  # the pool's service config has a methodConfig
            policy = runtime.method_policy(self._method)
            if policy is not None:
                options, _ = applied(policy, options, deadline_of(options))
                if self._attempted(policy) and not self._too_big(runtime, request):
                    return self._attempted_call(runtime, policy, request, options)
        slot = runtime.handout.pick()
        if slot is None:
            if options.get("wait_for_ready") or not runtime.table.settled:
                return DeferredCall(self._start_when_ready, request, options)
            return facade.unavailable(runtime, deadline_of(options))
        placed = runtime.admission.placed(slot)
        if placed is None:  # every channel is at its cap (max_calls_per_channel, learnt)
            return DeferredCall(functools.partial(self._when_room, runtime), request, options)
        return self._start(runtime.admission, placed, request, options)

    def _mocked(
        self, runtime: PoolRuntime, request: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """The call, made on ``mock()``'s channel: the test's stand-in answers."""
        assert runtime.mock is not None
        make = getattr(runtime.mock(), self._kind)
        return make(self._method, **self._make)(*request, **options)

    async def _when_room(
        self,
        runtime: PoolRuntime,
        request: tuple[Any, ...],
        options: dict[str, Any],
        deadline: float | None,
    ) -> Any:
        """The call, started once a channel has room under the cap (until ``deadline``)."""
        call, _ = await self._start_when_room(runtime, request, options, deadline)
        return call

    def _start(
        self,
        admission: Admission,
        slot: Slot,
        request: tuple[Any, ...],
        options: dict[str, Any],
        raw: bool = False,
    ) -> Any:
        """Start the call on ``slot``, counted against it; a stream is wrapped unless ``raw``
        (an attempt's, which its call wraps)."""
        call = admission.track(slot, self._real(slot)(*request, **options))
        return StreamCall(call) if self._streaming and not raw else call

    def _start_on(
        self,
        admission: Admission,
        request: tuple[Any, ...],
        options: dict[str, Any],
        deadline: float | None,
        slot: Slot,
        raw: bool = False,
    ) -> Any:
        """Start the call on ``slot`` with what is left of ``deadline``.

        :raises grpc.aio.AioRpcError: DEADLINE_EXCEEDED, the deadline passed while the
            call waited: it is not sent, nor counted against the backend (it would
            count as the backend's failure, and waiting calls expire in bunches).
        """
        if deadline is not None and deadline <= time.monotonic():
            facade = self._facade
            details = (
                f"conngrpc {facade.kind} {facade.name!r}: the deadline passed while the call "
                "waited for a channel"
            )
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details=details)
        return self._start(admission, slot, request, within(options, deadline), raw)

    async def _start_when_room(
        self,
        runtime: PoolRuntime,
        request: tuple[Any, ...],
        options: dict[str, Any],
        deadline: float | None,
        raw: bool = False,
    ) -> tuple[Any, Slot]:
        """Wait (until ``deadline``) for a channel under the cap; the pool starts the call
        on it the moment it has room. The call, and the slot it went to."""
        admission = runtime.admission
        taken: list[Slot] = []

        def start(slot: Slot) -> Any:
            call = self._start_on(admission, request, options, deadline, slot, raw)
            taken.append(slot)
            return call

        facade = self._facade
        try:
            call = await admission.room(start, deadline)
        except TimeoutError:
            cap = (
                "the stream cap its server showed"
                if admission.cap is None
                else f"max_calls_per_channel={admission.cap}"
            )
            details = (
                f"conngrpc {facade.kind} {facade.name!r}: every channel had {cap} calls in "
                "flight until the deadline"
            )
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details=details) from None
        if call is None:
            details = (
                f"conngrpc {facade.kind} {facade.name!r}: it stopped while the call waited "
                f"for room ({runtime.stopped})"
            )
            raise grpc.aio.AioRpcError(_UNAVAILABLE, details=details)
        return call, taken[0]

    async def _when_ready(self, options: dict[str, Any], deadline: float | None) -> PoolRuntime:
        """The pool, once it hands a channel out (until ``deadline``).

        Without ``wait_for_ready``, only while the pool starts: once its channels have
        failed, the call fails as UNAVAILABLE.

        :raises grpc.aio.AioRpcError: DEADLINE_EXCEEDED or UNAVAILABLE, as said.
        """
        facade = self._facade
        try:
            runtime = await facade.ready(deadline, bool(options.get("wait_for_ready")))
        except TimeoutError:
            details = f"conngrpc {facade.kind} {facade.name!r}: no channel joined"
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, details=details) from None
        if runtime is None:
            raise facade.unavailable(facade.runtime(), deadline).error
        return runtime

    async def _start_when_ready(
        self, request: tuple[Any, ...], options: dict[str, Any], deadline: float | None
    ) -> Any:
        """Wait (until ``deadline``) for a channel to join, then start the call on it
        (under its method's policy, if it has one)."""
        runtime = await self._when_ready(options, deadline)
        if runtime.mock is not None:
            return self._mocked(runtime, request, within(options, deadline))
        policy = runtime.method_policy(self._method)
        if policy is not None:
            options, deadline = applied(policy, options, deadline)
            # (A client stream made before the pool ran goes out once: this call, made
            # then, keeps no requests for another attempt.)
            if self._unary_request and self._attempted(policy):
                return await self._attempts(runtime, policy, request).run(options, deadline)
        slot = runtime.handout.pick()
        if slot is not None:
            slot = runtime.admission.placed(slot)
        if slot is None:  # joined, but at the cap
            call, _ = await self._start_when_room(runtime, request, options, deadline)
            return call
        return self._start_on(runtime.admission, request, options, deadline, slot)

    # --- a method with a retry or a hedging policy ------------------------------------------

    def _too_big(self, runtime: PoolRuntime, request: tuple[Any, ...]) -> bool:
        """Whether a unary request is past ``grpc.per_rpc_retry_buffer_size``: the call
        commits as it goes, so it goes once, as a call without a policy (as grpc's)."""
        if not self._unary_request or not request:
            return False
        size = serialized_size(request[0], self._make["request_serializer"])
        return size > runtime.retry_buffer

    def _attempted(self, policy: MethodPolicy) -> bool:
        """Whether this method's calls go out as attempts under ``policy``: a unary
        request's under a retry or a hedging policy, a client stream's under a retry
        policy (hedged, it goes out once)."""
        return policy.retry is not None or (policy.hedging is not None and self._unary_request)

    def _attempted_call(
        self,
        runtime: PoolRuntime,
        policy: MethodPolicy,
        request: tuple[Any, ...],
        options: dict[str, Any],
    ) -> Any:
        """A call of this method, sent as attempts under ``policy``; a client stream's
        attempts are written to by the call, which keeps its requests for the next one."""
        requests = iterator = None
        if not self._unary_request:
            iterator = request[0] if request else options.pop("request_iterator", None)
            requests = Replay(self._make["request_serializer"], runtime.retry_buffer)
            request = ()  # each attempt in write mode: the pool writes to it
        attempts = self._attempts(runtime, policy, request, requests)
        if policy.retry is not None and self._kind == "unary_unary":
            slot = runtime.handout.pick()
            if slot is not None:
                slot = runtime.admission.placed(slot)
            if slot is not None:  # at once, as a call without a policy: no task unless it retries
                call = self._start(runtime.admission, slot, request, options)
                return attempts.first(call, slot, options)

        def start(
            _: tuple[Any, ...], options: dict[str, Any], deadline: float | None
        ) -> Awaitable[Any]:
            return attempts.run(options, deadline)

        if requests is None:
            return DeferredCall(start, request, options, attempts)
        return ClientStreamCall(start, requests, iterator, options, attempts)

    def _attempts(
        self,
        runtime: PoolRuntime,
        policy: MethodPolicy,
        request: tuple[Any, ...],
        requests: Replay | None = None,
    ) -> Attempts:
        """The attempts of one call of this method, sent under ``policy`` (a client
        stream's written to by ``requests``)."""
        return Attempts(
            functools.partial(self._attempt, runtime, request),
            pool=runtime.name,
            method=self._method,
            retry=policy.retry,
            hedging=policy.hedging,
            throttle=runtime.throttle,
            streaming=self._streaming,
            requests=requests,
        )

    async def _attempt(
        self,
        runtime: PoolRuntime,
        request: tuple[Any, ...],
        tried: list[Slot],
        options: dict[str, Any],
        deadline: float | None,
    ) -> tuple[Any, Slot]:
        """Send one attempt of a call, on a connection it has not tried where there is
        one (another backend first), the least loaded; add that one to ``tried``.

        :raises grpc.aio.AioRpcError: it could not go out (no channel, or none in time).
        """
        slot = runtime.handout.pick_avoiding(tried)
        waited = slot is None
        if waited:
            runtime = await self._when_ready(options, deadline)
            slot = runtime.handout.pick_avoiding(tried)
        admission = runtime.admission
        if slot is not None:
            slot = admission.placed(slot, tried)
        if slot is None:
            call, slot = await self._start_when_room(runtime, request, options, deadline, True)
        elif waited:
            call = self._start_on(admission, request, options, deadline, slot, True)
        else:  # sent at once, as a call without a policy: a deadline past is grpc's to tell
            call = self._start(admission, slot, request, within(options, deadline), True)
        tried.append(slot)
        return call, slot


def callable_key(
    kind: str, method: str, serializer: object, deserializer: object, registered: object
) -> tuple[object, ...] | None:
    """What a channel's own multicallable is kept under (None: a serializer that cannot be
    a key, made anew at each call). Kept per what makes one, not per pooled
    multicallable: a stub built per request must not add an entry per request."""
    key = (kind, method, serializer, deserializer, registered)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def channel_callable(
    slot: Slot,
    key: tuple[object, ...] | None,
    kind: str,
    method: str,
    make: dict[str, Any],
    channel: Any = None,
) -> Any:
    """``slot``'s channel's own multicallable of ``kind`` for ``method`` (made on
    ``channel``, if given: what calls go through for it), made now and kept under ``key``
    (see :func:`callable_key`)."""
    real = getattr(slot.channel if channel is None else channel, kind)(method, **make)
    if key is not None:
        callables = slot.callables
        if len(callables) >= MOST_CALLABLES_PER_CHANNEL:  # serializers made per call
            del callables[next(iter(callables))]  # the oldest goes
        callables[key] = real
    return real


def pool_state(runtime: PoolRuntime | None) -> grpc.ChannelConnectivity:
    """A pooled channel's state: READY while its pool hands out a channel, CONNECTING
    while its channels try for the first time or reconnect, TRANSIENT_FAILURE while
    one's latest attempt failed, and IDLE while no pool of its name runs."""
    if runtime is None:
        return grpc.ChannelConnectivity.IDLE
    table = runtime.table
    if table.connected_count():
        return _READY
    if any(record.last_failure for record in table.records):
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE
    return grpc.ChannelConnectivity.CONNECTING


def applied(
    policy: MethodPolicy, options: dict[str, Any], deadline: float | None
) -> tuple[dict[str, Any], float | None]:
    """A call's ``options`` and deadline under its methodConfig entry: the entry's
    ``timeout`` when the call has none or a longer one, and its ``waitForReady`` when the
    call does not say, as grpc applies them (to the whole call, across its attempts)."""
    timeout = policy.timeout
    if timeout is not None:
        due = time.monotonic() + timeout
        if deadline is None or due < deadline:
            options, deadline = {**options, "timeout": timeout}, due
    if policy.wait_for_ready is not None and options.get("wait_for_ready") is None:
        options = {**options, "wait_for_ready": policy.wait_for_ready}
    return options, deadline
