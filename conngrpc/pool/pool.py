"""Pool: a supervised set of persistent channels, for calls and for hand-out.

Its channels reach callers two ways: ``Pool.channel()`` is a ``grpc.aio.Channel`` for
stubs whose every call goes to the connection with the fewest calls in flight, and
``Pool.get_channel()`` hands out a connected channel itself, round-robin. Example::

    class DemoPool(Pool, pool_size=5, channel={"address": "localhost:50051"}):
        pass

    stub = DemoStub(DemoPool.channel())       # built once; each call picks its channel
    async with Supervisor([DemoPool]):
        await DemoPool.wait_connected()
        await stub.Get(request)
        channel = DemoPool.get_channel()      # a connected channel, round-robin
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import grpc
import grpc.aio

from .. import telemetry
from ..channel.config import ChannelConfig, check_interceptors_for
from ..supervisor import ChildSpec
from .pooled import PooledChannel
from .runtime import (
    PoolRuntime,
    PoolStatus,
    not_started,
    pools,
    run_pool,
    thread_pools,
    wait_connected,
)
from .settings import PoolSettings, ResolvedSettings, merge
from .table import ChannelWorker

# Imported at run time, so that typing.get_type_hints (sphinx, pydantic) resolves it.
if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

__all__ = ["GET_CHANNEL", "Declared", "Pool", "get_channel_slowly"]

GET_CHANNEL = ("conngrpc", "pool", "get_channel")

_observed = telemetry.default_bus.switch(GET_CHANNEL)
_READY = grpc.ChannelConnectivity.READY
_lookup = pools.get


class Declared:
    """What a pool class statement declares, for both front ends (``conngrpc.Pool`` and
    ``conngrpc.sync.Pool``): the settings, laid over one another at ``child_spec()``."""

    _declared: ClassVar[dict[str, Any]] = {}
    _config: ClassVar[Callable[[], Mapping[str, Any]] | None] = None
    #: set on each front end's own Pool class, whose class statement declares no pool
    _front: ClassVar[str]

    def __init_subclass__(
        cls,
        *,
        config: Callable[[], Mapping[str, Any]] | None = None,
        **settings: Unpack[PoolSettings],
    ) -> None:
        super().__init_subclass__()
        if "_front" in cls.__dict__:  # a front end's Pool: no pool of its own
            return
        declared = {k: v for k, v in cls._declared.items() if k != "name"}
        merge(
            declared,
            {"name": cls.__name__, **settings},
            where=f"class {cls.__name__}: channel",
        )
        if config is not None and not callable(config):
            raise TypeError(
                f"class {cls.__name__}: config: expected a callable returning overrides, "
                f"got {config!r}"
            )
        cls._declared = declared
        if config is not None:
            cls._config = staticmethod(config)

    @classmethod
    def _resolved(cls, settings: Mapping[str, Any]) -> ResolvedSettings:
        """The class statement's settings, then ``config()``'s, then ``settings``.

        :raises TypeError: a setting has the wrong type or a channel key is unknown.
        :raises ValueError: a setting is out of range (empty name, negative size, ...).
        """
        merged = dict(cls._declared)
        declared_name = merged.get("name")
        if cls._config is not None:
            overrides = cls._config()
            if not isinstance(overrides, Mapping):
                raise TypeError(
                    f"{cls.__name__}.config(): expected a mapping of overrides, got {overrides!r}"
                )
            merge(merged, overrides, where=f"{cls.__name__}.config(): channel")
        merge(merged, settings, where="channel")
        if declared_name is not None and merged["name"] != declared_name:
            raise ValueError(
                f"{cls.__name__}: the pool name is fixed by the class statement "
                f"({declared_name!r}), got {merged['name']!r}"
            )
        for required in ("name", "pool_size", "channel"):
            if required not in merged:
                raise TypeError(f"{cls.__name__}.child_spec(): {required}= is required")
        merged["channel"] = cls._front_channel(ChannelConfig.coerce(merged["channel"]))
        return ResolvedSettings(**merged)

    @classmethod
    def _front_channel(cls, channel: ChannelConfig) -> ChannelConfig:
        """``channel`` as this front end runs it.

        :raises TypeError: it has interceptors of the other front end's kind.
        """
        check_interceptors_for(channel, cls._front)
        return channel

    @classmethod
    def _runtime(cls, name: str | None, call: str) -> PoolRuntime:
        """The running pool of ``name`` (the declared one's when None), of this front
        end's registry.

        :raises PoolNotStartedError: no pool of that name runs (TypeError: no name).
        """
        if name is None:
            name = cls._name(call)
        registry = thread_pools if cls._front == "thread" else pools
        try:
            runtime = registry.get(name)
        except TypeError:  # unhashable
            runtime = None
        if runtime is None:
            raise not_started("pool", name, cls._front)
        return runtime

    @classmethod
    def _name(cls, call: str) -> str:
        """The declared pool's name; a TypeError for the base class, which has none."""
        name = cls._declared.get("name")
        if name is None:
            raise TypeError(f"{cls.__name__}: expected a pool name (Pool.{call}('name')), got none")
        return str(name)


class Pool(Declared):
    """A pool of persistent, pre-connected gRPC channels, under a supervisor.

    Calls go through :meth:`channel`, a ``grpc.aio.Channel`` that sends each call to the
    connection with the fewest calls in flight; :meth:`get_channel` hands out a
    connected channel itself, round-robin. Use the pool either by name,
    ``Pool.child_spec(name="demo_pool", pool_size=5, channel={...})`` and
    ``Pool.channel("demo_pool")``, or declaratively::

        class DemoPool(Pool, pool_size=5, channel=ChannelConfig("localhost:50051")):
            pass

        DemoPool.child_spec()      # the class statement's settings
        DemoPool.channel()         # for stubs: least loaded, per call
        DemoPool.get_channel()     # a connected channel, round-robin

    A declared pool is named after its class unless ``name=`` is given. A ``config=``
    callable on the class is called at ``child_spec()`` time and returns overrides, so
    settings can come from the environment when the application starts. Precedence:
    class statement < ``config()`` < ``child_spec()`` arguments; a partial ``channel``
    dict is laid over the channel below it, field by field.
    """

    _front = "asyncio"

    # --- starting ----------------------------------------------------------------

    @classmethod
    def child_spec(cls, **settings: Unpack[PoolSettings]) -> ChildSpec:
        """A spec that runs this pool under a supervisor (``type="supervisor"``).

        The pool registers its name while it runs and starts ``pool_size`` channel
        workers (one-for-one, within ``max_restarts`` in ``max_seconds``) and a reporter
        that emits ``("conngrpc", "pool", "status")`` every ``telemetry_interval`` s.
        Workers connect in the background: ``wait_connected`` waits for them. The
        started value is the pool's own :class:`Supervisor`. The pool runs on asyncio.

        :raises TypeError: a setting has the wrong type, is unknown or is missing (``name``,
            ``pool_size``, ``channel``), or a channel key is unknown.
        :raises ValueError: a setting is out of range (an empty name, a ``pool_size``
            below 1, ...), or a declared pool is given another name.
        """
        resolved = cls._resolved(settings)
        return ChildSpec(
            resolved.name,
            functools.partial(run_pool, "pool", resolved),
            shutdown=math.inf,
            type="supervisor",
        )

    # --- handing out -------------------------------------------------------------

    @classmethod
    def get_channel(cls, name: str | None = None) -> grpc.aio.Channel:
        """A connected channel of the pool, round-robin; never waits.

        ``Pool.get_channel(name)``, or ``DemoPool.get_channel()`` for a declared pool.
        With the channel setting ``mock``, what ``mock()`` returns instead. Emits
        ``("conngrpc", "pool", "get_channel")`` when a handler listens.

        :raises NotConnectedError: the pool runs but no channel is connected now.
        :raises PoolNotStartedError: no pool of that name runs.
        :raises TypeError: no name was given and the class declares none.
        """
        if name is None:
            name = cls._name("get_channel")
        try:
            pool = _lookup(name)
        except TypeError:  # unhashable
            raise not_started("pool", name) from None
        # The hot path: a running pool, a READY channel and nobody listening to the
        # telemetry event. Everything else (errors, mock, telemetry, a channel whose
        # worker has not yet heard that it left READY) goes the long way.
        if pool is not None and not _observed.on:
            handout = pool.handout
            channels = handout.channels
            if channels:
                channel = channels[next(handout.counter) % len(channels)]
                if channel.get_state() is _READY:
                    return channel
        return get_channel_slowly(name, pool)  # type: ignore[no-any-return]

    @classmethod
    def channel(cls, name: str | None = None) -> PooledChannel:
        """A ``grpc.aio.Channel`` whose calls go through the pool, each to its least-loaded
        connection; build stubs on it once, even before the pool runs.

        ``DemoPool.channel()`` for a declared pool. See :class:`PooledChannel`.

        :raises TypeError: no name was given and the class declares none.
        """
        if name is None:
            name = cls._name("channel")
        return PooledChannel._of("pool", name)

    @classmethod
    def status(cls, name: str | None = None) -> PoolStatus:
        """A snapshot of the pool: its expected and connected size, its calls in flight,
        its backends and those ejected (see :class:`PoolStatus`); safe from any thread.

        :raises PoolNotStartedError: no pool of that name runs.
        """
        return cls._runtime(name, "status").status()

    @classmethod
    def get_all_workers(cls, name: str | None = None) -> list[ChannelWorker]:
        """Snapshots of the pool's connected workers (those whose channel is handed out,
        or mocked), in index order: plain frozen values, taken now. ConnGRPC's
        ``get_all_pids``.

        :raises PoolNotStartedError: no pool of that name runs.
        :raises RuntimeError: called from another thread or event loop than the pool's.
        """
        runtime = cls._runtime(name, "get_all_workers")
        runtime.check_loop("get_all_workers")
        return runtime.workers()

    @classmethod
    async def wait_connected(
        cls,
        name: str | None = None,
        *,
        count: int | None = None,
        timeout: float = 10.0,
    ) -> PoolStatus:
        """Wait until ``count`` channels (default: all) are connected; return the status.

        For applications that must not serve before their backends are reachable.
        ``timeout`` may be ``math.inf``.

        :raises NotConnectedError: fewer were connected when ``timeout`` s ran out; the
            message says what the others are doing and their latest failure.
        :raises PoolNotStartedError: no pool of that name runs, or it stopped meanwhile
            (the message says why).
        :raises ValueError: ``count`` is outside ``0..pool_size``, or ``timeout`` is
            negative.
        :raises RuntimeError: awaited on another event loop than the pool's.
        """
        return await wait_connected(cls._runtime(name, "wait_connected"), count, timeout)


def get_channel_slowly(name: str | None, pool: PoolRuntime | None, front: str = "asyncio") -> Any:
    """``get_channel`` the long way: errors, ``mock``, and the telemetry event; for the
    pools of ``front`` (the sync pool's too)."""
    if pool is None and not isinstance(name, str):
        raise not_started("pool", name, front)  # a TypeError: a misuse, not a hand-out
    begin = time.perf_counter_ns()
    result = None  # stays None when mock() raises: that is the mock's failure, not ours
    try:
        if pool is None:
            result = "PoolNotStartedError"
            raise not_started("pool", name, front)
        if pool.mock is not None and pool.table.connected_count():
            mocked = pool.mock()
            result = "ok"
            return mocked
        channel = pool.handout.next_ready()
        if channel is None:
            result = "NotConnectedError"
            raise pool.not_connected()
        result = "ok"
        return channel
    finally:
        if result is not None and _observed.on:
            telemetry.execute(
                GET_CHANNEL,
                {"duration": time.perf_counter_ns() - begin},
                {"pool_name": name, "result": result},
            )
