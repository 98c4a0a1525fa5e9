"""The supervisor behaves like OTP's: strategies, restart types, intensity, runtime API."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from anyio.abc import TaskStatus

from conngrpc import (
    ChildSpec,
    ChildStartError,
    ChildStateError,
    DuplicateChildError,
    StrayCancellationError,
    Supervisor,
    SupervisorGaveUpError,
    SupervisorNotRunningError,
    UnknownChildError,
)
from conngrpc.supervisor.supervisor import Strategy
from tests._logs import capture_logs
from tests._probe import (
    SUPERVISOR_EVENTS,
    WAIT_LIMIT,
    FakeClock,
    Handle,
    Probe,
    recording,
    until_cancelled,
    wait_for,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


def handles(sup: Supervisor) -> dict[Any, Handle]:
    """The handles of the children the supervisor has seen start (in state running)."""
    infos = sup.which_children()
    return {info.id: info.value for info in infos if info.state == "running"}  # type: ignore[misc]


async def crash_and_wait_for_restart(sup: Supervisor, child_id: Any) -> Handle:
    old = handles(sup)[child_id]
    old.crash()
    await wait_until(lambda: handles(sup).get(child_id) not in (None, old))
    return handles(sup)[child_id]


# --- start and stop order --------------------------------------------------------


async def test_children_start_left_to_right_and_stop_right_to_left() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a"), probe.spec("b"), probe.spec("c")]) as sup:
        assert probe.log == [("start", "a"), ("start", "b"), ("start", "c")]
        assert [info.id for info in sup.which_children()] == ["a", "b", "c"]
    assert probe.events("stop") == ["c", "b", "a"]


async def test_enter_waits_for_each_child_to_be_started() -> None:
    ready_order: list[str] = []

    def slow_child(name: str) -> ChildSpec:
        async def start(*, task_status: TaskStatus[str]) -> None:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            ready_order.append(name)
            task_status.started(name.upper())
            await anyio.sleep_forever()

        return ChildSpec(name, start)

    async with Supervisor([slow_child("x"), slow_child("y")]) as sup:
        assert ready_order == ["x", "y"]
        assert [info.value for info in sup.which_children()] == ["X", "Y"]


async def test_failing_initial_child_fails_enter_and_stops_the_started_ones() -> None:
    probe = Probe()
    probe.fail_next_starts["b"] = 1
    with pytest.raises(ChildStartError, match="'b' failed to start") as caught:
        async with Supervisor([probe.spec("a"), probe.spec("b"), probe.spec("c")]):
            pytest.fail("the body must not run")
    assert isinstance(caught.value.__cause__, ValueError)
    assert probe.log == [("start", "a"), ("start", "b"), ("stop", "a")]


async def test_crash_in_body_stops_children_and_propagates() -> None:
    probe = Probe()
    with pytest.raises(KeyError, match="from the body"):
        async with Supervisor([probe.spec("a"), probe.spec("b")]):
            raise KeyError("from the body")
    assert probe.events("stop") == ["b", "a"]


async def test_cancelling_the_body_shuts_the_children_down() -> None:
    probe = Probe()
    with anyio.CancelScope() as scope:
        async with Supervisor([probe.spec("a"), probe.spec("b")]):
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert probe.events("stop") == ["b", "a"]


async def test_supervisor_accepts_an_object_with_child_spec() -> None:
    probe = Probe()

    class Declared:
        @classmethod
        def child_spec(cls) -> ChildSpec:
            return probe.spec("declared")

    class Instance:
        def child_spec(self) -> ChildSpec:
            return probe.spec("instance")

    async with Supervisor([Declared]) as sup:
        await sup.start_child(Instance())
        assert [info.id for info in sup.which_children()] == ["declared", "instance"]
    assert probe.events("stop") == ["instance", "declared"]


# --- restart types -------------------------------------------------------------------


async def test_permanent_child_is_restarted_after_a_crash() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("p")]) as sup:
        await crash_and_wait_for_restart(sup, "p")
    assert probe.events("start") == ["p", "p"]


async def test_permanent_child_is_restarted_after_a_normal_exit() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("p")], name="perm") as sup:
            old = handles(sup)["p"]
            old.exit()
            await wait_until(lambda: handles(sup).get("p") not in (None, old))
    assert probe.log[:3] == [("start", "p"), ("stop", "p"), ("start", "p")]
    assert events.of("child_terminated")[0] == {
        "supervisor": "perm",
        "child_id": "p",
        "reason": "normal",
        "error": None,
    }
    assert events.of("child_restarted") == [{"supervisor": "perm", "child_id": "p", "error": None}]


async def test_transient_child_is_restarted_after_a_crash() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("t", restart="transient")]) as sup:
            crashed = handles(sup)["t"]
            await crash_and_wait_for_restart(sup, "t")
    assert probe.events("start") == ["t", "t"]
    (restarted,) = events.of("child_restarted")
    assert restarted["error"] is crashed.error


async def test_transient_child_is_not_restarted_after_a_normal_exit() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("t", restart="transient")], name="trans") as sup:
            handles(sup)["t"].exit()
            await wait_until(lambda: events.of("child_terminated") != [])
            assert [(i.id, i.running) for i in sup.which_children()] == [("t", False)]
    assert probe.events("start") == ["t"]
    assert events.of("child_terminated")[0]["reason"] == "normal"


async def test_temporary_child_is_never_restarted_and_is_forgotten() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("tmp", restart="temporary")]) as sup:
            handles(sup)["tmp"].crash()
            await wait_until(lambda: sup.which_children() == [])
    assert probe.events("start") == ["tmp"]
    assert events.of("child_restarted") == []


# --- strategies ------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a"), probe.spec("b"), probe.spec("c")]) as sup:
        before = handles(sup)
        await crash_and_wait_for_restart(sup, "b")
        after = handles(sup)
        assert after["a"] is before["a"]
        assert after["c"] is before["c"]
    assert probe.log[3:5] == [("stop", "b"), ("start", "b")]


@pytest.mark.parametrize(
    ("strategy", "restarted", "log"),
    [
        pytest.param(
            "one_for_all",
            "abcd",
            ["stop b", "stop d", "stop c", "stop a", "start a", "start b", "start c", "start d"],
            id="one_for_all",
        ),
        pytest.param(
            "rest_for_one",
            "bcd",
            ["stop b", "stop d", "stop c", "start b", "start c", "start d"],
            id="rest_for_one",
        ),
    ],
)
async def test_a_strategy_restarts_its_group_stopping_right_to_left_and_starting_left_to_right(
    strategy: Strategy, restarted: str, log: list[str]
) -> None:
    probe = Probe()
    specs = [probe.spec(x) for x in "abcd"]
    async with Supervisor(specs, strategy=strategy) as sup:
        before = handles(sup)
        before["b"].crash()
        await wait_until(
            lambda: all(handles(sup).get(x) not in (None, before[x]) for x in restarted)
        )
        after = handles(sup)
        assert all(after[x] is before[x] for x in "abcd" if x not in restarted)
        assert [f"{what} {child}" for what, child in probe.log[4:]] == log


async def test_one_for_all_forgets_temporary_siblings_it_stops() -> None:
    probe = Probe()
    specs = [probe.spec("a"), probe.spec("tmp", restart="temporary")]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        old = handles(sup)["a"]
        old.crash()
        await wait_until(lambda: handles(sup).get("a") not in (None, old))
        assert [info.id for info in sup.which_children()] == ["a"]


# --- restart intensity ------------------------------------------------------------------


async def test_exceeding_the_intensity_gives_up_and_stops_children_right_to_left() -> None:
    probe = Probe()
    clock = FakeClock()
    specs = [probe.spec("a"), probe.spec("b"), probe.spec("c")]
    with recording(SUPERVISOR_EVENTS) as events, pytest.raises(SupervisorGaveUpError) as caught:
        async with Supervisor(
            specs, max_restarts=2, max_seconds=5, name="fragile", clock=clock
        ) as sup:
            await crash_and_wait_for_restart(sup, "b")
            await crash_and_wait_for_restart(sup, "b")
            last = RuntimeError("third strike")
            handles(sup)["b"].crash(last)
            await until_cancelled()  # the supervisor cancels the body when it gives up
    error = caught.value
    assert error.supervisor == "fragile"
    assert error.child_id == "b"
    assert error.__cause__ is last
    assert "fragile" in str(error)
    assert "'b'" in str(error)
    assert probe.log[-3:] == [("stop", "b"), ("stop", "c"), ("stop", "a")]
    assert events.of("gave_up") == [{"supervisor": "fragile", "child_id": "b", "error": last}]


async def test_restarts_older_than_the_window_do_not_count() -> None:
    probe = Probe()
    clock = FakeClock()
    async with Supervisor([probe.spec("a")], max_restarts=1, max_seconds=5, clock=clock) as sup:
        for _ in range(4):
            await crash_and_wait_for_restart(sup, "a")
            clock.now += 5.001
    assert probe.events("start") == ["a"] * 5


async def test_zero_max_restarts_gives_up_on_the_first_crash() -> None:
    probe = Probe()
    with pytest.raises(SupervisorGaveUpError):
        async with Supervisor([probe.spec("a")], max_restarts=0) as sup:
            handles(sup)["a"].crash()
            await until_cancelled()
    assert probe.events("start") == ["a"]


async def test_a_child_that_fails_to_restart_counts_against_the_intensity() -> None:
    probe = Probe()
    clock = FakeClock()
    with pytest.raises(SupervisorGaveUpError) as caught:
        async with Supervisor([probe.spec("a")], max_restarts=3, clock=clock) as sup:
            probe.fail_next_starts["a"] = 100
            handles(sup)["a"].crash()
            await until_cancelled()
    assert probe.events("start") == ["a"] * 4
    assert isinstance(caught.value.__cause__, ChildStartError)


async def test_a_restart_that_fails_once_is_retried() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("a")], max_restarts=3) as sup:
            probe.fail_next_starts["a"] = 1
            await crash_and_wait_for_restart(sup, "a")
    assert probe.events("start") == ["a", "a", "a"]
    (restarted,) = events.of("child_restarted")
    assert isinstance(restarted["error"], ChildStartError)  # the last failure before it worked
    assert [e[-1] for e in events.names()].count("child_started") == 2  # no start for the failure


# --- one turn at a time ---------------------------------------------------------------------


def states(sup: Supervisor) -> dict[Any, str]:
    return {info.id: info.state for info in sup.which_children()}


async def test_a_crash_during_a_restart_is_handled_once_the_restart_is_done() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("a"), probe.spec("b")], name="busy") as sup:
            first_b = handles(sup)["b"]
            gate = probe.gates["a"] = anyio.Event()
            handles(sup)["a"].crash()
            await wait_until(lambda: states(sup) == {"a": "starting", "b": "running"})
            first_b.crash()
            await wait_until(lambda: probe.live["b"] == 0)  # b's run has ended, mid-restart
            assert states(sup) == {"a": "starting", "b": "running"}  # its exit waits its turn
            gate.set()
            await wait_until(lambda: handles(sup).get("b") not in (None, first_b))
    assert [(event[-1], meta["child_id"]) for event, _, meta in events.events] == [
        ("child_started", "a"),
        ("child_started", "b"),
        ("child_terminated", "a"),
        ("child_started", "a"),
        ("child_restarted", "a"),
        ("child_terminated", "b"),
        ("child_started", "b"),
        ("child_restarted", "b"),
        ("child_terminated", "b"),
        ("child_terminated", "a"),
    ]


async def test_a_child_that_crashed_before_it_was_stopped_is_reported_once_as_a_crash() -> None:
    probe = Probe()
    specs = [probe.spec("b"), probe.spec("a")]
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor(specs, strategy="one_for_all", name="retry") as sup:
            gate = probe.gates["a"] = anyio.Event()
            handles(sup)["a"].crash()
            await wait_until(lambda: states(sup) == {"b": "running", "a": "starting"})
            restarted_b = handles(sup)["b"]
            restarted_b.crash()  # b's run ends while the restart holds the turn
            await wait_until(lambda: probe.live["b"] == 0)
            probe.fail_next_starts["a"] = 1  # a's start fails: the retry stops b first
            gate.set()
            await wait_until(lambda: states(sup) == {"b": "running", "a": "running"})
            assert probe.events("start").count("a") == 3
    ends = events.of("child_terminated")
    b_ends = [(m["reason"], m.get("error")) for m in ends if m["child_id"] == "b"]
    # Stopped by a's restart, then its own crash found by the retry (not a "shutdown"),
    # then the final shutdown: its queued exit is not reported a second time.
    assert b_ends == [("shutdown", None), ("crash", restarted_b.error), ("shutdown", None)]
    assert probe.events("start") == ["b", "a", "b", "a", "b", "a"]
    assert len(events.of("child_restarted")) == 3  # b (then a failed), then b and a


# --- escalation through nested supervisors ------------------------------------------------


async def test_a_nested_supervisor_that_gives_up_is_restarted_by_its_parent() -> None:
    probe = Probe()
    inner = Supervisor.child_spec(id="inner", children=[probe.spec("leaf")], max_restarts=0)
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([inner], name="outer") as outer:
            first_inner = outer.which_children()[0].value
            assert isinstance(first_inner, Supervisor)
            first_leaf = handles(first_inner)["leaf"]
            first_leaf.crash()
            await wait_until(lambda: outer.which_children()[0].value not in (None, first_inner))
            second_inner = outer.which_children()[0].value
            assert isinstance(second_inner, Supervisor)
            assert [(i.id, i.state) for i in second_inner.which_children()] == [("leaf", "running")]
            assert handles(second_inner)["leaf"] is not first_leaf
            assert probe.live["leaf"] == 1
    restarted = events.of("child_restarted")
    assert [(m["supervisor"], m["child_id"]) for m in restarted] == [("outer", "inner")]
    assert isinstance(restarted[0]["error"], SupervisorGaveUpError)
    assert probe.events("start") == ["leaf", "leaf"]


async def test_a_crash_escalates_to_the_top_when_every_level_gives_up() -> None:
    probe = Probe()
    inner = Supervisor.child_spec(id="inner", children=[probe.spec("leaf")], max_restarts=0)
    with pytest.raises(SupervisorGaveUpError) as caught:
        async with Supervisor([inner], name="outer", max_restarts=0) as outer:
            inner_sup = outer.which_children()[0].value
            assert isinstance(inner_sup, Supervisor)
            handles(inner_sup)["leaf"].crash()
            await until_cancelled()
    assert caught.value.supervisor == "outer"
    assert caught.value.child_id == "inner"
    cause = caught.value.__cause__
    assert isinstance(cause, SupervisorGaveUpError)
    assert cause.supervisor == "inner"
    assert isinstance(cause.__cause__, RuntimeError)


# --- runtime API ---------------------------------------------------------------------------


async def test_start_child_returns_the_value_passed_to_started() -> None:
    probe = Probe()
    async with Supervisor() as sup:
        handle = await sup.start_child(probe.spec("late"))
        assert isinstance(handle, Handle)
        assert handle.child_id == "late"
        assert sup.which_children()[0].value is handle


async def test_start_child_with_a_duplicate_id_is_an_error() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a")], name="dup") as sup:
        with pytest.raises(DuplicateChildError, match="'a', which is already running") as running:
            await sup.start_child(probe.spec("a"))
        await sup.terminate_child("a")
        with pytest.raises(DuplicateChildError) as terminated:
            await sup.start_child(probe.spec("a"))
    assert running.value.state == "running"
    assert terminated.value.state == "terminated"
    assert str(terminated.value) == (
        "supervisor 'dup': expected a new child id, got 'a', which is already present "
        "(terminated; delete_child() it first)"
    )
    assert probe.events("start") == ["a"]


async def test_start_child_that_fails_raises_child_start_error_and_supervisor_keeps_running() -> (
    None
):
    probe = Probe()
    probe.fail_next_starts["bad"] = 1
    async with Supervisor([probe.spec("good")]) as sup:
        with pytest.raises(ChildStartError, match="ValueError: 'bad' refuses to start") as caught:
            await sup.start_child(probe.spec("bad"))
        assert isinstance(caught.value.__cause__, ValueError)
        assert [info.id for info in sup.which_children()] == ["good"]
        await crash_and_wait_for_restart(sup, "good")
        assert await sup.start_child(probe.spec("bad")) is not None


async def test_start_child_that_returns_without_started_is_a_start_error() -> None:
    async def quits(*, task_status: TaskStatus[None]) -> None:
        return

    async with Supervisor() as sup:
        with pytest.raises(ChildStartError, match=r"without calling task_status\.started"):
            await sup.start_child(ChildSpec("quitter", quits))
        assert sup.which_children() == []


async def test_terminate_child_stops_it_without_restart_and_keeps_the_spec() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("a"), probe.spec("b")], name="term") as sup:
            await sup.terminate_child("a")
            assert [(i.id, i.running) for i in sup.which_children()] == [
                ("a", False),
                ("b", True),
            ]
            await sup.terminate_child("a")  # terminating a stopped child does nothing
    assert probe.events("start") == ["a", "b"]
    terminated = events.of("child_terminated")
    assert terminated[0] == {"supervisor": "term", "child_id": "a", "reason": "shutdown"}


async def test_terminate_child_forgets_a_temporary_child() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("tmp", restart="temporary")]) as sup:
        await sup.terminate_child("tmp")
        assert sup.which_children() == []


async def test_restart_child_starts_a_terminated_child_again() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a")]) as sup:
        await sup.terminate_child("a")
        handle = await sup.restart_child("a")
        assert isinstance(handle, Handle)
        assert handles(sup)["a"] is handle


async def test_restart_child_of_a_running_child_is_an_error() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a")]) as sup:
        with pytest.raises(ChildStateError, match="'a' is running"):
            await sup.restart_child("a")


async def test_delete_child_forgets_a_terminated_child() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a"), probe.spec("b")]) as sup:
        with pytest.raises(ChildStateError, match="terminate_child"):
            await sup.delete_child("a")
        await sup.terminate_child("a")
        await sup.delete_child("a")
        assert [info.id for info in sup.which_children()] == ["b"]
        await sup.start_child(probe.spec("a"))


@pytest.mark.parametrize("call", ["terminate_child", "restart_child", "delete_child"])
async def test_unknown_child_ids_are_errors(call: str) -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a")], name="known") as sup:
        with pytest.raises(UnknownChildError, match=r"'known' has no child 'nope'.*\['a'\]"):
            await getattr(sup, call)("nope")


async def test_which_children_and_count_children_describe_the_children() -> None:
    probe = Probe()
    inner = Supervisor.child_spec(id="inner", children=[probe.spec("leaf")])
    specs = [probe.spec("w1"), inner, probe.spec("w2", restart="transient")]
    async with Supervisor(specs) as sup:
        await sup.terminate_child("w2")
        infos = sup.which_children()
        assert [(i.id, i.type, i.restart, i.running) for i in infos] == [
            ("w1", "worker", "permanent", True),
            ("inner", "supervisor", "permanent", True),
            ("w2", "worker", "transient", False),
        ]
        counts = sup.count_children()
        assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 2, 1, 2)
        assert "specs=3 active=2" in repr(sup)


async def test_runtime_calls_after_exit_say_the_supervisor_is_not_running() -> None:
    probe = Probe()
    async with Supervisor([probe.spec("a")], name="gone") as sup:
        pass
    with pytest.raises(SupervisorNotRunningError, match="'gone' is not running"):
        await sup.start_child(probe.spec("b"))
    with pytest.raises(SupervisorNotRunningError):
        await sup.delete_child("a")


async def test_a_supervisor_can_be_entered_only_once() -> None:
    sup = Supervisor()
    async with sup:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with sup:
            pass


# --- a lifetime across tasks: start() and aclose() -------------------------------------------


async def _started_in_a_task_that_ends(sup: Supervisor) -> None:
    """``sup.start()`` in a task of its own, which has ended when this returns."""

    async def starter(*, task_status: TaskStatus[None]) -> None:
        await sup.start()
        task_status.started()

    async with anyio.create_task_group() as tasks:
        await tasks.start(starter)


async def _closed_in_another_task(sup: Supervisor) -> list[BaseException]:
    """``sup.aclose()`` in a task of its own; what it raised, if anything."""
    raised: list[BaseException] = []

    async def closer() -> None:
        try:
            await sup.aclose()
        except Exception as error:
            raised.append(error)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(closer)
    return raised


async def test_a_supervisor_started_in_one_task_is_closed_in_another() -> None:
    probe = Probe()
    sup = Supervisor([probe.spec("a"), probe.spec("b")])
    await _started_in_a_task_that_ends(sup)
    # The children outlive the task that started them.
    await crash_and_wait_for_restart(sup, "a")
    assert [info.state for info in sup.which_children()] == ["running", "running"]
    assert await _closed_in_another_task(sup) == []
    assert probe.events("stop") == ["a", "b", "a"]  # the crash, then right to left
    assert "stopped" in repr(sup)


async def test_a_give_up_after_start_is_raised_by_aclose() -> None:
    probe = Probe()
    sup = Supervisor([probe.spec("a"), probe.spec("b")], max_restarts=0, name="alone")
    await _started_in_a_task_that_ends(sup)
    handles(sup)["a"].crash()
    await wait_until(lambda: not any(info.running for info in sup.which_children()))
    raised = await _closed_in_another_task(sup)
    assert [type(error) for error in raised] == [SupervisorGaveUpError]
    assert "'alone' gave up" in str(raised[0])
    assert probe.events("stop") == ["a", "b"]  # the crash, then b as it gave up


async def test_start_returns_the_supervisor_and_a_failed_start_stops_the_started_ones() -> None:
    probe = Probe()
    sup = Supervisor([probe.spec("a")])
    assert await sup.start() is sup
    await sup.aclose()
    probe.fail_next_starts["b"] = 1
    failing = Supervisor([probe.spec("a"), probe.spec("b")])
    with pytest.raises(ChildStartError, match="'b' failed to start"):
        await failing.start()
    assert probe.log[-3:] == [("start", "a"), ("start", "b"), ("stop", "a")]
    await failing.aclose()  # already stopped: nothing more, and no error


async def test_aclose_twice_and_aclose_before_start_do_nothing_more() -> None:
    probe = Probe()
    sup = await Supervisor([probe.spec("a")]).start()
    await sup.aclose()
    await sup.aclose()
    assert probe.events("stop") == ["a"]
    never = Supervisor([probe.spec("b")], name="never")
    await never.aclose()
    with pytest.raises(RuntimeError, match="'never' can be started only once"):
        await never.start()
    assert "b" not in probe.events("start")


async def test_aclose_stops_the_children_even_when_its_caller_is_cancelled() -> None:
    probe = Probe()
    sup = await Supervisor([probe.spec("a"), probe.spec("b")]).start()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await sup.aclose()
    assert probe.events("stop") == ["b", "a"]
    assert not any(info.running for info in sup.which_children())


# --- shutdown --------------------------------------------------------------------------------


def _polite_and_stubborn(
    order: list[str], release: anyio.Event, shutdown: float, *, polite_releases: bool = False
) -> list[ChildSpec]:
    """Polite stops at once; stubborn, once cancelled, waits for ``release`` (which
    polite sets as it stops, with ``polite_releases``). Their steps go to ``order``."""

    async def stubborn(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            order.append("stubborn cancelled")
            with anyio.CancelScope(shield=True):
                await wait_for(release)
            order.append("stubborn finished")

    async def polite(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            order.append("polite stopped")
            if polite_releases:
                release.set()

    return [ChildSpec("polite", polite), ChildSpec("stubborn", stubborn, shutdown=shutdown)]


async def test_a_child_that_overruns_its_shutdown_time_is_reported_and_waited_for() -> None:
    release = anyio.Event()
    order: list[str] = []

    def overran() -> bool:
        return any("did not stop within its shutdown time" in log["event"] for log in logs)

    async def release_once_reported() -> None:
        await wait_until(overran)
        release.set()

    specs = _polite_and_stubborn(order, release, shutdown=0.05)
    with capture_logs() as logs:
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(release_once_reported)
            async with Supervisor(specs):
                pass
    # The next child is stopped only once the overrunning one has really ended.
    assert order == ["stubborn cancelled", "stubborn finished", "polite stopped"]
    assert overran()


def _stops_once_all_are_cancelled(
    child_id: str, cancelled: list[str], everyone: int, all_cancelled: anyio.Event
) -> ChildSpec:
    """A child whose cleanup, once it is cancelled, waits until ``everyone`` is.

    It notes its id in ``cancelled`` as it is cancelled, and again (in upper case) if
    its wait ran out: stopped one by one, all but the last would.
    """

    async def start(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(child_id)
            if len(cancelled) == everyone:
                all_cancelled.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(WAIT_LIMIT):
                await all_cancelled.wait()
            if not all_cancelled.is_set():
                cancelled.append(child_id.upper())

    return ChildSpec(child_id, start)


async def test_all_at_once_cancels_every_child_right_to_left_before_waiting_for_any() -> None:
    cancelled: list[str] = []
    all_cancelled = anyio.Event()
    specs = [_stops_once_all_are_cancelled(i, cancelled, 3, all_cancelled) for i in "abc"]
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor(specs, stop_order="all_at_once"):
            pass
    assert sorted(cancelled) == ["a", "b", "c"]  # none ran out of time waiting
    # Cancelled right to left at once (the order their tasks then run in is the event
    # loop's), and accounted for right to left.
    ended = [(m["child_id"], m["reason"]) for m in events.of("child_terminated")]
    assert ended == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]


async def test_right_to_left_waits_for_each_child_before_cancelling_the_next() -> None:
    log: list[str] = []

    def child(child_id: str) -> ChildSpec:
        async def start(*, task_status: TaskStatus[None]) -> None:
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                log.append(f"{child_id} cancelled")
                with anyio.CancelScope(shield=True):
                    for _ in range(3):  # time for the next child to be cancelled, if it were
                        await anyio.lowlevel.checkpoint()
                log.append(f"{child_id} ended")

        return ChildSpec(child_id, start)

    async with Supervisor([child("a"), child("b")]):
        pass
    assert log == ["b cancelled", "b ended", "a cancelled", "a ended"]


async def test_all_at_once_stops_the_siblings_of_a_one_for_all_restart_together() -> None:
    probe = Probe()
    cancelled: list[str] = []
    all_cancelled = anyio.Event()
    specs = [
        probe.spec("crasher"),
        _stops_once_all_are_cancelled("x", cancelled, 2, all_cancelled),
        _stops_once_all_are_cancelled("y", cancelled, 2, all_cancelled),
    ]
    async with Supervisor(specs, strategy="one_for_all", stop_order="all_at_once") as sup:
        await crash_and_wait_for_restart(sup, "crasher")
        # The crasher restarts first; its siblings follow, left to right.
        await wait_until(lambda: all(info.state == "running" for info in sup.which_children()))
        assert sorted(cancelled) == ["x", "y"]  # neither ran out of time waiting


async def test_all_at_once_gives_each_child_its_own_shutdown_time() -> None:
    release = anyio.Event()
    order: list[str] = []
    # Polite, cancelled while stubborn still runs (at once, not after it), releases it.
    specs = _polite_and_stubborn(order, release, shutdown=0.0, polite_releases=True)
    with capture_logs() as logs:
        async with Supervisor(specs, stop_order="all_at_once"):
            pass
    # Polite was cancelled with stubborn, not after it: it let stubborn finish.
    assert sorted(order[:2]) == ["polite stopped", "stubborn cancelled"]
    assert order[2:] == ["stubborn finished"]
    warned = [log for log in logs if "did not stop within its shutdown time" in log["event"]]
    assert [log["child_id"] for log in warned] == ["stubborn"]


async def test_a_child_cannot_terminate_itself() -> None:
    outcome: list[BaseException] = []

    async def suicidal(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await sup.terminate_child("self")
        except ChildStateError as error:
            outcome.append(error)
        await anyio.sleep_forever()

    async with Supervisor() as sup:
        await sup.start_child(ChildSpec("self", suicidal))
        await wait_until(lambda: outcome != [])
        assert sup.which_children()[0].state == "running"
    assert [type(error) for error in outcome] == [ChildStateError]
    assert "cannot terminate itself" in str(outcome[0])


async def test_leaving_cancels_a_child_that_is_still_starting() -> None:
    outcome: list[BaseException] = []

    async def never_ready(*, task_status: TaskStatus[None]) -> None:
        await anyio.sleep_forever()

    async def starter(sup: Supervisor) -> None:
        try:
            await sup.start_child(ChildSpec("slow", never_ready))
        except ChildStartError as error:
            outcome.append(error)

    with recording(SUPERVISOR_EVENTS) as events:
        async with anyio.create_task_group() as tasks, Supervisor() as sup:
            tasks.start_soon(starter, sup)
            await wait_until(lambda: [i.state for i in sup.which_children()] == ["starting"])
    assert [type(error) for error in outcome] == [ChildStartError]
    assert "stopped while the child was starting" in str(outcome[0])
    assert events.events == []  # it never started, so it neither started nor terminated


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # only asyncio has stray cancellations
async def test_a_stray_cancellation_from_a_child_is_a_crash_not_a_shutdown() -> None:
    raise_it = [True]

    async def like_a_closed_grpc_call(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.lowlevel.checkpoint()
        if raise_it[0]:
            raise_it[0] = False
            raise asyncio.CancelledError()  # what grpc.aio raises from a closed channel's call
        await anyio.sleep_forever()

    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([ChildSpec("grpc-user", like_a_closed_grpc_call)]) as sup:
            await wait_until(lambda: events.of("child_restarted") != [])
            assert sup.which_children()[0].running
    (restarted,) = events.of("child_restarted")
    assert isinstance(restarted["error"], StrayCancellationError)


async def test_a_transient_supervisor_that_gave_up_is_not_restarted_as_in_otp() -> None:
    probe = Probe()
    inner = Supervisor.child_spec(
        id="inner", children=[probe.spec("leaf")], max_restarts=0, restart="transient"
    )
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([inner], name="outer") as outer:
            inner_sup = outer.which_children()[0].value
            assert isinstance(inner_sup, Supervisor)
            handles(inner_sup)["leaf"].crash()
            await wait_until(lambda: not outer.which_children()[0].running)
    assert [m["supervisor"] for m in events.of("gave_up")] == ["inner"]
    assert events.of("child_restarted") == []


def _tasks_alive() -> int:
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def count(task: Any) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_no_task_of_the_tree_is_left_after_exit() -> None:
    probe = Probe()
    baseline = _tasks_alive()
    inner = Supervisor.child_spec(id="inner", children=[probe.spec("x"), probe.spec("y")])
    async with Supervisor([probe.spec("a"), inner]) as sup:
        await crash_and_wait_for_restart(sup, "a")
        assert _tasks_alive() > baseline
    assert _tasks_alive() == baseline
    assert sorted(map(str, probe.events("start"))) == sorted(map(str, probe.events("stop")))


# --- telemetry and logs ------------------------------------------------------------------------


async def test_supervisor_events_name_the_supervisor_and_the_child() -> None:
    probe = Probe()
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([probe.spec("a")], name="tele") as sup:
            crashed = handles(sup)["a"]
            await crash_and_wait_for_restart(sup, "a")
    names = [event[-1] for event in events.names()]
    assert names == [
        "child_started",
        "child_terminated",
        "child_started",
        "child_restarted",
        "child_terminated",
    ]
    assert all(meta["supervisor"] == "tele" for _, _, meta in events.events)
    assert all(meta["child_id"] == "a" for _, _, meta in events.events)
    assert events.of("child_terminated")[0]["reason"] == "crash"
    assert events.of("child_terminated")[0]["error"] is crashed.error
    started_measurements = [m for e, m, _ in events.events if e[-1] == "child_started"]
    assert all(isinstance(m["duration"], int) and m["duration"] >= 0 for m in started_measurements)


async def test_a_crash_is_logged_with_the_supervisor_and_child() -> None:
    probe = Probe()
    with capture_logs() as logs:
        async with Supervisor([probe.spec("a")], name="logged") as sup:
            await crash_and_wait_for_restart(sup, "a")
    crash = [log for log in logs if log["event"] == "child crashed"]
    assert len(crash) == 1
    assert crash[0]["supervisor"] == "logged"
    assert crash[0]["child_id"] == "a"
    assert crash[0]["log_level"] == "error"


# --- bad input --------------------------------------------------------------------------------


async def _noop(*, task_status: TaskStatus[None]) -> None:
    task_status.started()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("restart", "sometimes", "ChildSpec.restart: expected one of permanent, transient"),
        ("type", "manager", "ChildSpec.type: expected one of worker, supervisor"),
        ("shutdown", -1, "ChildSpec.shutdown: expected seconds >= 0"),
        ("shutdown", math.nan, "ChildSpec.shutdown"),
        ("shutdown", 10**20, "ChildSpec.shutdown: expected seconds >= 0 and <= 2.14748e"),
    ],
)
def test_child_spec_rejects_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChildSpec("x", _noop, **{field: value})


@pytest.mark.parametrize("value", ["5", True, None])
def test_child_spec_rejects_a_shutdown_that_is_not_a_number(value: object) -> None:
    with pytest.raises(TypeError, match=r"ChildSpec\.shutdown: expected seconds"):
        ChildSpec("x", _noop, shutdown=value)  # type: ignore[arg-type]


def test_child_spec_may_wait_for_ever_for_a_child_to_stop() -> None:
    assert ChildSpec("x", _noop, shutdown=math.inf).shutdown == math.inf


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"id": ["unhashable"]}, TypeError, "ChildSpec.id: expected a hashable"),
        ({"id": None}, ValueError, "ChildSpec.id"),
        ({"start": "not callable"}, TypeError, "ChildSpec.start: expected an async callable"),
    ],
)
def test_child_spec_rejects_bad_id_and_start(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"id": "x", "start": _noop, **kwargs}
    with pytest.raises(error, match=message):
        ChildSpec(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "one_for_some"}, "Supervisor.strategy: expected one of one_for_one"),
        (
            {"stop_order": "left_to_right"},
            "Supervisor.stop_order: expected one of right_to_left, all_at_once, "
            "got 'left_to_right'",
        ),
        ({"max_restarts": -1}, "Supervisor.max_restarts: expected an int >= 0"),
        ({"max_seconds": 0}, "Supervisor.max_seconds: expected seconds > 0"),
        ({"max_seconds": math.inf}, "Supervisor.max_seconds"),
        ({"max_seconds": 10**20}, "Supervisor.max_seconds"),
        ({"name": ""}, "Supervisor.name: expected a non-empty str"),
    ],
)
def test_supervisor_rejects_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Supervisor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_restarts": 1.5}, "Supervisor.max_restarts: expected an int"),
        ({"max_seconds": "5"}, "Supervisor.max_seconds: expected seconds"),
    ],
)
def test_supervisor_rejects_options_of_the_wrong_type(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Supervisor(**kwargs)


def test_supervisor_rejects_duplicate_ids_in_its_children_and_says_they_repeat() -> None:
    specs = [ChildSpec("twice", _noop), ChildSpec("once", _noop), ChildSpec("twice", _noop)]
    with pytest.raises(DuplicateChildError) as caught:
        Supervisor(specs, name="listed")
    assert str(caught.value) == (
        "supervisor 'listed': expected unique child ids, got 'twice' twice in the children given"
    )
    assert (caught.value.child_id, caught.value.state) == ("twice", "repeated")


def test_an_id_given_three_times_is_counted() -> None:
    with pytest.raises(DuplicateChildError, match="got 'x' 3 times in the children given"):
        Supervisor([ChildSpec("x", _noop)] * 3)


def test_supervisor_rejects_a_child_without_child_spec() -> None:
    with pytest.raises(TypeError, match="expected a ChildSpec or an object with a child_spec"):
        Supervisor([object()])  # type: ignore[list-item]


def test_nested_supervisor_spec_is_checked_where_it_is_written() -> None:
    with pytest.raises(ValueError, match="strategy"):
        Supervisor.child_spec(id="inner", strategy="bogus")  # type: ignore[arg-type]


async def test_each_backend_really_runs_the_test(anyio_backend: str) -> None:
    """Guards the test order: a trio test must never land on the live tests' asyncio loop."""
    assert sniffio.current_async_library() == anyio_backend


def _slow_to_stop(child_id: str, release: anyio.Event, stopping: anyio.Event) -> ChildSpec:
    """A child whose cleanup, once it is cancelled, waits for ``release``."""

    async def start(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            stopping.set()
            with anyio.CancelScope(shield=True):
                await wait_for(release)

    return ChildSpec(child_id, start)


async def test_a_delete_child_during_a_restart_waits_for_the_restart_to_finish() -> None:
    probe = Probe()
    release, stopping, asked = anyio.Event(), anyio.Event(), anyio.Event()
    outcome: list[BaseException] = []

    async def delete_c(sup: Supervisor) -> None:
        asked.set()
        try:
            await sup.delete_child("c")
        except ChildStateError as error:
            outcome.append(error)

    specs = [probe.spec("a"), _slow_to_stop("b", release, stopping), probe.spec("c")]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        before = handles(sup)
        before["a"].crash()
        await wait_for(stopping)  # c was stopped first (right to left); b is stopping now
        states = {i.id: i.state for i in sup.which_children()}
        assert states == {"a": "terminated", "b": "stopping", "c": "terminated"}
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(delete_c, sup)
            await wait_for(asked)  # it waits for its turn, which comes after the restart
            release.set()
        after = handles(sup)
        assert [(i.id, i.state) for i in sup.which_children()] == [
            ("a", "running"),
            ("b", "running"),
            ("c", "running"),
        ]
        assert all(after[x] is not before.get(x) for x in "ac")
    assert [type(error) for error in outcome] == [ChildStateError]
    assert "is running" in str(outcome[0])


async def test_a_start_child_queued_behind_a_give_up_is_refused() -> None:
    probe = Probe()
    release, stopping = anyio.Event(), anyio.Event()
    outcome: list[BaseException] = []

    async def release_it() -> None:
        release.set()

    async def start_late(sup: Supervisor) -> None:
        async with anyio.create_task_group() as helper:
            # Runs once start_child below has passed its first check and waits for the
            # lock, which the manager holds while it gives up.
            helper.start_soon(release_it)
            try:
                await sup.start_child(probe.spec("late"))
            except SupervisorNotRunningError as error:
                outcome.append(error)

    specs = [_slow_to_stop("slow", release, stopping), probe.spec("a")]
    async with anyio.create_task_group() as outside:
        with pytest.raises(SupervisorGaveUpError):
            async with Supervisor(specs, max_restarts=0) as sup:
                handles(sup)["a"].crash()
                await wait_for(stopping)  # giving up: the manager has the turn, stopping all
                outside.start_soon(start_late, sup)
                await until_cancelled()
    assert [type(error) for error in outcome] == [SupervisorNotRunningError]
    assert "late" not in probe.events("start")
