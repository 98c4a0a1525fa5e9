"""Channel, the single persistent channel, against real servers on 127.0.0.1: its health
gate and its make-before-break refresh, proven from the server's side."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conngrpc import Channel, NotConnectedError, Supervisor
from conngrpc._server import PEER_METHOD, peer_of
from tests._fleet import NOT_SERVING, SERVING, fleet, load
from tests._pools import LIVE_BACKOFF
from tests._probe import EventLog, wait_until

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def channel(name: str, address: str, **fields: Any) -> AsyncIterator[None]:
    config = {"address": address, "backoff": LIVE_BACKOFF, "connect_timeout": 2.0, **fields}
    async with Supervisor([Channel.child_spec(name=name, channel=config)]):
        await Channel.wait_connected(name, timeout=5)
        yield


def refreshes(events: EventLog) -> list[dict[str, Any]]:
    return [m for m in events.of("disconnected") if m["reason"] == "max_age"]


def not_connected(name: str) -> bool:
    try:
        Channel.get(name)
    except NotConnectedError:
        return True
    return False


async def test_a_channel_with_max_connection_age_is_refreshed_with_no_gap(
    pool_name: str, channel_events: EventLog
) -> None:
    async with fleet(1) as (backend,):
        async with (
            channel(pool_name, backend.address, max_connection_age=0.3),
            load(pool_name, 20, method=PEER_METHOD, request=b"", get_channel=Channel.get) as calls,
        ):
            await wait_until(lambda: len(refreshes(channel_events)) >= 3)
        refreshed = refreshes(channel_events)
        print(f"max age 0.3 s: {len(refreshed)} refreshes, {calls.ok} calls")
        # The server's side: the calls came over one connection after another.
        assert len(backend.peers) >= len(refreshed)
    assert len(channel_events.of("connected")) == len(refreshed) + 1
    assert calls.not_connected == 0
    assert calls.errors == {}
    assert calls.ok > 0


async def test_a_health_checked_channel_is_withheld_while_not_serving_and_rejoins_as_it_was(
    pool_name: str, channel_events: EventLog
) -> None:
    async with fleet(1) as (backend,), channel(pool_name, backend.address, health_check=""):
        first = Channel.get(pool_name)
        peer = await peer_of(first)

        await backend.set_health(NOT_SERVING)
        await wait_until(lambda: not_connected(pool_name), timeout=0.5)
        assert Channel.status(pool_name).current_size == 0
        with pytest.raises(NotConnectedError, match="not serving"):
            await Channel.wait_connected(pool_name, timeout=0.05)

        await backend.set_health(SERVING)
        await wait_until(lambda: not not_connected(pool_name), timeout=0.5)
        assert Channel.get(pool_name) is first  # the same channel, without reconnecting
        assert await peer_of(first) == peer  # and the same connection, says the server
    assert len(channel_events.of("connected")) == 1
    statuses = [m["status"] for m in channel_events.of("health_changed")]
    assert statuses == ["SERVING", "NOT_SERVING", "SERVING"]
