"""A channel the hand-out finds not READY leaves it at once; it must not stay out for good.

``get_channel`` evicts a channel whose state is not READY without waiting for its
worker to hear of it. When grpc brings that same channel back to READY before the
worker runs (after a GOAWAY it reopens the connection at once for the calls that were
going), the worker sees READY again and goes on watching. Driven by the fake
connector: the state changes happen between two turns of the worker, as under load.
"""

from __future__ import annotations

import grpc
import pytest

from conngrpc import ExponentialBackoff, Pool, Supervisor
from conngrpc.testing import FakeChannel, FakeConnector
from tests._probe import wait_until

pytestmark = pytest.mark.anyio

FAST = ExponentialBackoff(min=0.005, max=0.01, jitter=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # a pool runs on asyncio only


@pytest.mark.xfail(
    reason="conngrpc bug: the evicted channel's worker is never told, so it never rejoins",
    strict=True,
)
async def test_a_channel_evicted_while_it_blinked_comes_back_into_the_hand_out(
    pool_name: str,
) -> None:
    connector = FakeConnector()
    channel = {"address": "fake:1", "connector": connector, "backoff": FAST}
    async with Supervisor([Pool.child_spec(name=pool_name, pool_size=2, channel=channel)]):
        await Pool.wait_connected(pool_name, timeout=5)
        blinking = connector.channels[0]
        assert isinstance(blinking, FakeChannel)
        blinking.drop()  # GOAWAY: the channel goes IDLE ...
        handed = {Pool.get_channel(pool_name) for _ in range(4)}
        assert handed == {connector.channels[1]}  # ... and the hand-out evicts it
        blinking._set_state(grpc.ChannelConnectivity.READY)  # grpc reopened it
        await wait_until(lambda: Pool.status(pool_name).current_size == 2, timeout=1)
        assert {Pool.get_channel(pool_name) for _ in range(4)} == set(connector.channels)
