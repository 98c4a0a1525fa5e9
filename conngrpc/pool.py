"""Pool: a supervised set of persistent channels, handed out round-robin.

Example::

    class DemoPool(Pool, pool_size=5, channel={"address": "localhost:50051"}):
        pass

    async with Supervisor([DemoPool]):
        await DemoPool.wait_connected()
        channel = DemoPool.get_channel()
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

import anyio
import grpc.aio
from anyio.abc import TaskStatus

from . import telemetry
from ._tasks import task_group
from .channel.config import ChannelConfig, ChannelConfigLike
from .channel.worker import ChannelWorker, run_worker
from .errors import NotConnectedError, PoolNotStartedError
from .supervisor import ChildSpec, Registry, Supervisor

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GET_CHANNEL", "STATUS", "Pool", "PoolSettings", "PoolStatus", "pools"]

GET_CHANNEL = ("conngrpc", "pool", "get_channel")
STATUS = ("conngrpc", "pool", "status")

_observed = telemetry.default_bus.switch(GET_CHANNEL)


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """How many channels a pool should have and how many are connected now."""

    name: str
    expected_size: int
    current_size: int


class _PoolRuntime:
    """A running pool's hand-out state: its connected workers and channels, in order.

    ``workers`` and ``channels`` are tuples replaced (never changed in place) whenever a
    worker joins or leaves, so ``get_channel`` reads a consistent snapshot without a lock.
    """

    __slots__ = ("changed", "channels", "counter", "expected_size", "mock", "name", "workers")

    def __init__(self, name: str, expected_size: int, mock: Callable[[], Any] | None) -> None:
        self.name = name
        self.expected_size = expected_size
        self.mock = mock
        self.workers: tuple[ChannelWorker, ...] = ()
        self.channels: tuple[grpc.aio.Channel, ...] = ()
        self.counter = itertools.count()
        self.changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} connected={len(self.workers)} expected={self.expected_size}>"

    def joined(self, worker: ChannelWorker) -> None:
        if worker not in self.workers:
            self._publish(sorted((*self.workers, worker), key=lambda w: w.index))

    def left(self, worker: ChannelWorker) -> None:
        if worker in self.workers:
            self._publish([w for w in self.workers if w is not worker])

    def _publish(self, workers: list[ChannelWorker]) -> None:
        self.workers = tuple(workers)
        # A mocked pool hands out mock() the long way: its fast path finds no channel.
        if self.mock is None:
            self.channels = tuple(w.channel for w in workers)  # type: ignore[misc]
        self.changed.set()
        self.changed = anyio.Event()

    def status(self) -> PoolStatus:
        return PoolStatus(self.name, self.expected_size, len(self.workers))


#: The process-wide registry of running pools, by name.
pools: Registry[_PoolRuntime] = Registry("pools")
_lookup = pools.get


class PoolSettings(TypedDict, total=False):
    """What a pool is configured with, in a class statement, ``config()`` or ``child_spec``."""

    name: str
    pool_size: int
    channel: ChannelConfigLike
    telemetry_interval: float
    max_restarts: int
    max_seconds: float


@dataclass(frozen=True, slots=True)
class _PoolSettings:
    """A pool's settings after the class statement, runtime config and overrides merged."""

    name: str
    pool_size: int
    channel: ChannelConfig
    telemetry_interval: float = 5.0
    max_restarts: int = 3
    max_seconds: float = 5.0

    def __post_init__(self) -> None:
        _check_setting("name", self.name)
        _check_setting("pool_size", self.pool_size)
        _check_setting("telemetry_interval", self.telemetry_interval)
        _check_setting("max_restarts", self.max_restarts)
        _check_setting("max_seconds", self.max_seconds)


_SETTINGS = tuple(PoolSettings.__annotations__)


def _check_setting(key: str, value: Any) -> None:
    """Raise where a pool setting is wrong, naming it; ``channel`` is checked by its class."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "name":
        if not isinstance(value, str):
            raise TypeError(f"Pool name: expected a str, got {value!r}")
        if not value:
            raise ValueError("Pool name: expected a non-empty str, got ''")
    elif key in ("pool_size", "max_restarts"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"Pool {key}: expected an int >= 0, got {value!r}")
        if value < 0:
            raise ValueError(f"Pool {key}: expected an int >= 0, got {value!r}")
    elif key in ("telemetry_interval", "max_seconds"):
        if not number:
            raise TypeError(f"Pool {key}: expected seconds, got {value!r}")
        if not 0 < value < math.inf:
            raise ValueError(f"Pool {key}: expected finite seconds > 0, got {value!r}")
    elif key != "channel":
        raise TypeError(f"Pool: unknown setting {key!r}; valid settings are {', '.join(_SETTINGS)}")


def _merge(settings: dict[str, Any], changes: Mapping[str, Any], where: str) -> None:
    """Lay ``changes`` over ``settings``; a partial channel dict merges field by field."""
    for key, value in changes.items():
        if value is None:
            continue
        _check_setting(key, value)
        if key == "channel":
            base = settings.get("channel")
            if isinstance(base, ChannelConfig):
                value = base.merged(value)
            elif isinstance(base, Mapping) and isinstance(value, Mapping):
                value = {**base, **value}
            value = _channel_or_partial(value, where)
        settings[key] = value


def _channel_or_partial(value: Any, where: str) -> ChannelConfig | Mapping[str, Any]:
    """A ChannelConfig when ``value`` says enough to build one; else a checked partial dict."""
    if isinstance(value, Mapping) and "address" not in value:
        ChannelConfig.coerce({**value, "address": "placeholder:0"}, where=where)
        return value
    return ChannelConfig.coerce(value, where=where)


class GetChannel(Protocol):
    """The signature of ``Pool.get_channel``."""

    def __call__(self, name: str | None = None) -> grpc.aio.Channel:
        """A connected channel of the pool, round-robin; never waits."""


def _hand_out(own_name: str | None) -> GetChannel:
    """``get_channel`` for a pool class; a declared pool's name is its default argument.

    A function made per class, not a classmethod: the hand-out is the hot path, and
    this spares binding a method and looking the name up at every call.
    """

    def get_channel(name: str | None = own_name) -> grpc.aio.Channel:
        """A connected channel of the pool, round-robin; never waits.

        :raises NotConnectedError: the pool runs but no channel is connected now.
        :raises PoolNotStartedError: no pool of that name runs.
        """
        try:
            pool = _lookup(name)  # type: ignore[arg-type]
        except TypeError:  # unhashable
            raise _not_started(name) from None
        # The hot path: a running pool, a connected channel and nobody listening to the
        # telemetry event. Everything else (errors, mock, telemetry) goes the long way.
        if pool is not None and not _observed.on:
            channels = pool.channels
            if channels:
                return channels[next(pool.counter) % len(channels)]
        return _get_channel(name, pool)

    return get_channel


class Pool:
    """A pool of persistent, pre-connected gRPC channels, handed out round-robin.

    Use it either by name, ``Pool.child_spec(name="demo_pool", pool_size=5,
    channel={...})`` and ``Pool.get_channel("demo_pool")``, or declaratively::

        class DemoPool(Pool, pool_size=5, channel=ChannelConfig("localhost:50051")):
            pass

        DemoPool.child_spec()      # the class statement's settings
        DemoPool.get_channel()

    A declared pool is named after its class unless ``name=`` is given. A ``config=``
    callable on the class is called at ``child_spec()`` time and returns overrides, so
    settings can come from the environment when the application starts. Precedence:
    class statement < ``config()`` < ``child_spec()`` arguments; a partial ``channel``
    dict is laid over the channel below it, field by field.
    """

    _declared: ClassVar[dict[str, Any]] = {}
    _config: ClassVar[Callable[[], Mapping[str, Any]] | None] = None

    def __init_subclass__(
        cls,
        *,
        config: Callable[[], Mapping[str, Any]] | None = None,
        **settings: Unpack[PoolSettings],
    ) -> None:
        super().__init_subclass__()
        declared = {k: v for k, v in cls._declared.items() if k != "name"}
        _merge(
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
        cls.get_channel = staticmethod(_hand_out(declared["name"]))
        if config is not None:
            cls._config = staticmethod(config)

    # --- starting ----------------------------------------------------------------

    @classmethod
    def child_spec(cls, **settings: Unpack[PoolSettings]) -> ChildSpec:
        """A spec that runs this pool under a supervisor (``type="supervisor"``).

        The pool registers its name while it runs and starts ``pool_size`` channel
        workers (one-for-one, within ``max_restarts`` in ``max_seconds``) and a reporter
        that emits ``("conngrpc", "pool", "status")`` every ``telemetry_interval`` s.
        Workers connect in the background: ``wait_connected`` waits for them. The
        started value is the pool's own :class:`Supervisor`.

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
            _merge(merged, overrides, where=f"{cls.__name__}.config(): channel")
        _merge(merged, settings, where="channel")
        if declared_name is not None and merged["name"] != declared_name:
            raise ValueError(
                f"{cls.__name__}: the pool name is fixed by the class statement "
                f"({declared_name!r}), got {merged['name']!r}"
            )
        for required in ("name", "pool_size", "channel"):
            if required not in merged:
                raise TypeError(f"{cls.__name__}.child_spec(): {required}= is required")
        merged["channel"] = ChannelConfig.coerce(merged["channel"])
        resolved = _PoolSettings(**merged)
        return ChildSpec(
            resolved.name,
            functools.partial(_run_pool, resolved),
            shutdown=math.inf,
            type="supervisor",
        )

    # --- handing out -------------------------------------------------------------

    #: ``Pool.get_channel(name)``, or ``DemoPool.get_channel()`` for a declared pool: a
    #: connected channel of the pool, round-robin; never waits. Raises
    #: ``NotConnectedError`` when the pool runs but no channel is connected now, and
    #: ``PoolNotStartedError`` when no pool of that name runs.
    get_channel: ClassVar[GetChannel] = staticmethod(_hand_out(None))

    @classmethod
    def status(cls, name: str | None = None) -> PoolStatus:
        """The pool's expected and current (connected) size.

        :raises PoolNotStartedError: no pool of that name runs.
        """
        return cls._runtime(name).status()

    @classmethod
    def get_all_workers(cls, name: str | None = None) -> list[ChannelWorker]:
        """The pool's connected workers, in index order.

        :raises PoolNotStartedError: no pool of that name runs.
        """
        return list(cls._runtime(name).workers)

    @classmethod
    async def wait_connected(
        cls,
        name: str | None = None,
        *,
        count: int | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - a bounded wait is the point
    ) -> PoolStatus:
        """Wait until ``count`` channels (default: all) are connected; return the status.

        For applications that must not serve before their backends are reachable.

        :raises NotConnectedError: fewer were connected when ``timeout`` s ran out.
        :raises PoolNotStartedError: no pool of that name runs (or it stopped meanwhile).
        :raises ValueError: ``count`` is outside ``0..pool_size``.
        """
        runtime = cls._runtime(name)
        wanted = runtime.expected_size if count is None else count
        if isinstance(wanted, bool) or not isinstance(wanted, int):
            raise TypeError(f"wait_connected: count: expected an int, got {count!r}")
        if not 0 <= wanted <= runtime.expected_size:
            raise ValueError(
                f"wait_connected: count: expected 0 to {runtime.expected_size} "
                f"(the pool size), got {count!r}"
            )
        with anyio.move_on_after(timeout):
            while len(runtime.workers) < wanted:
                await runtime.changed.wait()
                if _lookup(runtime.name) is not runtime:
                    raise _not_started(runtime.name)
            return runtime.status()
        raise NotConnectedError(
            runtime.name,
            f"expected {wanted} connected channel(s) within {timeout:g} s, "
            f"but {len(runtime.workers)} are",
        )

    # --- helpers -----------------------------------------------------------------

    @classmethod
    def _own_name(cls) -> str:
        name = cls._declared.get("name")
        if name is None:
            raise TypeError(
                f"{cls.__name__}: expected a pool name (Pool.get_channel('name')), got none"
            )
        return str(name)

    @classmethod
    def _runtime(cls, name: str | None) -> _PoolRuntime:
        if name is None:
            name = cls._own_name()
        runtime = _lookup(name)
        if runtime is None:
            raise _not_started(name)
        return runtime


def _get_channel(name: str | None, pool: _PoolRuntime | None) -> grpc.aio.Channel:
    """``get_channel`` the long way: errors, ``mock``, and the telemetry event."""
    begin = time.perf_counter_ns()
    result = "ok"
    try:
        if pool is None:
            if name is None:
                raise TypeError("expected a pool name (Pool.get_channel('name')), got none")
            raise _not_started(name)
        if not pool.workers:
            raise NotConnectedError(
                pool.name, f"none of its {pool.expected_size} channel(s) is connected now"
            )
        if pool.mock is not None:
            return pool.mock()  # type: ignore[no-any-return]
        channels = pool.channels
        return channels[next(pool.counter) % len(channels)]
    except Exception as error:
        result = type(error).__name__
        raise
    finally:
        if _observed.on:
            telemetry.execute(
                GET_CHANNEL,
                {"duration": time.perf_counter_ns() - begin},
                {"pool_name": name, "result": result},
            )


def _not_started(name: object) -> Exception:
    if not isinstance(name, str):
        return TypeError(f"expected a pool name as a str, got {name!r}")
    running = ", ".join(map(repr, pools.names())) or "none"
    return PoolNotStartedError(name, f"no pool of that name is running (running: {running})")


async def _run_pool(settings: _PoolSettings, *, task_status: TaskStatus[Supervisor]) -> None:
    """The pool's supervisor: registers the name, runs the workers and the status reporter.

    Channels that leave the pool are closed in ``closer``, which outlives the workers:
    when the pool stops, every channel drains its calls in flight at the same time.
    """
    runtime = _PoolRuntime(settings.name, settings.pool_size, settings.channel.mock)
    try:
        async with task_group() as closer:
            with pools.register(settings.name, runtime):
                workers = [
                    ChildSpec(
                        f"channel-{index}",
                        functools.partial(
                            run_worker,
                            settings.channel,
                            pool_name=settings.name,
                            index=index,
                            membership=runtime,
                            closer=closer,
                        ),
                    )
                    for index in range(settings.pool_size)
                ]
                reporter = ChildSpec(
                    "status",
                    functools.partial(_report_status, runtime, settings.telemetry_interval),
                )
                async with Supervisor(
                    [*workers, reporter],
                    name=settings.name,
                    max_restarts=settings.max_restarts,
                    max_seconds=settings.max_seconds,
                ) as supervisor:
                    task_status.started(supervisor)
                    await anyio.sleep_forever()
    finally:
        runtime.changed.set()  # wake wait_connected callers: the pool is gone


async def _report_status(
    runtime: _PoolRuntime, interval: float, *, task_status: TaskStatus[None]
) -> None:
    """Emit the pool's status every ``interval`` seconds."""
    task_status.started()
    metadata = {"pool_name": runtime.name}
    while True:
        await anyio.sleep(interval)
        telemetry.execute(
            STATUS,
            {"expected_size": runtime.expected_size, "current_size": len(runtime.workers)},
            metadata,
        )
