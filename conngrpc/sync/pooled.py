"""PooledChannel for threads: one ``grpc.Channel`` for stubs, each call sent to the
least-loaded connection of a ``conngrpc.sync`` pool.

``conngrpc.sync.Pool.channel(name)`` returns one; build stubs on it once, even before
the pool runs::

    stub = InventoryStub(InventoryPool.channel())
    ...
    stub.GetItem(request)   # from any thread: the pool's least-loaded connection

Each call of its multicallables (``__call__``, ``with_call``, ``future``, and the
streams) picks a connection as the asyncio PooledChannel does: among those the pool
hands out now (READY and, when health-checked, SERVING), the one with the fewest calls
in flight; the call counts from its start until grpc says it is done (a ``future()``'s
or a stream's done callback). The counts are in ``Pool.status(name).in_flight``.

While the pool starts (no channel joined, none failed yet) a call waits, within its
deadline, for the first channel, in the calling thread; a ``future()`` returns at once,
and the pool's thread sends it when a channel joins, as grpc's does; the streams wait
before they return (grpc's own return at once and wait in the call). Once the
pool's channels have failed and none is connected, a call fails at once as UNAVAILABLE
(the details name the pool and why), as an unavailable server would; with
``wait_for_ready=True`` it waits for a channel within its timeout. Under
``max_calls_per_channel`` a call waits for room, first come first served.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import grpc

from ..pool.calls import within
from ..pool.ejection import REFUSED_STREAM
from ..pool.handout import Slot
from ..pool.pooled import MulticallableBase, applied, channel_callable, pool_state
from ..pool.retry import serialized_size
from ..pool.runtime import not_started
from ..pool.service_config import MethodPolicy
from . import runtime as _runtime
from .attempts import call_with_policy, future_when_ready, future_with_policy
from .channel import ThreadChannel, when_done
from .failed import FailedCall, failed_call
from .runtime import ThreadRuntime, thread_pools
from .streams import ReplayedRequests, RetriedStream, client_stream_with_policy

__all__ = ["PooledChannel"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_OK = grpc.StatusCode.OK.value[0]
_UNAVAILABLE_CODE = _UNAVAILABLE.value[0]


def _kind(kind: str) -> Any:
    """The facade's method that makes a multicallable of ``kind`` (grpc's signature)."""
    streams = kind in ("unary_stream", "stream_stream")

    def multicallable(
        self: PooledChannel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        made = _StreamResponse if streams else _UnaryResponse
        return made(
            self, kind, method, request_serializer, response_deserializer, _registered_method
        )

    multicallable.__name__ = multicallable.__qualname__ = kind
    return multicallable


class PooledChannel(grpc.Channel):
    """A ``grpc.Channel`` whose calls go through a ``conngrpc.sync`` pool, each to its
    least-loaded connection.

    ``conngrpc.sync.Pool.channel(name)`` (or ``DemoPool.channel()``) makes one; build
    stubs on it once, even before the pool runs, and call them from any thread. Each
    call of its multicallables (``__call__``, ``with_call``, ``future()`` and the
    streams) picks a connection as :class:`conngrpc.PooledChannel` does. What differs
    from it: it is a grpc sync ``grpc.Channel``, not a ``grpc.aio.Channel``; while no
    channel is connected (the pool starting, or ``wait_for_ready=True``), a blocking
    call waits in the calling thread, a ``future()`` returns at once and is sent when a
    channel joins, and a stream waits before it returns; a closed one raises
    ``ValueError`` (as a closed grpc channel does) instead of ``grpc.aio.UsageError``;
    and :meth:`subscribe` reports the pool's state, so
    ``grpc.channel_ready_future(channel)`` waits until the pool hands out a channel.

    It belongs to no connection: :meth:`close` only detaches this facade.
    """

    #: the name of the pool its calls go to
    name: str
    #: true once :meth:`close` was called
    closed: bool
    _subscribers: dict[Callable[[grpc.ChannelConnectivity], None], grpc.ChannelConnectivity | None]
    _delivery: threading.Thread | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "conngrpc.sync.PooledChannel: expected to be made by conngrpc.sync.Pool.channel(name) "
            "(or DemoPool.channel() for a declared pool), not called directly"
        )

    @classmethod
    def _of(cls, name: object) -> PooledChannel:
        if not isinstance(name, str) or not name:
            raise TypeError(
                "conngrpc.sync.PooledChannel: expected a pool name as a non-empty str, "
                f"got {name!r}"
            )
        facade = object.__new__(cls)
        facade.name = name
        facade.closed = False
        facade._subscribers = {}
        facade._delivery = None
        return facade

    def __repr__(self) -> str:
        return f"<conngrpc.sync.PooledChannel {self.name!r} {self.get_state().name}>"

    def runtime(self) -> ThreadRuntime | None:
        """The running pool, or None.

        :raises ValueError: the facade is closed.

        :meta private:
        """
        if self.closed:
            raise ValueError(
                f"Cannot invoke RPC: the PooledChannel of conngrpc.sync pool {self.name!r} "
                "is closed"
            )
        return thread_pools.get(self.name)  # type: ignore[return-value]

    def get_state(self) -> grpc.ChannelConnectivity:
        """The pool's state, as :meth:`conngrpc.PooledChannel.get_state` says it;
        SHUTDOWN once this facade is closed."""
        if self.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return pool_state(thread_pools.get(self.name))

    # --- grpc.Channel -------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback`` with the pool's state now and at each change (on a thread of
        this facade's, as grpc calls it on one of its own), until :meth:`unsubscribe`."""
        with _runtime.registered:
            self._subscribers[callback] = None
            if self._delivery is None or not self._delivery.is_alive():
                self._delivery = threading.Thread(
                    target=self._deliver,
                    name=f"conngrpc.sync {self.name} subscriptions",
                    daemon=True,
                )
                self._delivery.start()
            _runtime.registered.notify_all()

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback`` (given to :meth:`subscribe`); no error if it was not."""
        with _runtime.registered:
            self._subscribers.pop(callback, None)
            _runtime.registered.notify_all()

    def _deliver(self) -> None:
        """Tell each subscriber the state whenever it is not the one it was told last."""
        while True:
            with _runtime.registered:
                while True:
                    if not self._subscribers:
                        self._delivery = None
                        return
                    state = self.get_state()
                    due = [cb for cb, told in self._subscribers.items() if told is not state]
                    if due:
                        for callback in due:
                            self._subscribers[callback] = state
                        break
                    # a pool's changes notify ``registered`` (see ThreadRuntime.report);
                    # the bound keeps a missed one from stalling it
                    _runtime.registered.wait(1.0)
            for callback in due:
                with contextlib.suppress(Exception):  # as grpc: a subscriber's failure is its own
                    callback(state)

    def close(self) -> None:
        """Detach this facade; the pool and its channels (and calls in flight) go on."""
        self.closed = True
        with _runtime.registered:
            self._subscribers.clear()
            _runtime.registered.notify_all()

    def __enter__(self) -> PooledChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    unary_unary = _kind("unary_unary")
    stream_unary = _kind("stream_unary")
    unary_stream = _kind("unary_stream")
    stream_stream = _kind("stream_stream")


class _Multicallable(MulticallableBase):
    """One method of the facade: each call goes to the connection the pool picks now."""

    __slots__ = ()

    _facade: PooledChannel

    def _real(self, slot: Slot) -> Any:
        """The slot's channel's multicallable for this method, made once per channel: one
        it does not count calls on (the pool counts them, under its lock).

        :raises ValueError: the channel was closed (a call that waited past its grace).
        """
        real = slot.callables.get(self._key) if self._key is not None else None
        if real is None:
            with _making:  # each slot's callables are shared by every calling thread
                uncounted = _Uncounted(cast("ThreadChannel", slot.channel))
                real = channel_callable(
                    slot, self._key, self._kind, self._method, self._make, uncounted
                )
        return real

    def _run(self, how: str, request: Any, options: dict[str, Any]) -> Any:
        """Make the call (``how``: ``__call__``, ``with_call``, ``future``, or ``stream``
        for a response stream) on the connection the pool picks, counted until it ends;
        under its method's policy, if the pool's service config gives it one."""
        runtime = self._facade.runtime()
        if runtime is not None and runtime.policies is not None and runtime.mock is None:
            policy = runtime.method_policy(self._method)
            if policy is not None:
                options, _ = applied(policy, options, None)
                if self._attempted(runtime, policy, request, how):
                    kind = self._kind
                    if kind == "stream_stream":
                        requests = self._replayed(runtime, request)
                        return RetriedStream(self, runtime, policy, None, options, requests)
                    if kind == "unary_stream":
                        return RetriedStream(self, runtime, policy, request, options)
                    if kind == "stream_unary":
                        requests = self._replayed(runtime, request)
                        with_call = how == "with_call"
                        return client_stream_with_policy(
                            self, runtime, policy, requests, options, with_call
                        )
                    if how == "future":
                        return future_with_policy(self, runtime, policy, request, options)
                    with_call = how == "with_call"
                    return call_with_policy(self, runtime, policy, request, options, with_call)
        later = how in ("future", "stream")  # ends after it returns
        if how == "future" and runtime is not None and runtime.mock is None:
            taken = runtime.take_now()
            if taken is None:  # waits for a channel, or room, on the pool's thread
                return future_when_ready(self, runtime, request, options)
            return self._started(runtime, *taken, how, request, options)
        try:
            runtime, slot, carrying, options = self._take(options, runtime)
        except _Mocked as mocked:
            made = self._mocked(mocked.runtime)
            return getattr(made, "__call__" if how == "stream" else how)(request, **options)
        except grpc.RpcError as error:
            if later:
                return error  # grpc's futures and streams fail in what they return
            raise
        if later:
            return self._started(runtime, slot, carrying, how, request, options)
        try:
            answer = getattr(self._real(slot), how)(request, **options)
        except grpc.RpcError as error:
            self._end(runtime, slot, carrying, error)
            raise
        except BaseException:
            self._end(runtime, slot, carrying, None)
            raise
        if how == "with_call":
            self._end(runtime, slot, carrying, answer[1])
        else:  # it answered: OK, without the cost of a call object
            with runtime.lock:
                runtime.admitted.end(slot, _OK, False, carrying)
        return answer

    def _started(
        self,
        runtime: ThreadRuntime,
        slot: Slot,
        carrying: int,
        how: str,
        request: Any,
        options: dict[str, Any],
    ) -> Any:
        """A call that ends after it returns (``how``: a future, a stream), started on
        ``slot`` and counted until grpc says it is done."""
        try:
            real = self._real(slot)
            call = (real if how == "stream" else real.future)(request, **options)
        except BaseException:
            self._end(runtime, slot, carrying, None)
            raise
        return when_done(call, self._ended(runtime, slot, carrying))

    def _replayed(self, runtime: ThreadRuntime, requests: Any) -> ReplayedRequests:
        return ReplayedRequests(requests, self._make["request_serializer"], runtime.retry_buffer)

    def _attempted(
        self, runtime: ThreadRuntime, policy: MethodPolicy, request: Any, how: str = ""
    ) -> bool:
        """Whether a call goes out as attempts under ``policy``: a unary-unary call under a
        retry or a hedging policy, whose request fits ``grpc.per_rpc_retry_buffer_size``
        (a larger one commits as it goes, so it goes once, as grpc's); a stream under a
        retry policy (a client stream's requests kept within that buffer), but for a
        client stream's ``future()``, which goes once."""
        kind = self._kind
        if policy.retry is None and (policy.hedging is None or kind != "unary_unary"):
            return False  # hedged streams go once
        if kind == "stream_unary" and how == "future":
            return False
        if kind.startswith("stream"):
            return True  # its requests are kept while they fit (ReplayedRequests)
        size = serialized_size(request, self._make["request_serializer"])
        return size <= runtime.retry_buffer

    # --- taking a connection ----------------------------------------------------------

    def _take(
        self, options: dict[str, Any], runtime: ThreadRuntime | None = None
    ) -> tuple[ThreadRuntime, Slot, int, dict[str, Any]]:
        """The pool (``runtime``, if the caller found it running), the connection the call
        goes to (counted against it), the calls it carried before, and the call's options
        (its timeout less any wait).

        :raises grpc.RpcError: the call cannot start (grpc's own failed call).
        """
        if runtime is None:
            runtime = self._facade.runtime()
        if runtime is not None and runtime.mock is None:
            taken = runtime.take_now()
            if taken is not None:
                return runtime, *taken, options
        return self._wait(options)

    def _wait(self, options: dict[str, Any]) -> tuple[ThreadRuntime, Slot, int, dict[str, Any]]:
        """:meth:`_take` the long way: wait for the pool, a channel, or room."""
        facade = self._facade
        timeout = options.get("timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        wait_for_ready = bool(options.get("wait_for_ready"))
        while True:
            runtime = facade.runtime()
            if runtime is None:
                if not wait_for_ready:
                    missing = not_started("pool", facade.name, "thread")
                    reason = getattr(missing, "reason", "no pool of that name is running")
                    raise self._failed(_UNAVAILABLE, reason)
                with _runtime.registered:
                    if thread_pools.get(facade.name) is None:
                        _runtime.registered.wait(_left(deadline, self, "no pool of that name ran"))
                continue
            if runtime.mock is not None and runtime.table.connected_count():
                raise _Mocked(runtime)
            with runtime.lock:
                while runtime.stopped is None:
                    slot = runtime.handout.pick()
                    admission = runtime.admitted
                    if slot is not None:
                        placed = admission.placed(slot)
                        if placed is None:  # every channel at its cap: wait for room
                            placed = admission.wait_room(deadline)
                            if placed is None and runtime.stopped is None:
                                cap = (
                                    "the stream cap its server showed"
                                    if admission.cap is None
                                    else f"max_calls_per_channel={admission.cap}"
                                )
                                raise self._failed(
                                    _DEADLINE_EXCEEDED,
                                    f"every channel had {cap} calls in flight until the deadline",
                                )
                        if placed is not None:
                            return (
                                runtime,
                                placed,
                                admission.begin(placed),
                                within(options, deadline),
                            )
                        continue
                    if not wait_for_ready and runtime.table.settled:
                        raise self._failed(_UNAVAILABLE, runtime.not_connected().reason)
                    runtime.changed.wait(_left(deadline, self, "no channel joined"))
            if not wait_for_ready:
                raise self._failed(_UNAVAILABLE, f"it stopped ({runtime.stopped})")
            with _runtime.registered:  # until its name is let go, or another pool takes it
                if thread_pools.get(facade.name) is runtime:
                    _runtime.registered.wait(_left(deadline, self, "no channel joined"))

    def _failed(self, code: grpc.StatusCode, reason: str) -> FailedCall:
        return failed_call(code, f"conngrpc.sync pool {self._facade.name!r}: {reason}")

    def _end(self, runtime: ThreadRuntime, slot: Slot, carrying: int, call: Any) -> None:
        """The call ended (``call``: what grpc says of it, with ``code()`` and
        ``details()``; None if nothing)."""
        code = details = None
        if call is not None:
            status = call.code()
            code = None if status is None else status.value[0]
            if code == _UNAVAILABLE_CODE:
                details = call.details()
        was_refused = details is not None and REFUSED_STREAM in details
        with runtime.lock:
            runtime.admitted.end(slot, code, was_refused, carrying)

    def _ended(self, runtime: ThreadRuntime, slot: Slot, carrying: int) -> Callable[[Any], None]:
        def ended(call: Any) -> None:
            self._end(runtime, slot, carrying, call)

        return ended

    def _mocked(self, runtime: ThreadRuntime) -> Any:
        assert runtime.mock is not None
        return getattr(runtime.mock(), self._kind)(self._method, **self._make)


#: Held while a slot's multicallable is made and kept (rare: once per method and channel).
_making = threading.Lock()


class _Uncounted:
    """A :class:`ThreadChannel` as the PooledChannel makes multicallables on it: grpc's
    own, which count nothing (the pool counts the calls)."""

    __slots__ = ("_channel",)

    def __init__(self, channel: ThreadChannel) -> None:
        self._channel = channel

    def __getattr__(self, kind: str) -> Callable[..., Any]:
        channel = self._channel

        def make(method: str, **make: Any) -> Any:
            return channel.callable(kind, method, make)

        return make


class _Mocked(Exception):
    """The pool is mocked: the call goes to ``mock()``'s channel."""

    def __init__(self, runtime: ThreadRuntime) -> None:
        self.runtime = runtime


def _left(deadline: float | None, where: _Multicallable, what: str) -> float | None:
    """The seconds left until ``deadline``; DEADLINE_EXCEEDED once none is."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise where._failed(_DEADLINE_EXCEEDED, what)
    return left


class _UnaryResponse(_Multicallable):
    """A method with one response: ``__call__``, ``with_call`` and ``future``, each with
    grpc's arguments (the request, or ``request_iterator`` for a client stream, then
    ``timeout``, ``metadata``, ``credentials``, ``wait_for_ready``, ``compression``)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("__call__", *_arguments(self._kind, args, kwargs))

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("with_call", *_arguments(self._kind, args, kwargs))

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("future", *_arguments(self._kind, args, kwargs))


class _StreamResponse(_Multicallable):
    """A method whose responses stream: the call is their iterator."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("stream", *_arguments(self._kind, args, kwargs))


#: grpc's arguments of a call after its request, in their order.
OPTIONS = ("timeout", "metadata", "credentials", "wait_for_ready", "compression")
_OPTION_NAMES = frozenset(OPTIONS)


def _arguments(
    kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """A call's request and options from its arguments, as grpc's multicallables take
    them (the request named ``request``, or ``request_iterator`` for a client stream).

    :raises TypeError: as a Python function of grpc's signature would.
    """
    if len(args) == 1 and _OPTION_NAMES.issuperset(kwargs):  # the usual call: at once
        return args[0], kwargs
    first = "request_iterator" if kind.startswith("stream") else "request"
    if len(args) > 1 + len(OPTIONS):
        raise TypeError(
            f"expected at most {1 + len(OPTIONS)} positional arguments, got {len(args)}"
        )
    options = dict.fromkeys(OPTIONS)
    options.update(zip(OPTIONS, args[1:], strict=False))
    if args:
        if first in kwargs:
            raise TypeError(f"got multiple values for argument {first!r}")
        request = args[0]
    elif first in kwargs:
        request = kwargs.pop(first)
    else:
        raise TypeError(f"missing 1 required argument: {first!r}")
    for name, value in kwargs.items():
        if name not in options:
            raise TypeError(f"got an unexpected keyword argument {name!r}")
        if OPTIONS.index(name) < len(args) - 1:
            raise TypeError(f"got multiple values for argument {name!r}")
        options[name] = value
    return request, options
