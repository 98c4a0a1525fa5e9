"""A hypothesis state machine drives a live supervisor and checks it against a model.

Random sequences of start, terminate, restart, delete, child crashes and clock moves
(the restart-intensity clock is injected) on each strategy and both anyio backends.
After every step the supervisor must agree with the model: ``which_children`` and
``count_children``, that a child id never runs twice at once, and that it gives up
exactly when more than ``max_restarts`` restarts fall within ``max_seconds``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from conngrpc import (
    ChildStateError,
    DuplicateChildError,
    Supervisor,
    SupervisorGaveUpError,
    SupervisorNotRunningError,
    UnknownChildError,
)
from tests._probe import SUPERVISOR_EVENTS, FakeClock, Handle, Probe, recording, wait_until

IDS = ["a", "b", "c", "d", "e"]
MAX_RESTARTS = 3
MAX_SECONDS = 10.0


@dataclass
class ModelChild:
    id: str
    restart: str
    running: bool


class SupervisorMachine(RuleBasedStateMachine):
    backend: ClassVar[str] = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(self.backend)
        self.portal = self._portal_cm.__enter__()
        self.clock = FakeClock()
        self.probe = Probe()
        self._recording = recording(SUPERVISOR_EVENTS)
        self.events = self._recording.__enter__()
        self.model: list[ModelChild] = []
        self.restart_times: list[float] = []
        self.gave_up = False
        self.sup: Supervisor | None = None

    # --- set-up and tear-down ------------------------------------------------------

    @initialize(strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]))
    def start_supervisor(self, strategy: Any) -> None:
        self.strategy = strategy
        self.sup = Supervisor(
            strategy=strategy,
            max_restarts=MAX_RESTARTS,
            max_seconds=MAX_SECONDS,
            name="machine",
            clock=self.clock,
        )
        self._sup_cm = self.portal.wrap_async_context_manager(self.sup)
        self._sup_cm.__enter__()

    def teardown(self) -> None:
        try:
            if self.sup is not None:
                if self.gave_up:
                    with pytest.raises(SupervisorGaveUpError):
                        self._sup_cm.__exit__(None, None, None)
                else:
                    self._sup_cm.__exit__(None, None, None)
                assert all(count == 0 for count in self.probe.live.values())
        finally:
            self._recording.__exit__(None, None, None)
            self._portal_cm.__exit__(None, None, None)

    # --- helpers ----------------------------------------------------------------------

    def call(self, func: Any, *args: Any) -> Any:
        return self.portal.call(func, *args)

    def find(self, child_id: str) -> ModelChild | None:
        return next((c for c in self.model if c.id == child_id), None)

    def handles(self) -> dict[Hashable, Handle]:
        assert self.sup is not None
        infos = self.call(self.sup.which_children)
        return {info.id: info.value for info in infos if info.running}

    def model_restart(self, crashed: ModelChild, error: bool) -> set[str]:
        """Apply OTP's policy to the model; return the ids that get a new run."""
        crashed.running = False
        if crashed.restart == "temporary":
            self.model.remove(crashed)
            return set()
        if crashed.restart == "transient" and not error:
            return set()
        now = self.clock.now
        self.restart_times = [t for t in self.restart_times if now - t <= MAX_SECONDS]
        self.restart_times.append(now)
        index = self.model.index(crashed)
        if self.strategy == "one_for_one":
            siblings: list[ModelChild] = []
        elif self.strategy == "one_for_all":
            siblings = [c for c in self.model if c is not crashed and c.running]
        else:
            siblings = [c for c in self.model[index + 1 :] if c.running]
        if len(self.restart_times) > MAX_RESTARTS:
            self.gave_up = True
            for child in self.model:
                child.running = False
            return set()
        for sibling in siblings:
            if sibling.restart == "temporary":
                self.model.remove(sibling)
        restarted = {crashed.id, *(s.id for s in siblings if s.restart != "temporary")}
        for child in self.model:
            if child.id in restarted:
                child.running = True
        return restarted

    # --- rules --------------------------------------------------------------------------

    @precondition(lambda self: not self.gave_up)
    @rule(
        child_id=st.sampled_from(IDS),
        restart=st.sampled_from(["permanent", "transient", "temporary"]),
    )
    def start_child(self, child_id: str, restart: str) -> None:
        assert self.sup is not None
        spec = self.probe.spec(child_id, restart=restart)
        if self.find(child_id) is not None:
            with pytest.raises(DuplicateChildError):
                self.call(self.sup.start_child, spec)
            return
        handle = self.call(self.sup.start_child, spec)
        assert isinstance(handle, Handle)
        self.model.append(ModelChild(child_id, restart, running=True))

    @precondition(lambda self: not self.gave_up)
    @rule(child_id=st.sampled_from(IDS))
    def terminate_child(self, child_id: str) -> None:
        assert self.sup is not None
        child = self.find(child_id)
        if child is None:
            with pytest.raises(UnknownChildError):
                self.call(self.sup.terminate_child, child_id)
            return
        self.call(self.sup.terminate_child, child_id)
        child.running = False
        if child.restart == "temporary":
            self.model.remove(child)

    @precondition(lambda self: not self.gave_up)
    @rule(child_id=st.sampled_from(IDS))
    def restart_child(self, child_id: str) -> None:
        assert self.sup is not None
        child = self.find(child_id)
        if child is None:
            with pytest.raises(UnknownChildError):
                self.call(self.sup.restart_child, child_id)
        elif child.running:
            with pytest.raises(ChildStateError):
                self.call(self.sup.restart_child, child_id)
        else:
            assert isinstance(self.call(self.sup.restart_child, child_id), Handle)
            child.running = True

    @precondition(lambda self: not self.gave_up)
    @rule(child_id=st.sampled_from(IDS))
    def delete_child(self, child_id: str) -> None:
        assert self.sup is not None
        child = self.find(child_id)
        if child is None:
            with pytest.raises(UnknownChildError):
                self.call(self.sup.delete_child, child_id)
        elif child.running:
            with pytest.raises(ChildStateError):
                self.call(self.sup.delete_child, child_id)
        else:
            self.call(self.sup.delete_child, child_id)
            self.model.remove(child)

    @precondition(lambda self: not self.gave_up and any(c.running for c in self.model))
    @rule(data=st.data(), error=st.booleans())
    def child_exits(self, data: st.DataObject, error: bool) -> None:
        assert self.sup is not None
        crashed = data.draw(st.sampled_from([c for c in self.model if c.running]))
        before = self.handles()
        handle = before[crashed.id]
        restarted = self.model_restart(crashed, error)
        expected = {c.id: c.running for c in self.model}
        sup = self.sup

        def settled() -> bool:
            if self.gave_up:
                return bool(self.events.of("gave_up")) and not any(
                    i.running for i in sup.which_children()
                )
            infos = sup.which_children()
            if {i.id: i.running for i in infos} != expected:
                return False
            now = {i.id: i.value for i in infos}
            return all(now[cid] is not before[cid] for cid in restarted)

        self.call(handle.crash if error else handle.exit)
        self.call(wait_until, settled)

    @rule(seconds=st.floats(min_value=0, max_value=6))
    def clock_moves(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.gave_up)
    @rule()
    def a_supervisor_that_gave_up_refuses_calls(self) -> None:
        assert self.sup is not None
        with pytest.raises(SupervisorNotRunningError):
            self.call(self.sup.start_child, self.probe.spec("late"))

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def children_agree_with_the_model(self) -> None:
        if self.sup is None:
            return
        infos = self.call(self.sup.which_children)
        if self.gave_up:
            assert not any(info.running for info in infos)
            return
        assert [(i.id, i.restart, i.running) for i in infos] == [
            (c.id, c.restart, c.running) for c in self.model
        ]
        counts = self.call(self.sup.count_children)
        assert counts.specs == len(self.model)
        assert counts.active == sum(c.running for c in self.model)
        assert counts.workers == len(self.model)
        assert counts.supervisors == 0

    @invariant()
    def a_child_id_never_runs_twice_at_once(self) -> None:
        assert self.probe.most_live_at_once <= 1

    @invariant()
    def gave_up_exactly_when_the_intensity_was_exceeded(self) -> None:
        assert bool(self.events.of("gave_up")) == self.gave_up


_settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class AsyncioSupervisorMachine(SupervisorMachine):
    backend = "asyncio"


class TrioSupervisorMachine(SupervisorMachine):
    backend = "trio"


TestSupervisorOnAsyncio = AsyncioSupervisorMachine.TestCase
TestSupervisorOnAsyncio.settings = _settings
TestSupervisorOnTrio = TrioSupervisorMachine.TestCase
TestSupervisorOnTrio.settings = _settings
