"""The PooledChannel: stubs built on it once, each call sent to the least-loaded connection.

Real servers on 127.0.0.1 (tests/_fleet.py), generated stubs (grpc.health.v1's).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conngrpc import Pool, PooledChannel, Supervisor
from conngrpc._server import PEER_METHOD, SLEEP_METHOD
from tests._fleet import (
    COLLECT_METHOD,
    COUNT_METHOD,
    ECHO_METHOD,
    NOT_SERVING,
    SERVING,
    Backend,
    fleet,
)
from tests._net import closed_port, established_sockets
from tests._pools import live_pool
from tests._probe import wait_until

pytestmark = pytest.mark.anyio


def _raw(facade: grpc.aio.Channel, kind: str, method: str) -> Any:
    return getattr(facade, kind)(method, request_serializer=None, response_deserializer=None)


def in_flight(name: str) -> tuple[int, dict[int, int]]:
    status = Pool.status(name)
    return status.in_flight, dict(status.in_flight_by_channel)


async def all_calls_ended(name: str) -> None:
    await wait_until(lambda: in_flight(name)[0] == 0 and not any(in_flight(name)[1].values()))


async def outcome(call: Any, outcomes: list[str]) -> None:
    """Await ``call``, recording how it ended: ``cancelled``, ``ok`` or the error's code.

    A grpc.aio call that was cancelled raises ``asyncio.CancelledError`` to whoever
    awaits it: grpc's own, not a cancel scope's, so catching it here is safe.
    """
    try:
        await call
    except asyncio.CancelledError:
        outcomes.append("cancelled")
    except grpc.aio.AioRpcError as error:
        outcomes.append(error.code().name)
    else:
        outcomes.append("ok")


# --- a channel for stubs ----------------------------------------------------------------------


async def test_a_stub_built_before_the_pool_runs_works_once_it_connects(pool_name: str) -> None:
    facade = Pool.channel(pool_name)
    assert isinstance(facade, grpc.aio.Channel)
    assert facade.get_state() is grpc.ChannelConnectivity.IDLE
    stub = health_pb2_grpc.HealthStub(facade)  # generated code, built once
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Check(health_pb2.HealthCheckRequest())
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"pool {pool_name!r}: no pool of that name is running" in refused.value.details()

    async with fleet(1) as (backend,), live_pool(pool_name, backend.address, 2):
        with anyio.fail_after(5):
            await facade.channel_ready()
        assert facade.get_state() is grpc.ChannelConnectivity.READY
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        await all_calls_ended(pool_name)
    await facade.close()
    assert facade.get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_all_four_kinds_of_call_go_through_and_end_counted(pool_name: str) -> None:
    async with fleet(1) as (backend,), live_pool(pool_name, backend.address, 2):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)

        peer = await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert peer.startswith(str(backend.port).encode())

        count = _raw(facade, "unary_stream", COUNT_METHOD)(b"3:1", timeout=5)
        assert [m async for m in count] == [b"0", b"1", b"2"]

        async def three() -> AsyncIterator[bytes]:
            for item in (b"a", b"b", b"c"):
                yield item

        assert await _raw(facade, "stream_unary", COLLECT_METHOD)(three(), timeout=5) == b"3"

        echo = _raw(facade, "stream_stream", ECHO_METHOD)(timeout=5)
        await echo.write(b"ping")
        assert await echo.read() == b"ping"
        await echo.done_writing()
        assert await echo.read() is grpc.aio.EOF
        await all_calls_ended(pool_name)
        assert backend.calls == 4


# --- counting calls in flight -----------------------------------------------------------------

#: Endings whose call stays open until the test ends it: each is open, and counted, at
#: the barrier, before any other call begins.
HELD = ["cancel", "echo_cancel", "stream_cancel", "task_cancelled"]
ENDINGS = st.sampled_from(
    [
        *HELD,
        "complete",
        "deadline",
        "drop_stream",
        "error",
        "stream_complete",
        "queued_cancel",
    ]
)


@pytest.fixture(scope="module")
async def counted() -> AsyncIterator[tuple[str, PooledChannel, str, PooledChannel]]:
    """A pool of 3, and a pool of 1 whose channel takes one call at a time."""
    async with (
        fleet(1) as (backend,),
        live_pool("counted-pool", backend.address, 3, wait=True),
        capped_pool("counted-capped", backend.address, 1, 1),
    ):
        yield (
            "counted-pool",
            Pool.channel("counted-pool"),
            "counted-capped",
            Pool.channel("counted-capped"),
        )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(endings=st.lists(ENDINGS, min_size=1, max_size=12))
async def test_in_flight_counts_return_to_zero_after_every_kind_of_ending(
    counted: tuple[str, PooledChannel, str, PooledChannel], endings: list[str]
) -> None:
    name, facade, capped_name, capped = counted
    sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
    count = _raw(facade, "unary_stream", COUNT_METHOD)
    echo = _raw(facade, "stream_stream", ECHO_METHOD)
    missing = _raw(facade, "unary_unary", "/conngrpc.demo.v1.Demo/NoSuchMethod")
    capped_sleep = _raw(capped, "unary_unary", SLEEP_METHOD)
    calls: list[Any] = []
    held = sum(ending in HELD for ending in endings)
    opened: list[str] = []
    all_open, release = anyio.Event(), anyio.Event()
    scopes: list[anyio.CancelScope] = []
    outcomes: list[str] = []

    def open_now(ending: str) -> None:
        opened.append(ending)
        if len(opened) == held:
            all_open.set()

    async def one(ending: str) -> None:
        # No pytest.raises here: its miss is a BaseException, which would end the
        # session's shared runner from inside the task group. Outcomes are checked after.
        if ending not in HELD:
            await release.wait()
        if ending == "complete":
            await sleep(b"1", timeout=5)
        elif ending == "cancel":
            call = sleep(b"5000", timeout=30)
            calls.append(call)
            open_now(ending)
            await release.wait()
            call.cancel()
        elif ending == "task_cancelled":  # the task's scope is cancelled mid-call
            call = sleep(b"5000", timeout=30)
            try:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    open_now(ending)
                    await call
            except asyncio.CancelledError:
                pass  # grpc.aio's own (bare) one, which anyio's scope lets through
            outcomes.append("call cancelled" if call.cancelled() else "call not cancelled")
        elif ending == "deadline":
            try:
                await sleep(b"5000", timeout=0.02)
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
        elif ending == "drop_stream":
            # Dropped unfinished: grpc.aio keeps such a stream open (it holds the call)
            # until its deadline, even once the server is done; it counts until then.
            stream = count(b"100:10", timeout=0.1)
            with contextlib.suppress(grpc.aio.AioRpcError):  # a deadline before the first
                await stream.read()  # message (a loaded machine) ends it all the same
            del stream
            gc.collect()
        elif ending == "error":
            try:
                await missing(b"", timeout=5)
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
        elif ending == "stream_complete":
            assert [m async for m in count(b"2:1", timeout=5)] == [b"0", b"1"]
        elif ending == "stream_cancel":
            stream = count(b"1000:10", timeout=30)
            assert await stream.read() == b"0"
            open_now(ending)
            await release.wait()
            stream.cancel()
        elif ending == "echo_cancel":
            call = echo(timeout=30)
            await call.write(b"x")
            assert await call.read() == b"x"
            open_now(ending)
            await release.wait()
            call.cancel()
        else:  # queued_cancel: a call waiting for room, cancelled as it is handed some
            # (or while it waits, or once it runs, when other ones queue too)
            hold = capped_sleep(b"5000", timeout=30)
            queued = capped_sleep(b"5000", timeout=30, wait_for_ready=True)
            hold.add_done_callback(lambda _: queued.cancel())
            async with anyio.create_task_group() as waiting:
                waiting.start_soon(outcome, queued, outcomes)
                waiting.start_soon(outcome, hold, outcomes)
                await anyio.wait_all_tasks_blocked()
                hold.cancel()

    async with anyio.create_task_group() as tasks:
        for ending in endings:
            tasks.start_soon(one, ending)
        if held:
            with anyio.fail_after(5):
                await all_open.wait()
            # Nothing else has begun and nothing held has ended: the count is known.
            total, by_channel = in_flight(name)
            assert total == held
            assert sum(by_channel.values()) == held
            assert max(by_channel.values()) - min(by_channel.values()) <= 1  # spread evenly
        release.set()
        for scope in scopes:
            scope.cancel()
    calls.clear()
    gc.collect()
    await all_calls_ended(name)
    await all_calls_ended(capped_name)
    expected = {
        "deadline": ["DEADLINE_EXCEEDED"],
        "error": ["UNIMPLEMENTED"],
        "task_cancelled": ["call cancelled"],
        "queued_cancel": ["cancelled", "cancelled"],
    }
    assert sorted(outcomes) == sorted(o for e in endings for o in expected.get(e, []))


async def test_an_open_stream_counts_on_its_channel_until_it_ends(pool_name: str) -> None:
    async with fleet(1) as (backend,), live_pool(pool_name, backend.address, 2):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)
        count = _raw(facade, "unary_stream", COUNT_METHOD)(b"1000:10", timeout=30)
        assert await count.read() == b"0"
        total, by_channel = in_flight(pool_name)
        assert total == 1
        assert sorted(by_channel.values()) == [0, 1]
        echo = _raw(facade, "stream_stream", ECHO_METHOD)(timeout=30)
        await echo.write(b"ping")
        assert await echo.read() == b"ping"
        assert in_flight(pool_name) == (2, {0: 1, 1: 1})  # the idle channel took it
        count.cancel()
        await wait_until(lambda: in_flight(pool_name)[0] == 1)
        assert sorted(in_flight(pool_name)[1].values()) == [0, 1]  # the echo, still open
        await echo.done_writing()
        assert await echo.read() is grpc.aio.EOF
        await all_calls_ended(pool_name)


async def test_a_stream_dropped_unread_is_cancelled_and_leaves_its_count(pool_name: str) -> None:
    async with fleet(1) as (backend,), live_pool(pool_name, backend.address, 1):
        await Pool.wait_connected(pool_name, timeout=5)
        count = _raw(Pool.channel(pool_name), "unary_stream", COUNT_METHOD)
        stream = count(b"2:1", timeout=30)  # the server is done with it in milliseconds
        assert await stream.read() == b"0"
        del stream  # one response left unread: grpc.aio would keep it open for 30 s
        gc.collect()
        with anyio.fail_after(5):  # it takes one turn of the loop; 30 s is the deadline
            await all_calls_ended(pool_name)


# --- where calls go -------------------------------------------------------------------------------


async def test_new_calls_avoid_the_channel_busy_with_a_slow_call(pool_name: str) -> None:
    async with fleet(1) as (backend,), live_pool(pool_name, backend.address, 3):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)
        slow = _raw(facade, "unary_unary", SLEEP_METHOD)(b"3000", timeout=10)
        await wait_until(lambda: in_flight(pool_name)[0] == 1)
        (busy,) = [i for i, n in in_flight(pool_name)[1].items() if n == 1]
        (worker,) = [w for w in Pool.get_all_workers(pool_name) if w.index == busy]
        assert worker.channel is not None
        busy_peer = await _raw(worker.channel, "unary_unary", PEER_METHOD)(b"", timeout=5)
        peers = {await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5) for _ in range(20)}
        assert busy_peer not in peers
        assert len(peers) == 2  # the two idle channels took turns
        slow.cancel()
        await all_calls_ended(pool_name)


async def test_a_not_serving_backend_gets_no_call_through_the_facade(pool_name: str) -> None:
    async with fleet(3) as backends:
        target = "ipv4:" + ",".join(b.address for b in backends)
        async with live_pool(pool_name, target, 6, health_check=""):
            await Pool.wait_connected(pool_name, timeout=5)
            facade = Pool.channel(pool_name)
            sick = backends[0]
            await sick.set_health(NOT_SERVING)
            await wait_until(lambda: Pool.status(pool_name).backends[sick.address] == 0)
            before = sick.calls
            sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
            for _ in range(60):
                await sleep(b"0", timeout=5)
            assert sick.calls == before
            await sick.set_health(SERVING)


async def test_a_channel_that_rejoins_after_a_health_flap_keeps_its_calls_counted(
    pool_name: str,
) -> None:
    async with fleet(2) as (first, second):
        target = f"ipv4:{first.address},{second.address}"
        async with live_pool(pool_name, target, 2, health_check=""):
            await Pool.wait_connected(pool_name, timeout=5)
            assert dict(Pool.status(pool_name).backends) == {first.address: 1, second.address: 1}
            index_of = {w.backend: w.index for w in Pool.get_all_workers(pool_name)}
            busy, idle = index_of[first.address], index_of[second.address]
            facade = Pool.channel(pool_name)
            sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
            peer = _raw(facade, "unary_unary", PEER_METHOD)
            await second.set_health(NOT_SERVING)  # so that the long calls all go to first
            await wait_until(lambda: Pool.status(pool_name).backends[second.address] == 0)
            long_calls = [sleep(b"5000", timeout=30) for _ in range(3)]
            await wait_until(lambda: first.in_flight == 3)
            await second.set_health(SERVING)
            await wait_until(lambda: Pool.status(pool_name).backends[second.address] == 1)
            assert in_flight(pool_name) == (3, {busy: 3, idle: 0})

            await first.set_health(NOT_SERVING)  # out of the hand-out, its calls running
            await wait_until(lambda: Pool.status(pool_name).backends[first.address] == 0)
            assert in_flight(pool_name) == (3, {busy: 3, idle: 0})
            await first.set_health(SERVING)  # back in: the same channel, its calls counted
            await wait_until(lambda: Pool.status(pool_name).backends[first.address] == 1)
            assert in_flight(pool_name) == (3, {busy: first.in_flight, idle: second.in_flight})

            before = first.calls
            for _ in range(10):
                await peer(b"", timeout=5)
            assert first.calls == before  # every new call went to the idle channel
            for call in long_calls:
                call.cancel()
            await all_calls_ended(pool_name)
            assert in_flight(pool_name) == (0, {busy: 0, idle: 0})


# --- no channel ---------------------------------------------------------------------------------


async def test_with_no_channel_connected_a_call_fails_at_once_as_unavailable_saying_why(
    pool_name: str,
) -> None:
    async with live_pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        facade = Pool.channel(pool_name)
        await wait_until(lambda: facade.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _raw(facade, "unary_unary", SLEEP_METHOD)(b"0", timeout=30)
        assert time.monotonic() - began < 0.5  # at once, not at the deadline
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (
            f"pool {pool_name!r}: none of its 2 channel(s) is connected" in failed.value.details()
        )
        assert "Connection refused" in failed.value.details()


async def test_wait_for_ready_waits_for_a_channel_to_join(pool_name: str) -> None:
    port = closed_port()
    async with live_pool(pool_name, f"127.0.0.1:{port}", 2):
        facade = Pool.channel(pool_name)
        peer = _raw(facade, "unary_unary", PEER_METHOD)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await peer(b"", timeout=0.2, wait_for_ready=True)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        answers: list[bytes] = []
        async with anyio.create_task_group() as tasks:

            async def call() -> None:
                answers.append(await peer(b"", timeout=10, wait_for_ready=True))

            tasks.start_soon(call)
            backend = await Backend().start(port=port)
        try:
            assert answers[0].startswith(str(port).encode())
        finally:
            await backend.stop()


#: Every method a grpc.aio call has, of every kind.
CALL_METHODS = sorted(
    set().union(
        *(
            kind.__abstractmethods__
            for kind in (
                grpc.aio.UnaryUnaryCall,
                grpc.aio.UnaryStreamCall,
                grpc.aio.StreamUnaryCall,
                grpc.aio.StreamStreamCall,
            )
        )
    )
)


async def test_a_call_that_waits_for_a_channel_answers_every_method_of_a_grpc_call(
    pool_name: str,
) -> None:
    async with live_pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        facade = Pool.channel(pool_name)
        call = _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=30, wait_for_ready=True)
        assert [m for m in CALL_METHODS if not callable(getattr(call, m, None))] == []
        remaining = call.time_remaining()
        assert remaining is not None
        assert 29 < remaining <= 30
        ended: list[Any] = []
        call.add_done_callback(ended.append)
        assert not call.done()
        assert not call.cancelled()
        assert ended == []
        assert call.cancel()
        assert ended == [call]
        assert call.done()
        assert call.cancelled()
        assert not call.cancel()  # done already
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert await call.details() == "Locally cancelled by application!"
        with pytest.raises(asyncio.CancelledError):
            await call.wait_for_connection()
        late: list[Any] = []
        call.add_done_callback(late.append)
        assert late == [call]  # done: at once


async def test_cancelling_a_call_that_waits_for_a_channel_ends_the_wait_at_once(
    pool_name: str,
) -> None:
    async with live_pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        facade = Pool.channel(pool_name)
        call = _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=30, wait_for_ready=True)
        outcomes: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outcome, call, outcomes)
            await anyio.wait_all_tasks_blocked()
            assert not call.done()
            began = time.monotonic()
            assert call.cancel()
            assert call.cancelled()
        assert time.monotonic() - began < 1  # at once, not at the deadline
        assert outcomes == ["cancelled"]
        assert await call.code() is grpc.StatusCode.CANCELLED


async def test_a_call_cancelled_before_it_is_awaited_raises_cancelled_error(
    pool_name: str,
) -> None:
    async with live_pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        facade = Pool.channel(pool_name)
        unary = _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=30, wait_for_ready=True)
        stream = _raw(facade, "unary_stream", COUNT_METHOD)(b"3:1", timeout=30, wait_for_ready=True)
        echo = _raw(facade, "stream_stream", ECHO_METHOD)(timeout=30, wait_for_ready=True)
        for call in (unary, stream, echo):
            assert call.cancel()
        with anyio.fail_after(1):
            with pytest.raises(asyncio.CancelledError):
                await unary
            with pytest.raises(asyncio.CancelledError):
                [m async for m in stream]
            with pytest.raises(asyncio.CancelledError):
                await echo.read()
            await echo.done_writing()  # as on a cancelled grpc.aio call: nothing to do


async def test_a_call_that_waited_for_a_channel_is_cancelled_on_it_once_started(
    pool_name: str,
) -> None:
    port = closed_port()
    async with live_pool(pool_name, f"127.0.0.1:{port}", 2):
        facade = Pool.channel(pool_name)
        call = _raw(facade, "unary_unary", SLEEP_METHOD)(b"5000", timeout=30, wait_for_ready=True)
        outcomes: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outcome, call, outcomes)
            await anyio.wait_all_tasks_blocked()  # it waits for a channel
            backend = await Backend().start(port=port)
            try:
                await wait_until(lambda: backend.in_flight == 1)
                assert in_flight(pool_name)[0] == 1
                remaining = call.time_remaining()
                assert remaining is not None
                assert remaining < 30
                assert call.cancel()
                await wait_until(lambda: backend.in_flight == 0)  # the server saw it go
            finally:
                await backend.stop()
        assert outcomes == ["cancelled"]
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await all_calls_ended(pool_name)


async def test_a_stream_that_waited_for_a_channel_counts_while_open(pool_name: str) -> None:
    port = closed_port()
    async with live_pool(pool_name, f"127.0.0.1:{port}", 2):
        facade = Pool.channel(pool_name)
        stream = _raw(facade, "unary_stream", COUNT_METHOD)(
            b"1000:10", timeout=30, wait_for_ready=True
        )
        backend = await Backend().start(port=port)
        try:
            with anyio.fail_after(5):
                await stream.wait_for_connection()
            assert await stream.read() == b"0"
            assert in_flight(pool_name)[0] == 1
            assert stream.cancel()
            await all_calls_ended(pool_name)
            assert stream.cancelled()
        finally:
            await backend.stop()


async def test_a_task_cancelled_while_it_awaits_a_waiting_call_cancels_the_call(
    pool_name: str,
) -> None:
    async with live_pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        facade = Pool.channel(pool_name)
        call = _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=30, wait_for_ready=True)
        async with anyio.create_task_group() as tasks:
            scope = anyio.CancelScope()

            async def awaits() -> None:
                with scope:
                    await call

            tasks.start_soon(awaits)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
        assert scope.cancelled_caught
        assert call.cancelled()
        with anyio.fail_after(1), pytest.raises(asyncio.CancelledError):
            await call


# --- what a plain channel does, the facade does too -----------------------------------------------


class _Stamp(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or []), ("x-stamped-by", "interceptor")]
        details = details._replace(metadata=grpc.aio.Metadata(*metadata))
        return await continuation(details, request)


async def test_interceptors_metadata_and_compression_reach_the_server(pool_name: str) -> None:
    async with fleet(1) as (backend,):
        async with live_pool(
            pool_name,
            backend.address,
            2,
            interceptors=[_Stamp()],
            compression=grpc.Compression.Gzip,
        ):
            await Pool.wait_connected(pool_name, timeout=5)
            facade = Pool.channel(pool_name)
            await _raw(facade, "unary_unary", PEER_METHOD)(
                b"", timeout=5, metadata=(("x-caller", "test"),)
            )
            await all_calls_ended(pool_name)
        seen = dict(backend.metadata)
        assert seen["x-caller"] == "test"
        assert seen["x-stamped-by"] == "interceptor"


async def test_after_the_pool_stops_calls_fail_clearly_and_nothing_is_left(pool_name: str) -> None:
    async with fleet(1) as (backend,):
        facade = Pool.channel(pool_name)
        async with live_pool(pool_name, backend.address, 3):
            await Pool.wait_connected(pool_name, timeout=5)
            await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
        # grpc closes a channel's socket on its own thread, soon after close() returns
        await wait_until(lambda: established_sockets(backend.port) == 0)
        with pytest.raises(grpc.aio.AioRpcError, match="no pool of that name is running"):
            await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
        async with facade:
            pass  # async with closes it
        with pytest.raises(grpc.aio.UsageError, match="is closed"):
            _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)


# --- max_calls_per_channel: a queue across the pool, as A105 queues across connections ---------


def capped_pool(
    name: str, address: str, size: int, cap: int, **channel: object
) -> AbstractAsyncContextManager[Supervisor]:
    settings = {"max_calls_per_channel": cap}
    return live_pool(name, address, size, settings=settings, wait=True, **channel)


async def test_calls_beyond_the_cap_wait_for_the_first_channel_with_room(pool_name: str) -> None:
    async with fleet(1) as (backend,), capped_pool(pool_name, backend.address, 2, 1):
        facade = Pool.channel(pool_name)
        sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
        peer = _raw(facade, "unary_unary", PEER_METHOD)
        long_calls = [sleep(b"5000", timeout=10) for _ in range(2)]  # one on each channel
        assert in_flight(pool_name) == (2, {0: 1, 1: 1})
        answers: list[bytes] = []
        async with anyio.create_task_group() as tasks:

            async def queued() -> None:
                answers.append(await peer(b"", timeout=10))

            tasks.start_soon(queued)
            await wait_until(lambda: backend.in_flight == 2)
            await anyio.wait_all_tasks_blocked()
            assert answers == []  # it waits: both channels are at the cap
            assert backend.calls == 2  # and it was not sent to either
            long_calls[1].cancel()  # one channel has room again
        assert len(answers) == 1
        (freed,) = [w for w in Pool.get_all_workers(pool_name) if w.index == 1]
        assert freed.channel is not None
        assert answers[0] == await _raw(freed.channel, "unary_unary", PEER_METHOD)(b"", timeout=5)
        long_calls[0].cancel()
        await all_calls_ended(pool_name)


async def test_a_call_waiting_for_room_fails_at_its_deadline_saying_why(pool_name: str) -> None:
    async with fleet(1) as (backend,), capped_pool(pool_name, backend.address, 1, 2):
        facade = Pool.channel(pool_name)
        sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
        busy = [sleep(b"5000", timeout=10) for _ in range(2)]
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await sleep(b"0", timeout=0.2)
        assert time.monotonic() - began >= 0.2
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "max_calls_per_channel=2" in late.value.details()
        for call in busy:
            call.cancel()
        await all_calls_ended(pool_name)
        assert Pool.status(pool_name).in_flight == 0


async def test_a_call_waiting_for_room_when_the_pool_stops_fails_at_once_as_unavailable(
    pool_name: str,
) -> None:
    outcome: list[grpc.aio.AioRpcError] = []
    async with fleet(1) as (backend,), anyio.create_task_group() as tasks:
        # The busy call is cut when the pool stops, after a short shutdown_grace.
        async with capped_pool(pool_name, backend.address, 1, 1, shutdown_grace=0.1):
            facade = Pool.channel(pool_name)
            sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
            busy = sleep(b"5000", timeout=30)
            waiting = sleep(b"0")  # no deadline: only the pool's end can end its wait

            async def wait_for_room() -> None:
                try:
                    await waiting
                except grpc.aio.AioRpcError as error:
                    outcome.append(error)

            tasks.start_soon(wait_for_room)
            await anyio.wait_all_tasks_blocked()
            assert in_flight(pool_name) == (1, {0: 1})
            assert outcome == []
        stopped = time.monotonic()
        await wait_until(lambda: bool(outcome))  # it fails when the pool stops
        assert time.monotonic() - stopped < 1
    assert busy.done()
    (error,) = outcome
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert f"{pool_name!r}: it stopped while the call waited for room" in error.details()


async def test_a_call_cancelled_as_it_is_handed_room_passes_the_room_on(pool_name: str) -> None:
    async with fleet(1) as (backend,), capped_pool(pool_name, backend.address, 1, 1):
        facade = Pool.channel(pool_name)
        sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
        hold = sleep(b"5000", timeout=30)
        first, second = sleep(b"0", timeout=30), sleep(b"0", timeout=30)
        outcomes: dict[str, list[str]] = {"first": [], "second": []}
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outcome, first, outcomes["first"])
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(outcome, second, outcomes["second"])
            await anyio.wait_all_tasks_blocked()
            assert in_flight(pool_name) == (1, {0: 1})  # the two wait for room
            # hold's end hands its room to the first, which is cancelled right then
            hold.add_done_callback(lambda _: first.cancel())
            hold.cancel()
        assert outcomes == {"first": ["cancelled"], "second": ["ok"]}
        assert first.cancelled()
        await all_calls_ended(pool_name)


async def test_a_call_cancelled_while_it_waits_for_room_leaves_no_count(pool_name: str) -> None:
    async with fleet(1) as (backend,), capped_pool(pool_name, backend.address, 1, 1):
        facade = Pool.channel(pool_name)
        sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
        hold = sleep(b"5000", timeout=30)
        waiting = sleep(b"0", timeout=30)
        outcomes: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outcome, waiting, outcomes)
            await anyio.wait_all_tasks_blocked()
            assert waiting.cancel()
        assert outcomes == ["cancelled"]
        assert in_flight(pool_name) == (1, {0: 1})
        hold.cancel()
        await all_calls_ended(pool_name)
        assert await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)  # room again


async def test_a_waiting_call_that_cannot_start_raises_and_the_next_one_starts(
    pool_name: str,
) -> None:
    # The pool starts a waiting call the moment room frees, inside the done callback of
    # the call that ended: what grpc raises there reaches that call's caller, and the
    # calls queued behind it still start.
    async with fleet(1) as (backend,), capped_pool(pool_name, backend.address, 1, 1):
        facade = Pool.channel(pool_name)
        sleep = _raw(facade, "unary_unary", SLEEP_METHOD)
        peer = _raw(facade, "unary_unary", PEER_METHOD)
        hold = sleep(b"5000", timeout=30)
        broken = peer(b"", timeout=30, metadata="not pairs")  # grpc refuses it at the start
        after = peer(b"", timeout=30)
        errors: list[BaseException] = []
        answers: list[bytes] = []

        async def await_broken() -> None:
            try:
                await broken
            except ValueError as error:
                errors.append(error)

        async def await_after() -> None:
            answers.append(await after)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(await_broken)
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(await_after)
            await anyio.wait_all_tasks_blocked()
            assert in_flight(pool_name) == (1, {0: 1})  # both wait for room
            hold.cancel()
        (error,) = errors
        assert "unpack" in str(error)
        (answer,) = answers
        assert answer  # the peer address the server saw
        await all_calls_ended(pool_name)
