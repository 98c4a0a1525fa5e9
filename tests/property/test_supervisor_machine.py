"""A hypothesis state machine drives a live supervisor and checks it against a model.

Random sequences of start, terminate, restart and delete (some of whose starts fail),
child exits (some of whose restarts fail), a crash that lands while a restart is in
progress, crashes inside a nested supervisor (which escalate when it gives up), and
clock moves (the restart-intensity clock is injected), on each strategy, each stop
order and both anyio backends. After every step the supervisor must agree with the model:
``which_children`` and ``count_children``, the telemetry it emitted (every start paired
with one end), that a child id never runs twice at once, and that each supervisor gives
up exactly when more than ``max_restarts`` restarts fall within ``max_seconds``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from conngrpc import (
    ChildStartError,
    ChildStateError,
    DuplicateChildError,
    Supervisor,
    SupervisorGaveUpError,
    SupervisorNotRunningError,
    UnknownChildError,
)
from tests._probe import (
    SUPERVISOR_EVENTS,
    WAIT_LIMIT,
    FakeClock,
    Handle,
    Probe,
    recording,
    wait_until,
)

OUTER = "machine"  # the supervisor under test
NEST = "nest"  # the id of its nested supervisor child, which is also that one's name
IDS = ["a", "b", "c", "d", NEST]
INNER_IDS = ["x", "y"]  # the nested supervisor's children: permanent, one_for_one
MAX_RESTARTS = 3
INNER_MAX_RESTARTS = 1
MAX_SECONDS = 10.0
RESTARTS = ["permanent", "transient", "temporary"]


@dataclass
class ModelChild:
    id: str
    restart: str
    running: bool

    @property
    def type(self) -> str:
        return "supervisor" if self.id == NEST else "worker"


def state(running: bool) -> str:
    return "running" if running else "terminated"


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
        self.inner_restart_times: list[float] = []
        self.inner_running = False  # the nested supervisor's children run
        #: How many of each event each supervisor must have emitted by now.
        self.expected: Counter[tuple[str, str]] = Counter()
        self.sup: Supervisor | None = None
        self.hosted: Future[None] | None = None

    # --- set-up and tear-down ------------------------------------------------------

    @initialize(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        stop_order=st.sampled_from(["right_to_left", "all_at_once"]),
        children=st.lists(
            st.tuples(st.sampled_from(IDS), st.sampled_from(RESTARTS)),
            unique_by=lambda child: child[0],
            max_size=len(IDS),
        ),
    )
    def start_supervisor(
        self, strategy: Any, stop_order: Any, children: list[tuple[str, str]]
    ) -> None:
        """A supervisor that starts with a static list of children."""
        self.strategy = strategy
        self.sup = Supervisor(
            [self.spec_for(child_id, restart) for child_id, restart in children],
            strategy=strategy,
            stop_order=stop_order,
            max_restarts=MAX_RESTARTS,
            max_seconds=MAX_SECONDS,
            name=OUTER,
            clock=self.clock,
        )
        self.leave = self.call(anyio.Event)
        self.hosted, _ = self.portal.start_task(self._host, self.sup, self.leave)
        for child_id, restart in children:
            child = ModelChild(child_id, restart, running=False)
            self.model.append(child)
            self.started(child)

    @staticmethod
    async def _host(sup: Supervisor, leave: anyio.Event, *, task_status: TaskStatus[None]) -> None:
        async with sup:
            task_status.started()
            await leave.wait()

    def teardown(self) -> None:
        try:
            if self.hosted is not None:
                self.call(self.leave.set)
                # A bounded wait: a supervisor that cannot stop fails the test.
                failure = self.hosted.exception(timeout=WAIT_LIMIT)
                if self.gave_up:
                    assert isinstance(failure, SupervisorGaveUpError)
                else:
                    assert failure is None
                assert all(count == 0 for count in self.probe.live.values())
        finally:
            self._recording.__exit__(None, None, None)
            self._portal_cm.__exit__(None, None, None)

    # --- helpers ----------------------------------------------------------------------

    def call(self, func: Any, *args: Any) -> Any:
        return self.portal.call(func, *args)

    def find(self, child_id: str) -> ModelChild | None:
        return next((c for c in self.model if c.id == child_id), None)

    def values(self, sup: Supervisor | None = None) -> dict[Hashable, Any]:
        infos = self.call((sup or self.sup).which_children)  # type: ignore[union-attr]
        return {info.id: info.value for info in infos if info.state == "running"}

    def states(self) -> dict[Hashable, str]:
        assert self.sup is not None
        return {info.id: info.state for info in self.sup.which_children()}

    def recorded(self) -> Counter[tuple[str, str]]:
        return Counter((meta["supervisor"], event[-1]) for event, _, meta in self.events.events)

    def wait(self, predicate: Any) -> None:
        """Wait until ``predicate`` holds; fail at once if the supervisor ended unforeseen."""

        def done() -> bool:
            assert self.hosted is not None
            if self.hosted.done() and not self.gave_up:
                raise AssertionError(f"the supervisor ended: {self.hosted.exception()!r}")
            return bool(predicate())

        self.call(wait_until, done)

    def settle(self) -> None:
        """Wait until every event the model expects has been emitted.

        The model counts a step's events before the step acts, so an event beyond
        them fails at once; missing ones fail once the wait runs out.
        """

        def settled() -> bool:
            recorded = self.recorded()
            assert not recorded - self.expected, f"unexpected events: {self.diff(recorded)}"
            return recorded == self.expected

        try:
            self.wait(settled)
        except TimeoutError:
            raise AssertionError(f"missing events: {self.diff(self.call(self.recorded))}") from None

    def diff(self, recorded: Counter[tuple[str, str]]) -> str:
        return f"expected {dict(self.expected)}, recorded {dict(recorded)}"

    # --- the model: OTP's policy, counted in events ------------------------------------

    def started(self, child: ModelChild) -> None:
        child.running = True
        self.expected[OUTER, "child_started"] += 1
        if child.id == NEST:  # a fresh nested supervisor starts its children
            self.inner_restart_times = []
            self.inner_running = True
            self.expected[NEST, "child_started"] += len(INNER_IDS)

    def ended(self, child: ModelChild) -> None:
        child.running = False
        self.expected[OUTER, "child_terminated"] += 1
        if child.id == NEST and self.inner_running:  # stopping it stops its children
            self.inner_running = False
            self.expected[NEST, "child_terminated"] += len(INNER_IDS)

    def add_restart(self, times: list[float], max_restarts: int) -> bool:
        """Record a restart now in ``times``; False past the intensity (as RestartIntensity)."""
        now = self.clock.now
        times[:] = [t for t in times if now - t <= MAX_SECONDS] + [now]
        return len(times) <= max_restarts

    def would_give_up(self) -> bool:
        return not self.add_restart(list(self.restart_times), MAX_RESTARTS)

    def exits(self, crashed: ModelChild, abnormal: bool, failures: int = 0) -> list[ModelChild]:
        """A run of ``crashed`` ended by itself; return the group that was restarted.

        ``failures``: how many of ``crashed``'s next starts fail before ``started``.
        """
        self.ended(crashed)
        if crashed.restart == "temporary":
            self.model.remove(crashed)
            return []
        if crashed.restart == "transient" and not abnormal:
            return []
        if self.strategy == "one_for_one":
            siblings: list[ModelChild] = []
        elif self.strategy == "one_for_all":
            siblings = [c for c in self.model if c.running]
        else:
            siblings = [c for c in self.model[self.model.index(crashed) + 1 :] if c.running]
        for sibling in reversed(siblings):
            self.ended(sibling)
            if sibling.restart == "temporary":
                self.model.remove(sibling)
        group = [c for c in self.model if c is crashed or c in siblings]
        while self.add_restart(self.restart_times, MAX_RESTARTS):
            for child in group:
                if child is crashed and failures:
                    failures -= 1
                    break
                self.started(child)
                self.expected[OUTER, "child_restarted"] += 1
            else:
                return group
            for child in reversed(group):  # a start failed: stop the group, try again
                if child.running:
                    self.ended(child)
        event("the supervisor gave up")
        self.gave_up = True
        for child in reversed(self.model):
            if child.running:
                self.ended(child)
        self.expected[OUTER, "gave_up"] += 1
        return []

    # --- rules: the runtime API ------------------------------------------------------------

    def spec_for(self, child_id: str, restart: str) -> Any:
        if child_id != NEST:
            return self.probe.spec(child_id, restart=restart)
        return Supervisor.child_spec(
            id=NEST,
            children=[self.probe.spec(inner) for inner in INNER_IDS],
            restart=restart,  # type: ignore[arg-type]
            max_restarts=INNER_MAX_RESTARTS,
            max_seconds=MAX_SECONDS,
            clock=self.clock,
        )

    @precondition(lambda self: not self.gave_up)
    @rule(
        child_id=st.sampled_from(IDS),
        restart=st.sampled_from(RESTARTS),
    )
    def start_child(self, child_id: str, restart: str) -> None:
        assert self.sup is not None
        spec = self.spec_for(child_id, restart)
        held = self.find(child_id)
        if held is not None:
            with pytest.raises(DuplicateChildError) as caught:
                self.call(self.sup.start_child, spec)
            assert caught.value.state == state(held.running)
            return
        value = self.call(self.sup.start_child, spec)
        assert isinstance(value, Supervisor if child_id == NEST else Handle)
        child = ModelChild(child_id, restart, running=False)
        self.model.append(child)
        self.started(child)

    @precondition(lambda self: not self.gave_up and any(self.find(i) is None for i in IDS[:-1]))
    @rule(data=st.data())
    def start_child_that_fails_to_start(self, data: st.DataObject) -> None:
        assert self.sup is not None
        child_id = data.draw(st.sampled_from([i for i in IDS[:-1] if self.find(i) is None]))
        self.probe.fail_next_starts[child_id] = 1
        with pytest.raises(ChildStartError, match="refuses to start"):
            self.call(self.sup.start_child, self.probe.spec(child_id))
        event("start_child failed before started")

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
        if child.running:
            self.ended(child)
        if child.restart == "temporary":
            self.model.remove(child)

    @precondition(lambda self: not self.gave_up)
    @rule(child_id=st.sampled_from(IDS), fails=st.booleans())
    def restart_child(self, child_id: str, fails: bool) -> None:
        assert self.sup is not None
        child = self.find(child_id)
        if child is None:
            with pytest.raises(UnknownChildError):
                self.call(self.sup.restart_child, child_id)
        elif child.running:
            with pytest.raises(ChildStateError):
                self.call(self.sup.restart_child, child_id)
        elif fails and child_id != NEST:
            self.probe.fail_next_starts[child_id] = 1
            with pytest.raises(ChildStartError, match="refuses to start"):
                self.call(self.sup.restart_child, child_id)
            event("restart_child failed before started")
        else:
            self.call(self.sup.restart_child, child_id)
            self.started(child)

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

    # --- rules: children that end by themselves --------------------------------------------

    def running_workers(self) -> list[ModelChild]:
        return [c for c in self.model if c.running and c.id != NEST]

    @precondition(lambda self: not self.gave_up and self.running_workers())
    @rule(data=st.data(), error=st.booleans(), failures=st.integers(min_value=0, max_value=4))
    def child_exits(self, data: st.DataObject, error: bool, failures: int) -> None:
        """A child crashes or returns; ``failures`` of its restarts fail before ``started``."""
        crashed = data.draw(st.sampled_from(self.running_workers()))
        handle = self.values()[crashed.id]
        if crashed.restart == "permanent" or (crashed.restart == "transient" and error):
            self.probe.fail_next_starts[crashed.id] = failures
        else:
            failures = 0  # it is not restarted: nothing would use them up
        if failures:
            event("a restart failed before started")
        self.exits(crashed, abnormal=error, failures=failures)
        self.call(handle.crash if error else handle.exit)
        self.settle()

    def crash_pairs(self) -> list[tuple[ModelChild, ModelChild]]:
        """(first, second): a restart of ``first`` held at its start leaves ``second`` running.

        Under one_for_one, any other child; under rest_for_one, a child left of ``first``
        (not in its group); under one_for_all, a child left of ``first`` that the restart
        started again before it (not a temporary one: those are dropped).
        """
        if self.gave_up or self.would_give_up():
            return []

        def still_running(second: ModelChild, first: ModelChild) -> bool:
            if self.strategy == "one_for_one":
                return True
            left = self.model.index(second) < self.model.index(first)
            if self.strategy == "rest_for_one":
                return left
            return left and second.restart != "temporary"

        workers = self.running_workers()
        return [
            (first, second)
            for first in workers
            if first.restart != "temporary"
            for second in workers
            if second is not first and still_running(second, first)
        ]

    @precondition(lambda self: self.crash_pairs())
    @rule(data=st.data(), error=st.booleans())
    def a_crash_lands_during_a_restart(self, data: st.DataObject, error: bool) -> None:
        """``first`` crashes and its restart is held at its start; meanwhile ``second`` ends."""
        first, second = data.draw(st.sampled_from(self.crash_pairs()))
        handles = self.values()
        gate = self.call(anyio.Event)
        self.probe.gates[first.id] = gate
        group = self.exits(first, abnormal=True)
        not_started_yet = group[group.index(first) + 1 :]
        paused = {c.id: state(c.running and c not in not_started_yet) for c in self.model}
        paused[first.id] = "starting"
        self.call(handles[first.id].crash)
        self.wait(lambda: self.states() == paused)  # the restart holds its turn
        second_handle = self.values()[second.id]  # a new run if the restart started it
        self.call(second_handle.crash if error else second_handle.exit)
        self.wait(lambda: self.probe.live[second.id] == 0)
        assert self.call(self.states) == paused  # its end waits for the restart's turn
        self.exits(second, abnormal=error)
        event("a child ended while a restart held its turn")
        self.call(gate.set)
        self.settle()

    @precondition(lambda self: not self.gave_up and self.inner_running)
    @rule(inner_id=st.sampled_from(INNER_IDS), error=st.booleans())
    def nested_child_exits(self, inner_id: str, error: bool) -> None:
        """A child of the nested supervisor ends; past its intensity, that one gives up."""
        nested = self.values()[NEST]
        handle = self.values(nested)[inner_id]
        self.expected[NEST, "child_terminated"] += 1
        if self.add_restart(self.inner_restart_times, INNER_MAX_RESTARTS):
            self.expected[NEST, "child_started"] += 1
            self.expected[NEST, "child_restarted"] += 1
        else:  # it stops its other child and gives up: a crash of NEST, for us
            event("a nested supervisor gave up: escalation")
            self.inner_running = False
            self.expected[NEST, "child_terminated"] += len(INNER_IDS) - 1
            self.expected[NEST, "gave_up"] += 1
            nest = self.find(NEST)
            assert nest is not None
            self.exits(nest, abnormal=False)  # as in OTP: a give-up is no abnormal exit
        self.call(handle.crash if error else handle.exit)
        self.settle()

    @rule(seconds=st.floats(min_value=0, max_value=6))
    def clock_moves(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.gave_up)
    @rule(child_id=st.sampled_from(IDS))
    def a_supervisor_that_gave_up_refuses_calls(self, child_id: str) -> None:
        assert self.sup is not None
        with pytest.raises(SupervisorNotRunningError):
            self.call(self.sup.start_child, self.probe.spec("late"))
        with pytest.raises(SupervisorNotRunningError):
            self.call(self.sup.delete_child, child_id)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def children_agree_with_the_model(self) -> None:
        if self.sup is None:
            return
        infos = self.call(self.sup.which_children)
        if self.gave_up:
            assert not any(info.running for info in infos)
            return
        assert [(i.id, i.restart, i.type, i.state) for i in infos] == [
            (c.id, c.restart, c.type, state(c.running)) for c in self.model
        ]
        counts = self.call(self.sup.count_children)
        assert counts.specs == len(self.model)
        assert counts.active == sum(c.running for c in self.model)
        assert counts.supervisors == sum(c.type == "supervisor" for c in self.model)
        assert counts.workers == counts.specs - counts.supervisors
        if self.inner_running:
            nested = self.values()[NEST]
            inner = self.call(nested.which_children)
            assert [(i.id, i.state) for i in inner] == [(x, "running") for x in INNER_IDS]

    @invariant()
    def a_child_id_never_runs_twice_at_once(self) -> None:
        assert self.probe.most_live_at_once <= 1

    @invariant()
    def gave_up_exactly_when_the_intensity_was_exceeded(self) -> None:
        recorded = self.call(self.recorded)
        assert recorded[OUTER, "gave_up"] == int(self.gave_up)
        assert recorded[NEST, "gave_up"] == self.expected[NEST, "gave_up"]

    @invariant()
    def every_start_is_paired_with_one_end(self) -> None:
        balance: Counter[tuple[str, Hashable]] = Counter()
        for name, _, meta in self.call(lambda: list(self.events.events)):
            if name[-1] in ("child_started", "child_terminated"):
                step = 1 if name[-1] == "child_started" else -1
                balance[meta["supervisor"], meta["child_id"]] += step
        running = {(OUTER, c.id) for c in self.model if c.running}
        if self.inner_running:
            running |= {(NEST, x) for x in INNER_IDS}
        assert +balance == Counter(dict.fromkeys(running, 1))
        assert -balance == Counter()  # no end without its start
        assert self.call(self.recorded) == self.expected


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
