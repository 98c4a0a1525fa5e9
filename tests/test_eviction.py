"""A channel the hand-out finds not READY is skipped at once, and never kept out for good.

``get_channel`` skips a channel whose state is not READY without waiting for its worker
to hear of it. When grpc brings that same channel back to READY before the worker runs
(after a GOAWAY it reopens the connection at once for the calls that were going), the
worker sees READY again and goes on watching: the channel must be handed out again.
Driven by the fake connector: the state changes happen between two turns of the
worker, as under load. (It once stayed out: the hand-out took it out of the pool, and
only its worker could have put it back.)
"""

from __future__ import annotations

import grpc
import pytest

from conngrpc import Pool
from conngrpc.pool.runtime import pools
from conngrpc.testing import FakeChannel, FakeConnector
from tests._pools import fake_channel, running_pool
from tests._probe import wait_until

pytestmark = pytest.mark.anyio


async def test_a_channel_skipped_while_it_blinked_comes_back_into_the_hand_out(
    pool_name: str,
) -> None:
    connector = FakeConnector()
    async with running_pool(pool_name, 2, fake_channel(connector)):
        blinking = connector.channels[0]
        assert isinstance(blinking, FakeChannel)
        blinking.drop()  # GOAWAY: the channel goes IDLE ...
        handed = {Pool.get_channel(pool_name) for _ in range(4)}
        assert handed == {connector.channels[1]}  # ... and the hand-out skips it
        blinking._set_state(grpc.ChannelConnectivity.READY)  # grpc reopened it
        await wait_until(lambda: Pool.status(pool_name).current_size == 2, timeout=1)
        assert {Pool.get_channel(pool_name) for _ in range(4)} == set(connector.channels)


async def test_the_least_loaded_pick_skips_a_channel_not_ready_and_takes_it_back_once_ready(
    pool_name: str,
) -> None:
    connector = FakeConnector()
    async with running_pool(pool_name, 3, fake_channel(connector)):
        runtime = pools.get(pool_name)
        assert runtime is not None
        idle, busy, blinking = runtime.handout.slots
        busy.in_flight = 5  # as if calls ran there: the pick would go to an idle one
        blinking.channel._set_state(grpc.ChannelConnectivity.IDLE)  # type: ignore[attr-defined]
        picked = {runtime.handout.pick() for _ in range(6)}
        assert picked == {idle}  # the least loaded of the READY ones, blinking skipped
        blinking.channel._set_state(grpc.ChannelConnectivity.READY)  # type: ignore[attr-defined]
        picked = {runtime.handout.pick() for _ in range(6)}
        assert picked == {idle, blinking}  # back, without its worker doing anything
        busy.in_flight = 0
