"""Pools under a Supervisor of their own, and the backoffs that tests give them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from conngrpc import ChannelConfig, ExponentialBackoff, Pool, Supervisor
from conngrpc.testing import FakeConnector
from tests._probe import WAIT_LIMIT

#: The backoff of channels on a fake connector, whose failed attempts cost nothing: the
#: next attempt comes 5 to 10 ms later, without jitter, so a test's waits stay short.
FAKE_BACKOFF = ExponentialBackoff(min=0.005, max=0.01, jitter=0)

#: The backoff of channels to real servers on 127.0.0.1: a stopped server's port is tried
#: again 50 to 200 ms later, soon enough that a test sees the pool heal within its bounds,
#: seldom enough that a down server is not dialled hundreds of times a second.
LIVE_BACKOFF = ExponentialBackoff(min=0.05, max=0.2)


def fake_channel(connector: FakeConnector, **fields: Any) -> dict[str, Any]:
    """A channel configuration on ``connector``, with FAKE_BACKOFF, and ``fields``."""
    return {"address": "fake:1", "connector": connector, "backoff": FAKE_BACKOFF, **fields}


@asynccontextmanager
async def running_pool(
    name: str,
    size: int,
    channel: Mapping[str, Any] | ChannelConfig,
    *,
    wait: bool = True,
    **settings: Any,
) -> AsyncIterator[Supervisor]:
    """Pool ``name`` of ``size`` channels under a Supervisor of its own, for the block.

    ``settings`` are Pool.child_spec's others. With ``wait`` (the default), the block
    begins once every channel is connected, or fails after WAIT_LIMIT seconds.
    """
    spec = Pool.child_spec(name=name, pool_size=size, channel=channel, **settings)
    async with Supervisor([spec]) as supervisor:
        if wait:
            await Pool.wait_connected(name, timeout=WAIT_LIMIT)
        yield supervisor


def live_pool(
    name: str,
    address: str | Sequence[str],
    size: int,
    *,
    settings: Mapping[str, Any] | None = None,
    wait: bool = False,
    **channel: Any,
) -> AbstractAsyncContextManager[Supervisor]:
    """:func:`running_pool` to real servers: ``address`` is a target, or the addresses
    of several backends (an ``ipv4:`` target). ``channel`` holds ChannelConfig's fields,
    whose backoff is LIVE_BACKOFF and connect_timeout 2 s unless given; ``settings`` the
    pool's. The block begins at once, connected or not, unless ``wait``.
    """
    target = address if isinstance(address, str) else "ipv4:" + ",".join(address)
    config = {"address": target, "backoff": LIVE_BACKOFF, "connect_timeout": 2.0, **channel}
    return running_pool(name, size, config, wait=wait, **(settings or {}))
