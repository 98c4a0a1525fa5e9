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
        connector.drop(0)                      # worker 0's connection is lost

Parallel tests that must not share servers: ``mock=`` on the channel config opens no
connection; ``get_channel`` answers ``mock()`` and the calls of ``Pool.channel()`` go
to the channel ``mock()`` returns (see the guide's "Testing your code" page).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import grpc
import grpc.aio

from . import _health
from .channel.config import ChannelConfig
from .channel.worker import CURRENT_INDEX
from .errors import ConnectFailedError

__all__ = ["FakeChannel", "FakeConnector"]

_READY = grpc.ChannelConnectivity.READY


class FakeChannel(grpc.aio.Channel):
    """A channel with no connection behind it whose connectivity and health the test controls.

    It starts READY; :meth:`drop` makes it IDLE (a lost connection) and :meth:`close`
    SHUTDOWN. ``worker_index`` is the index of the pool worker it was opened for (None
    outside a pool). It answers ``grpc.health.v1.Health`` (``Watch`` and ``Check``) with
    :attr:`health`, which :meth:`set_health` changes (None: the server has no health
    service, UNIMPLEMENTED); it carries no other call: any other method raises
    ``RuntimeError``. :class:`FakeConnector` makes them; a test rarely makes one itself.
    """

    def __init__(
        self,
        config: ChannelConfig,
        serial: int,
        worker_index: int | None = None,
        health: str | None = "SERVING",
    ) -> None:
        #: the config of the attempt that opened it
        self.config: ChannelConfig = config
        #: its index in its connector's ``channels`` (from 0)
        self.serial: int = serial
        #: the index of the pool worker it was opened for (None outside a pool)
        self.worker_index: int | None = worker_index
        #: what its ``Health`` service answers ("SERVING", ...; None: it has none)
        self.health: str | None = health
        #: true once :meth:`close` was called
        self.closed: bool = False
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
        """READY, IDLE once dropped, SHUTDOWN once closed."""
        return self._state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until its state is another than ``last_observed_state``."""
        while self._state is last_observed_state:
            await self._changed.wait()

    async def channel_ready(self) -> None:
        """Wait until it is READY (a dropped one never is again)."""
        while self._state is not _READY:
            await self._changed.wait()

    async def close(self, grace: float | None = None) -> None:
        """Close it: SHUTDOWN, for good."""
        self.closed = True
        self._set_state(grpc.ChannelConnectivity.SHUTDOWN)

    async def __aenter__(self) -> FakeChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def set_health(self, status: str | None) -> None:
        """What ``Health`` answers from now on ("SERVING", "NOT_SERVING", ...; None: none)."""
        self.health = status
        self._set_state(self._state)  # wakes the watches

    def unary_unary(self, method: str, *_: Any, **__: Any) -> Any:
        if method != _health.CHECK_METHOD:
            return self._no_calls()

        async def check(request: bytes, **___: Any) -> bytes:
            return _health.encode_response(self._health_number())

        return check

    def unary_stream(self, method: str, *_: Any, **__: Any) -> Any:
        if method != _health.WATCH_METHOD:
            return self._no_calls()
        return lambda request, **___: _FakeWatch(self)

    def _health_number(self) -> int:
        if self.health is None:
            raise _unimplemented()
        numbers = {name: number for number, name in _health.STATUS_NAMES.items()}
        return numbers[self.health]

    def _no_calls(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError(
            "a FakeChannel carries no calls but grpc.health.v1's; use a real server, or "
            "mock= for a stand-in"
        )

    stream_unary = _no_calls
    stream_stream = _no_calls


class _FakeWatch:
    """``Health/Watch`` on a FakeChannel: the status now, then each change, until cancelled."""

    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel
        self._sent: int | None = None

    def __aiter__(self) -> _FakeWatch:
        return self

    async def __anext__(self) -> bytes:
        channel = self._channel
        while True:
            if channel.closed:
                raise StopAsyncIteration
            number = channel._health_number()
            if number != self._sent:
                self._sent = number
                return _health.encode_response(number)
            await channel._changed.wait()

    def cancel(self) -> bool:
        return True


def _unimplemented() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Method not found: grpc.health.v1.Health (FakeChannel)",
    )


class FakeConnector:
    """A connector whose attempts the test scripts: succeed, fail, or hang.

    Each call records the config it got (``calls``). Unscripted attempts succeed with
    a new :class:`FakeChannel` (all of them are in ``channels``), unless their address
    is :meth:`down`. For a pool over a fleet, give it a ``resolver`` returning fake
    addresses: each attempt's config carries the address of the backend it is for.
    """

    def __init__(self) -> None:
        #: the config of every attempt, in order
        self.calls: list[ChannelConfig] = []
        #: every channel it opened, in order
        self.channels: list[FakeChannel] = []
        self._script: deque[str | BaseException] = deque()
        self._attempted = anyio.Event()
        self._down: set[str] = set()
        self._health: dict[str, str | None] = {}

    def down(self, address: str, down: bool = True) -> None:
        """Refuse (or, with ``down=False``, accept again) every attempt on ``address``.

        Its connected channels are dropped, as a server that dies would drop them.
        """
        if down:
            self._down.add(address)
            for channel in self.connected:
                if channel.config.address == address:
                    channel.drop()
        else:
            self._down.discard(address)

    def set_health(self, address: str, status: str | None) -> None:
        """What the health service of ``address`` says, now and for its new channels."""
        self._health[address] = status
        for channel in self.channels:
            if channel.config.address == address and not channel.closed:
                channel.set_health(status)

    def __repr__(self) -> str:
        return f"<FakeConnector calls={len(self.calls)} connected={len(self.connected)}>"

    def fail_next(self, count: int = 1, error: Exception | None = None) -> None:
        """Make the next ``count`` attempts raise ``error``.

        By default a :class:`~conngrpc.ConnectFailedError` naming the attempt's address,
        which the worker retries; an error that is not retryable crashes the worker.
        """
        for _ in range(count):
            self._script.append(error if error is not None else "refuse")

    def hang_next(self, count: int = 1) -> None:
        """Make the next ``count`` attempts hang until the worker's connect_timeout."""
        self._script.extend(["hang"] * count)

    @property
    def connected(self) -> list[FakeChannel]:
        """The channels handed out that are still READY, oldest first."""
        return [c for c in self.channels if c.get_state() is _READY]

    def drop(self, which: int | FakeChannel) -> FakeChannel:
        """Drop the connection of pool worker ``which`` (its index), or the channel given.

        :raises LookupError: no worker of that index holds a connected channel (or
            several do: pools that share this connector); the message lists who does.
        """
        if isinstance(which, FakeChannel):
            which.drop()
            return which
        found = [c for c in self.connected if c.worker_index == which]
        if len(found) != 1:
            holders = sorted(c.worker_index for c in self.connected if c.worker_index is not None)
            raise LookupError(
                f"expected one connected channel of worker {which}, found {len(found)}; "
                f"the workers connected now are {holders}"
            )
        found[0].drop()
        return found[0]

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
        """One attempt, as scripted: a new READY :class:`FakeChannel`, or the failure or
        hang :meth:`fail_next`, :meth:`hang_next` or :meth:`down` asked for."""
        self.calls.append(config)
        self._attempted.set()
        self._attempted = anyio.Event()
        outcome = self._script.popleft() if self._script else "connect"
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "refuse" or config.address in self._down:
            raise ConnectFailedError(config.address, "refused on purpose (FakeConnector)")
        if outcome == "hang":
            await anyio.sleep_forever()
        index = CURRENT_INDEX.get()
        health = self._health.get(config.address, "SERVING")
        channel = FakeChannel(config, len(self.channels), index, health)
        self.channels.append(channel)
        return channel
