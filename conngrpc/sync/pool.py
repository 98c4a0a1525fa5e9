"""conngrpc.sync.Pool: the asyncio pool's settings and behaviour, for threads.

Declared and configured as :class:`conngrpc.Pool` is; its channels are grpc's sync
``grpc.Channel`` s, run by a :class:`conngrpc.sync.Supervisor` on a thread of its own::

    class DemoPool(sync.Pool, pool_size=4, channel={"address": "localhost:50051"}):
        pass

    stub = DemoStub(DemoPool.channel())          # built once; each call picks its channel
    with sync.Supervisor([DemoPool]):
        DemoPool.wait_connected()
        stub.Get(request)                         # from any thread
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time
from collections.abc import Callable
from typing import cast

import anyio.to_thread
import grpc

from .. import telemetry
from ..channel.config import ChannelConfig
from ..pool.pool import GET_CHANNEL, Declared, get_channel_slowly
from ..pool.runtime import (
    PoolStatus,
    not_connected_in_time,
    not_started,
    run_pool,
    stopped_while_waiting,
    thread_pools,
    wanted_count,
)
from ..pool.settings import PoolSettings
from ..pool.table import ChannelWorker
from ..supervisor import ChildSpec
from .channel import SyncConnector
from .pooled import PooledChannel
from .runtime import ThreadRuntime

if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

__all__ = ["Pool"]

_observed = telemetry.default_bus.switch(GET_CHANNEL)
_READY = grpc.ChannelConnectivity.READY
_lookup = thread_pools.get


class Pool(Declared):
    """A pool of persistent, pre-connected grpc sync channels, for threaded programs.

    Declared, configured and named as :class:`conngrpc.Pool` (a class statement,
    ``config=``, ``child_spec(name=...)``), and run by :class:`conngrpc.sync.Supervisor`.
    Where a setting is asyncio's, a sync pool takes grpc's sync counterpart:

    - ``interceptors``: grpc's sync client interceptors (``grpc.UnaryUnaryClientInterceptor``, ...);
    - ``connector``: a plain function of the :class:`~conngrpc.ChannelConfig` returning a
      grpc sync channel (``grpc.insecure_channel`` or ``grpc.secure_channel``, perhaps
      intercepted), not necessarily connected: the pool waits until it is READY;
    - ``on_connect`` / ``on_disconnect``: plain functions, run in a worker thread;
    - ``mock``: a function returning a stand-in for a ``grpc.Channel``.

    Every method may be called from any thread.
    """

    _front = "thread"

    @classmethod
    def _front_channel(cls, channel: ChannelConfig) -> ChannelConfig:
        """``channel`` as a sync pool runs it: its callbacks in worker threads.

        :raises TypeError: an interceptor is grpc.aio's, or a callback or the connector
            is a coroutine function (asyncio's).
        """
        channel = super()._front_channel(channel)
        for field in ("connector", "on_connect", "on_disconnect", "mock"):
            value = getattr(channel, field)
            if value is not None and inspect.iscoroutinefunction(value):
                raise TypeError(
                    f"conngrpc.sync.Pool: ChannelConfig.{field}: expected a plain function "
                    f"(a sync pool runs it in a thread), got the coroutine function {value!r}"
                )
        changes = {
            field: functools.partial(_in_thread, getattr(channel, field))
            for field in ("on_connect", "on_disconnect")
            if getattr(channel, field) is not None
        }
        return channel.merged(changes) if changes else channel

    @classmethod
    def child_spec(cls, **settings: Unpack[PoolSettings]) -> ChildSpec:
        """A spec that runs this pool under a :class:`conngrpc.sync.Supervisor` (an
        asyncio :class:`conngrpc.Supervisor` cannot run it).

        :raises TypeError: a setting has the wrong type (an asyncio interceptor, callback
            or connector among them), is unknown or is missing, or a channel key is
            unknown.
        :raises ValueError: a setting is out of range, or a declared pool is given another
            name.
        """
        resolved = cls._resolved(settings)
        # a sync pool's connector is a plain function (SyncConnector), checked above
        connector = cast("SyncConnector | None", resolved.channel.connector)
        make = functools.partial(ThreadRuntime, connector=connector)
        return ChildSpec(
            resolved.name,
            functools.partial(run_pool, "pool", resolved, make),
            shutdown=math.inf,
            type="supervisor",
        )

    # --- handing out -------------------------------------------------------------

    @classmethod
    def get_channel(cls, name: str | None = None) -> grpc.Channel:
        """A connected channel of the pool, round-robin; never waits.

        A :class:`~conngrpc.sync.ThreadChannel` (a ``grpc.Channel`` whose calls are
        counted), where the asyncio pool hands out a ``grpc.aio.Channel``; with the
        channel setting ``mock``, what ``mock()`` returns.

        :raises NotConnectedError: the pool runs but no channel is connected now.
        :raises PoolNotStartedError: no sync pool of that name runs.
        :raises TypeError: no name was given and the class declares none.
        """
        if name is None:
            name = cls._name("get_channel")
        try:
            pool = _lookup(name)
        except TypeError:  # unhashable
            raise _not_started(name) from None
        if pool is not None and not _observed.on:
            handout = pool.handout
            channels = handout.channels
            if channels:
                channel = channels[next(handout.counter) % len(channels)]
                if channel.get_state() is _READY:
                    return channel  # type: ignore[return-value]
        return get_channel_slowly(name, pool, "thread")  # type: ignore[no-any-return]

    @classmethod
    def channel(cls, name: str | None = None) -> PooledChannel:
        """A ``grpc.Channel`` whose calls go through the pool, each to its least-loaded
        connection; build stubs on it once, even before the pool runs. See
        :class:`conngrpc.sync.PooledChannel`.

        :raises TypeError: no name was given and the class declares none.
        """
        if name is None:
            name = cls._name("channel")
        return PooledChannel._of(name)

    @classmethod
    def status(cls, name: str | None = None) -> PoolStatus:
        """The pool's expected and current (connected) size, and its calls in flight.

        :raises PoolNotStartedError: no sync pool of that name runs.
        """
        return cls._runtime(name, "status").status()

    @classmethod
    def get_all_workers(cls, name: str | None = None) -> list[ChannelWorker]:
        """Snapshots of the pool's connected workers, in index order.

        :raises PoolNotStartedError: no sync pool of that name runs.
        """
        runtime = cls._runtime(name, "get_all_workers")
        with runtime.lock:
            return runtime.workers()

    @classmethod
    def wait_connected(
        cls,
        name: str | None = None,
        *,
        count: int | None = None,
        timeout: float = 10.0,
    ) -> PoolStatus:
        """Block until ``count`` channels (default: all) are connected; return the status.

        :raises NotConnectedError: fewer were connected when ``timeout`` s ran out; the
            message says what the others are doing and their latest failure.
        :raises PoolNotStartedError: no sync pool of that name runs, or it stopped
            meanwhile (the message says why).
        :raises ValueError: ``count`` is outside ``0..pool_size``, or ``timeout`` is
            negative.
        """
        runtime = cls._runtime(name, "wait_connected")
        wanted = wanted_count(runtime, count, timeout)
        deadline = time.monotonic() + timeout
        with runtime.lock:
            while runtime.table.connected_count() < wanted:
                if runtime.stopped is not None:
                    raise stopped_while_waiting(runtime)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise not_connected_in_time(runtime, wanted, timeout)
                runtime.changed.wait(left)
            return runtime.status()

    # --- helpers -----------------------------------------------------------------

    @classmethod
    def _runtime(cls, name: str | None, call: str) -> ThreadRuntime:
        return cast("ThreadRuntime", super()._runtime(name, call))


def _not_started(name: object) -> Exception:
    return not_started("pool", name, "thread")


async def _in_thread(callback: Callable[[], object]) -> None:
    """Run a sync pool's callback in a worker thread, off the pool's event loop."""
    await anyio.to_thread.run_sync(callback)
