"""The Pool and its channel workers, driven by the fake connector (no network).

Each test is one behaviour of the spec: round-robin hand-out, skipping disconnected
channels, callbacks, backoff, supervision of crashing workers, the declarative class.
Behaviour against real servers is in test_pool_servers.py.
"""

from __future__ import annotations

import cProfile
import dataclasses
import pstats
from typing import Any

import anyio
import pytest

import conngrpc
from conngrpc import (
    ChannelConfig,
    ChildStartError,
    ExponentialBackoff,
    NameTakenError,
    NotConnectedError,
    Pool,
    PooledChannel,
    PoolNotStartedError,
    Supervisor,
    SupervisorGaveUpError,
)
from conngrpc.channel import worker as worker_module
from conngrpc.pool.runtime import pools
from conngrpc.testing import FakeChannel, FakeConnector
from tests._logs import capture_logs
from tests._pools import FAKE_BACKOFF, fake_channel, running_pool
from tests._probe import SUPERVISOR_EVENTS, EventLog, recording, until_cancelled, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def connector() -> FakeConnector:
    return FakeConnector()


def serials(name: str, calls: int) -> list[int]:
    channels = [Pool.get_channel(name) for _ in range(calls)]
    assert all(isinstance(c, FakeChannel) for c in channels)
    return [c.serial for c in channels]  # type: ignore[attr-defined]


def by_index(name: str) -> list[FakeChannel]:
    return [w.channel for w in Pool.get_all_workers(name)]  # type: ignore[misc]


async def lose(name: str, channel: FakeChannel) -> None:
    """Drop a channel's connection; its worker leaves the pool on its next turn."""
    channel.drop()
    await wait_until(lambda: channel not in by_index(name))


# --- hand-out --------------------------------------------------------------------------


async def test_get_channel_hands_out_connected_channels_round_robin(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        first, second, third = by_index(pool_name)
        handed = [Pool.get_channel(pool_name) for _ in range(7)]
        assert handed == [first, second, third, first, second, third, first]


async def test_a_disconnected_channel_is_skipped_at_once(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        first, second, third = by_index(pool_name)
        connector.hang_next(1)  # its worker's reconnect attempt will not finish
        await lose(pool_name, second)
        handed = [Pool.get_channel(pool_name) for _ in range(6)]
        assert second not in handed
        assert set(handed) == {first, third}
        assert Pool.status(pool_name).current_size == 2


async def test_a_reconnected_channel_comes_back(pool_name: str, connector: FakeConnector) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        _, dropped, _ = by_index(pool_name)
        await lose(pool_name, dropped)
        await Pool.wait_connected(pool_name, timeout=5)
        first, fresh, third = by_index(pool_name)
        assert fresh is not dropped
        assert dropped.closed
        handed = [Pool.get_channel(pool_name) for _ in range(3)]
        assert handed == [first, fresh, third]


async def test_get_channel_raises_not_connected_when_no_channel_is(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000)
    async with running_pool(pool_name, 2, fake_channel(connector), wait=False):
        await connector.wait_for_calls(2)
        with pytest.raises(NotConnectedError) as caught:
            Pool.get_channel(pool_name)
    assert caught.value.pool_name == pool_name
    assert "none of its 2 channel(s) is connected" in caught.value.reason


async def test_get_channel_of_a_pool_that_does_not_run_raises_pool_not_started(
    pool_name: str, connector: FakeConnector
) -> None:
    with pytest.raises(PoolNotStartedError, match="no pool of that name is running"):
        Pool.get_channel(pool_name)
    async with running_pool(pool_name, 1, fake_channel(connector)):
        Pool.get_channel(pool_name)
    with pytest.raises(PoolNotStartedError) as caught:
        Pool.get_channel(pool_name)
    assert caught.value.pool_name == pool_name


async def test_get_channel_with_a_name_that_is_not_a_string_is_a_type_error(
    channel_events: EventLog,
) -> None:
    with pytest.raises(TypeError, match="expected a pool name as a str, got 42"):
        Pool.get_channel(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected a pool name as a str, got \[.a.\]"):
        Pool.get_channel(["a"])  # type: ignore[arg-type]
    # A misuse, not a hand-out: no get_channel event (docs/telemetry.md lists its results).
    assert channel_events.of("get_channel") == []


# --- callbacks ---------------------------------------------------------------------------


async def test_on_connect_runs_once_per_successful_connection_and_never_on_failure(
    pool_name: str, connector: FakeConnector
) -> None:
    connects: list[int] = []
    connector.fail_next(3)
    channel = fake_channel(connector, on_connect=lambda: connects.append(len(connector.channels)))
    async with running_pool(pool_name, 2, channel):
        assert len(connects) == 2
        connector.drop(0)
        await wait_until(lambda: len(connects) == 3)
        await Pool.wait_connected(pool_name, timeout=5)
    assert len(connector.calls) == 6  # 3 failures, 2 connects, 1 reconnect
    assert len(connects) == 3


async def test_on_disconnect_runs_only_for_a_channel_that_was_connected(
    pool_name: str, connector: FakeConnector
) -> None:
    disconnects: list[str] = []
    connector.fail_next(3)
    channel = fake_channel(connector, on_disconnect=lambda: disconnects.append("lost"))
    async with running_pool(pool_name, 2, channel):
        assert disconnects == []
        connector.drop(0)
        await wait_until(lambda: disconnects == ["lost"])
        await Pool.wait_connected(pool_name, timeout=5)
    assert disconnects == ["lost"]  # stopping the pool is no disconnect


async def test_async_callbacks_are_awaited(pool_name: str, connector: FakeConnector) -> None:
    seen: list[str] = []

    async def on_connect() -> None:
        await anyio.lowlevel.checkpoint()
        seen.append("connect")

    async def on_disconnect() -> None:
        await anyio.lowlevel.checkpoint()
        seen.append("disconnect")

    channel = fake_channel(connector, on_connect=on_connect, on_disconnect=on_disconnect)
    async with running_pool(pool_name, 1, channel):
        assert seen == ["connect"]  # awaited before the channel was handed out
        connector.drop(0)
        await wait_until(lambda: len(seen) == 3)
    assert seen == ["connect", "disconnect", "connect"]


async def test_a_channel_joins_the_pool_only_after_on_connect_returns(
    pool_name: str, connector: FakeConnector
) -> None:
    sizes: list[int] = []
    channel = fake_channel(
        connector, on_connect=lambda: sizes.append(Pool.status(pool_name).current_size)
    )
    async with running_pool(pool_name, 1, channel):
        assert sizes == [0]


# --- backoff and the connector --------------------------------------------------------------


class SpyBackoff:
    """Records every call; each channel's copy shares the log (a shallow copy)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def next(self) -> float:
        self.log.append("next")
        return 0.001

    def reset(self) -> None:
        self.log.append("reset")


async def test_backoff_advances_on_every_failure_and_resets_on_success(
    pool_name: str, connector: FakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop comes before the connection served RECONNECT_AT_ONCE_AFTER_NS (made long
    here, so a slow machine cannot make it old): it died young, and the backoff applies."""
    monkeypatch.setattr(worker_module, "RECONNECT_AT_ONCE_AFTER_NS", 60 * 10**9)
    log: list[str] = []
    connector.fail_next(3)
    async with running_pool(pool_name, 1, fake_channel(connector, backoff=SpyBackoff(log))):
        assert log == ["next", "next", "next", "reset"]
        connector.drop(0)
        await wait_until(lambda: log.count("reset") == 2)
    assert log == ["next", "next", "next", "reset", "next", "reset"]


async def test_a_connection_that_served_a_while_is_reopened_without_the_backoff(
    pool_name: str, connector: FakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's max_connection_age (GOAWAY) ends healthy connections: no backoff gap."""
    monkeypatch.setattr(worker_module, "RECONNECT_AT_ONCE_AFTER_NS", 0)
    log: list[str] = []
    async with running_pool(pool_name, 1, fake_channel(connector, backoff=SpyBackoff(log))):
        connector.drop(0)
        await wait_until(lambda: log.count("reset") == 2)
    assert log == ["reset", "reset"]


async def test_each_channel_backs_off_on_its_own_copy_of_the_backoff(
    pool_name: str, connector: FakeConnector
) -> None:
    shared = ExponentialBackoff(min=0.001, max=0.002, jitter=0)
    connector.fail_next(4)
    async with running_pool(pool_name, 2, fake_channel(connector, backoff=shared)):
        pass
    assert shared.next() == 0.001  # the configured object itself was never advanced


async def test_the_connector_is_called_with_exactly_the_configured_address_and_options(
    pool_name: str, connector: FakeConnector
) -> None:
    options = [("grpc.keepalive_time_ms", 60_000), ("grpc.primary_user_agent", "test")]
    config = ChannelConfig("dns:///backend.internal:443", options=options, connector=connector)
    async with running_pool(pool_name, 2, config):
        pass
    assert len(connector.calls) == 2
    for call in connector.calls:
        assert call.address == "dns:///backend.internal:443"
        assert list(call.options) == options


async def test_a_hanging_attempt_is_cut_off_by_connect_timeout(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    connector.hang_next(1)
    channel = fake_channel(connector, connect_timeout=0.05)
    async with running_pool(pool_name, 1, channel):
        (failure,) = channel_events.of("connection_failed")
    assert "within connect_timeout=0.05 s" in failure["reason"]


# --- supervision ------------------------------------------------------------------------------


async def test_a_raising_on_connect_restarts_only_its_worker(
    pool_name: str, connector: FakeConnector
) -> None:
    raise_next = [False]

    def on_connect() -> None:
        if raise_next[0]:
            raise_next[0] = False
            raise RuntimeError("on_connect failed")

    with recording(SUPERVISOR_EVENTS) as events:
        async with running_pool(pool_name, 3, fake_channel(connector, on_connect=on_connect)):
            first, second, third = by_index(pool_name)
            raise_next[0] = True
            second.drop()
            await wait_until(lambda: events.of("child_restarted") != [])
            await Pool.wait_connected(pool_name, timeout=5)
            now = by_index(pool_name)
            assert now[0] is first
            assert now[2] is third
            assert now[1] not in (second, None)
    (restarted,) = events.of("child_restarted")
    assert restarted["supervisor"] == pool_name
    assert restarted["child_id"] == "channel-1"
    assert isinstance(restarted["error"], RuntimeError)


async def test_a_raising_on_disconnect_restarts_only_its_worker(
    pool_name: str, connector: FakeConnector
) -> None:
    def on_disconnect() -> None:
        raise RuntimeError("on_disconnect failed")

    with recording(SUPERVISOR_EVENTS) as events:
        async with running_pool(pool_name, 2, fake_channel(connector, on_disconnect=on_disconnect)):
            first, second = by_index(pool_name)
            second.drop()
            await wait_until(lambda: len(events.of("child_restarted")) == 1)
            await Pool.wait_connected(pool_name, timeout=5)
            assert by_index(pool_name)[0] is first
    assert [m["child_id"] for m in events.of("child_restarted")] == ["channel-1"]


async def test_a_crash_loop_past_the_intensity_makes_the_pool_give_up_to_its_parent(
    pool_name: str, connector: FakeConnector
) -> None:
    def on_connect() -> None:
        raise RuntimeError("always fails")

    spec = Pool.child_spec(
        name=pool_name,
        pool_size=1,
        channel=fake_channel(connector, on_connect=on_connect),
        max_restarts=2,
    )
    with pytest.raises(SupervisorGaveUpError) as caught:
        async with Supervisor([spec], name="app", max_restarts=0):
            await until_cancelled()  # the supervisor cancels the body when it gives up
    assert caught.value.child_id == pool_name
    cause = caught.value.__cause__
    assert isinstance(cause, SupervisorGaveUpError)
    assert cause.supervisor == pool_name
    assert cause.child_id == "channel-0"
    assert str(cause.__cause__) == "always fails"
    assert all(channel.closed for channel in connector.channels)


async def test_a_sibling_pool_keeps_serving_while_another_crash_loops(
    pool_name: str, connector: FakeConnector
) -> None:
    def on_connect() -> None:
        raise RuntimeError("always fails")

    healthy = FakeConnector()
    broken = Pool.child_spec(
        name=f"{pool_name}-broken",
        pool_size=1,
        channel=fake_channel(connector, on_connect=on_connect),
        max_restarts=1,
    )
    good = Pool.child_spec(name=pool_name, pool_size=2, channel=fake_channel(healthy))
    with recording(SUPERVISOR_EVENTS) as events:
        async with Supervisor([good, broken], max_restarts=1000, max_seconds=60):
            await Pool.wait_connected(pool_name, timeout=5)
            serving = by_index(pool_name)
            await wait_until(
                lambda: sum(1 for m in events.of("gave_up") if m["supervisor"] == broken.id) >= 3
            )
            assert by_index(pool_name) == serving
            assert [Pool.get_channel(pool_name) for _ in range(2)] == serving


async def test_starting_a_second_pool_under_a_running_name_is_an_error(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 1, fake_channel(connector)):
        serving = by_index(pool_name)
        async with Supervisor(name="other") as other:
            with pytest.raises(ChildStartError, match=f"'{pool_name}', which is already") as caught:
                await other.start_child(
                    Pool.child_spec(name=pool_name, pool_size=4, channel=fake_channel(connector))
                )
        assert isinstance(caught.value.__cause__, NameTakenError)
        assert by_index(pool_name) == serving
        assert Pool.status(pool_name).expected_size == 1


async def test_leaving_the_supervisor_closes_every_channel(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 4, fake_channel(connector)):
        await lose(pool_name, connector.connected[0])
        await Pool.wait_connected(pool_name, timeout=5)
    assert len(connector.channels) == 5
    assert all(channel.closed for channel in connector.channels)


# --- status, workers, waiting --------------------------------------------------------------------


async def test_status_reports_expected_and_current_size(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        connector.hang_next(1)
        await lose(pool_name, connector.connected[0])
        status = Pool.status(pool_name)
        assert (status.name, status.expected_size, status.current_size) == (pool_name, 3, 2)


async def test_get_all_workers_lists_the_connected_workers_in_index_order(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        connector.hang_next(1)
        await lose(pool_name, by_index(pool_name)[1])
        workers = Pool.get_all_workers(pool_name)
        assert [w.index for w in workers] == [0, 2]
        assert all(w.state == "watching" and w.name.startswith(pool_name) for w in workers)


async def test_wait_connected_waits_for_the_count_asked_for(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.hang_next(1)
    channel = fake_channel(connector, connect_timeout=0.2)
    async with running_pool(pool_name, 2, channel, wait=False):
        status = await Pool.wait_connected(pool_name, count=1, timeout=5)
        assert status.current_size >= 1
        status = await Pool.wait_connected(pool_name, timeout=5)
        assert status.current_size == 2


async def test_wait_connected_times_out_with_not_connected(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000)
    async with running_pool(pool_name, 2, fake_channel(connector), wait=False):
        with pytest.raises(NotConnectedError, match=r"expected 2 connected channel\(s\) within"):
            await Pool.wait_connected(pool_name, timeout=0.05)


async def test_wait_connected_rejects_a_count_beyond_the_pool_size(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 2, fake_channel(connector)):
        with pytest.raises(ValueError, match="expected 0 to 2"):
            await Pool.wait_connected(pool_name, count=3)
    with pytest.raises(PoolNotStartedError):
        await Pool.wait_connected(pool_name)


# --- the declarative class -------------------------------------------------------------------


async def test_a_declared_pool_is_named_after_its_class_and_accepted_by_a_supervisor(
    connector: FakeConnector,
) -> None:
    class InventoryPool(Pool, pool_size=2, channel=fake_channel(connector)):
        pass

    async with Supervisor([InventoryPool]) as sup:
        assert sup.which_children()[0].id == "InventoryPool"
        await InventoryPool.wait_connected(timeout=5)
        assert InventoryPool.status().current_size == 2
        assert InventoryPool.get_channel() in [w.channel for w in InventoryPool.get_all_workers()]
        assert Pool.get_channel("InventoryPool") is not None


async def test_a_declared_pool_may_be_given_a_name(connector: FakeConnector) -> None:
    class Named(Pool, name="billing", pool_size=1, channel=fake_channel(connector)):
        pass

    async with Supervisor([Named]):
        await Named.wait_connected(timeout=5)
        assert Pool.status("billing").expected_size == 1
        with pytest.raises(ValueError, match="fixed by the class statement"):
            Named.child_spec(name="other")


async def test_runtime_config_overrides_the_class_and_explicit_arguments_override_both(
    connector: FakeConnector,
) -> None:
    environment = {"pool_size": 3, "channel": {"address": "from-config:1"}}

    class Layered(
        Pool,
        pool_size=1,
        channel=fake_channel(connector, connect_timeout=2.0),
        telemetry_interval=7.0,
        config=lambda: environment,
    ):
        pass

    async with Supervisor([Layered.child_spec(telemetry_interval=9.0)]):
        await Layered.wait_connected(timeout=5)
        assert Layered.status().expected_size == 3
    call = connector.calls[0]
    assert call.address == "from-config:1"  # config() laid over the class's channel...
    assert call.connect_timeout == 2.0  # ...field by field
    spec_default = Layered.child_spec()
    spec_override = Layered.child_spec(pool_size=5, channel={"address": "explicit:1"})
    assert spec_default.id == spec_override.id == "Layered"


async def test_the_config_callable_is_called_at_child_spec_time(connector: FakeConnector) -> None:
    calls: list[int] = []

    def config() -> dict[str, Any]:
        calls.append(1)
        return {"channel": {"address": "late:1"}}

    class Late(
        Pool, pool_size=1, config=config, channel={"connector": connector, "backoff": FAKE_BACKOFF}
    ):
        pass

    assert calls == []
    async with Supervisor([Late]):
        await Late.wait_connected(timeout=5)
    assert calls == [1]
    assert connector.calls[0].address == "late:1"


async def test_the_base_pool_needs_a_name() -> None:
    with pytest.raises(TypeError, match="expected a pool name"):
        Pool.get_channel()
    with pytest.raises(TypeError, match="name= is required"):
        Pool.child_spec(pool_size=1, channel={"address": "x:1"})


# --- mock -------------------------------------------------------------------------------------


async def test_mock_answers_get_channel_and_no_connection_is_opened(
    pool_name: str, connector: FakeConnector
) -> None:
    stand_in = object()
    async with running_pool(pool_name, 3, fake_channel(connector, mock=lambda: stand_in)):
        assert Pool.status(pool_name).current_size == 3
        assert Pool.get_channel(pool_name) is stand_in
    assert connector.calls == []


# --- telemetry and logs ---------------------------------------------------------------------------


async def test_channel_events_carry_durations_and_names(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    connector.fail_next(1)
    async with running_pool(pool_name, 1, fake_channel(connector)):
        connector.drop(0)
        await wait_until(lambda: len(channel_events.of("connected")) == 2)
    kinds = [event[-1] for event in channel_events.names() if event[1] == "channel"]
    assert kinds == ["connection_failed", "connected", "disconnected", "connected", "disconnected"]
    for event, measurements, metadata in channel_events.events:
        if event[1] != "channel":
            continue
        assert isinstance(measurements["duration"], int)
        assert measurements["duration"] >= 0
        assert metadata["pool_name"] == pool_name
        assert metadata["channel_name"] == f"{pool_name}[0]"
    failed = channel_events.events[0]
    assert "refused on purpose" in str(failed[1]["error"])
    reasons = [m["reason"] for m in channel_events.of("disconnected")]
    assert reasons == ["connection_lost", "shutdown"]


async def test_get_channel_emits_its_event_either_way(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    connector.hang_next(1)
    async with running_pool(pool_name, 1, fake_channel(connector, connect_timeout=5), wait=False):
        with pytest.raises(NotConnectedError):
            Pool.get_channel(pool_name)
    with pytest.raises(PoolNotStartedError):
        Pool.get_channel(pool_name)
    results = [(m["pool_name"], m["result"]) for m in channel_events.of("get_channel")]
    assert results == [(pool_name, "NotConnectedError"), (pool_name, "PoolNotStartedError")]


async def test_get_channel_event_reports_a_successful_hand_out(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    async with running_pool(pool_name, 1, fake_channel(connector)):
        Pool.get_channel(pool_name)
    ((_, measurements, metadata),) = [e for e in channel_events.events if e[0][-1] == "get_channel"]
    assert metadata == {"pool_name": pool_name, "result": "ok"}
    assert isinstance(measurements["duration"], int)


async def test_the_pool_reports_its_status_periodically(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    async with running_pool(pool_name, 2, fake_channel(connector), telemetry_interval=0.02):
        await wait_until(lambda: len(channel_events.of("status")) >= 2)
    ((_, measurements, metadata), *_) = [e for e in channel_events.events if e[0][-1] == "status"]
    assert metadata == {"pool_name": pool_name, "backends": {"fake:1": 2}}
    assert measurements == {"expected_size": 2, "current_size": 2, "in_flight": 0}


async def test_debug_logs_name_the_pool_the_channel_index_and_the_event(
    pool_name: str, connector: FakeConnector
) -> None:
    with capture_logs() as logs:
        async with running_pool(pool_name, 2, fake_channel(connector, debug=True)):
            pass
    connected = [log for log in logs if log["event"] == "channel connected"]
    assert sorted(log["channel_index"] for log in connected) == [0, 1]
    assert all(log["pool_name"] == pool_name and log["log_level"] == "debug" for log in connected)


async def test_without_debug_a_healthy_pool_logs_nothing(
    pool_name: str, connector: FakeConnector
) -> None:
    with capture_logs() as logs:
        async with running_pool(pool_name, 2, fake_channel(connector)):
            pass
    assert logs == []


# --- failures that can never succeed, and saying why ------------------------------------------


class _Broken(Exception):
    """What a connector with a bug raises: not a network failure, never worth retrying."""


async def test_a_connector_bug_crashes_the_worker_instead_of_being_retried_for_ever(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000, _Broken("the connector has a bug"))
    spec = Pool.child_spec(name=pool_name, pool_size=1, channel=fake_channel(connector))
    with recording(SUPERVISOR_EVENTS) as events, pytest.raises(SupervisorGaveUpError) as caught:
        async with Supervisor([spec], max_restarts=0):
            with anyio.fail_after(5):
                await anyio.sleep_forever()
    # The pool gave up on its worker (1 attempt + 3 restarts), then the parent on the pool.
    assert len(connector.calls) == 4
    pool_gave_up = caught.value.__cause__
    assert isinstance(pool_gave_up, SupervisorGaveUpError)
    assert isinstance(pool_gave_up.__cause__, _Broken)
    assert [m["reason"] for m in events.of("child_terminated")][:1] == ["crash"]


async def test_wait_connected_fails_at_once_naming_the_cause_when_the_pool_gives_up(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000, _Broken("the connector has a bug"))
    spec = Pool.child_spec(
        name=pool_name, pool_size=2, channel=fake_channel(connector), max_restarts=1
    )
    async with Supervisor(max_restarts=0) as supervisor:
        await supervisor.start_child(spec.__class__(spec.id, spec.start, restart="temporary"))
        with anyio.fail_after(5):  # far below wait_connected's own timeout
            with pytest.raises(PoolNotStartedError) as caught:
                await Pool.wait_connected(pool_name, timeout=60)
    assert "stopped while waiting" in caught.value.reason
    assert "_Broken: the connector has a bug" in caught.value.reason


async def test_a_failed_attempt_names_the_address_it_tried(
    pool_name: str, connector: FakeConnector, channel_events: EventLog
) -> None:
    connector.fail_next(1)
    async with running_pool(pool_name, 1, fake_channel(connector, address="billing:7")):
        pass
    assert "'billing:7'" in channel_events.of("connection_failed")[0]["reason"]


async def test_wait_connected_timing_out_gives_the_latest_failure_of_each_channel(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000)
    async with running_pool(pool_name, 3, fake_channel(connector), wait=False):
        await connector.wait_for_calls(3)
        with pytest.raises(NotConnectedError) as caught:
            await Pool.wait_connected(pool_name, timeout=0.01)
    reason = caught.value.reason
    assert "expected 3 connected channel(s) within 0.01 s, but 0 are" in reason
    assert "channel(s) 0-2" in reason
    assert "refused on purpose (FakeConnector)" in reason


async def test_get_channel_not_connected_gives_the_latest_failure(
    pool_name: str, connector: FakeConnector
) -> None:
    connector.fail_next(10_000)
    async with running_pool(pool_name, 1, fake_channel(connector), wait=False):
        await connector.wait_for_calls(1)
        with pytest.raises(NotConnectedError, match=r"after: .*refused on purpose"):
            Pool.get_channel(pool_name)


async def test_a_worker_running_on_disconnect_says_it_is_disconnected(
    pool_name: str, connector: FakeConnector
) -> None:
    seen: list[tuple[list[int], str]] = []

    def on_disconnect() -> None:
        with pytest.raises(NotConnectedError) as caught:
            Pool.get_channel(pool_name)
        seen.append(([w.index for w in Pool.get_all_workers(pool_name)], caught.value.reason))

    channel = fake_channel(connector, on_disconnect=on_disconnect)
    async with running_pool(pool_name, 1, channel):
        (worker,) = Pool.get_all_workers(pool_name)
        assert worker.state == "watching"
        connector.drop(0)
        await wait_until(lambda: seen != [])
    assert seen == [([], "none of its 1 channel(s) is connected now; channel(s) 0 disconnected")]


async def test_get_all_workers_returns_snapshots_that_do_not_change(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 2, fake_channel(connector)):
        before = Pool.get_all_workers(pool_name)
        assert [(w.index, w.state, w.name) for w in before] == [
            (0, "watching", f"{pool_name}[0]"),
            (1, "watching", f"{pool_name}[1]"),
        ]
        with pytest.raises(dataclasses.FrozenInstanceError):
            before[0].state = "stopped"  # type: ignore[misc]
        connector.drop(0)
        await wait_until(lambda: [w.index for w in Pool.get_all_workers(pool_name)] == [1])
        assert before[0].state == "watching"  # taken then, kept as it was
        assert before[0].channel is connector.channels[0]


async def test_drop_takes_the_worker_index(pool_name: str, connector: FakeConnector) -> None:
    async with running_pool(pool_name, 3, fake_channel(connector)):
        connector.hang_next(1)
        dropped = connector.drop(2)
        assert dropped.worker_index == 2
        await wait_until(lambda: [w.index for w in Pool.get_all_workers(pool_name)] == [0, 1])
        with pytest.raises(LookupError, match=r"worker 2, found 0; .* are \[0, 1\]"):
            connector.drop(2)


# --- a pool belongs to one event loop -------------------------------------------------------


async def test_a_pool_started_outside_asyncio_fails_at_start_saying_so(pool_name: str) -> None:
    async def start_under_trio() -> None:
        async with Supervisor(
            [Pool.child_spec(name=pool_name, pool_size=1, channel={"address": "fake:1"})]
        ):
            pass

    with pytest.raises(ChildStartError, match="expected to run on asyncio"):
        await anyio.to_thread.run_sync(lambda: anyio.run(start_under_trio, backend="trio"))


async def test_wait_connected_from_another_event_loop_is_a_clear_error(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 1, fake_channel(connector)):

        def from_another_loop() -> None:
            anyio.run(Pool.wait_connected, pool_name)

        with pytest.raises(RuntimeError, match="must run on the event loop that runs the pool"):
            await anyio.to_thread.run_sync(from_another_loop)
        with pytest.raises(RuntimeError, match="outside any event loop"):
            await anyio.to_thread.run_sync(Pool.get_all_workers, pool_name)
        status = await anyio.to_thread.run_sync(Pool.status, pool_name)
        assert status.current_size == 1  # a snapshot of plain values: any thread may ask


async def test_a_channel_that_left_ready_is_not_handed_out_even_before_its_worker_knows(
    pool_name: str, connector: FakeConnector
) -> None:
    """grpc knows at once; the worker hears it when the event loop gets to it."""
    async with running_pool(pool_name, 3, fake_channel(connector)):
        first, second, third = by_index(pool_name)
        second.drop()  # no await: the worker has not run since
        handed = [Pool.get_channel(pool_name) for _ in range(6)]
        assert second not in handed
        assert set(handed) == {first, third}
        first.drop()
        third.drop()
        with pytest.raises(NotConnectedError):
            Pool.get_channel(pool_name)


# --- the API's edges ---------------------------------------------------------------------


def test_a_pooled_channel_is_made_by_pool_channel_only() -> None:
    with pytest.raises(TypeError, match=r"expected to be made by Pool.channel\(name\)"):
        PooledChannel("inventory")  # type: ignore[call-arg]
    facade = Pool.channel("inventory")
    assert isinstance(facade, PooledChannel)
    assert (facade.name, facade.kind, facade.closed) == ("inventory", "pool", False)


def test_the_public_api_has_no_registry() -> None:
    assert "Registry" not in conngrpc.__all__
    assert not hasattr(conngrpc, "Registry")


async def test_a_pool_shows_its_counts_at_a_glance(
    pool_name: str, connector: FakeConnector
) -> None:
    async with running_pool(pool_name, 2, fake_channel(connector), max_calls_per_channel=1):
        runtime = pools.get(pool_name)
        assert repr(runtime) == (
            f"<Pool {pool_name!r} connected=2 expected=2 in_flight=0 waiting=0>"
        )
        (slot, _) = runtime.handout.slots
        runtime.admission.track(slot, _Call())
        assert "in_flight=1 waiting=0" in repr(runtime)


class _Call:
    """A call that never ends: it only takes a done callback."""

    def add_done_callback(self, callback: Any) -> None:
        pass


# --- stopping a large pool ------------------------------------------------------------------

#: Linear work grows 4-fold from n to 4n channels, quadratic 16-fold (stopping children
#: one by one re-delivered the pool's cancellation to every worker, and each leave
#: rebuilt the hand-out from every record: 12 to 20-fold). Room for fixed costs.
MOST_STOP_GROWTH_FOR_4N = 6.0


async def _calls_to_stop_a_pool(name: str, size: int) -> int:
    """Python calls made while leaving the supervisor of a connected pool of ``size``."""
    channel = {"address": "fake:1", "connector": FakeConnector(), "backoff": FAKE_BACKOFF}
    profile = cProfile.Profile()
    async with running_pool(name, size, channel):
        profile.enable()
    profile.disable()
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined, no-any-return]


async def test_stopping_a_pool_costs_work_in_proportion_to_its_size(pool_name: str) -> None:
    await _calls_to_stop_a_pool(f"{pool_name}-warm", 100)  # first-use costs are not the pool's
    small = await _calls_to_stop_a_pool(f"{pool_name}-small", 100)
    large = await _calls_to_stop_a_pool(f"{pool_name}-large", 400)
    assert large / small <= MOST_STOP_GROWTH_FOR_4N, (small, large)
