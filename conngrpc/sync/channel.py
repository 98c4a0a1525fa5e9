"""A ``conngrpc.sync`` pool's connections: grpc's sync channels, watched from the pool's loop.

Each worker of a sync pool holds a :class:`ThreadChannel`: a ``grpc.Channel`` on its own
connection, which ``get_channel`` hands out and the PooledChannel calls through. It
counts the calls in flight on it, so that a channel leaving the pool closes once they
have ended (grpc's sync ``close()`` has no grace: it cuts them), within
``shutdown_grace``.

grpc's sync channels tell their connectivity only to a blocking watch, and grpc's own
``subscribe`` runs a polling thread per channel. A sync pool's workers run on its
supervisor's event loop instead, where one :class:`Watcher` per loop reads the state of
every watched channel every ``STATE_POLL_SECONDS`` (a C call of about 0.4 µs each): no
thread per channel. Calls never wait for it: the pick reads a channel's state as it
picks, so a connection that broke is skipped at once; the watcher only tells its
worker, which reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar, cast

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskStatus
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from .._tasks import reraise_if_cancelled
from ..channel.config import ChannelConfig
from ..channel.connector import PROBE_METHOD, channel_options
from ..errors import ConnectFailedError

__all__ = [
    "STATE_POLL_SECONDS",
    "OwnThread",
    "SyncConnector",
    "ThreadChannel",
    "Watcher",
    "connect_thread",
    "finished",
    "forget_watchers",
    "used_in",
    "watcher_of",
    "when_done",
]

#: How often a sync pool's loop reads the state of the channels its workers watch. A
#: lost connection is skipped by the pick at once; this is how soon its worker hears.
STATE_POLL_SECONDS = 0.02

T = TypeVar("T")

_READY = grpc.ChannelConnectivity.READY
_FAILED = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
_STATES: dict[int, grpc.ChannelConnectivity] = {
    state.value[0]: state for state in grpc.ChannelConnectivity
}

#: A connector of a sync pool (``ChannelConfig.connector``): the config in, a grpc sync
#: channel out (made by ``grpc.insecure_channel`` or ``grpc.secure_channel``, perhaps
#: intercepted), not necessarily connected: the pool waits until it is READY.
SyncConnector = Callable[[ChannelConfig], grpc.Channel]


def _core_of(channel: object) -> Any:
    """The cygrpc channel under a grpc sync channel (through interceptors)."""
    found = channel
    for _ in range(16):  # interceptors wrap a channel a level each
        if isinstance(found, cygrpc.Channel):
            return found
        found = getattr(found, "_channel", None)
    raise TypeError(
        "conngrpc.sync connector: expected a grpc sync channel made by grpc.insecure_channel "
        f"or grpc.secure_channel (perhaps intercepted), got {channel!r}"
    )


def _kind(kind: str) -> Any:
    """The channel's method that makes a multicallable of ``kind`` (grpc's signature),
    whose calls it counts."""
    streams = kind in ("unary_stream", "stream_stream")

    def multicallable(
        self: ThreadChannel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        make = {
            "request_serializer": request_serializer,
            "response_deserializer": response_deserializer,
        }
        if _registered_method:
            make["_registered_method"] = _registered_method
        real = self.callable(kind, method, make)
        return (_StreamResponse if streams else _UnaryResponse)(self, real)

    multicallable.__name__ = multicallable.__qualname__ = kind
    return multicallable


class ThreadChannel(grpc.Channel):
    """One connection of a ``conngrpc.sync`` pool: a grpc sync channel, its calls counted.

    ``get_channel`` hands it out; use it as any ``grpc.Channel``. Where an asyncio
    pool hands out grpc.aio's own channel, a sync pool hands out this wrapper of grpc's
    sync channel: it counts the calls made on it (the pool's pick reads the counts) and
    adds :meth:`get_state`, which grpc's sync channel lacks. The pool owns it:
    :meth:`close` leaves it open (the pool closes it when its worker lets it go, once
    its calls in flight have ended, within ``shutdown_grace``), and calls made on it
    after that fail as on a closed grpc channel.
    """

    def __init__(
        self,
        raw: grpc.Channel,
        calls: grpc.Channel,
        watcher: Watcher,
        config: ChannelConfig,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._raw = raw
        # raw, through the config's interceptors (typed as Any: grpc's stubs lack the
        # _registered_method that grpc takes)
        self._calls: Any = calls
        self._core = _core_of(raw)
        self._watcher = watcher
        self._config = config
        #: the backend address it is connected to
        self.address: str = config.address
        #: the grpc.aio channel that watches its server's health (see the worker)
        self._health: grpc.aio.Channel | None = None
        #: its pool's lock, under which the pool counts its PooledChannel calls on it too
        self._lock = lock if lock is not None else threading.RLock()
        #: calls in flight on it: those made on it and those the pool's
        #: :class:`~conngrpc.sync.PooledChannel` sent to it
        self.in_flight: int = 0
        #: while it drains: what the end of its last call runs
        self._drained: Callable[[], object] | None = None
        #: held while a multicallable is made on it, and when it is closed: grpc crashes
        #: the process when a method is registered on a closed channel
        self._closing = threading.Lock()
        #: true once its pool has closed it
        self.closed: bool = False

    def __repr__(self) -> str:
        state = self.get_state().name
        return f"<conngrpc.sync channel {self.address} {state} in_flight={self.in_flight}>"

    # --- what the pool's worker and pick read -----------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """Its connection's state now (a ``grpc.ChannelConnectivity``), as grpc.aio's
        ``get_state`` gives it; SHUTDOWN once its pool has closed it."""
        if self.closed:
            return _SHUTDOWN
        return _STATES[self._core.check_connectivity_state(try_to_connect)]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until its state is another than ``last_observed_state`` (the loop's watcher
        reads it).

        :meta private:
        """
        await self._watcher.changed(self, last_observed_state)

    @property
    def watched_by_aio(self) -> bool:
        """Whether a grpc.aio channel checks its server's health (a thread inside grpc).

        :meta private:
        """
        return self._health is not None

    def conngrpc_health_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel to its server, on the pool's loop, for its health checks:
        a sync call would block a thread for each channel's ``Health/Watch``. It has a
        connection of its own (health is the server's, not the connection's).

        :meta private:
        """
        if self._health is None:
            used_in["grpc.aio"] = os.getpid()
            config = self._config
            options = channel_options(config)
            if config.credentials is None:
                self._health = grpc.aio.insecure_channel(config.address, options)
            else:
                self._health = grpc.aio.secure_channel(config.address, config.credentials, options)
        return self._health

    def callable(self, kind: str, method: str, make: dict[str, Any]) -> Any:
        """grpc's own multicallable of ``kind`` for ``method`` on it, which counts nothing
        (the PooledChannel's calls are counted by its pool).

        :raises ValueError: it is closed, as grpc's closed channels say.

        :meta private:
        """
        with self._closing:
            if self.closed:
                raise ValueError(
                    f"Cannot invoke RPC: the conngrpc.sync channel to {self.address} was "
                    "closed (its pool let it go); take another with get_channel()"
                )
            return getattr(self._calls, kind)(method, **make)

    async def conngrpc_retire(self, grace: float | None) -> None:
        """Close it once its calls in flight have ended, or ``grace`` seconds passed (then
        grpc cancels those left).

        :meta private:
        """
        if grace:
            loop = asyncio.get_running_loop()
            drained = asyncio.Event()
            with self._lock:
                if self.in_flight:
                    self._drained = lambda: loop.call_soon_threadsafe(drained.set)
                else:
                    drained.set()
            with anyio.move_on_after(grace):
                await drained.wait()
            self._drained = None
        self.close_now(later=True)
        if self._health is not None:
            await self._health.close()

    def close_now(self, later: bool = False) -> None:
        """Close its connection (grpc cancels the calls left); ``later``: in the closing
        thread, not this one. grpc's ``close()`` waits for the thread that runs its
        calls' callbacks, which may be blocked in the program's code (even in a
        supervisor's ``stop()``, which waits for the pool's thread): the pool's thread
        never waits for it.

        :meta private:
        """
        with self._closing:
            self.closed = True
        if later:
            _closer.put(self._raw)
        else:
            self._raw.close()

    def forget_after_fork(self) -> None:
        """A forked child's: the channel is its parent's. It counts as closed (calls on
        it fail at once); its locks, which a thread of the parent may have held as it
        forked, are made anew; grpc's channel is left alone (closing it may hang).

        :meta private:
        """
        self._lock = threading.RLock()
        self._closing = threading.Lock()
        self.closed = True

    # --- grpc.Channel -------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback`` with its connection's state at each change, as grpc's
        ``subscribe`` does (on a thread of grpc's)."""
        self._raw.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback``, as grpc's ``unsubscribe`` does."""
        self._raw.unsubscribe(callback)

    def close(self) -> None:
        """Leave it open: the pool owns its connection (see the class)."""

    def __enter__(self) -> ThreadChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    unary_unary = _kind("unary_unary")
    stream_unary = _kind("stream_unary")
    unary_stream = _kind("unary_stream")
    stream_stream = _kind("stream_stream")

    # --- counting ---------------------------------------------------------------------

    def began(self) -> None:
        """A call on it began.

        :meta private:
        """
        with self._lock:
            self.in_flight += 1

    def ended(self, _: object = None) -> None:
        """A call on it ended (a done callback's signature); its pool's calls end here
        too, under the pool's lock.

        :meta private:
        """
        with self._lock:
            self.in_flight -= 1
            if not self.in_flight and self._drained is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    self._drained()

    def blocking(self, call: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Make a call that blocks until it ends (``__call__``, ``with_call``), counted.

        :meta private:
        """
        self.began()
        try:
            return call(*args, **kwargs)
        finally:
            self.ended()

    def later(self, start: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Start a call that ends later (a future, a response stream), counted until grpc
        says it is done.

        :meta private:
        """
        self.began()
        try:
            call = start(*args, **kwargs)
        except BaseException:
            self.ended()
            raise
        return when_done(call, self.ended)


class _Outcome:
    """How a grpc sync call ended, read from grpc's state of it, which does not hold the
    call: ``code()`` and ``details()``, as on the call."""

    __slots__ = ("_state",)

    def __init__(self, state: Any) -> None:
        self._state = state

    def code(self) -> grpc.StatusCode | None:
        return self._state.code  # type: ignore[no-any-return]

    def details(self) -> str | None:
        return self._state.details  # type: ignore[no-any-return]

    def initial_metadata(self) -> Any:
        return self._state.initial_metadata

    def trailing_metadata(self) -> Any:
        return self._state.trailing_metadata


def when_done(call: Any, done: Callable[[Any], None]) -> Any:
    """Run ``done(outcome)`` once grpc's ``call`` (a future, a stream) ends; ``outcome``
    answers ``code()`` and ``details()`` (None when unknown). What to hand the caller:
    ``call``, or for a plain iterator (an interceptor may return one) one that runs
    ``done`` once it is over.

    Unlike ``add_done_callback``, whose callback grpc keeps with the call itself until it
    ends, this holds nothing that keeps the call alive: grpc cancels a call nobody holds
    any more (a stream left by ``break``), as it would without the pool.
    """
    state = getattr(call, "_state", None)
    register = getattr(call, "add_callback", None)
    if state is not None and register is not None:
        outcome = _Outcome(state)
        if not register(lambda: done(outcome)):  # it had ended already
            done(outcome)
        return call
    if hasattr(call, "add_done_callback"):  # not grpc's own rendezvous: its callback
        call.add_done_callback(done)
        return call
    return _counted(call, done)


def _counted(responses: Any, done: Callable[[Any], None]) -> Any:
    """``responses`` (an iterator an interceptor returned for a stream), running
    ``done(None)`` once it is over: read to its end, failed, or closed."""
    try:
        yield from responses
    finally:
        done(None)


class OwnThread(Generic[T]):
    """Hands each item put to ``handle``, one after the other, in order, in a thread of
    its own (never the caller's, which may be the pool's). The thread starts with the
    first item and ends once none is left."""

    _lock: threading.Lock
    _due: collections.deque[T]
    _thread: threading.Thread | None

    def __init__(self, name: str, handle: Callable[[T], None]) -> None:
        self._name = name
        self._handle = handle
        self.forget_after_fork()

    def put(self, item: T) -> None:
        with self._lock:
            self._due.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._thread = None
                    return
                item = self._due.popleft()
            self._handle(item)

    def forget_after_fork(self) -> None:
        """None due, no thread: as made, and in a forked child, whose parent's thread
        and items stayed in the parent."""
        self._lock = threading.Lock()
        self._due = collections.deque()
        self._thread = None


def _close(channel: grpc.Channel) -> None:
    with contextlib.suppress(Exception):  # closing is all that is left to do
        channel.close()


#: Closes the channels its pools let go of, one after the other, in a thread of its own
#: (grpc's ``close()`` may wait on the program; see :meth:`ThreadChannel.close_now`).
_closer = OwnThread("conngrpc.sync closer", _close)


class _UnaryResponse:
    """A unary-response multicallable of a :class:`ThreadChannel`: its calls counted."""

    __slots__ = ("_channel", "_real")

    def __init__(self, channel: ThreadChannel, real: Any) -> None:
        self._channel = channel
        self._real = real

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.blocking(self._real, args, kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.blocking(self._real.with_call, args, kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.later(self._real.future, args, kwargs)


class _StreamResponse(_UnaryResponse):
    """A response-streaming multicallable of a :class:`ThreadChannel`: its calls counted
    until they end (grpc cancels a stream nobody holds any more)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.later(self._real, args, kwargs)


class Watcher:
    """Follows the connectivity of the sync channels a loop's workers watch, by polling
    them all every ``interval`` seconds in one task (:meth:`run`, which the sync
    supervisor runs)."""

    def __init__(self, interval: float = STATE_POLL_SECONDS) -> None:
        self.interval = interval
        self._waiting: dict[asyncio.Future[None], tuple[ThreadChannel, grpc.ChannelConnectivity]]
        self._waiting = {}
        self._wake = anyio.Event()

    def __repr__(self) -> str:
        return f"<Watcher watching={len(self._waiting)}>"

    async def changed(self, channel: ThreadChannel, state: grpc.ChannelConnectivity) -> None:
        """Wait until ``channel``'s state is not ``state``."""
        if channel.get_state() is not state:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[future] = (channel, state)
        self._wake.set()
        try:
            await future
        finally:
            self._waiting.pop(future, None)

    def poll(self) -> None:
        """Wake those whose channel's state changed."""
        for future, (channel, state) in list(self._waiting.items()):
            if channel.get_state() is not state:
                del self._waiting[future]
                if not future.done():
                    future.set_result(None)

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        loop = asyncio.get_running_loop()
        _watchers[loop] = self
        try:
            task_status.started()
            while True:
                if not self._waiting:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                await anyio.sleep(self.interval)
                self.poll()
        finally:
            del _watchers[loop]


_watchers: dict[asyncio.AbstractEventLoop, Watcher] = {}

#: Which process made conngrpc.sync's grpc channels (``"grpc"``) and grpc.aio ones
#: (``"grpc.aio"``, health checks): a forked child reads what its parent used.
used_in: dict[str, int] = {}


def forget_watchers() -> list[Watcher]:
    """A forked child's: the parent's watchers (their loops stayed there) and channels
    waiting to be closed (the closing thread stayed there too); the watchers."""
    held = list(_watchers.values())
    _watchers.clear()
    _closer.forget_after_fork()
    return held


def watcher_of(loop: asyncio.AbstractEventLoop) -> Watcher:
    """The watcher of ``loop``, which a sync supervisor runs.

    :raises RuntimeError: none runs there: a sync pool was started under another
        supervisor than ``conngrpc.sync.Supervisor``.
    """
    watcher = _watchers.get(loop)
    if watcher is None:
        raise RuntimeError(
            "conngrpc.sync pools run under conngrpc.sync.Supervisor (its own thread), not "
            "under an asyncio supervisor; for asyncio, use conngrpc.Pool"
        )
    return watcher


async def connect_thread(
    connector: SyncConnector | None,
    lock: AbstractContextManager[Any] | None,
    config: ChannelConfig,
) -> ThreadChannel:
    """A sync pool's connector: a grpc sync channel on its own connection, once READY
    (``connector``: the user's, or None for grpc's own; ``lock``: its pool's, which counts
    the calls on it); as ``connect_grpc`` does.

    :raises ConnectFailedError: the channel reached TRANSIENT_FAILURE; the message is
        grpc's reason.
    """
    watcher = watcher_of(asyncio.get_running_loop())
    used_in["grpc"] = os.getpid()
    if connector is not None:
        raw = connector(config)
    elif config.credentials is None:
        raw = grpc.insecure_channel(config.address, channel_options(config), config.compression)
    else:
        raw = grpc.secure_channel(
            config.address, config.credentials, channel_options(config), config.compression
        )
    try:
        calls = raw
        if config.interceptors:
            calls = grpc.intercept_channel(raw, *cast("list[Any]", config.interceptors))
        channel = ThreadChannel(raw, calls, watcher, config, lock)
    except BaseException:
        raw.close()
        raise
    try:
        state = channel.get_state(try_to_connect=True)
        while state is not _READY:
            if state is _FAILED:
                raise ConnectFailedError(config.address, await _why_failed(raw))
            if state is _SHUTDOWN:
                raise ConnectFailedError(config.address, "the channel was shut down")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
    except BaseException:
        channel.close_now()
        raise
    return channel


async def _why_failed(channel: grpc.Channel) -> str:
    """grpc's account of why the channel's last attempt failed (a call that fails at once)."""
    probe: Any = channel.unary_unary(PROBE_METHOD)
    call: Any = probe.future(b"", timeout=1.0)
    try:
        await finished(call)
    except asyncio.CancelledError:
        await reraise_if_cancelled()
        return "TRANSIENT_FAILURE (the call that would have said why was cancelled)"
    code = call.code()
    if code is grpc.StatusCode.UNAVAILABLE:
        return str(call.details() or "UNAVAILABLE")
    if code is grpc.StatusCode.OK:
        return "TRANSIENT_FAILURE"
    return f"{code.name}: {call.details()}"


async def finished(call: grpc.Future[Any]) -> None:
    """Wait on the loop until a grpc future (a sync call) is done; cancelled, cancel it."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def tell(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(done.set)

    call.add_done_callback(tell)
    try:
        await done.wait()
    except BaseException:
        call.cancel()
        raise
