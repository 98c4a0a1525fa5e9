"""A PooledChannel call answers as a grpc.aio call does, where a peer suite found it did not.

Each test here failed before its fix: a call nobody awaits that never started, a call
failed at once that answered differently from grpc's own, stubs built per call that
grew a cache per call, the first call failing while the pool connected, streams left
unread that held their slots for ever, and misuse that went unsaid. Real servers on
127.0.0.1 (tests/_fleet.py); grpc's own channel beside the pool where the point is to
answer as grpc does.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from conngrpc import ChannelConfig, NotConnectedError, Pool, Supervisor
from conngrpc._server import PEER_METHOD, SLEEP_METHOD
from conngrpc.channel.connector import connect_grpc
from conngrpc.pool.runtime import pools
from tests._fleet import COUNT_METHOD, ECHO_METHOD, Backend, fleet
from tests._logs import capture_logs
from tests._net import closed_port
from tests._pools import live_pool
from tests._probe import wait_until

pytestmark = pytest.mark.anyio

OK = grpc.StatusCode.OK


def _raw(facade: grpc.aio.Channel, kind: str, method: str) -> Any:
    return getattr(facade, kind)(method, request_serializer=None, response_deserializer=None)


def pool(
    name: str, address: str, size: int = 1, settings: dict[str, Any] | None = None, **channel: Any
) -> AbstractAsyncContextManager[Supervisor]:
    return live_pool(name, address, size, settings=settings, **channel)


def in_flight(name: str) -> int:
    return Pool.status(name).in_flight


def on_done(call: Any) -> anyio.Event:
    """An event set when ``call``'s done callback runs, with nobody awaiting the call."""
    done = anyio.Event()
    call.add_done_callback(lambda _: done.set())
    return done


# --- 1: a call starts when it is made ---------------------------------------------------------


async def test_a_call_waiting_for_a_channel_is_sent_with_nobody_awaiting_it(pool_name: str) -> None:
    port = closed_port()
    async with pool(pool_name, f"127.0.0.1:{port}"):
        facade = Pool.channel(pool_name)
        call = _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=30, wait_for_ready=True)
        done = on_done(call)  # fire and forget: only a done callback
        backend = await Backend().start(port=port)
        try:
            with anyio.fail_after(20):  # a reconnect takes the backoff, 0.1 s at most
                await done.wait()
            assert backend.calls == 1  # the server got it
            assert await call.code() is OK
        finally:
            await backend.stop()


async def test_a_call_waiting_for_room_is_sent_with_nobody_awaiting_it(pool_name: str) -> None:
    async with (
        fleet(1) as (backend,),
        pool(pool_name, backend.address, settings={"max_calls_per_channel": 1}),
    ):
        await Pool.wait_connected(pool_name, timeout=5)
        sleep = _raw(Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        busy = sleep(b"200", timeout=30)
        queued = sleep(b"0", timeout=30)
        done = on_done(queued)
        await busy
        with anyio.fail_after(5):  # it starts as the busy call ends
            await done.wait()
        assert backend.calls == 2
        assert await queued.code() is OK


async def test_the_deadline_of_a_waiting_call_nobody_awaits_is_kept(pool_name: str) -> None:
    async with (
        fleet(1) as (backend,),
        pool(pool_name, backend.address, settings={"max_calls_per_channel": 1}),
    ):
        await Pool.wait_connected(pool_name, timeout=5)
        sleep = _raw(Pool.channel(pool_name), "unary_unary", SLEEP_METHOD)
        busy = sleep(b"20000", timeout=30)  # holds the only room past the queued one's deadline
        queued = sleep(b"0", timeout=0.2)
        done = on_done(queued)
        with anyio.fail_after(10):
            await done.wait()
        assert await queued.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert not busy.done()
        busy.cancel()


# --- 2: a call failed at once answers as grpc's ------------------------------------------------


async def test_a_call_failed_at_once_answers_every_method_as_grpc_does(pool_name: str) -> None:
    address = f"127.0.0.1:{closed_port()}"
    async with pool(pool_name, address):
        facade = Pool.channel(pool_name)
        await wait_until(lambda: facade.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        async with grpc.aio.insecure_channel(address) as plain:
            answers = {}
            for who, channel in (("grpc", plain), ("pool", facade)):
                call = _raw(channel, "stream_stream", ECHO_METHOD)(timeout=30)
                code = await call.code()
                remaining = call.time_remaining()
                assert remaining is not None
                finished_writing = await call.done_writing()
                with pytest.raises(asyncio.InvalidStateError) as writing:
                    await call.write(b"x")
                with pytest.raises(grpc.aio.AioRpcError) as reading:
                    await call.read()
                answers[who] = (
                    code,
                    0 < remaining <= 30,
                    finished_writing,
                    str(writing.value),
                    reading.value.code(),
                    call.done(),
                    call.cancelled(),
                    call.cancel(),
                )
        assert answers["pool"] == answers["grpc"]
        assert answers["pool"][0] is grpc.StatusCode.UNAVAILABLE


async def test_awaiting_a_call_failed_at_once_lets_other_tasks_run_as_grpc_does(
    pool_name: str,
) -> None:
    """A caller that retries at once on UNAVAILABLE must not starve the event loop: the
    pool's workers, which would bring a channel back, run on it too (the retry loop never
    ended, with no other task running, before the fix)."""
    address = f"127.0.0.1:{closed_port()}"
    async with pool(pool_name, address):
        facade = Pool.channel(pool_name)
        await wait_until(lambda: facade.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        async with grpc.aio.insecure_channel(address) as plain:
            turns = {}
            for who, channel in (("grpc", plain), ("pool", facade)):
                others = 0

                async def other() -> None:
                    nonlocal others
                    while True:
                        others += 1
                        await anyio.lowlevel.checkpoint()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(other)
                    for _ in range(20):
                        with pytest.raises(grpc.aio.AioRpcError):
                            await _raw(channel, "unary_unary", PEER_METHOD)(b"", timeout=30)
                    turns[who] = others
                    tasks.cancel_scope.cancel()
        assert turns["grpc"] > 0
        assert turns["pool"] > 0


# --- 3: stubs built per call --------------------------------------------------------------------


async def test_stubs_built_per_call_add_no_entry_per_call(pool_name: str) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address, 2):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)
        for _ in range(200):  # a stub per request, as handlers often build them
            await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
            stub = health_pb2_grpc.HealthStub(facade)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        runtime = pools.get(pool_name)
        assert runtime is not None
        entries = [len(slot.callables) for slot in runtime.handout.slots]
        assert sum(entries) <= 4  # one per method and channel (it was one per stub)


async def test_a_registered_method_is_registered_on_the_pool_channels_too(pool_name: str) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)
        stub = health_pb2_grpc.HealthStub(facade)  # generated code passes _registered_method
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
        runtime = pools.get(pool_name)
        assert runtime is not None
        (slot,) = runtime.handout.slots
        handles = {key[1]: real._registered_call_handle for key, real in slot.callables.items()}
        assert handles[PEER_METHOD] == 0  # grpc's "not registered"
        assert handles["/grpc.health.v1.Health/Check"] != 0


# --- 6: the first call, while the pool connects --------------------------------------------


async def test_a_call_made_while_the_pool_connects_waits_for_the_first_channel(
    pool_name: str,
) -> None:
    gate = anyio.Event()

    async def connect_when_let(config: ChannelConfig) -> grpc.aio.Channel:
        await gate.wait()
        return await connect_grpc(config)

    async with (
        fleet(1) as (backend,),
        pool(pool_name, backend.address, 2, connector=connect_when_let),
    ):
        call = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)(b"", timeout=30)
        await anyio.wait_all_tasks_blocked()
        assert not call.done()  # it waits, as grpc queues calls while it connects
        gate.set()
        with anyio.fail_after(10):
            answer = await call
        assert answer.startswith(str(backend.port).encode())


async def test_a_call_waiting_for_the_first_channel_fails_when_the_pool_stops(
    pool_name: str,
) -> None:
    never = anyio.Event()

    async def connect_never(config: ChannelConfig) -> grpc.aio.Channel:
        await never.wait()
        raise AssertionError("unreachable")

    async with fleet(1) as (backend,):
        async with pool(pool_name, backend.address, connector=connect_never):
            call = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)(b"")  # no deadline
            await anyio.wait_all_tasks_blocked()
            assert not call.done()
        with anyio.fail_after(5), pytest.raises(grpc.aio.AioRpcError) as failed:
            await call  # it would wait for ever for a pool that is gone
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no pool of that name is running" in (failed.value.details() or "")


async def test_a_call_made_as_the_pool_starts_fails_once_its_channels_have_failed(
    pool_name: str,
) -> None:
    async with pool(pool_name, f"127.0.0.1:{closed_port()}", 2):
        call = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)(b"", timeout=30)
        with anyio.fail_after(10), pytest.raises(grpc.aio.AioRpcError) as failed:
            await call  # the refusal takes milliseconds; the deadline is 30 s away
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Connection refused" in (failed.value.details() or "")


# --- 7: streams left unread ----------------------------------------------------------------------


class Escaped(Exception):
    pass


@pytest.mark.parametrize("leave", ["break", "return", "raise"])
async def test_a_stream_left_early_is_cancelled_and_frees_its_room(
    pool_name: str, leave: str
) -> None:
    async with (
        fleet(1) as (backend,),
        pool(pool_name, backend.address, settings={"max_calls_per_channel": 2}),
    ):
        await Pool.wait_connected(pool_name, timeout=5)
        facade = Pool.channel(pool_name)
        count = _raw(facade, "unary_stream", COUNT_METHOD)

        async def read_one() -> None:
            async for _ in count(b"1000:10", timeout=60):  # 10 s of messages
                if leave == "break":
                    break
                if leave == "return":
                    return
                raise Escaped

        for _ in range(2):  # two streams left behind: the room of the only channel
            with suppress(Escaped):
                await read_one()
        with anyio.fail_after(5):  # one loop turn each; they would hold it for 60 s
            await wait_until(lambda: in_flight(pool_name) == 0)
        answer = await _raw(facade, "unary_unary", PEER_METHOD)(b"", timeout=5)
        assert answer.startswith(str(backend.port).encode())


async def test_a_stream_read_to_its_end_is_not_cancelled(pool_name: str) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        call = _raw(Pool.channel(pool_name), "unary_stream", COUNT_METHOD)(b"3:1", timeout=10)
        assert [message async for message in call] == [b"0", b"1", b"2"]
        assert await call.code() is OK
        assert not call.cancelled()


async def test_a_stream_kept_and_read_with_read_goes_on_where_it_stopped(pool_name: str) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        echo = _raw(Pool.channel(pool_name), "stream_stream", ECHO_METHOD)(timeout=10)
        for word in (b"a", b"b"):
            await echo.write(word)
            assert await echo.read() == word
        await echo.done_writing()
        assert await echo.read() is grpc.aio.EOF
        assert await echo.code() is OK


# --- 8: misuse -------------------------------------------------------------------------------


async def test_a_call_from_another_thread_or_loop_is_a_runtime_error_saying_where(
    pool_name: str,
) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        peer = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)

        async def on_its_own_loop() -> Any:
            return await peer(b"", timeout=5)

        with pytest.raises(RuntimeError, match="outside any event loop") as sync:
            await anyio.to_thread.run_sync(peer, b"")
        with pytest.raises(RuntimeError, match="on another event loop") as other:
            await anyio.to_thread.run_sync(asyncio.run, on_its_own_loop())
        for error in (sync.value, other.value):
            assert f"pool {pool_name!r}" in str(error)
            assert "run_coroutine_threadsafe" in str(error)
        assert in_flight(pool_name) == 0
        assert (await peer(b"", timeout=5)).startswith(str(backend.port).encode())


async def test_a_health_service_the_server_does_not_know_is_named_in_the_reason(
    pool_name: str,
) -> None:
    async with fleet(1) as (backend,):
        with capture_logs() as logs:
            async with pool(pool_name, backend.address, health_check="no.such.Service"):

                def refused() -> bool:
                    try:
                        Pool.get_channel(pool_name)
                    except NotConnectedError as error:
                        return "SERVICE_UNKNOWN" in error.reason
                    return False

                await wait_until(refused)
                with pytest.raises(NotConnectedError) as caught:
                    Pool.get_channel(pool_name)
        reason = caught.value.reason
        assert "service 'no.such.Service' said SERVICE_UNKNOWN" in reason
        assert "no such service" in reason
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert any("no.such.Service" in str(e.get("reason")) for e in warnings), warnings


# --- what a review found -------------------------------------------------------------------


async def test_a_stream_read_with_aiter_then_async_for_resumes_as_grpc_does(
    pool_name: str,
) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        async with grpc.aio.insecure_channel(backend.address) as plain:
            answers = {}
            for who, channel in (("grpc", plain), ("pool", Pool.channel(pool_name))):
                call = _raw(channel, "unary_stream", COUNT_METHOD)(b"5:1", timeout=10)
                first = await anext(aiter(call))  # an iterator made and dropped
                rest = [message async for message in call]
                answers[who] = (first, rest, await call.code(), call.cancelled())
        assert answers["pool"] == answers["grpc"]
        assert answers["pool"][1] == [b"1", b"2", b"3", b"4"]


async def test_a_dropped_stream_with_a_done_callback_is_cancelled_all_the_same(
    pool_name: str,
) -> None:
    async with fleet(1) as (backend,), pool(pool_name, backend.address):
        await Pool.wait_connected(pool_name, timeout=5)
        count = _raw(Pool.channel(pool_name), "unary_stream", COUNT_METHOD)
        ended: list[Any] = []
        stream = count(b"1000:10", timeout=60)
        stream.add_done_callback(ended.append)  # as instrumentation does
        assert await stream.read() == b"0"
        del stream
        with anyio.fail_after(5):
            await wait_until(lambda: in_flight(pool_name) == 0 and ended != [])
        assert ended[0].cancelled()


async def test_a_waiting_call_on_a_mocked_pool_is_answered_by_the_mock(pool_name: str) -> None:
    async with fleet(1) as (backend,), grpc.aio.insecure_channel(backend.address) as real:
        call = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)(
            b"", timeout=10, wait_for_ready=True
        )  # made before the pool runs
        async with pool(pool_name, "unused:1", mock=lambda: real):
            with anyio.fail_after(8):
                answer = await call
        assert answer.startswith(str(backend.port).encode())


async def test_a_waiting_call_made_on_another_loop_fails_when_the_pool_starts_here(
    pool_name: str,
) -> None:
    made = threading.Event()

    async def elsewhere() -> BaseException | None:
        call = _raw(Pool.channel(pool_name), "unary_unary", PEER_METHOD)(
            b"", timeout=10, wait_for_ready=True
        )
        made.set()
        try:
            await call
        except BaseException as error:  # what the call ended with, for the test to see
            return error
        return None

    async with fleet(1) as (backend,):
        async with anyio.create_task_group() as tasks:
            outcome: list[BaseException | None] = []

            async def run_elsewhere() -> None:
                outcome.append(await anyio.to_thread.run_sync(asyncio.run, elsewhere()))

            tasks.start_soon(run_elsewhere)
            await anyio.to_thread.run_sync(made.wait, 5)
            async with pool(pool_name, backend.address):
                await Pool.wait_connected(pool_name, timeout=5)
                with anyio.fail_after(8):
                    await wait_until(lambda: outcome != [])
        (error,) = outcome
        assert isinstance(error, RuntimeError), error
        assert "on another event loop" in str(error)
