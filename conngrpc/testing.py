"""Fakes for your own tests: a programmable connector, and the ``mock`` hook.

Fast unit tests, with no network at all: give a pool the :class:`FakeConnector`, then
make its connections succeed, fail or drop on command::

    connector = FakeConnector()
    connector.fail_next(2)                     # the first two attempts fail
    spec = Pool.child_spec(
        name="unit", pool_size=3,
        channel={"address": "fake:1", "connector": connector,
                 "backoff": ExponentialBackoff(min=0.01, max=0.05)},
    )
    async with Supervisor([spec]):
        await Pool.wait_connected("unit")
        connector.drop(0)                      # the first connection is lost

Parallel tests that must not share servers: ``mock=`` on the channel config makes
``get_channel`` answer ``mock()`` and opens no connection (see the README).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import grpc
import grpc.aio

from .channel.config import ChannelConfig
from .errors import ConnectFailedError

__all__ = ["FakeChannel", "FakeConnector"]

_READY = grpc.ChannelConnectivity.READY


class FakeChannel(grpc.aio.Channel):
    """A channel with no connection behind it whose connectivity the test controls.

    It starts READY; :meth:`drop` makes it IDLE (a lost connection) and :meth:`close`
    SHUTDOWN. It carries no calls: any call method raises.
    """

    def __init__(self, config: ChannelConfig, serial: int) -> None:
        self.config = config
        self.serial = serial
        self.closed = False
        self._state = _READY
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<FakeChannel #{self.serial} {self._state.name}>"

    def drop(self) -> None:
        """The connection is lost: READY -> IDLE."""
        self._set_state(grpc.ChannelConnectivity.IDLE)

    def _set_state(self, state: grpc.ChannelConnectivity) -> None:
        self._state = state
        self._changed.set()
        self._changed = anyio.Event()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self._state is last_observed_state:
            await self._changed.wait()

    async def channel_ready(self) -> None:
        while self._state is not _READY:
            await self._changed.wait()

    async def close(self, grace: float | None = None) -> None:
        self.closed = True
        self._set_state(grpc.ChannelConnectivity.SHUTDOWN)

    async def __aenter__(self) -> FakeChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _no_calls(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError(
            "a FakeChannel carries no calls; use a real server, or mock= for a stand-in"
        )

    unary_unary = _no_calls
    unary_stream = _no_calls
    stream_unary = _no_calls
    stream_stream = _no_calls


class FakeConnector:
    """A connector whose attempts the test scripts: succeed, fail, or hang.

    Each call records the config it got (``calls``). Unscripted attempts succeed with
    a new :class:`FakeChannel` (all of them are in ``channels``).
    """

    def __init__(self) -> None:
        self.calls: list[ChannelConfig] = []
        self.channels: list[FakeChannel] = []
        self._script: deque[str | BaseException] = deque()
        self._attempted = anyio.Event()

    def __repr__(self) -> str:
        return f"<FakeConnector calls={len(self.calls)} connected={len(self.connected)}>"

    def fail_next(self, count: int = 1, error: Exception | None = None) -> None:
        """Make the next ``count`` attempts raise ``error`` (a ConnectFailedError)."""
        for _ in range(count):
            self._script.append(error or ConnectFailedError("fake", "refused on purpose"))

    def hang_next(self, count: int = 1) -> None:
        """Make the next ``count`` attempts hang until the worker's connect_timeout."""
        self._script.extend(["hang"] * count)

    @property
    def connected(self) -> list[FakeChannel]:
        """The channels handed out that are still READY, oldest first."""
        return [c for c in self.channels if c.get_state() is _READY]

    def drop(self, which: int | FakeChannel = 0) -> FakeChannel:
        """Drop one connected channel (by position in :attr:`connected`, or itself)."""
        channel = self.connected[which] if isinstance(which, int) else which
        channel.drop()
        return channel

    def drop_all(self) -> Sequence[FakeChannel]:
        """Drop every connected channel, as a server that dies would."""
        dropped = self.connected
        for channel in dropped:
            channel.drop()
        return dropped

    async def wait_for_calls(self, count: int) -> None:
        """Wait until the connector has been called ``count`` times in all."""
        while len(self.calls) < count:
            await self._attempted.wait()

    async def __call__(self, config: ChannelConfig) -> FakeChannel:
        self.calls.append(config)
        self._attempted.set()
        self._attempted = anyio.Event()
        outcome = self._script.popleft() if self._script else "connect"
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await anyio.sleep_forever()
        channel = FakeChannel(config, len(self.channels))
        self.channels.append(channel)
        return channel
