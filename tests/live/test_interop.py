"""grpc's interop test cases, on grpc's own channel and on a PooledChannel, side by side.

The cases are doc/interop-test-descriptions.md's (grpc's), against a TestService server
on 127.0.0.1 (tests/_interop.py). Each runs on three clients, and asserts the same for
each: ``grpc``, a plain ``grpc.aio.insecure_channel``; ``pool``, the PooledChannel of a
pool of 2; ``pool-retry``, the same with a retryPolicy for the service in the pool's
service config. A PooledChannel stands in for a grpc.aio channel, so each of its calls
must answer every method as grpc's does: responses, codes, details and metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import Pool, PooledChannel
from tests._interop import (
    ECHO_INITIAL_KEY,
    ECHO_TRAILING_KEY,
    BoolValue,
    EchoStatus,
    Empty,
    InteropServicer,
    InteropStub,
    MeteredProxy,
    ResponseParameters,
    SimpleRequest,
    SimpleResponse,
    StreamingInputCallRequest,
    StreamingInputCallResponse,
    StreamingOutputCallRequest,
    StreamingOutputCallResponse,
    UnimplementedServiceStub,
    serve,
    zeros,
)
from tests._pools import live_pool

pytestmark = pytest.mark.anyio

RETRY_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "grpc.testing.TestService"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
CLIENTS = ["grpc", "pool", "pool-retry"]

# The sizes the descriptions give.
LARGE_REQUEST_SIZE = 271828
LARGE_RESPONSE_SIZE = 314159
PAYLOAD_SIZES = (27182, 8, 1828, 45904)
RESPONSE_SIZES = (31415, 9, 2653, 58979)

ECHO_METADATA = (
    (ECHO_INITIAL_KEY, "test_initial_metadata_value"),
    (ECHO_TRAILING_KEY, b"\x0a\x0b\x0a\x0b\x0a\x0b"),
)
OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED
#: grpc.aio's details for a call its application cancelled
LOCALLY_CANCELLED = "Locally cancelled by application!"


def large_request(**fields: Any) -> Any:
    """large_unary's request: 314159 bytes asked for, 271828 zeros sent."""
    return SimpleRequest(
        response_size=LARGE_RESPONSE_SIZE, payload=zeros(LARGE_REQUEST_SIZE), **fields
    )


LARGE_RESPONSE = SimpleResponse(payload=zeros(LARGE_RESPONSE_SIZE))


def output_request(response_size: int, payload_size: int, **fields: Any) -> Any:
    """A StreamingOutputCallRequest for one response of ``response_size`` zeros."""
    return StreamingOutputCallRequest(
        response_parameters=[ResponseParameters(size=response_size)],
        payload=zeros(payload_size),
        **fields,
    )


def output(size: int) -> Any:
    return StreamingOutputCallResponse(payload=zeros(size))


# --- the server and the clients -------------------------------------------------------------


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    async with serve(InteropServicer()) as address:
        yield address


@pytest.fixture
async def metered() -> AsyncIterator[MeteredProxy]:
    """A server of its own behind a proxy that counts the bytes: by them it tells a
    compressed request, and the test a compressed response."""
    servicer = InteropServicer()
    async with serve(servicer) as upstream, MeteredProxy(upstream) as proxy:
        servicer.wire = proxy
        yield proxy


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def connected(client: str, pool_name: str, address: str) -> AsyncIterator[grpc.aio.Channel]:
    """The ``client`` to ``address``, for the block: grpc's channel, or a pool's."""
    if client == "grpc":
        async with grpc.aio.insecure_channel(address) as channel:
            yield channel
        return
    settings = {"service_config": RETRY_CONFIG} if client == "pool-retry" else None
    async with live_pool(pool_name, address, 2, settings=settings, wait=True):
        channel = Pool.channel(pool_name)
        assert isinstance(channel, PooledChannel)
        yield channel


@pytest.fixture
async def channel(client: str, pool_name: str, address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with connected(client, pool_name, address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Any:
    return InteropStub(channel)


# --- what every call answers once it is over ------------------------------------------------


async def assert_ended(
    call: Any,
    code: grpc.StatusCode = OK,
    details: str = "",
    *,
    initial: Sequence[tuple[str, str | bytes]] = (),
    trailing: Sequence[tuple[str, str | bytes]] = (),
) -> None:
    """``call`` is over with ``code`` and ``details`` and this metadata, by each method;
    a done callback added now gets the call itself."""
    assert call.done()
    assert call.cancelled() is (code is CANCELLED)
    assert await call.code() is code
    assert await call.details() == details
    assert tuple(await call.initial_metadata()) == tuple(initial)
    assert tuple(await call.trailing_metadata()) == tuple(trailing)
    called_with: list[Any] = []
    called = anyio.Event()

    def done(ended: Any) -> None:
        called_with.append(ended)
        called.set()

    call.add_done_callback(done)
    with anyio.fail_after(5):  # at once, or in a turn of the loop; 5 s only if it hangs
        await called.wait()
    assert len(called_with) == 1
    assert called_with[0] is call


async def assert_fails(
    call: Any,
    code: grpc.StatusCode,
    details: str,
    *,
    initial: Sequence[tuple[str, str | bytes]] = (),
    trailing: Sequence[tuple[str, str | bytes]] = (),
) -> None:
    """Awaiting the unary ``call`` raises its status, which its methods say too."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    error = failed.value
    assert (error.code(), error.details()) == (code, details)
    assert tuple(error.initial_metadata()) == tuple(initial)
    assert tuple(error.trailing_metadata()) == tuple(trailing)
    await assert_ended(call, code, details, initial=initial, trailing=trailing)


# --- the cases ------------------------------------------------------------------------------


async def test_empty_unary(stub: Any) -> None:
    call = stub.EmptyCall(Empty())
    response = await call
    assert response == Empty()
    assert response.ByteSize() == 0
    await assert_ended(call)


async def test_large_unary(stub: Any) -> None:
    call = stub.UnaryCall(large_request())
    assert await call == LARGE_RESPONSE
    await assert_ended(call)


async def test_client_compressed_unary(client: str, pool_name: str, metered: MeteredProxy) -> None:
    async with connected(client, pool_name, metered.address) as channel:
        stub = InteropStub(channel)
        # The probe: the server must tell an uncompressed request from a compressed one.
        probe = stub.UnaryCall(large_request(expect_compressed=BoolValue(value=True)))
        await assert_fails(probe, grpc.StatusCode.INVALID_ARGUMENT, "expected a compressed request")

        compressed = stub.UnaryCall(
            large_request(expect_compressed=BoolValue(value=True)),
            compression=grpc.Compression.Gzip,
        )
        assert await compressed == LARGE_RESPONSE
        await assert_ended(compressed)

        plain = stub.UnaryCall(large_request(expect_compressed=BoolValue(value=False)))
        assert await plain == LARGE_RESPONSE
        await assert_ended(plain)


@pytest.mark.parametrize("compressed", [True, False])
async def test_server_compressed_unary(
    client: str, pool_name: str, metered: MeteredProxy, compressed: bool
) -> None:
    async with connected(client, pool_name, metered.address) as channel:
        before = metered.bytes_downstream
        call = InteropStub(channel).UnaryCall(
            large_request(response_compressed=BoolValue(value=compressed))
        )
        assert await call == LARGE_RESPONSE
        await assert_ended(call)
        # The response's 314159 zeros took a few hundred bytes compressed, all of them plain.
        came = metered.bytes_downstream - before
        assert (came < LARGE_RESPONSE_SIZE) is compressed, f"{came} bytes came"


@pytest.mark.parametrize("feed", ["iterator", "write"])
async def test_client_streaming(stub: Any, feed: str) -> None:
    requests = [StreamingInputCallRequest(payload=zeros(size)) for size in PAYLOAD_SIZES]
    if feed == "iterator":

        async def each() -> AsyncIterator[Any]:
            for request in requests:
                yield request

        call = stub.StreamingInputCall(each())
    else:
        call = stub.StreamingInputCall()
        for request in requests:
            await call.write(request)
        await call.done_writing()
    assert await call == StreamingInputCallResponse(aggregated_payload_size=74922)
    await assert_ended(call)


async def test_server_streaming(stub: Any) -> None:
    request = StreamingOutputCallRequest(
        response_parameters=[ResponseParameters(size=size) for size in RESPONSE_SIZES]
    )
    call = stub.StreamingOutputCall(request)
    assert [response async for response in call] == [output(size) for size in RESPONSE_SIZES]
    await assert_ended(call)


async def test_ping_pong(stub: Any) -> None:
    call = stub.FullDuplexCall()
    for response_size, payload_size in zip(RESPONSE_SIZES, PAYLOAD_SIZES, strict=True):
        await call.write(output_request(response_size, payload_size))
        assert await call.read() == output(response_size)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    await assert_ended(call)


async def test_empty_stream(stub: Any) -> None:
    call = stub.FullDuplexCall()
    await call.done_writing()
    assert [response async for response in call] == []
    await assert_ended(call)


async def test_cancel_after_begin(stub: Any) -> None:
    call = stub.StreamingInputCall()
    assert call.cancel()
    assert call.cancelled()
    await assert_ended(call, CANCELLED, LOCALLY_CANCELLED)
    with pytest.raises(asyncio.CancelledError):  # grpc.aio's own, for a cancelled call
        await call


async def test_cancel_after_first_response(stub: Any) -> None:
    call = stub.FullDuplexCall()
    await call.write(output_request(RESPONSE_SIZES[0], PAYLOAD_SIZES[0]))
    assert await call.read() == output(RESPONSE_SIZES[0])
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    await assert_ended(call, CANCELLED, LOCALLY_CANCELLED)


async def test_timeout_on_sleeping_server(stub: Any) -> None:
    call = stub.FullDuplexCall(timeout=0.001)
    refused: Exception | None = None
    try:
        await call.write(StreamingOutputCallRequest(payload=zeros(PAYLOAD_SIZES[0])))
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
        refused = error  # the deadline passed before the request went: the case allows it
    if isinstance(refused, grpc.aio.AioRpcError):
        assert refused.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert failed.value.details() == "Deadline Exceeded"
    await assert_ended(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    remaining = call.time_remaining()
    assert remaining is not None
    assert 0 <= remaining <= 0.001


async def test_custom_metadata_unary(stub: Any) -> None:
    call = stub.UnaryCall(large_request(), metadata=ECHO_METADATA)
    assert await call == LARGE_RESPONSE
    await assert_ended(call, initial=ECHO_METADATA[:1], trailing=ECHO_METADATA[1:])


async def test_custom_metadata_full_duplex(stub: Any) -> None:
    call = stub.FullDuplexCall(metadata=ECHO_METADATA)
    await call.write(output_request(LARGE_RESPONSE_SIZE, LARGE_REQUEST_SIZE))
    assert tuple(await call.initial_metadata()) == ECHO_METADATA[:1]
    await call.done_writing()
    assert await call.read() == output(LARGE_RESPONSE_SIZE)
    assert await call.read() is grpc.aio.EOF
    await assert_ended(call, initial=ECHO_METADATA[:1], trailing=ECHO_METADATA[1:])


STATUS_MESSAGE = "test status message"
#: special_status_message's: whitespace and control characters, and Unicode in and beyond
#: the Basic Multilingual Plane, which must come back as they went
SPECIAL_STATUS_MESSAGE = (
    "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
)


async def test_status_code_and_message_unary(stub: Any) -> None:
    status = EchoStatus(code=2, message=STATUS_MESSAGE)
    call = stub.UnaryCall(SimpleRequest(response_size=1, response_status=status))
    await assert_fails(call, grpc.StatusCode.UNKNOWN, STATUS_MESSAGE)


async def test_status_code_and_message_full_duplex(stub: Any) -> None:
    status = EchoStatus(code=2, message=STATUS_MESSAGE)
    call = stub.FullDuplexCall()
    await call.write(output_request(1, 0, response_status=status))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert (failed.value.code(), failed.value.details()) == (
        grpc.StatusCode.UNKNOWN,
        STATUS_MESSAGE,
    )
    await assert_ended(call, grpc.StatusCode.UNKNOWN, STATUS_MESSAGE)


async def test_special_status_message(stub: Any) -> None:
    status = EchoStatus(code=2, message=SPECIAL_STATUS_MESSAGE)
    call = stub.UnaryCall(SimpleRequest(response_size=1, response_status=status))
    await assert_fails(call, grpc.StatusCode.UNKNOWN, SPECIAL_STATUS_MESSAGE)


async def test_unimplemented_method(stub: Any) -> None:
    call = stub.UnimplementedCall(Empty())
    await assert_fails(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


async def test_unimplemented_service(channel: grpc.aio.Channel) -> None:
    call = UnimplementedServiceStub(channel).UnimplementedCall(Empty())
    await assert_fails(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


# --- not a case of grpc's: the clients differ as they should ------------------------------


async def test_only_the_retry_client_tries_an_unavailable_call_again(
    client: str, pool_name: str
) -> None:
    servicer = InteropServicer()
    async with serve(servicer) as address, connected(client, pool_name, address) as channel:
        status = EchoStatus(code=grpc.StatusCode.UNAVAILABLE.value[0], message="down for now")
        call = InteropStub(channel).UnaryCall(SimpleRequest(response_status=status))
        await assert_fails(call, grpc.StatusCode.UNAVAILABLE, "down for now")
    assert servicer.unary_calls == (3 if client == "pool-retry" else 1)  # maxAttempts: 3
