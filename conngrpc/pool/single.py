"""Channel: one persistent, supervised channel, found by name (upstream's ConnGRPC.Channel).

It is a pool of one under its own name space: the same worker, supervision, waiting and
error messages as a pool, with ``Channel.get(name)`` as its hand-out.
"""

from __future__ import annotations

import functools
import math
import time

import grpc.aio

from .. import telemetry
from ..channel.config import ChannelConfig, ChannelConfigLike, check_interceptors_for
from ..supervisor import ChildSpec
from .resolver import Resolver
from .runtime import PoolRuntime, PoolStatus, channels, not_started, run_pool, wait_connected
from .settings import ResolvedSettings, check_name

__all__ = ["GET", "Channel"]

GET = ("conngrpc", "channel", "get")


class Channel:
    """One persistent channel under a supervisor: connects, watches, reconnects.

    A pool of one, found by name: its settings, errors and telemetry are a pool's.
    Example::

        async with Supervisor([Channel.child_spec(name="billing", channel={...})]):
            await Channel.wait_connected("billing")
            stub = BillingStub(Channel.get("billing"))
    """

    @staticmethod
    def child_spec(
        *,
        name: str,
        channel: ChannelConfigLike,
        resolver: Resolver | None = None,
        resolve_interval: float = 30.0,
    ) -> ChildSpec:
        """A spec that runs the channel (``type="supervisor"``); its name is registered
        while it runs. The channel connects in the background: ``wait_connected`` waits.

        ``channel`` is a :class:`ChannelConfig` or a dict of its fields; ``resolver``
        and ``resolve_interval`` are a pool's settings of those names. Like a pool's,
        its target is resolved (by ``resolver``, every ``resolve_interval`` seconds) and
        the channel connects to one backend that accepts, moving off a backend the
        resolver no longer lists.

        :raises TypeError: a setting has the wrong type or a channel key is unknown.
        :raises ValueError: the name is empty or a channel setting is out of range.
        """
        check_name("Channel name", name)
        config = ChannelConfig.coerce(channel)
        check_interceptors_for(config, "asyncio")
        settings = ResolvedSettings(
            name,
            1,
            config,
            resolver=resolver,
            resolve_interval=resolve_interval,
        )
        return ChildSpec(
            name,
            functools.partial(run_pool, "channel", settings),
            shutdown=math.inf,
            type="supervisor",
        )

    @staticmethod
    def get(name: str) -> grpc.aio.Channel:
        """The channel while it is connected (or ``mock()`` when configured); never waits.

        Emits ``("conngrpc", "channel", "get")`` either way.

        :raises NotConnectedError: the channel runs but is not connected now; the
            message gives the latest failure.
        :raises PoolNotStartedError: no channel of that name runs.
        :raises TypeError: ``name`` is not a str.
        """
        runtime = _runtime(name)
        begin = time.perf_counter_ns()
        result = None  # stays None when mock() raises: that is the mock's failure
        try:
            if runtime is None:
                result = "PoolNotStartedError"
                raise not_started("channel", name)
            if runtime.mock is not None and runtime.table.connected_count():
                found = runtime.mock()
            else:
                found = runtime.handout.next_ready()
                if found is None:
                    result = "NotConnectedError"
                    raise runtime.not_connected()
            result = "ok"
            return found  # type: ignore[no-any-return]
        finally:
            if result is not None:
                telemetry.execute(
                    GET,
                    {"duration": time.perf_counter_ns() - begin},
                    {"channel": name, "pool_name": None, "result": result},
                )

    @staticmethod
    async def wait_connected(
        name: str,
        *,
        timeout: float = 10.0,
    ) -> PoolStatus:
        """Wait until the channel is connected; return its status (as a pool of one's).

        :raises NotConnectedError: it was not connected when ``timeout`` s ran out; the
            message gives what it is doing and its latest failure.
        :raises PoolNotStartedError: no channel of that name runs, or it stopped meanwhile.
        :raises ValueError: ``timeout`` is negative.
        :raises RuntimeError: awaited on another event loop than the channel's.
        """
        runtime = _runtime(name)
        if runtime is None:
            raise not_started("channel", name)
        return await wait_connected(runtime, None, timeout)

    @staticmethod
    def status(name: str) -> PoolStatus:
        """Whether the channel is connected (``current_size`` 1) or not (0); any thread.

        :raises PoolNotStartedError: no channel of that name runs.
        """
        runtime = _runtime(name)
        if runtime is None:
            raise not_started("channel", name)
        return runtime.status()


def _runtime(name: object) -> PoolRuntime | None:
    """The running channel of that name, or None.

    :raises TypeError: ``name`` is not a str.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a channel name as a str (Channel.get('name')), got {name!r}")
    return channels.get(name)
