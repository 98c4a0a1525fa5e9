"""Retries and hedging across a pool's connections, live: real servers on 127.0.0.1.

Each :class:`Scripted` server answers ``Try`` (unary-unary), ``Stream`` (unary-stream),
``Collect`` (stream-unary: it reads every request first) and ``Echo`` (stream-stream:
it answers each request with itself, the script deciding before the first) as its test
scripts it, and records every call it received (the metadata it came with, the requests,
and whether the client cancelled it), so each test proves from the servers' side where
each attempt went and what it carried. The pool is given grpc's service config with a
``methodConfig`` for the test service (``retryPolicy`` or ``hedgingPolicy``), as a user
would.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from bench.retries import RETRY_CONFIG
from conngrpc import Pool, telemetry
from conngrpc._server import SLEEP_METHOD, ServerProcess, start_server
from conngrpc.pool.ejection import REFUSED_STREAM
from conngrpc.pool.retry import HEDGE, PREVIOUS_ATTEMPTS, PUSHBACK, RETRY
from conngrpc.pool.runtime import pools
from tests._pools import live_pool
from tests._probe import WAIT_LIMIT, wait_until

pytestmark = pytest.mark.anyio

SERVICE = "conngrpc.test.Retried"
TRY = f"/{SERVICE}/Try"
STREAM = f"/{SERVICE}/Stream"
COLLECT = f"/{SERVICE}/Collect"
ECHO = f"/{SERVICE}/Echo"
OTHER = f"/{SERVICE}/Other"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: grpc's words for a call's deadline
GRPCS_DEADLINE = ("Deadline Exceeded", "Stream removed (Deadline Exceeded)")
#: asks a server's Collect to send response headers (BEGAN) before it reads a request
HEADERS_FIRST = "headers-first"
#: Metadata that has Echo read every request before its script runs: a client whose
#: writes race the script's failure sees grpc.aio's own INTERNAL ("Internal error from
#: Core") through interceptors now and then, for an attempt that wrote after its end.
READ_ALL_FIRST = "read-all-first"
BEGAN = (("began", "yes"),)


def retry_config(
    *,
    codes: Sequence[str] = ("UNAVAILABLE",),
    attempts: int = 4,
    backoff: str = "0.01s",
    method: str | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """A service config retrying the test service's calls (or one method's)."""
    name = {"service": SERVICE} if method is None else {"service": SERVICE, "method": method}
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": backoff,
        "maxBackoff": backoff,
        "backoffMultiplier": 1,
        "retryableStatusCodes": list(codes),
    }
    return {"methodConfig": [{"name": [name], "retryPolicy": policy, **entry}]}


def hedging_config(delay: str = "0.05s", attempts: int = 2) -> dict[str, Any]:
    policy = {
        "maxAttempts": attempts,
        "hedgingDelay": delay,
        "nonFatalStatusCodes": ["UNAVAILABLE"],
    }
    return {"methodConfig": [{"name": [{"service": SERVICE}], "hedgingPolicy": policy}]}


# --- the servers ------------------------------------------------------------------------------

Context = grpc.aio.ServicerContext[bytes, bytes]
#: What a server does with a call: given the server and the call's context, it answers
#: (returns the response), fails (aborts), or waits.
Script = Callable[["Scripted", Context], Awaitable[bytes]]


@dataclass(eq=False)
class Received:
    """A call a server received: its metadata, the requests it read (a client stream's),
    whether their stream ended (closed or cancelled by the client: a grpc.aio server
    tells a bidirectional stream's cancel no other way) and whether its client
    cancelled it (a unary call)."""

    metadata: dict[str, str]
    requests: list[bytes] = field(default_factory=list)
    ended: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class Scripted:
    """A grpc.aio server on 127.0.0.1 that answers as ``script`` says."""

    script: Script
    name: str = ""
    received: list[Received] = field(default_factory=list)
    server: grpc.aio.Server | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def previous(self) -> list[str | None]:
        """What each call received said of the attempts before it."""
        return [call.metadata.get(PREVIOUS_ATTEMPTS) for call in self.received]

    async def _record(self, context: Context) -> Received:
        call = Received({key: value for key, value in context.invocation_metadata() or ()})
        self.received.append(call)
        return call

    async def start(self) -> Scripted:
        async def try_(request: bytes, context: Context) -> bytes:
            call = await self._record(context)
            try:
                return await self.script(self, context)
            except asyncio.CancelledError:
                call.cancelled = True
                raise

        async def stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
            await self._record(context)
            yield await self.script(self, context)
            yield b"second"

        async def collect(requests: AsyncIterator[bytes], context: Context) -> bytes:
            call = await self._record(context)
            if HEADERS_FIRST in call.metadata:
                await context.send_initial_metadata(BEGAN)
            async for request in requests:
                call.requests.append(request)
            return await self.script(self, context)

        async def echo(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            call = await self._record(context)
            if READ_ALL_FIRST in call.metadata:
                call.requests.extend([request async for request in requests])
                await self.script(self, context)
                for request in call.requests:
                    yield request
                call.ended = True
                return
            async for request in requests:
                call.requests.append(request)
                if len(call.requests) == 1:
                    await self.script(self, context)
                yield request
            call.ended = True

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Try": grpc.unary_unary_rpc_method_handler(try_),
                "Other": grpc.unary_unary_rpc_method_handler(try_),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
                "Collect": grpc.stream_unary_rpc_method_handler(collect),
                "Echo": grpc.stream_stream_rpc_method_handler(echo),
            },
        )
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self


async def answer(server: Scripted, context: Context) -> bytes:
    return server.name.encode()


async def hang(server: Scripted, context: Context) -> bytes:
    await asyncio.Event().wait()  # until the call ends
    return b""


def fail_first(code: grpc.StatusCode = UNAVAILABLE, **how: Any) -> Script:
    """The first call any of the servers gets fails with ``code``; every other answers."""
    failed: list[bool] = []

    async def script(server: Scripted, context: Context) -> bytes:
        if not failed:
            failed.append(True)
            if how.get("headers"):
                await context.send_initial_metadata(BEGAN)
            await context.abort(code, "the first call fails", how.get("trailers", ()))
        return server.name.encode()

    return script


@asynccontextmanager
async def servers(script: Script, count: int = 3) -> AsyncIterator[list[Scripted]]:
    started = [await Scripted(script, name=f"s{index}").start() for index in range(count)]
    try:
        yield started
    finally:
        for server in started:
            assert server.server is not None
            await server.server.stop(None)


#: What lets an attempt's grpc-previous-rpc-attempts through: grpc's own retry layer,
#: on by default, strips it (test_grpcs_retry_layer_strips_the_previous_attempts_header).
NO_GRPC_RETRIES = (("grpc.enable_retries", 0),)


@asynccontextmanager
async def pool(
    name: str,
    backends: list[Scripted],
    config: dict[str, Any],
    size: int | None = None,
    options: Sequence[tuple[str, Any]] = NO_GRPC_RETRIES,
    **channel: Any,
) -> AsyncIterator[grpc.aio.Channel]:
    addresses = [backend.address for backend in backends]
    settings = {"service_config": json.dumps(config)}
    size = size or len(backends)
    async with live_pool(
        name, addresses, size, settings=settings, wait=True, options=options, **channel
    ):
        yield Pool.channel(name)


def received(backends: list[Scripted]) -> list[tuple[str, str | None]]:
    """Every call the servers received: which server, and its previous-attempts header."""
    return [
        (backend.name, call.metadata.get(PREVIOUS_ATTEMPTS))
        for backend in backends
        for call in backend.received
    ]


@pytest.fixture
def events() -> AsyncIterator[list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []

    def handle(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append((event, dict(measurements), dict(metadata)))

    telemetry.attach_many("test-live-retries", [RETRY, HEDGE], handle, None)
    yield seen  # type: ignore[misc]
    telemetry.detach("test-live-retries")


def unary(channel: grpc.aio.Channel, method: str = TRY) -> Any:
    return channel.unary_unary(method)


# --- retries ----------------------------------------------------------------------------------


async def test_a_failed_attempt_is_retried_on_another_backend(
    pool_name: str, events: list[Any]
) -> None:
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = unary(ch)(b"", timeout=WAIT_LIMIT)
        seen: list[int] = []
        call.add_done_callback(lambda done: seen.append(done.attempts))
        answer = await call
        calls = received(backends)
        assert len(calls) == 2
        (first, _), (second, header) = sorted(calls, key=lambda c: c[1] or "")
        assert first != second
        assert answer == second.encode()
        assert header == "1"  # grpc-previous-rpc-attempts, absent on the first
        await wait_until(lambda: seen == [2])
        [(event, measurements, metadata)] = events
        assert event == RETRY
        assert measurements == {"attempt": 2}
        assert metadata["code"] is UNAVAILABLE
        assert metadata["method"] == TRY
        assert (
            metadata["backend"] == f"127.0.0.1:{next(b.port for b in backends if b.name == second)}"
        )


async def test_grpcs_retry_layer_strips_the_previous_attempts_header(pool_name: str) -> None:
    # By default the pool's channels keep grpc's retry layer (its transparent retries of
    # streams that never reached a server); it drops grpc-previous-rpc-attempts from the
    # calls it did not retry itself. The call is retried across backends all the same.
    async with (
        servers(fail_first()) as backends,
        pool(pool_name, backends, retry_config(), options=()) as ch,
    ):
        call = unary(ch)(b"", timeout=WAIT_LIMIT)
        await call
        assert call.attempts == 2
        assert [header for _, header in received(backends)] == [None, None]
        assert len({name for name, _ in received(backends)}) == 2  # on two backends


async def test_a_callers_shorter_timeout_wins_over_the_method_configs(pool_name: str) -> None:
    async def hang(server: Scripted, context: Context) -> bytes:
        await asyncio.Event().wait()
        return b""

    for config in (
        retry_config(timeout="30s"),
        {"methodConfig": [{"name": [{"service": SERVICE}], "timeout": "30s"}]},
    ):
        async with servers(hang, 1) as backends, pool(pool_name, backends, config) as ch:
            call = unary(ch)(b"", timeout=0.2)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            # the call's own deadline, not the method config's 30 s
            assert call.time_remaining() == 0


async def test_a_code_that_is_not_retryable_is_not_retried(pool_name: str) -> None:
    script = fail_first(grpc.StatusCode.INTERNAL)
    async with servers(script) as backends, pool(pool_name, backends, retry_config()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(ch)(b"", timeout=WAIT_LIMIT)
        assert raised.value.code() is grpc.StatusCode.INTERNAL
        assert len(received(backends)) == 1


async def test_an_error_without_headers_is_retried_one_after_headers_is_not(
    pool_name: str,
) -> None:
    # grpc.aio's initial_metadata() is empty after both; the pool reads the headers the
    # error response brought: a Trailers-Only response (none) did not commit the call.
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        assert await unary(ch)(b"", timeout=WAIT_LIMIT)
        assert len(received(backends)) == 2
    async with (
        servers(fail_first(headers=True)) as backends,
        pool(pool_name, backends, retry_config()) as ch,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(ch)(b"", timeout=WAIT_LIMIT)
        assert raised.value.code() is UNAVAILABLE
        assert len(received(backends)) == 1


async def test_a_response_stream_is_retried_until_its_first_message(pool_name: str) -> None:
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        stream = ch.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
        messages = [message async for message in stream]
        assert len(messages) == 2
        assert messages[1] == b"second"
        assert len(received(backends)) == 2
        assert await stream.code() is grpc.StatusCode.OK


async def test_a_response_streams_headers_commit_it_before_its_first_message(
    pool_name: str,
) -> None:
    # A6 commits a call on its response headers: a watch that sends them (with metadata
    # in them) at once and its first event later is read as it comes, and a failure
    # after them is not retried. (Empty headers commit it at its first message.)
    release = asyncio.Event()

    async def headers_then_wait(server: Scripted, context: Context) -> bytes:
        await context.send_initial_metadata(BEGAN)
        await release.wait()
        await context.abort(UNAVAILABLE, "after headers")
        return b""

    async with (
        servers(headers_then_wait) as backends,
        pool(pool_name, backends, retry_config()) as ch,
    ):
        stream = ch.unary_stream(STREAM)(b"", timeout=WAIT_LIMIT)
        with anyio.fail_after(WAIT_LIMIT):
            assert tuple(await stream.initial_metadata()) == tuple(BEGAN)
        release.set()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() is UNAVAILABLE
        assert len(received(backends)) == 1


@pytest.mark.parametrize(("size", "retried"), [(10, True), (11, False)])
async def test_a_request_larger_than_the_retry_buffer_goes_once(
    pool_name: str, size: int, retried: bool
) -> None:
    options = [*NO_GRPC_RETRIES, ("grpc.per_rpc_retry_buffer_size", 10)]
    async with (
        servers(fail_first()) as backends,
        pool(pool_name, backends, retry_config(), options=options) as ch,
    ):
        call = unary(ch)(b"x" * size, timeout=WAIT_LIMIT)
        if retried:
            assert await call
        else:
            with pytest.raises(grpc.aio.AioRpcError):
                await call  # committed as it went: its failure is the answer, as in grpc
        assert len(received(backends)) == (2 if retried else 1)


async def test_pushback_from_the_server_is_obeyed(pool_name: str) -> None:
    stop = fail_first(trailers=((PUSHBACK, "-1"),))
    async with servers(stop) as backends, pool(pool_name, backends, retry_config()) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(ch)(b"", timeout=WAIT_LIMIT)
        assert len(received(backends)) == 1  # a negative pushback: no retry
    go = fail_first(trailers=((PUSHBACK, "0"),))
    slow = retry_config(backoff="3600s")  # only the pushback lets the retry go soon
    async with servers(go) as backends, pool(pool_name, backends, slow) as ch:
        assert await unary(ch)(b"", timeout=WAIT_LIMIT)
        assert len(received(backends)) == 2


async def test_a_deadline_that_passes_between_attempts_ends_the_call(pool_name: str) -> None:
    slow = retry_config(backoff="3600s")
    async with servers(fail_first()) as backends, pool(pool_name, backends, slow) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(ch)(b"", timeout=0.5)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(received(backends)) == 1


@pytest.mark.parametrize("kind", ["unary_unary", "stream_stream"])
async def test_a_deadline_that_passed_before_the_first_attempt_ends_as_grpc_ends_it(
    pool_name: str, kind: str
) -> None:
    # The first attempt goes out from the call's own task, a turn of the event loop after
    # the call was made: a deadline that passed meanwhile is grpc's to report, as for a
    # call without a policy. grpc words it as its stream was, or was not yet, begun.
    async with servers(hang) as backends, pool(pool_name, backends, retry_config()) as ch:
        method = TRY if kind == "unary_unary" else ECHO
        call = getattr(ch, kind)(method)(*([b""] if kind == "unary_unary" else []), timeout=0)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await (call if kind == "unary_unary" else call.read())
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert raised.value.details() in GRPCS_DEADLINE
        assert call.attempts == 1
        await nothing_in_flight(pool_name)


async def test_the_method_configs_timeout_bounds_the_whole_call(pool_name: str) -> None:
    config = retry_config(timeout="0.3s", codes=["UNAVAILABLE", "DEADLINE_EXCEEDED"])
    async with servers(hang) as backends, pool(pool_name, backends, config) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(ch)(b"")  # no timeout of its own: the methodConfig's applies
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # An attempt that hit the call's deadline is not retried: the deadline is the call's.
        assert len(received(backends)) == 1


async def test_a_method_without_a_policy_gets_grpcs_own_call(pool_name: str) -> None:
    config = retry_config(method="Try")
    async with servers(answer) as backends, pool(pool_name, backends, config) as ch:
        plain = unary(ch, OTHER)(b"", timeout=WAIT_LIMIT)
        assert isinstance(plain, grpc.aio.UnaryUnaryCall)
        await plain
        retried = unary(ch, TRY)(b"", timeout=WAIT_LIMIT)
        assert not isinstance(retried, grpc.aio.UnaryUnaryCall)
        await retried


async def test_a_retried_call_answers_every_method_as_grpcs_call_does(pool_name: str) -> None:
    # Not awaited: its methods alone follow it through its retry to its answer.
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = unary(ch)(b"", timeout=WAIT_LIMIT)
        assert not call.done()
        assert await call.code() is grpc.StatusCode.OK
        assert await call.details() in ("", None)
        assert tuple(await call.trailing_metadata()) == ()
        assert call.done()
        assert not call.cancelled()
        assert call.attempts == 2
        remaining = call.time_remaining()
        assert remaining is not None
        assert 0 < remaining <= WAIT_LIMIT
        assert await call in {backend.name.encode() for backend in backends}


async def test_cancelling_a_retried_call_cancels_its_attempt_and_retries_nothing(
    pool_name: str,
) -> None:
    started = asyncio.Event()

    async def hang(server: Scripted, context: Context) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    config = retry_config(codes=["UNAVAILABLE", "CANCELLED"])  # not even when it says so
    async with servers(hang) as backends, pool(pool_name, backends, config) as ch:
        call = unary(ch)(b"", timeout=WAIT_LIMIT)
        await started.wait()
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        [received_call] = [c for b in backends for c in b.received]
        await wait_until(lambda: received_call.cancelled)  # cancelled on the server
        assert Pool.status(pool_name).in_flight == 0


# --- client streams ---------------------------------------------------------------------------

REQUESTS = [b"one", b"two", b"three"]
#: a deadline far beyond the tests' waits: only a cancel ends such a call within them
NEVER = 3600


def calls_in_order(backends: list[Scripted]) -> list[tuple[Scripted, Received]]:
    """Every call the servers received, with its server, the first attempt first."""
    calls = [(backend, call) for backend in backends for call in backend.received]
    return sorted(calls, key=lambda each: int(each[1].metadata.get(PREVIOUS_ATTEMPTS, 0)))


async def nothing_in_flight(pool_name: str) -> None:
    await wait_until(lambda: Pool.status(pool_name).in_flight == 0)


async def requests_of(requests: list[bytes]) -> AsyncIterator[bytes]:
    for request in requests:
        yield request


@pytest.mark.parametrize("feed", ["iterator", "write"])
async def test_a_client_stream_is_retried_on_another_backend_with_the_same_requests(
    pool_name: str, feed: str
) -> None:
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        collect = ch.stream_unary(COLLECT)
        if feed == "iterator":
            call = collect(requests_of(REQUESTS), timeout=WAIT_LIMIT)
        else:
            call = collect(timeout=WAIT_LIMIT)
            for request in REQUESTS:
                await call.write(request)
            await call.done_writing()
        answer = await call
        (failed_on, first), (answered_by, second) = calls_in_order(backends)
        assert failed_on is not answered_by
        assert first.requests == second.requests == REQUESTS  # as the servers read them
        assert PREVIOUS_ATTEMPTS not in first.metadata
        assert second.metadata[PREVIOUS_ATTEMPTS] == "1"
        assert answer == answered_by.name.encode()
        assert await call.code() is grpc.StatusCode.OK
        assert call.attempts == 2
        await nothing_in_flight(pool_name)


async def test_a_bidirectional_stream_is_retried_before_its_first_response(
    pool_name: str,
) -> None:
    async with servers(fail_first()) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = ch.stream_stream(ECHO)(timeout=WAIT_LIMIT)
        await call.write(b"a")
        await call.write(b"b")
        assert await call.read() == b"a"  # from the second attempt: it committed the call
        await call.write(b"c")
        await call.done_writing()
        assert [message async for message in call] == [b"b", b"c"]
        assert await call.code() is grpc.StatusCode.OK
        (failed_on, first), (answered_by, second) = calls_in_order(backends)
        assert failed_on is not answered_by
        assert first.requests == [b"a"]  # the server failed it after the first request
        assert second.requests == [b"a", b"b", b"c"]
        assert second.metadata[PREVIOUS_ATTEMPTS] == "1"
        await nothing_in_flight(pool_name)


def stamped(details: Any) -> Any:
    """A call's details, its metadata stamped (by an interceptor)."""
    metadata = [*(details.metadata or []), ("stamped", "yes")]
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


# One kind each: grpc.aio files an interceptor of several kinds under the first alone.
class StampStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(stamped(details), requests)


class StampStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(stamped(details), requests)


@pytest.mark.parametrize("kind", ["stream_unary", "stream_stream"])
async def test_each_attempt_of_a_client_stream_passes_the_channels_interceptors(
    pool_name: str, kind: str
) -> None:
    async with (
        servers(fail_first()) as backends,
        pool(
            pool_name,
            backends,
            retry_config(),
            interceptors=[StampStreamUnary(), StampStreamStream()],
        ) as ch,
    ):
        if kind == "stream_unary":
            call = ch.stream_unary(COLLECT)(timeout=WAIT_LIMIT)
        else:
            metadata = ((READ_ALL_FIRST, "yes"),)
            call = ch.stream_stream(ECHO)(timeout=WAIT_LIMIT, metadata=metadata)
        for request in REQUESTS:
            await call.write(request)
        await call.done_writing()
        if kind == "stream_unary":
            assert await call
        else:
            assert [message async for message in call] == REQUESTS
        calls = calls_in_order(backends)
        assert [call.metadata.get("stamped") for _, call in calls] == ["yes", "yes"]
        assert calls[1][1].requests == REQUESTS
        await nothing_in_flight(pool_name)


async def test_a_client_stream_whose_server_sent_headers_is_not_retried(pool_name: str) -> None:
    script = fail_first(headers=True)  # response headers with metadata, then UNAVAILABLE
    async with servers(script) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = ch.stream_unary(COLLECT)(requests_of(REQUESTS), timeout=WAIT_LIMIT)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is UNAVAILABLE
        assert tuple(await call.initial_metadata()) == BEGAN
        assert backends_requests(backends) == [REQUESTS]
        await nothing_in_flight(pool_name)


async def test_a_client_streams_response_headers_commit_it_before_its_response(
    pool_name: str,
) -> None:
    async with servers(answer) as backends, pool(pool_name, backends, retry_config()) as ch:
        metadata = ((HEADERS_FIRST, "yes"),)
        call = ch.stream_unary(COLLECT)(timeout=NEVER, metadata=metadata)
        await call.write(b"one")
        with anyio.fail_after(WAIT_LIMIT):  # as on grpc's call: before the requests end
            assert tuple(await call.initial_metadata()) == BEGAN
        await call.write(b"two")
        await call.done_writing()
        [(server, collected)] = calls_in_order(backends)
        assert await call == server.name.encode()
        assert collected.requests == [b"one", b"two"]
        await nothing_in_flight(pool_name)


@pytest.mark.parametrize(("buffer", "retried"), [(20, True), (19, False)])
async def test_a_client_stream_larger_than_the_retry_buffer_commits_and_is_not_retried(
    pool_name: str, buffer: int, retried: bool
) -> None:
    options = [("grpc.per_rpc_retry_buffer_size", buffer)]
    async with (
        servers(fail_first()) as backends,
        pool(pool_name, backends, retry_config(), options=options) as ch,
    ):
        # The buffer counts serialized bytes: 2 requests of 5 bytes, of 10 each on the wire.
        collect = ch.stream_unary(COLLECT, request_serializer=lambda request: request * 2)
        call = collect(iter([b"12345", b"67890"]), timeout=WAIT_LIMIT)
        if retried:
            assert await call
            assert len(received(backends)) == 2
        else:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() is UNAVAILABLE
            assert len(received(backends)) == 1
        assert backends_requests(backends)[0] == [b"1234512345", b"6789067890"]
        await nothing_in_flight(pool_name)


def backends_requests(backends: list[Scripted]) -> list[list[bytes]]:
    return [call.requests for _, call in calls_in_order(backends)]


async def test_a_client_stream_of_a_hedged_method_goes_out_once(pool_name: str) -> None:
    async with (
        servers(fail_first()) as backends,
        pool(pool_name, backends, hedging_config()) as ch,
    ):
        call = ch.stream_unary(COLLECT)(timeout=WAIT_LIMIT)
        assert isinstance(call, grpc.aio.StreamUnaryCall)  # grpc's own: neither hedged nor retried
        for request in REQUESTS:
            await call.write(request)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is UNAVAILABLE
        assert backends_requests(backends) == [REQUESTS]
        await nothing_in_flight(pool_name)


@pytest.mark.parametrize("done_callback", [False, True])
async def test_a_bidirectional_stream_dropped_unread_is_cancelled(
    pool_name: str, done_callback: bool
) -> None:
    async with servers(answer) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = ch.stream_stream(ECHO)(timeout=NEVER)
        await call.write(b"a")
        assert await call.read() == b"a"
        ended: list[Any] = []
        if done_callback:
            call.add_done_callback(ended.append)  # as instrumentation does: it holds nothing
        del call  # before its end, never closed: nobody holds it any more
        [(_, echoed)] = calls_in_order(backends)

        def cancelled_on_the_server() -> bool:
            # A cycle holds a dropped call until a collection (as in test_pooled_channel's
            # dropped stream); the last of its frames may let go a turn later.
            gc.collect()
            return echoed.ended

        await wait_until(cancelled_on_the_server)  # the client cancelled it
        await nothing_in_flight(pool_name)
        if done_callback:
            await wait_until(lambda: ended != [])
            assert ended[0].cancelled()


async def test_a_client_stream_cancelled_while_its_attempt_runs(pool_name: str) -> None:
    async with servers(answer) as backends, pool(pool_name, backends, retry_config()) as ch:
        call = ch.stream_stream(ECHO)(timeout=NEVER)
        await call.wait_for_connection()
        await wait_until(lambda: len(received(backends)) == 1)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        assert await call.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.InvalidStateError, match="RPC already finished"):
            await call.write(b"a")
        [(_, cancelled)] = calls_in_order(backends)
        await wait_until(lambda: cancelled.ended)  # never closed: the client cancelled it
        await nothing_in_flight(pool_name)


# --- hedging ----------------------------------------------------------------------------------


async def test_a_hedge_answers_from_another_replica_and_the_slow_copy_is_cancelled(
    pool_name: str, events: list[Any]
) -> None:
    async def first_stalls(server: Scripted, context: Context) -> bytes:
        if sum(len(b.received) for b in everyone) == 1:
            await asyncio.Event().wait()  # until the client cancels it
        return server.name.encode()

    everyone: list[Scripted] = []
    async with servers(first_stalls) as backends, pool(pool_name, backends, hedging_config()) as ch:
        everyone.extend(backends)
        answer = await unary(ch)(b"", timeout=WAIT_LIMIT)
        calls = [(b, c) for b in backends for c in b.received]
        assert len(calls) == 2
        stalled = next(b for b, c in calls if c.metadata.get(PREVIOUS_ATTEMPTS) is None)
        hedge = next(b for b, c in calls if c.metadata.get(PREVIOUS_ATTEMPTS) == "1")
        assert stalled is not hedge
        assert answer == hedge.name.encode()
        await wait_until(lambda: stalled.received[0].cancelled)  # cancelled on the server
        assert [event for event, _, _ in events] == [HEDGE]


# --- a replica killed under load ---------------------------------------------------------------


async def test_a_replica_killed_under_load_fails_no_call(pool_name: str) -> None:
    config = RETRY_CONFIG  # the rolling restart benchmark's (bench/retries.py)
    replicas = [ServerProcess(args=["--name", f"r{i}"]) for i in range(3)]
    try:
        async with anyio.create_task_group() as starting:
            for replica in replicas:
                starting.start_soon(anyio.to_thread.run_sync, replica.start)
        addresses = [replica.address for replica in replicas]
        settings = {"service_config": config}
        async with live_pool(pool_name, addresses, 6, settings=settings, wait=True):
            channel = Pool.channel(pool_name)
            sleep = channel.unary_unary(SLEEP_METHOD)
            answers: list[str] = []
            failures: list[grpc.aio.AioRpcError] = []
            killed = anyio.Event()
            after_kill = [0]

            async def caller() -> None:
                while not (killed.is_set() and after_kill[0] >= 200):
                    try:
                        answers.append((await sleep(b"5", timeout=10)).decode())
                    except grpc.aio.AioRpcError as error:
                        failures.append(error)
                    if killed.is_set():
                        after_kill[0] += 1

            async with anyio.create_task_group() as callers:
                for _ in range(20):
                    callers.start_soon(caller)
                await wait_until(lambda: len(answers) >= 100)
                in_flight_on_victim = Pool.status(pool_name).in_flight
                replicas[0].kill()  # with calls in flight on it
                killed.set()
            assert in_flight_on_victim > 0
            assert failures == []
            assert "r1" in answers
            assert "r2" in answers
    finally:
        for replica in replicas:
            replica.kill()


# --- a refused stream -------------------------------------------------------------------------


#: How long rounds of calls past a server's cap may take to meet a refusal.
REFUSED_WITHIN = 30.0


async def _refused_calls(sleep: Any, calls: int) -> list[grpc.aio.AioRpcError]:
    """Rounds of ``calls`` calls at once until the server refuses some (grpc queues most
    calls past a server's cap itself, but not all: it sends some before it knows the
    cap is reached); the errors of the first round with any. Refusals are a matter of
    timing: on a quiet machine the first round or two has some; a busy one can take
    many rounds (of about 0.4 s each), hence the generous bound."""
    with anyio.fail_after(REFUSED_WITHIN):
        while True:
            results = await asyncio.gather(
                *(sleep(b"20", timeout=REFUSED_WITHIN) for _ in range(calls)),
                return_exceptions=True,
            )
            errors = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
            if errors:
                return errors


async def test_grpc_reports_a_refused_stream_in_the_details_of_unavailable() -> None:
    # Pins what the pool reads: grpc's overload protection (on by default) refuses
    # streams past the server's cap with RST_STREAM REFUSED_STREAM, which grpc.aio shows
    # only as UNAVAILABLE whose details name it.
    server, port = await start_server(max_concurrent_streams=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            for error in await _refused_calls(channel.unary_unary(SLEEP_METHOD), 40):
                assert error.code() is UNAVAILABLE
                assert REFUSED_STREAM in (error.details() or "")
    finally:
        await server.stop(None)


async def test_a_pool_learns_a_servers_stream_cap_from_a_refusal(pool_name: str) -> None:
    server, port = await start_server(max_concurrent_streams=2)
    try:
        async with live_pool(pool_name, f"127.0.0.1:{port}", 1, wait=True):
            sleep = Pool.channel(pool_name).unary_unary(SLEEP_METHOD)
            runtime = pools.get(pool_name)
            assert runtime is not None
            [slot] = runtime.handout.slots
            assert slot.limit is None
            await _refused_calls(sleep, 40)
            assert slot.limit is not None  # the refusals taught it the cap
            # Now the calls past the cap wait for room in the pool, as under
            # max_calls_per_channel. A refusal under the cap learnt lowers it a step (a
            # server slow to free its streams refuses below its cap now and then):
            # within a few rounds, the server refuses none.
            for _ in range(10):
                limit = slot.limit
                assert limit is not None
                calls = [sleep(b"20", timeout=WAIT_LIMIT) for _ in range(limit + 5)]
                assert slot.in_flight == limit
                await wait_until(lambda: len(runtime.admission.waiting) == 5)
                results = await asyncio.gather(*calls, return_exceptions=True)
                errors = [result for result in results if isinstance(result, BaseException)]
                if not errors:
                    break
                assert all(REFUSED_STREAM in str(error) for error in errors), errors
                assert slot.limit is not None
                assert slot.limit <= limit + 1  # a step down, after a step up at most
            else:
                pytest.fail(f"the server still refused calls with {slot.limit} in flight")
    finally:
        await server.stop(None)
