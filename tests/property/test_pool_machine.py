"""A hypothesis state machine drives a live pool over the FakeConnector.

Random interleavings of dropped channels, scripted connection failures, recoveries and
bursts of ``get_channel`` (asyncio only: grpc.aio is asyncio-only). The connector sits
behind a gate: a drop closes it, so the dropped workers leave the pool and cannot come
back until a ``recover`` step opens it again. Between steps the pool's state is then
exact, and after every step the pool must agree with the model: exactly the workers not
dropped are connected, ``status()`` counts them, ``get_channel`` hands out only their
READY channels, round-robin in worker index order, and raises NotConnectedError exactly
when none is connected. A recovery must bring the pool back to full size within a bound,
handing out only connected channels meanwhile.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from anyio.from_thread import start_blocking_portal
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conngrpc import (
    ChannelConfig,
    ChannelWorker,
    ExponentialBackoff,
    NotConnectedError,
    Pool,
    PoolNotStartedError,
    PoolStatus,
    Supervisor,
)
from conngrpc.pool.runtime import pools
from conngrpc.pool.table import PoolTable
from conngrpc.testing import FakeChannel, FakeConnector

_READY = grpc.ChannelConnectivity.READY
_IDLE = grpc.ChannelConnectivity.IDLE
_names = itertools.count(1)
BOUND = 5.0  # seconds any wait may take before the machine fails


class GatedConnector:
    """The FakeConnector behind a gate: while it is held, attempts wait before reaching it."""

    def __init__(self, fake: FakeConnector) -> None:
        self.fake = fake
        self.held = False
        self._released: anyio.Event | None = None

    def hold(self) -> None:
        if not self.held:
            self.held = True
            self._released = anyio.Event()

    def release(self) -> None:
        self.held = False
        if self._released is not None:
            self._released.set()

    async def __call__(self, config: ChannelConfig) -> FakeChannel:
        while self.held:
            assert self._released is not None
            await self._released.wait()
        return await self.fake(config)


def expected_status(name: str, size: int, connected: Iterable[int]) -> PoolStatus:
    """A pool of fakes (one backend, fake:1) with these workers connected, no call made."""
    indexes = list(connected)
    return PoolStatus(
        name, size, len(indexes), {"fake:1": len(indexes)}, 0, dict.fromkeys(indexes, 0)
    )


def channel_of(worker: ChannelWorker) -> FakeChannel:
    """A connected worker's channel, which the FakeConnector made."""
    assert isinstance(worker.channel, FakeChannel), worker
    return worker.channel


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.fake = FakeConnector()
        self.gate = GatedConnector(self.fake)
        self.name = f"pool-machine-{next(_names)}"
        self._sup_cm: Any = None
        self.pool_sup: Supervisor | None = None
        # The model.
        self.pool_size = 0
        self.down: set[int] = set()  # indexes of dropped workers, held at the gate
        self.dropped: list[FakeChannel] = []  # every channel dropped so far
        self.scripted = 0  # connection failures scripted so far
        self.consumed = 0  # ... and attempts that failed because of them

    # --- set-up and tear-down ------------------------------------------------------

    @initialize(pool_size=st.integers(1, 5), failures=st.integers(0, 3))
    def start_pool(self, pool_size: int, failures: int) -> None:
        self.pool_size = pool_size
        self.fake.fail_next(failures)
        self.scripted = failures
        spec = Pool.child_spec(
            name=self.name,
            pool_size=pool_size,
            channel={
                "address": "fake:1",
                "connector": self.gate,
                "backoff": ExponentialBackoff(min=0.001, max=0.002, jitter=0),
                "connect_timeout": 1.0,
            },
        )
        self._sup_cm = self.portal.wrap_async_context_manager(Supervisor([spec], name=self.name))
        sup = self._sup_cm.__enter__()
        (info,) = self.call(sup.which_children)
        self.pool_sup = info.value
        assert isinstance(self.pool_sup, Supervisor)
        status = self.call(functools.partial(Pool.wait_connected, self.name, timeout=BOUND))
        assert status == expected_status(self.name, pool_size, range(pool_size))
        self.consumed = failures

    def teardown(self) -> None:
        try:
            if self._sup_cm is not None:
                self._sup_cm.__exit__(None, None, None)
                with pytest.raises(PoolNotStartedError):
                    Pool.get_channel(self.name)
                with pytest.raises(PoolNotStartedError):
                    Pool.status(self.name)
                assert [c for c in self.fake.channels if not c.closed] == []
        finally:
            self._portal_cm.__exit__(None, None, None)

    # --- helpers ----------------------------------------------------------------------

    def call(self, func: Any, *args: Any) -> Any:
        return self.portal.call(func, *args)

    def up(self) -> list[int]:
        return [i for i in range(self.pool_size) if i not in self.down]

    def all_workers(self) -> list[ChannelWorker]:
        """Every worker's snapshot, connected or not; all are running."""
        assert self.pool_sup is not None
        infos = self.pool_sup.which_children()
        assert all(i.running for i in infos)
        table = self.table()
        return [table.snapshot(index) for index in range(self.pool_size)]

    def table(self) -> PoolTable:
        runtime = pools.get(self.name)
        assert runtime is not None
        return runtime.table

    def hand_out(self, count: int, never: Sequence[FakeChannel] = ()) -> None:
        """Call get_channel ``count`` times and check every answer against the pool now.

        Runs in the event loop thread without yielding, so the connected set is stable.
        """
        connected: list[grpc.aio.Channel] = [channel_of(w) for w in Pool.get_all_workers(self.name)]
        if not connected:
            for _ in range(count):
                with pytest.raises(NotConnectedError) as caught:
                    Pool.get_channel(self.name)
                assert caught.value.pool_name == self.name
            return
        got = [Pool.get_channel(self.name) for _ in range(count)]
        for channel in got:
            assert isinstance(channel, FakeChannel)
            assert channel.get_state() is _READY
            assert channel in connected
            assert channel not in never
        if got:
            # Round-robin in worker index order, from wherever the pool's counter was.
            start = connected.index(got[0])
            assert got == [connected[(start + i) % len(connected)] for i in range(count)]

    # --- rules --------------------------------------------------------------------------

    @precondition(lambda self: len(self.down) < self.pool_size)
    @rule(positions=st.lists(st.integers(0, 4), min_size=1, max_size=5))
    def drop_channels(self, positions: list[int]) -> None:
        """Drop some connected channels; their workers leave and wait at the gate."""
        up = self.up()
        targets = {up[p % len(up)] for p in positions}
        remaining = [i for i in up if i not in targets]

        async def drop_and_check() -> None:
            self.gate.hold()
            workers = Pool.get_all_workers(self.name)
            lost = [channel_of(w) for w in workers if w.index in targets]
            assert len(lost) == len(targets)
            for channel in lost:
                self.fake.drop(channel)
            with anyio.fail_after(BOUND):
                for channel in lost:
                    await channel.wait_for_state_change(_IDLE)  # its worker left and closed it
            assert [w.index for w in Pool.get_all_workers(self.name)] == remaining
            assert Pool.status(self.name).current_size == len(remaining)
            self.hand_out(2 * len(remaining) + 1, never=lost)
            self.dropped.extend(lost)

        self.call(drop_and_check)
        self.down |= targets

    @rule(count=st.integers(1, 3))
    def fail_next_attempts(self, count: int) -> None:
        self.call(self.fake.fail_next, count)
        self.scripted += count

    @rule()
    def recover(self) -> None:
        """Open the gate: the pool is full again within the bound; hand out meanwhile."""

        async def hand_out_until_full() -> None:
            while Pool.status(self.name).current_size < self.pool_size:
                self.hand_out(1, never=self.dropped)
                await checkpoint()

        async def reopen() -> PoolStatus:
            self.gate.release()
            async with anyio.create_task_group() as tg:
                tg.start_soon(hand_out_until_full)
                status = await Pool.wait_connected(self.name, timeout=BOUND)
            return status

        status = self.call(reopen)
        assert status == expected_status(self.name, self.pool_size, range(self.pool_size))
        if self.down:
            # Each returning worker retried until an attempt succeeded: none is left.
            self.consumed = self.scripted
        self.down = set()

    @rule(count=st.integers(0, 12))
    def get_channel_repeatedly(self, count: int) -> None:
        self.call(self.hand_out, count)

    @rule()
    def a_full_cycle_hands_out_each_connected_channel_once(self) -> None:
        def cycle() -> list[grpc.aio.Channel]:
            k = Pool.status(self.name).current_size
            return [Pool.get_channel(self.name) for _ in range(k)]

        got = self.call(cycle)
        assert len(got) == len(self.up())
        workers = self.all_workers()
        by_index = [workers[i].channel for i in self.up()]
        assert sorted(map(id, got)) == sorted(map(id, by_index))
        if len(got) == 3:
            a, b, c = by_index
            assert got in ([a, b, c], [b, c, a], [c, a, b])

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def the_pool_agrees_with_the_model(self) -> None:
        if self.pool_sup is None:
            return

        def check() -> None:
            self.table().check()
            members = Pool.get_all_workers(self.name)
            assert [w.index for w in members] == self.up()
            assert members == [w for w in self.all_workers() if w.state == "watching"]
            expected = expected_status(self.name, self.pool_size, [w.index for w in members])
            assert Pool.status(self.name) == expected
            channels = [channel_of(w) for w in members]
            assert not any(c.closed for c in channels)
            assert len(set(map(id, channels))) == len(channels)
            assert self.fake.connected == sorted(channels, key=lambda c: c.serial)
            assert all(c.closed for c in self.dropped)
            recovered = len(self.dropped) - len(self.down)
            assert len(self.fake.channels) == self.pool_size + recovered
            assert len(self.fake.calls) - len(self.fake.channels) == self.consumed
            self.hand_out(1)

        self.call(check)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=35,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
