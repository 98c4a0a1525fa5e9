"""conngrpc.sync calls under grpc's retryPolicy and hedgingPolicy, against real servers.

The same servers as tests/live/test_retries.py's (Scripted: each call answers as a
script says), run on a loop of their own thread (tests/_sync_fleet.py), so that each
test checks from the servers' side where each attempt went.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from bench.retries import RETRY_CONFIG
from conngrpc import ChildSpec, sync, telemetry
from conngrpc._server import SLEEP_METHOD, ServerProcess
from conngrpc.pool.retry import HEDGE, PREVIOUS_ATTEMPTS, RETRY
from conngrpc.pool.runtime import thread_pools
from tests._pools import LIVE_BACKOFF
from tests._probe import WAIT_LIMIT, wait_until_sync
from tests._sync_fleet import ServerLoop
from tests.live.test_retries import (
    COLLECT,
    ECHO,
    NO_GRPC_RETRIES,
    OTHER,
    REQUESTS,
    STREAM,
    TRY,
    UNAVAILABLE,
    Script,
    Scripted,
    calls_in_order,
    fail_first,
    hang,
    hedging_config,
    received,
    retry_config,
)
from tests.live.test_sync import in_parallel

Events = list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]


@contextmanager
def scripted(script: Script, count: int = 3) -> Iterator[list[Scripted]]:
    loop = ServerLoop()
    started = [loop.run(Scripted(script, name=f"s{index}").start()) for index in range(count)]
    try:
        yield started
    finally:
        for server in started:
            assert server.server is not None
            loop.run(server.server.stop(None))
        loop.close()


def spec_of(
    name: str, backends: list[Scripted], config: dict[str, Any], size: int | None = None
) -> ChildSpec:
    """A sync pool over ``backends`` (one channel each unless ``size``), given ``config``."""
    addresses = "ipv4:" + ",".join(backend.address for backend in backends)
    channel = {
        "address": addresses,
        "backoff": LIVE_BACKOFF,
        "options": NO_GRPC_RETRIES,
    }
    return sync.Pool.child_spec(
        name=name,
        pool_size=size or len(backends),
        channel=channel,
        service_config=json.dumps(config),
    )


@contextmanager
def pool(
    name: str, backends: list[Scripted], config: dict[str, Any], size: int | None = None
) -> Iterator[grpc.Channel]:
    with sync.Supervisor([spec_of(name, backends, config, size)]):
        sync.Pool.wait_connected(name, timeout=WAIT_LIMIT)
        yield sync.Pool.channel(name)


@pytest.fixture
def events() -> Iterator[Events]:
    seen: Events = []

    def handle(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append((event, dict(measurements), dict(metadata)))

    telemetry.attach_many("test-sync-retries", [RETRY, HEDGE], handle, None)
    yield seen
    telemetry.detach("test-sync-retries")


def call(channel: grpc.Channel, how: str, method: str = TRY, **options: Any) -> tuple[bytes, Any]:
    """One call of ``method`` made ``how`` (``__call__``, ``with_call``, ``future``): its
    response, and what grpc gives of the call (None for ``__call__``)."""
    multicallable = channel.unary_unary(method)
    if how == "__call__":
        return multicallable(b"", timeout=WAIT_LIMIT, **options), None
    if how == "with_call":
        return multicallable.with_call(b"", timeout=WAIT_LIMIT, **options)  # type: ignore[no-any-return]
    future = multicallable.future(b"", timeout=WAIT_LIMIT, **options)
    return future.result(), future


@pytest.mark.parametrize("how", ["__call__", "with_call", "future"])
def test_a_failed_attempt_is_retried_on_another_backend(
    pool_name: str, events: Events, how: str
) -> None:
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        response, made = call(channel, how)
        calls = received(backends)
        assert len(calls) == 2
        (first, _), (second, header) = sorted(calls, key=lambda c: c[1] or "")
        assert first != second
        assert response == second.encode()
        assert header == "1"  # grpc-previous-rpc-attempts, absent on the first
        if how != "__call__":
            assert made.code() is grpc.StatusCode.OK
        if how == "future":
            assert made.attempts == 2
        [(event, measurements, metadata)] = events
        assert (event, measurements) == (RETRY, {"attempt": 2})
        assert metadata["code"] is UNAVAILABLE
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


@pytest.mark.parametrize("how", ["__call__", "future"])
def test_a_code_that_is_not_retryable_is_not_retried(pool_name: str, how: str) -> None:
    config = retry_config()
    with (
        scripted(fail_first(grpc.StatusCode.INTERNAL)) as backends,
        pool(pool_name, backends, config) as channel,
    ):
        with pytest.raises(grpc.RpcError) as failed:
            call(channel, how)
        assert failed.value.code() is grpc.StatusCode.INTERNAL
        assert failed.value.details() == "the first call fails"
        assert len(received(backends)) == 1


def test_an_error_after_response_headers_commits_the_call(pool_name: str) -> None:
    with (
        scripted(fail_first(headers=True)) as backends,
        pool(pool_name, backends, retry_config()) as channel,
    ):
        with pytest.raises(grpc.RpcError) as failed:
            call(channel, "__call__")
        assert failed.value.code() is UNAVAILABLE
        assert len(received(backends)) == 1


def test_a_deadline_that_passes_between_attempts_ends_the_call(pool_name: str) -> None:
    slow = retry_config(backoff="3600s")  # a backoff drawn in [0, 1 h): past the deadline
    with scripted(fail_first()) as backends, pool(pool_name, backends, slow) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(TRY)(b"", timeout=0.5)
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(received(backends)) == 1


@pytest.mark.parametrize("how", ["__call__", "future"])
def test_a_hedge_answers_from_another_replica_and_the_slow_copy_is_cancelled(
    pool_name: str, events: Events, how: str
) -> None:
    async def first_stalls(server: Scripted, context: Any) -> bytes:
        if sum(len(b.received) for b in everyone) == 1:
            return await hang(server, context)  # until the client cancels it
        return server.name.encode()

    everyone: list[Scripted] = []
    with (
        scripted(first_stalls) as backends,
        pool(pool_name, backends, hedging_config()) as channel,
    ):
        everyone.extend(backends)
        response, _ = call(channel, how)
        calls = [(b, c) for b in backends for c in b.received]
        assert len(calls) == 2
        stalled = next(b for b, c in calls if c.metadata.get(PREVIOUS_ATTEMPTS) is None)
        hedge = next(b for b, c in calls if c.metadata.get(PREVIOUS_ATTEMPTS) == "1")
        assert stalled is not hedge
        assert response == hedge.name.encode()
        wait_until_sync(lambda: stalled.received[0].cancelled)  # cancelled on the server
        assert [event for event, _, _ in events] == [HEDGE]
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


def test_a_replica_killed_under_load_fails_no_call(pool_name: str) -> None:
    replicas = [ServerProcess(args=["--name", f"r{i}"]) for i in range(3)]
    try:
        for replica in replicas:
            replica.start()
        target = "ipv4:" + ",".join(replica.address for replica in replicas)
        spec = sync.Pool.child_spec(
            name=pool_name,
            pool_size=6,
            channel={"address": target, "backoff": LIVE_BACKOFF},
            service_config=RETRY_CONFIG,
        )
        with sync.Supervisor([spec]):
            sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
            sleep = sync.Pool.channel(pool_name).unary_unary(SLEEP_METHOD)
            answers: list[str] = []
            failures: list[grpc.RpcError] = []
            killed = threading.Event()
            after_kill = [0]

            def caller(_: int) -> None:
                while not (killed.is_set() and after_kill[0] >= 200):
                    try:
                        answers.append(sleep(b"5", timeout=10).decode())
                    except grpc.RpcError as error:
                        failures.append(error)
                    if killed.is_set():
                        after_kill[0] += 1

            def kill(_: int) -> None:
                wait_until_sync(lambda: len(answers) >= 100, timeout=WAIT_LIMIT * 2)
                replicas[0].kill()  # with calls in flight on it
                killed.set()

            in_parallel(21, lambda index: kill(index) if index == 20 else caller(index))
            assert failures == []
            assert "r1" in answers
            assert "r2" in answers
    finally:
        for replica in replicas:
            replica.kill()


@pytest.mark.parametrize("fails", [False, True])
def test_a_future_under_a_policy_answers_as_grpcs_own_future(pool_name: str, fails: bool) -> None:
    async def script(server: Scripted, context: Any) -> bytes:
        if fails:
            await context.abort(grpc.StatusCode.INTERNAL, "no")
        return server.name.encode()

    with scripted(script, 1) as backends, pool(pool_name, backends, retry_config()) as channel:
        plain = grpc.insecure_channel(backends[0].address)
        try:
            ours = channel.unary_unary(TRY).future(b"", timeout=WAIT_LIMIT)
            theirs = plain.unary_unary(TRY).future(b"", timeout=WAIT_LIMIT)
            told: list[Any] = []
            ours.add_done_callback(told.append)
            for future in (ours, theirs):
                assert future.exception(timeout=WAIT_LIMIT) is None or fails
            for method in ("code", "details", "done", "cancelled", "running", "is_active"):
                assert getattr(ours, method)() == getattr(theirs, method)(), method
            assert ours.cancel() is theirs.cancel() is False  # over: nothing to cancel
            assert ours.trailing_metadata() == theirs.trailing_metadata()
            if fails:
                with pytest.raises(grpc.RpcError) as ours_raised:
                    ours.result()
                assert ours_raised.value.code() is grpc.StatusCode.INTERNAL
                assert ours.traceback() is not None
            else:
                assert ours.result() == theirs.result() == b"s0"
            wait_until_sync(lambda: told == [ours])
            assert ours.attempts == 1
        finally:
            plain.close()


# --- what a cold review found (each failed before its fix) ---------------------------------


def test_a_future_callback_runs_off_the_pools_thread_and_may_call_through_the_pool(
    pool_name: str,
) -> None:
    """grpc runs a future's callbacks on a thread of its own: a hedged future's may
    block, even calling through the pool, without stalling the pool's thread."""
    with (
        scripted(answer_now) as backends,
        pool(pool_name, backends, hedging_config()) as channel,
    ):
        multicallable = channel.unary_unary(TRY)
        heard: dict[str, Any] = {}
        called = threading.Event()

        def callback(_: Any) -> None:
            heard["thread"] = threading.current_thread().name
            heard["inner"] = multicallable(b"", timeout=WAIT_LIMIT)
            called.set()

        multicallable.future(b"", timeout=WAIT_LIMIT).add_done_callback(callback)
        assert called.wait(WAIT_LIMIT * 2), "the callback's call hung"
        assert not heard["thread"].startswith("conngrpc.sync supervisor")
        assert heard["inner"] in {b"s0", b"s1", b"s2"}


async def answer_now(server: Scripted, context: Any) -> bytes:
    return server.name.encode()


def test_a_retried_call_throttled_fails_with_grpcs_error(pool_name: str) -> None:
    async def always_fail(server: Scripted, context: Any) -> bytes:
        await context.abort(UNAVAILABLE, "down")
        return b""

    config = {**retry_config(), "retryThrottling": {"maxTokens": 2, "tokenRatio": 0.1}}
    with scripted(always_fail, 2) as backends, pool(pool_name, backends, config) as channel:
        multicallable = channel.unary_unary(TRY)

        def call(_: int) -> str:
            try:
                multicallable(b"", timeout=WAIT_LIMIT)
            except grpc.RpcError as error:
                return str(error.code())
            return "OK"

        assert set(in_parallel(8, call)) == {str(UNAVAILABLE)}


def test_a_future_under_a_policy_answers_a_deadline_and_a_cancel_as_grpcs(
    pool_name: str,
) -> None:
    async def first_fails_then_hang(server: Scripted, context: Any) -> bytes:
        if sum(len(b.received) for b in everyone) == 1:
            await context.abort(UNAVAILABLE, "the first call fails")
        return await hang(server, context)

    everyone: list[Scripted] = []
    slow = retry_config(backoff="3600s")
    with (
        scripted(first_fails_then_hang) as backends,
        pool(pool_name, backends, slow) as channel,
    ):
        everyone.extend(backends)
        late = channel.unary_unary(TRY).future(b"", timeout=0.3)
        assert late.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert late.details() == "Deadline Exceeded"
        assert isinstance(late.exception(), grpc.RpcError)
        hung = channel.unary_unary(TRY).future(b"", timeout=60)
        wait_until_sync(lambda: len(received(backends)) == 2)  # the first stays unanswered
        assert hung.cancel()
        assert hung.code() is grpc.StatusCode.CANCELLED
        assert hung.details() == "Locally cancelled by application!"
        with pytest.raises(grpc.FutureCancelledError):
            hung.result()


def test_stopping_the_pool_during_a_backoff_fails_the_call_as_unavailable(pool_name: str) -> None:
    slow = retry_config(backoff="3600s")
    with scripted(fail_first()) as backends:
        supervisor = sync.Supervisor([spec_of(pool_name, backends, slow)]).start()
        sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
        future = sync.Pool.channel(pool_name).unary_unary(TRY).future(b"", timeout=60)
        wait_until_sync(lambda: len(received(backends)) == 1)  # failed: in its backoff
        supervisor.stop()
        assert future.code() is UNAVAILABLE
        assert "it stopped" in future.details()


# --- response streams ----------------------------------------------------------------------


@pytest.mark.parametrize("read", [True, False])
def test_a_response_stream_is_retried_until_its_first_message(
    pool_name: str, events: Events, read: bool
) -> None:
    """Read, or not (its end decides then): the stream answers from the second attempt."""
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
        done: list[Any] = []
        stream.add_done_callback(done.append)
        if not read:  # retried with nobody reading: the first attempt's end sent it
            wait_until_sync(lambda: len(received(backends)) == 2)
        messages = list(stream)
        calls = received(backends)
        assert len(calls) == 2
        (first, _), (second, header) = sorted(calls, key=lambda c: c[1] or "")
        assert first != second
        assert header == "1"
        assert messages == [second.encode(), b"second"]
        assert stream.code() is grpc.StatusCode.OK
        assert stream.attempts == 2
        wait_until_sync(lambda: done == [stream])
        assert [event for event, _, _ in events] == [RETRY]
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


def test_a_response_streams_headers_commit_it_before_its_first_message(pool_name: str) -> None:
    with (
        scripted(fail_first(headers=True)) as backends,
        pool(pool_name, backends, retry_config()) as channel,
    ):
        stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
        with pytest.raises(grpc.RpcError) as failed:
            list(stream)
        assert failed.value.code() is UNAVAILABLE
        assert stream.code() is UNAVAILABLE
        assert dict(stream.initial_metadata() or ()) == {"began": "yes"}
        assert len(received(backends)) == 1


def test_a_retried_stream_dropped_is_cancelled_and_stopping_ends_one_in_its_backoff(
    pool_name: str,
) -> None:
    slow = retry_config(backoff="3600s")
    with scripted(fail_first()) as backends:
        supervisor = sync.Supervisor([spec_of(pool_name, backends, slow)]).start()
        sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
        method = sync.Pool.channel(pool_name).unary_stream(STREAM)
        waiting = method(b"")  # its first attempt fails: then a 0-3600 s backoff
        wait_until_sync(lambda: len(received(backends)) == 1)
        dropped = method(b"", timeout=WAIT_LIMIT)
        assert next(dropped) in {b"s0", b"s1", b"s2"}  # the second call answers
        del dropped
        gc.collect()
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)
        supervisor.stop()
        assert waiting.code() is UNAVAILABLE
        assert "it stopped" in waiting.details()
        with pytest.raises(grpc.RpcError):
            next(waiting)


# --- client streams ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["__call__", "with_call"])
def test_a_client_stream_is_retried_on_another_backend_with_the_same_requests(
    pool_name: str, events: Events, how: str
) -> None:
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        collect = getattr(channel.stream_unary(COLLECT), how)
        answer = collect(iter(REQUESTS), timeout=WAIT_LIMIT)
        response = answer[0] if how == "with_call" else answer
        (failed_on, first), (answered_by, second) = calls_in_order(backends)
        assert failed_on is not answered_by
        assert first.requests == second.requests == REQUESTS  # as the servers read them
        assert second.metadata[PREVIOUS_ATTEMPTS] == "1"
        assert response == answered_by.name.encode()
        assert [event for event, _, _ in events] == [RETRY]
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


def test_a_bidirectional_stream_is_retried_before_its_first_response(pool_name: str) -> None:
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        stream = channel.stream_stream(ECHO)(iter([b"a", b"b", b"c"]), timeout=WAIT_LIMIT)
        assert list(stream) == [b"a", b"b", b"c"]
        assert stream.code() is grpc.StatusCode.OK
        (failed_on, first), (answered_by, second) = calls_in_order(backends)
        assert failed_on is not answered_by
        assert first.requests == [b"a"]  # the server failed it after the first request
        assert second.requests == [b"a", b"b", b"c"]
        assert second.metadata[PREVIOUS_ATTEMPTS] == "1"
        wait_until_sync(lambda: sync.Pool.status(pool_name).in_flight == 0)


@pytest.mark.parametrize(("buffer", "retried"), [(20, True), (19, False)])
def test_a_client_stream_larger_than_the_retry_buffer_commits_and_is_not_retried(
    pool_name: str, buffer: int, retried: bool
) -> None:
    options = [*NO_GRPC_RETRIES, ("grpc.per_rpc_retry_buffer_size", buffer)]
    with scripted(fail_first()) as backends:
        addresses = "ipv4:" + ",".join(backend.address for backend in backends)
        spec = sync.Pool.child_spec(
            name=pool_name,
            pool_size=3,
            channel={"address": addresses, "options": options},
            service_config=json.dumps(retry_config()),
        )
        with sync.Supervisor([spec]):
            sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
            # The buffer counts serialized bytes: 2 requests of 5 bytes, of 10 each sent.
            collect = sync.Pool.channel(pool_name).stream_unary(
                COLLECT, request_serializer=lambda request: request * 2
            )
            if retried:
                assert collect(iter([b"12345", b"67890"]), timeout=WAIT_LIMIT)
                assert len(received(backends)) == 2
            else:
                with pytest.raises(grpc.RpcError) as raised:
                    collect(iter([b"12345", b"67890"]), timeout=WAIT_LIMIT)
                assert raised.value.code() is UNAVAILABLE
                assert len(received(backends)) == 1
            first = calls_in_order(backends)[0][1]
            assert first.requests == [b"1234512345", b"6789067890"]


# --- what a second review found in retried streams (each failed before its fix) ---------------


async def always_fail(server: Scripted, context: Any) -> bytes:
    await context.abort(UNAVAILABLE, "down")
    return b""


@pytest.mark.parametrize("start", ["reading at once", "reading in the backoff"])
def test_each_attempt_of_a_retried_stream_is_decided_once(pool_name: str, start: str) -> None:
    """The reader and the attempt's end both see it end: maxAttempts go out, no fewer."""
    config = retry_config(attempts=3, backoff="0.05s")
    with scripted(always_fail, 3) as backends, pool(pool_name, backends, config) as channel:
        for round_ in range(5):
            stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
            if start == "reading in the backoff":  # the attempt's end decided the first
                wait_until_sync(lambda n=round_: len(received(backends)) >= 3 * n + 1)
            with pytest.raises(grpc.RpcError) as failed:
                list(stream)
            assert failed.value.code() is UNAVAILABLE
            assert stream.attempts == 3
            assert len(received(backends)) == 3 * (round_ + 1)


def test_a_retried_stream_read_to_its_end_answers_its_status(pool_name: str) -> None:
    """Its end, seen while the reader held its last message, is decided all the same."""
    with scripted(hang, 1) as backends, pool(pool_name, backends, retry_config()) as channel:
        for _ in range(20):
            stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
            stream.cancel()
            assert stream.code() is grpc.StatusCode.CANCELLED
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        for _ in range(20):
            stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
            assert next(stream)
            assert next(stream) == b"second"
            assert stream.code() is grpc.StatusCode.OK  # without reading its end


def test_a_retried_streams_empty_headers_come_at_once_and_no_message_is_lost(
    pool_name: str,
) -> None:
    with scripted(fail_first()) as backends, pool(pool_name, backends, retry_config()) as channel:
        stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
        assert not stream.initial_metadata()  # grpc's own: () before any message is read
        messages = list(stream)
        assert len(messages) == 2
        assert messages[1] == b"second"
        assert stream.attempts == 2


def test_a_retried_streams_callbacks_never_run_on_the_pools_thread(pool_name: str) -> None:
    slow = retry_config(backoff="3600s")  # the deadline passes in the backoff
    with scripted(fail_first()) as backends, pool(pool_name, backends, slow) as channel:
        stream = channel.unary_stream(STREAM)(b"", timeout=0.3)
        heard: list[str] = []
        called = threading.Event()

        def callback(_: Any) -> None:
            heard.append(threading.current_thread().name)
            called.set()

        stream.add_done_callback(callback)
        assert called.wait(WAIT_LIMIT)
        assert stream.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert not heard[0].startswith("conngrpc.sync supervisor")


def test_a_retried_stream_waits_for_room_in_the_queue_first_come_first_served(
    pool_name: str,
) -> None:
    async def hold_or_answer(server: Scripted, context: Any) -> bytes:
        if dict(context.invocation_metadata() or ()).get("hold"):
            return await hang(server, context)
        return server.name.encode()

    with scripted(hold_or_answer, 1) as backends:
        spec = sync.Pool.child_spec(
            name=pool_name,
            pool_size=1,
            channel={"address": backends[0].address, "options": NO_GRPC_RETRIES},
            service_config=json.dumps(retry_config()),
            max_calls_per_channel=1,
        )
        with sync.Supervisor([spec]):
            sync.Pool.wait_connected(pool_name, timeout=WAIT_LIMIT)
            channel = sync.Pool.channel(pool_name)
            hold = channel.unary_unary(OTHER).future(b"", metadata=(("hold", "1"),))
            wait_until_sync(lambda: len(received(backends)) == 1)
            stream = channel.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT, metadata=(("n", "S"),))
            waiting = thread_pools.get(pool_name).admitted.waiting  # type: ignore[union-attr]
            wait_until_sync(lambda: len(waiting) == 1)  # the stream is first in the queue
            after = channel.unary_unary(OTHER).future(
                b"", timeout=WAIT_LIMIT, metadata=(("n", "B"),)
            )
            wait_until_sync(lambda: len(waiting) == 2)
            hold.cancel()
            assert list(stream) == [b"s0", b"second"]
            assert after.result(timeout=WAIT_LIMIT) == b"s0"
            order = [call.metadata.get("n") for call in backends[0].received][1:]
            assert order == ["S", "B"]
