"""A hypothesis state machine drives a pool over a changing fleet (fake backends).

Backends appear and vanish (the resolver's answer), fail and recover (refusing every
attempt, their connections dropped), and turn NOT_SERVING and back, in any order.

- At every step, whatever is in flight: nothing is handed out that is not connected
  (READY, not closed), or that its health service says is not SERVING.
- Once the fleet holds still: every channel is connected to a backend that the
  resolver lists and that accepts, and the counts per such backend differ by at most
  one (even spread). When no listed backend accepts, channels stay where they are
  connected (on a backend no longer listed) rather than leave the pool empty.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conngrpc import ExponentialBackoff, Pool, Supervisor
from conngrpc.pool.runtime import pools
from conngrpc.testing import FakeChannel, FakeConnector
from tests._probe import wait_until

ADDRESSES = [f"backend-{i}:1" for i in range(4)]
BOUND = 10.0  # seconds for the fleet to settle; it takes milliseconds
REACT = 1.0  # seconds for a worker to react to a drop or a flip; it takes one loop turn
_names = itertools.count(1)


class PlacementMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.fake = FakeConnector()
        self.name = f"placement-machine-{next(_names)}"
        self._sup_cm: Any = None
        # The model.
        self.listed: list[str] = []
        self.down: set[str] = set()
        self.sick: set[str] = set()
        self.pool_size = 0

    @initialize(
        pool_size=st.integers(1, 7),
        listed=st.lists(st.sampled_from(ADDRESSES), min_size=1, unique=True),
    )
    def start_pool(self, pool_size: int, listed: list[str]) -> None:
        self.pool_size = pool_size
        self.listed = listed
        spec = Pool.child_spec(
            name=self.name,
            pool_size=pool_size,
            channel={
                "address": "fleet:1",
                "connector": self.fake,
                "backoff": ExponentialBackoff(min=0.002, max=0.01),
                "connect_timeout": 1.0,
                "health_check": "",
            },
            resolver=lambda: list(self.listed),
            resolve_interval=0.005,
        )
        self._sup_cm = self.portal.wrap_async_context_manager(Supervisor([spec]))
        self._sup_cm.__enter__()
        self.settle()

    def teardown(self) -> None:
        try:
            if self._sup_cm is not None:
                self._sup_cm.__exit__(None, None, None)
                assert [c for c in self.fake.channels if not c.closed] == []
        finally:
            self._portal_cm.__exit__(None, None, None)

    # --- the fleet changes ---------------------------------------------------------------

    @rule(address=st.sampled_from(ADDRESSES))
    def list_backend(self, address: str) -> None:
        if address not in self.listed:
            self.listed.append(address)
        self.settle()

    @rule(address=st.sampled_from(ADDRESSES))
    def unlist_backend(self, address: str) -> None:
        if address in self.listed and len(self.listed) > 1:
            self.listed.remove(address)
        self.settle()

    @rule(address=st.sampled_from(ADDRESSES), settle=st.booleans())
    def fail_backend(self, address: str, settle: bool) -> None:
        self.down.add(address)
        self.call(self.fake.down, address)
        if settle:
            self.settle()

    @rule(address=st.sampled_from(ADDRESSES), settle=st.booleans())
    def recover_backend(self, address: str, settle: bool) -> None:
        self.down.discard(address)
        self.call(functools.partial(self.fake.down, address, down=False))
        if settle:
            self.settle()

    @rule(address=st.sampled_from(ADDRESSES), serving=st.booleans())
    def flip_health(self, address: str, serving: bool) -> None:
        (self.sick.discard if serving else self.sick.add)(address)
        status = "SERVING" if serving else "NOT_SERVING"
        self.call(self.fake.set_health, address, status)

    # --- what must hold ----------------------------------------------------------------------

    @invariant()
    def the_table_agrees_with_itself(self) -> None:
        """Whatever is in flight, after every step: the table's own invariants."""
        if self._sup_cm is None:
            return

        def check() -> None:
            runtime = pools.get(self.name)
            assert runtime is not None
            runtime.table.check()

        self.call(check)

    @invariant()
    def nothing_handed_out_is_down_or_not_serving(self) -> None:
        """A drop or a health flip reaches the worker as an event: it must take the channel
        out of the hand-out as soon as the loop runs (bounded here by REACT)."""
        if self._sup_cm is None:
            return

        def all_usable() -> bool:
            runtime = pools.get(self.name)
            assert runtime is not None
            return all(
                isinstance(c, FakeChannel)
                and not c.closed
                and c.get_state().name == "READY"
                and c.health == "SERVING"
                for c in runtime.handout.channels
            )

        self.call(functools.partial(wait_until, all_usable, timeout=REACT))

    def settle(self) -> None:
        """Wait until the spread is even over the backends that are listed, accept and
        serve. A channel never moves to a backend that is not serving (a replacement
        must say SERVING), and one connected to a backend that turned NOT_SERVING stays
        there (out of the hand-out) until it serves again or a move takes it away."""
        accepting = [a for a in self.listed if a not in self.down]
        healthy = [a for a in accepting if a not in self.sick]

        def even() -> bool:
            runtime = pools.get(self.name)
            assert runtime is not None
            runtime.table.check()
            workers = [runtime.table.snapshot(i) for i in range(self.pool_size)]
            held = Counter(w.backend for w in workers if w.state in ("watching", "not_serving"))
            if set(held) & self.down:
                return False  # a backend that died holds no connection
            if not accepting:
                # Nowhere to move: a channel on a backend the resolver dropped but that
                # still serves stays (the pool never shrinks below what is connected).
                return True
            if sum(held.values()) != self.pool_size:
                return False
            if not healthy:
                return True
            if set(held) - set(accepting):
                return False
            counts = [held.get(a, 0) for a in healthy]
            return max(counts) - min(counts) <= 1

        self.call(functools.partial(wait_until, even, timeout=BOUND))
        handed = Pool.status(self.name).backends
        for address in accepting:
            if address in self.sick:
                assert handed.get(address, 0) == 0

    def call(self, func: Any, *args: Any) -> Any:
        return self.portal.call(func, *args)


TestPlacementMachine = PlacementMachine.TestCase
TestPlacementMachine.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
