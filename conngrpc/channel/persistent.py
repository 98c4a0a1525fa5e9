"""Channel: one persistent, supervised channel, found by name (upstream's ConnGRPC.Channel)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import grpc.aio
from anyio.abc import TaskStatus

from .. import telemetry
from ..errors import NotConnectedError, PoolNotStartedError
from ..supervisor import ChildSpec, Registry
from .config import ChannelConfig, ChannelConfigLike
from .worker import ChannelWorker, run_worker

__all__ = ["GET", "Channel", "channels"]

GET = ("conngrpc", "channel", "get")


class _ChannelRuntime:
    """A running channel's hand-out state: its channel while connected, else None."""

    __slots__ = ("channel", "mock", "name", "worker")

    def __init__(self, name: str, mock: Callable[[], Any] | None) -> None:
        self.name = name
        self.mock = mock
        self.channel: grpc.aio.Channel | None = None
        self.worker: ChannelWorker | None = None

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} connected={self.worker is not None}>"

    def joined(self, worker: ChannelWorker) -> None:
        self.worker = worker
        self.channel = worker.channel

    def left(self, worker: ChannelWorker) -> None:
        if self.worker is worker:
            self.worker = None
            self.channel = None


#: The process-wide registry of running channels, by name.
channels: Registry[_ChannelRuntime] = Registry("channels")


class Channel:
    """One persistent channel under a supervisor: connects, watches, reconnects.

    Example::

        async with Supervisor([Channel.child_spec(name="billing", channel={...})]):
            stub = BillingStub(Channel.get("billing"))
    """

    @staticmethod
    def child_spec(*, name: str, channel: ChannelConfigLike) -> ChildSpec:
        """A spec that runs the channel's worker; its name is registered while it runs.

        :raises TypeError: a setting has the wrong type or a channel key is unknown.
        :raises ValueError: the name is empty or a channel setting is out of range.
        """
        if not isinstance(name, str):
            raise TypeError(f"Channel name: expected a str, got {name!r}")
        if not name:
            raise ValueError("Channel name: expected a non-empty str, got ''")
        config = ChannelConfig.coerce(channel)
        return ChildSpec(name, functools.partial(_run_channel, name, config), shutdown=math.inf)

    @staticmethod
    def get(name: str) -> grpc.aio.Channel:
        """The channel while it is connected (or ``mock()`` when configured); never waits.

        Emits ``("conngrpc", "channel", "get")`` either way.

        :raises NotConnectedError: the channel runs but is not connected now.
        :raises PoolNotStartedError: no channel of that name runs.
        """
        begin = time.perf_counter_ns()
        result = "ok"
        try:
            runtime = channels.get(name)
            if runtime is None:
                if not isinstance(name, str):
                    raise TypeError(f"expected a channel name as a str, got {name!r}")
                result = "PoolNotStartedError"
                raise PoolNotStartedError(name, "no channel of that name is running")
            if runtime.mock is not None:
                return runtime.mock()  # type: ignore[no-any-return]
            if runtime.channel is None:
                result = "NotConnectedError"
                raise NotConnectedError(name, "the channel is not connected now")
            return runtime.channel
        finally:
            telemetry.execute(
                GET,
                {"duration": time.perf_counter_ns() - begin},
                {"channel": name, "pool_name": None, "result": result},
            )


async def _run_channel(
    name: str, config: ChannelConfig, *, task_status: TaskStatus[ChannelWorker]
) -> None:
    runtime = _ChannelRuntime(name, config.mock)
    with channels.register(name, runtime):
        await run_worker(
            config, pool_name=name, index=0, membership=runtime, task_status=task_status
        )
