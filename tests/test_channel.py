"""Channel, the single persistent channel: found by name, connects, reconnects, says why not.

Driven by the fake connector (no network); tests/live/test_pool_servers.py runs one
against a real server.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from conngrpc import (
    Channel,
    NotConnectedError,
    Pool,
    PoolNotStartedError,
    Supervisor,
)
from conngrpc.testing import FakeChannel, FakeConnector
from tests._pools import fake_channel, running_pool
from tests._probe import EventLog, wait_until

pytestmark = pytest.mark.anyio


def fake(connector: FakeConnector, **fields: Any) -> dict[str, Any]:
    return fake_channel(connector, address="billing:443", **fields)


async def test_wait_connected_then_get_returns_the_connected_channel(pool_name: str) -> None:
    connector = FakeConnector()
    async with Supervisor([Channel.child_spec(name=pool_name, channel=fake(connector))]):
        status = await Channel.wait_connected(pool_name, timeout=5)
        assert (status.expected_size, status.current_size) == (1, 1)
        channel = Channel.get(pool_name)
        assert channel is connector.channels[0]
        assert Channel.status(pool_name).current_size == 1


async def test_get_while_not_connected_raises_with_the_latest_failure(pool_name: str) -> None:
    connector = FakeConnector()
    connector.fail_next(10_000)
    async with Supervisor([Channel.child_spec(name=pool_name, channel=fake(connector))]):
        await connector.wait_for_calls(1)
        with pytest.raises(NotConnectedError) as caught:
            Channel.get(pool_name)
        assert caught.value.pool_name == pool_name
        assert "the channel is not connected now" in caught.value.reason
        assert "'billing:443'" in caught.value.reason
        with pytest.raises(NotConnectedError, match="refused on purpose"):
            await Channel.wait_connected(pool_name, timeout=0.01)


async def test_a_lost_channel_reconnects(pool_name: str) -> None:
    connector = FakeConnector()
    async with Supervisor([Channel.child_spec(name=pool_name, channel=fake(connector))]):
        await Channel.wait_connected(pool_name, timeout=5)
        first = Channel.get(pool_name)
        assert isinstance(first, FakeChannel)
        connector.drop(0)
        await wait_until(lambda: first.closed)  # it left, and was closed
        await Channel.wait_connected(pool_name, timeout=5)
        assert Channel.get(pool_name) is not first


async def test_channel_names_are_their_own_namespace(pool_name: str) -> None:
    connector = FakeConnector()
    async with Supervisor([Channel.child_spec(name=pool_name, channel=fake(connector))]):
        await Channel.wait_connected(pool_name, timeout=5)
        with pytest.raises(PoolNotStartedError):
            Pool.get_channel(pool_name)


async def test_a_channel_that_does_not_run_is_not_started(pool_name: str) -> None:
    with pytest.raises(PoolNotStartedError, match="no channel of that name is running"):
        Channel.get(pool_name)
    with pytest.raises(PoolNotStartedError):
        await Channel.wait_connected(pool_name)
    with pytest.raises(PoolNotStartedError):
        Channel.status(pool_name)


@pytest.mark.parametrize("name", [["x"], 3, None], ids=["list", "int", "None"])
async def test_a_name_that_is_not_a_str_is_a_clear_type_error(
    name: object, channel_events: EventLog
) -> None:
    with pytest.raises(TypeError, match=r"expected a channel name as a str .*, got "):
        Channel.get(name)  # type: ignore[arg-type]
    assert channel_events.of("get") == []  # a misuse, not a hand-out


async def test_get_reports_what_happened_in_telemetry(
    pool_name: str, channel_events: EventLog
) -> None:
    connector = FakeConnector()
    connector.hang_next(1)
    spec = Channel.child_spec(name=pool_name, channel=fake(connector, connect_timeout=0.2))
    async with Supervisor([spec]):
        with pytest.raises(NotConnectedError):
            Channel.get(pool_name)
        await Channel.wait_connected(pool_name, timeout=5)
        Channel.get(pool_name)
    with pytest.raises(PoolNotStartedError):
        Channel.get(pool_name)
    results = [m["result"] for m in channel_events.of("get")]
    assert results == ["NotConnectedError", "ok", "PoolNotStartedError"]


async def test_a_mocked_channel_answers_the_mock(pool_name: str) -> None:
    spec = Channel.child_spec(name=pool_name, channel={"address": "x:1", "mock": lambda: "stub"})
    async with Supervisor([spec]):
        await Channel.wait_connected(pool_name, timeout=5)
        assert Channel.get(pool_name) == "stub"


async def test_waiting_is_bounded_and_may_be_for_ever(pool_name: str) -> None:
    connector = FakeConnector()
    async with Supervisor([Channel.child_spec(name=pool_name, channel=fake(connector))]):
        with anyio.fail_after(5):
            status = await Channel.wait_connected(pool_name, timeout=float("inf"))
        assert status.current_size == 1
        with pytest.raises(ValueError, match="wait_connected: timeout"):
            await Channel.wait_connected(pool_name, timeout=-1)


class _StandIn:
    """What a test hands ``mock=``: a channel-like object whose calls it answers."""

    def unary_unary(self, method: str, **_: object) -> Any:
        async def call(request: bytes, **__: object) -> bytes:
            return b"mocked " + method.encode() + b" " + request

        return call


async def test_the_pooled_channel_of_a_mocked_pool_sends_its_calls_to_the_mock(
    pool_name: str,
) -> None:
    stand_in = _StandIn()
    async with running_pool(pool_name, 2, {"address": "x:1", "mock": lambda: stand_in}):
        call = Pool.channel(pool_name).unary_unary("/a.B/C")
        assert await call(b"hi") == b"mocked /a.B/C hi"
