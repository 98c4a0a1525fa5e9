"""A call's attempts under a retry or a hedging policy (gRFC A6), and what decides them.

The attempts here are stand-ins that end as each test says, sent by a stand-in of the
pool (it records what each attempt went with and picks a slot per attempt); the live
tests (tests/live/test_retries.py) send real attempts to real servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest

from conngrpc import telemetry
from conngrpc.pool import retry as retry_module
from conngrpc.pool.calls import ClientStreamCall
from conngrpc.pool.ejection import REFUSED_STREAM, Outcomes, default_rules
from conngrpc.pool.handout import HandOut, Slot
from conngrpc.pool.retry import (
    BUFFER_OPTION,
    DEFAULT_BUFFER_SIZE,
    HEDGE,
    PREVIOUS_ATTEMPTS,
    PUSHBACK,
    RETRY,
    STOP,
    Attempts,
    ReadAhead,
    Replay,
    Throttle,
    backoff,
    buffer_size,
    is_refused,
    pushback,
    with_previous,
)
from conngrpc.pool.service_config import HedgingPolicy, RetryPolicy, RetryThrottling
from tests._probe import wait_until

pytestmark = pytest.mark.anyio

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
INTERNAL = grpc.StatusCode.INTERNAL
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
READY = grpc.ChannelConnectivity.READY

RETRY_POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff=0.001,
    max_backoff=0.002,
    backoff_multiplier=2.0,
    retryable_status_codes=frozenset({UNAVAILABLE}),
)
HEDGING_POLICY = HedgingPolicy(
    max_attempts=3, hedging_delay=0.01, non_fatal_status_codes=frozenset({UNAVAILABLE})
)
REFUSED = f"Stream removed (RST_STREAM (Received {REFUSED_STREAM}))"


# --- stand-ins ---------------------------------------------------------------------------


class Attempt:
    """Stands in for an attempt's grpc.aio call; it ends when the test says (or at once
    when made with ``code``), as grpc's does: awaiting it returns or raises."""

    def __init__(
        self,
        code: grpc.StatusCode | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        trailers: Sequence[tuple[str, str]] = (),
        details: str = "",
    ) -> None:
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.code_: grpc.StatusCode | None = None
        self.headers, self.trailers, self.details_ = headers, trailers, details
        self.cancelled = False
        self.options: dict[str, Any] = {}
        self.slot: Slot | None = None
        if code is not None:
            self.end(code)

    def end(self, code: grpc.StatusCode) -> None:
        self.code_ = code
        self.ended.set_result(None)

    def __await__(self) -> Generator[Any, None, bytes]:
        yield from asyncio.shield(self.ended).__await__()
        if self.code_ is not OK:
            raise self.error()
        return b"answer"

    def error(self) -> grpc.aio.AioRpcError:
        assert self.code_ is not None
        return grpc.aio.AioRpcError(
            self.code_,
            grpc.aio.Metadata(*self.headers),
            grpc.aio.Metadata(*self.trailers),
            details=self.details_,
        )

    def cancel(self) -> bool:
        self.cancelled = True
        if not self.ended.done():
            self.ended.cancel()
        return True

    def done(self) -> bool:
        return self.ended.done()


class StreamAttempt(Attempt):
    """Stands in for an attempt of a client stream, which the pool writes to: it keeps
    what was written, and fails a write as grpc.aio's does (at once once it ended; with
    its status when it ends under the write). While ``held`` is set, a write waits."""

    def __init__(self, code: grpc.StatusCode | None = None, **how: Any) -> None:
        super().__init__(code, **how)
        self.written: list[bytes] = []
        self.closed = False
        self.held = False
        self.waiting = 0  # writes held
        self.release = asyncio.Event()
        #: called with each request once written
        self.wrote: Callable[[bytes], None] = lambda request: None

    async def write(self, request: bytes) -> None:
        if self.ended.done():
            raise asyncio.InvalidStateError("RPC already finished.")
        if self.closed:
            raise asyncio.InvalidStateError("half closed")
        if self.held:
            self.waiting += 1
            released = asyncio.ensure_future(self.release.wait())
            await asyncio.wait([released, self.ended], return_when=asyncio.FIRST_COMPLETED)
            released.cancel()
            self.waiting -= 1
            if self.ended.done():
                if self.cancelled:
                    raise asyncio.CancelledError
                raise self.error()  # it ended under the write
        self.written.append(request)
        self.wrote(request)

    async def done_writing(self) -> None:
        if not self.ended.done():
            self.closed = True

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await asyncio.wait([self.ended])  # headers come with the end here
        return grpc.aio.Metadata(*self.headers)

    async def wait_for_connection(self) -> None:
        if self.ended.done():
            await self  # its status, as a done grpc.aio call's

    async def code(self) -> grpc.StatusCode | None:
        await asyncio.wait([self.ended])
        return self.code_


class Sender:
    """Stands in for the pool: sends each attempt on the next of its slots (another
    backend each, as the pick prefers), in the order the test scripted them."""

    def __init__(self, *attempts: Attempt, backends: int = 3) -> None:
        self.script = list(attempts)
        self.sent: list[Attempt] = []
        self.slots = [slot(index) for index in range(backends)]
        #: while cleared, the next attempt waits to go out (as for a free channel)
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(
        self, tried: list[Slot], options: dict[str, Any], deadline: float | None
    ) -> tuple[Any, Slot]:
        await self.go.wait()
        attempt = self.script.pop(0)
        attempt.options = options
        attempt.slot = self.slots[len(self.sent) % len(self.slots)]
        tried.append(attempt.slot)
        self.sent.append(attempt)
        return attempt, attempt.slot


def slot(index: int) -> Slot:
    outcomes = Outcomes(f"127.0.0.{index + 1}:1", default_rules(), lambda _: None)
    return Slot(index, Channel(), outcomes.backend, lambda: None, outcomes)  # type: ignore[arg-type]


class Channel:
    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return READY


def attempts(
    sender: Sender,
    *,
    retry: RetryPolicy | None = None,
    hedging: HedgingPolicy | None = None,
    throttle: Throttle | None = None,
) -> Attempts:
    if retry is None and hedging is None:
        retry = RETRY_POLICY
    return Attempts(
        sender,
        pool="retried",
        method="/conngrpc.demo.v1.Demo/Sleep",
        retry=retry,
        hedging=hedging,
        throttle=throttle,
    )


def previous(attempt: Attempt) -> str | None:
    """What the attempt's metadata said of the attempts before it (None: nothing)."""
    found = [
        value for key, value in attempt.options.get("metadata") or () if key == PREVIOUS_ATTEMPTS
    ]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture
def events() -> Generator[list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]]:
    seen: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = []

    def handle(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append((event, dict(measurements), dict(metadata)))

    telemetry.attach_many("test-retry", [RETRY, HEDGE], handle, None)
    yield seen
    telemetry.detach("test-retry")


# --- retries -------------------------------------------------------------------------------


async def test_a_retryable_failure_is_retried_on_another_connection(events: list[Any]) -> None:
    sender = Sender(Attempt(UNAVAILABLE), Attempt(OK))
    call = await attempts(sender).run({"metadata": (("k", "v"),)}, None)
    assert call is sender.sent[1]
    assert [a.slot for a in sender.sent] == sender.slots[:2]
    assert previous(sender.sent[0]) is None  # absent on the first, as A6 says
    assert previous(sender.sent[1]) == "1"
    assert ("k", "v") in sender.sent[1].options["metadata"]  # the caller's own kept
    assert events == [
        (
            RETRY,
            {"attempt": 2},
            {
                "pool_name": "retried",
                "method": "/conngrpc.demo.v1.Demo/Sleep",
                "code": UNAVAILABLE,
                "backend": sender.slots[1].backend,
            },
        )
    ]


async def test_a_code_that_is_not_retryable_is_the_answer() -> None:
    sender = Sender(Attempt(INTERNAL), Attempt(OK))
    call = await attempts(sender).run({}, None)
    assert call is sender.sent[0]
    assert len(sender.sent) == 1


async def test_retries_stop_at_max_attempts_with_the_last_status() -> None:
    sender = Sender(*(Attempt(UNAVAILABLE) for _ in range(5)))
    run = attempts(sender)
    call = await run.run({}, None)
    assert len(sender.sent) == RETRY_POLICY.max_attempts == run.sent
    assert call is sender.sent[-1]
    assert [previous(a) for a in sender.sent] == [None, "1", "2", "3"]


async def test_an_error_after_response_headers_committed_the_call() -> None:
    sender = Sender(Attempt(UNAVAILABLE, headers=[("began", "yes")]), Attempt(OK))
    call = await attempts(sender).run({}, None)
    assert call is sender.sent[0]
    assert len(sender.sent) == 1


async def test_pushback_stops_retries_when_negative_or_unreadable() -> None:
    for value in ("-1", "soon", ""):
        sender = Sender(Attempt(UNAVAILABLE, trailers=[(PUSHBACK, value)]), Attempt(OK))
        call = await attempts(sender).run({}, None)
        assert call is sender.sent[0], value


async def test_pushback_sets_the_wait_before_the_retry() -> None:
    # A pushback of an hour, within a deadline of a moment: the call ends at its
    # deadline, between attempts, rather than after the backoff of a few milliseconds.
    sender = Sender(Attempt(UNAVAILABLE, trailers=[(PUSHBACK, "3600000")]), Attempt(OK))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempts(sender).run({}, time.monotonic() + 0.05)
    assert raised.value.code() is DEADLINE_EXCEEDED
    assert len(sender.sent) == 1


async def test_a_deadline_that_passes_between_attempts_ends_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry_module, "backoff", lambda policy, retry: 3600.0)
    sender = Sender(Attempt(UNAVAILABLE), Attempt(OK))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempts(sender).run({}, time.monotonic() + 0.05)
    assert raised.value.code() is DEADLINE_EXCEEDED
    assert raised.value.details() == "Deadline Exceeded"  # grpc's own words
    assert len(sender.sent) == 1


async def test_throttling_stops_retries_once_half_the_tokens_are_gone() -> None:
    throttle = Throttle(RetryThrottling(max_tokens=4, token_ratio=0.5))
    # 4 tokens: the first failure leaves 3 (> 2, a retry goes), the second 2 (no more).
    sender = Sender(*(Attempt(UNAVAILABLE) for _ in range(4)))
    call = await attempts(sender, throttle=throttle).run({}, None)
    assert len(sender.sent) == 2
    assert call is sender.sent[1]
    assert throttle.tokens == 2000


async def test_a_committed_retryable_failure_still_takes_a_token() -> None:
    # grpc core counts a failure for throttling before it looks at the commit.
    throttle = Throttle(RetryThrottling(max_tokens=10, token_ratio=1))
    sender = Sender(Attempt(UNAVAILABLE, headers=[("began", "yes")]))
    await attempts(sender, throttle=throttle).run({}, None)
    assert throttle.tokens == 9000


async def test_a_refused_stream_is_sent_again_once_without_counting() -> None:
    never = RetryPolicy(
        max_attempts=2,
        initial_backoff=0.001,
        max_backoff=0.001,
        backoff_multiplier=1.0,
        retryable_status_codes=frozenset({INTERNAL}),  # UNAVAILABLE is not retryable
    )
    sender = Sender(
        Attempt(UNAVAILABLE, details=REFUSED),
        Attempt(INTERNAL),
        Attempt(UNAVAILABLE, details=REFUSED),
        Attempt(OK),
    )
    call = await attempts(sender, retry=never).run({}, None)
    # the re-send was free: the INTERNAL retry still went, the second refusal is the answer
    assert len(sender.sent) == 3
    assert call is sender.sent[2]


# --- hedging --------------------------------------------------------------------------------


async def test_a_hedge_goes_out_after_the_delay_and_the_first_answer_wins(
    events: list[Any],
) -> None:
    slow, fast = Attempt(), Attempt(OK)
    sender = Sender(slow, fast)
    call = await attempts(sender, hedging=HEDGING_POLICY).run({}, None)
    assert call is fast
    assert slow.cancelled  # the copy still running is cancelled
    assert [event for event, _, _ in events] == [HEDGE]
    assert events[0][2]["code"] is None  # its delay sent it, not a failure
    assert previous(fast) == "1"


async def test_a_non_fatal_failure_sends_the_next_hedge_at_once() -> None:
    # A delay of an hour: only the failure can send the second attempt.
    policy = HedgingPolicy(
        max_attempts=2, hedging_delay=3600.0, non_fatal_status_codes=frozenset({UNAVAILABLE})
    )
    sender = Sender(Attempt(UNAVAILABLE), Attempt(OK))
    call = await attempts(sender, hedging=policy).run({}, None)
    assert call is sender.sent[1]


async def test_a_fatal_status_is_the_answer_and_the_other_copies_are_cancelled() -> None:
    first = Attempt()
    second = Attempt()
    sender = Sender(first, second, Attempt())
    run = asyncio.ensure_future(attempts(sender, hedging=HEDGING_POLICY).run({}, None))
    await wait_until(lambda: len(sender.sent) == 2)  # the hedge its delay sent
    second.end(INTERNAL)
    assert await run is second
    assert first.cancelled


async def test_when_every_copy_fails_non_fatally_the_last_status_is_the_answer() -> None:
    sender = Sender(*(Attempt(UNAVAILABLE) for _ in range(3)))
    call = await attempts(sender, hedging=HEDGING_POLICY).run({}, None)
    assert len(sender.sent) == 3
    assert call is sender.sent[-1]


# --- client streams -----------------------------------------------------------------------


def stream_call(
    sender: Sender, *, limit: int = DEFAULT_BUFFER_SIZE, iterator: Any = None
) -> tuple[ClientStreamCall, Replay]:
    """A client-stream call sent as retried attempts by ``sender``, its requests kept
    up to ``limit`` bytes."""
    requests = Replay(None, limit)
    run = Attempts(
        sender,
        pool="retried",
        method="/conngrpc.test.Retried/Collect",
        retry=RETRY_POLICY,
        requests=requests,
    )
    call = ClientStreamCall(
        lambda _, options, deadline: run.run(options, deadline), requests, iterator, {}, run
    )
    return call, requests


async def test_a_client_streams_requests_go_again_in_order_to_the_next_attempt() -> None:
    first, second = StreamAttempt(), StreamAttempt()
    sender = Sender(first, second)
    call, _ = stream_call(sender)
    await call.write(b"a")
    await call.write(b"b")
    await call.done_writing()
    assert (first.written, first.closed) == ([b"a", b"b"], True)
    first.end(UNAVAILABLE)
    await wait_until(lambda: second.closed)
    assert second.written == [b"a", b"b"]  # each once, in order, then the close
    second.end(OK)
    assert await call == b"answer"
    assert call.attempts == 2
    assert previous(second) == "1"


@pytest.mark.parametrize(("limit", "retried"), [(6, True), (5, False)])
async def test_past_the_buffer_a_client_stream_commits_and_its_failure_is_the_answer(
    limit: int, retried: bool
) -> None:
    first, second = StreamAttempt(), StreamAttempt()
    sender = Sender(first, second)
    call, requests = stream_call(sender, limit=limit)
    await call.write(b"abc")
    await call.write(b"def")  # 6 bytes in all
    assert requests.committed is not retried
    assert requests.kept == ([b"abc", b"def"] if retried else [])
    await call.done_writing()
    first.end(UNAVAILABLE)
    if retried:
        await wait_until(lambda: second.closed)
        assert second.written == [b"abc", b"def"]
        second.end(OK)
        assert await call == b"answer"
    else:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is UNAVAILABLE
        assert sender.sent == [first]


async def test_a_write_racing_an_attempts_end_reaches_the_next_attempt_once() -> None:
    first, second = StreamAttempt(), StreamAttempt()
    sender = Sender(first, second)
    call, _ = stream_call(sender)
    await call.write(b"a")
    first.held = True  # the next write waits, as on a full flow-control window
    racing = asyncio.ensure_future(call.write(b"b"))
    await wait_until(lambda: first.waiting == 1)
    sender.go.clear()  # the next attempt waits for a channel
    first.end(UNAVAILABLE)  # under the write
    late = asyncio.ensure_future(call.write(b"c"))  # while no attempt takes requests
    await wait_until(lambda: len(sender.script) == 1 and first.done())
    assert not racing.done()
    assert not late.done()
    second.held = True  # its first kept request waits
    sender.go.set()
    await wait_until(lambda: second.waiting == 1)
    during = asyncio.ensure_future(call.write(b"d"))  # while the kept requests go out
    await asyncio.sleep(0)  # one step: it runs to where it waits
    second.held = False
    second.release.set()
    await racing  # returns: the next attempt went out with it
    await late
    await during
    await call.done_writing()
    assert second.written == [b"a", b"b", b"c", b"d"]  # none twice, none lost, in order
    assert second.closed
    assert first.written == [b"a"]
    second.end(OK)
    assert await call == b"answer"


async def test_a_write_whose_attempt_ended_is_not_sent_again_once_the_next_commits() -> None:
    requests = Replay(None, DEFAULT_BUFFER_SIZE)
    first, second = StreamAttempt(), StreamAttempt()
    requests.attach(first)
    await requests.write(b"a")
    first.held = True
    racing = asyncio.ensure_future(requests.write(b"b"))
    await wait_until(lambda: first.waiting == 1)
    first.end(UNAVAILABLE)  # under the write, which then waits for what follows
    await wait_until(lambda: first.waiting == 0)
    # The next attempt commits the call (its first response) as its kept requests go out,
    # before the write that failed hears of it.
    second.wrote = lambda request: requests.end(second) if request == b"b" else None
    requests.attach(second)
    await racing
    assert second.written == [b"a", b"b"]
    await requests.write(b"c")  # to the committed attempt, no longer kept
    assert second.written == [b"a", b"b", b"c"]
    assert requests.kept == []


async def test_a_done_writing_given_between_attempts_reaches_the_next_one() -> None:
    first, second = StreamAttempt(), StreamAttempt()
    sender = Sender(first, second)
    call, _ = stream_call(sender)
    await call.write(b"a")
    sender.go.clear()
    first.end(UNAVAILABLE)
    await wait_until(lambda: first.done())
    await call.done_writing()  # returns at once: no attempt takes requests now
    assert not second.closed
    sender.go.set()
    await wait_until(lambda: second.closed)
    assert second.written == [b"a"]


async def test_a_request_iterator_is_read_once_and_sent_again() -> None:
    first, second = StreamAttempt(), StreamAttempt()
    sender = Sender(first, second)
    read: list[bytes] = []

    async def each() -> Any:
        for request in (b"a", b"b", b"c"):
            read.append(request)
            yield request

    call, _ = stream_call(sender, iterator=each())
    with pytest.raises(grpc.aio.UsageError):
        await call.write(b"x")  # the iterator writes, as on grpc.aio
    with pytest.raises(grpc.aio.UsageError):
        await call.done_writing()
    await wait_until(lambda: first.closed)
    first.end(UNAVAILABLE)
    await wait_until(lambda: second.closed)
    assert second.written == first.written == [b"a", b"b", b"c"]
    assert read == [b"a", b"b", b"c"]
    second.end(OK)
    assert await call == b"answer"


async def test_a_failing_request_iterator_cancels_the_call() -> None:
    sender = Sender(StreamAttempt())

    async def broken() -> Any:
        yield b"a"
        raise ValueError("no more")

    call, _ = stream_call(sender, iterator=broken())
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call.cancelled()
    assert sender.sent[0].cancelled


async def test_a_write_to_a_client_stream_that_failed_raises_as_grpc_does() -> None:
    first = StreamAttempt()
    sender = Sender(first)
    call, _ = stream_call(sender)
    await call.write(b"a")
    first.held = True
    pending = asyncio.ensure_future(call.write(b"b"))
    await wait_until(lambda: first.waiting == 1)
    first.end(INTERNAL)  # not retryable: the answer
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pending  # the status of the call it was written to, as grpc.aio's write
    assert raised.value.code() is INTERNAL
    with pytest.raises(asyncio.InvalidStateError, match="RPC already finished"):
        await call.write(b"c")
    await call.done_writing()  # nothing, on a call that is done
    assert await call.code() is INTERNAL


async def test_a_write_after_done_writing_is_refused_as_grpc_does() -> None:
    sender = Sender(StreamAttempt())
    call, _ = stream_call(sender)
    await call.done_writing()
    with pytest.raises(asyncio.InvalidStateError, match='half closed after calling "done_writing"'):
        await call.write(b"a")  # once the attempt went out, as grpc.aio's once its call did
    assert sender.sent[0].closed
    call.cancel()


async def test_a_client_stream_cancelled_before_its_first_attempt() -> None:
    sender = Sender(StreamAttempt())
    sender.go.clear()
    call, _ = stream_call(sender)
    pending = asyncio.ensure_future(call.write(b"a"))  # waits for an attempt
    await asyncio.sleep(0)
    assert call.cancel()
    assert call.cancelled()
    assert call.done()
    assert await call.code() is grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(asyncio.CancelledError):
        await pending
    with pytest.raises(asyncio.InvalidStateError, match="RPC already finished"):
        await call.write(b"b")
    with pytest.raises(asyncio.CancelledError):
        await call.wait_for_connection()
    assert sender.sent == []


def test_a_client_stream_is_not_hedged() -> None:
    with pytest.raises(ValueError, match="retry policy for a client stream"):
        Attempts(
            Sender(),
            pool="hedged",
            method="/conngrpc.test.Retried/Collect",
            hedging=HEDGING_POLICY,
            requests=Replay(None, DEFAULT_BUFFER_SIZE),
        )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), 256 * 1024),
        (((BUFFER_OPTION, 10),), 10),
        (((BUFFER_OPTION, -1),), 0),
        (((BUFFER_OPTION, 10), (BUFFER_OPTION, 20)), 20),  # the last, as grpc core
        (((BUFFER_OPTION, 10), (BUFFER_OPTION, "20")), 256 * 1024),
        ((("grpc.other", 10),), 256 * 1024),
    ],
)
def test_the_retry_buffer_size_is_read_as_grpc_core_reads_it(options: Any, expected: int) -> None:
    assert buffer_size(options) == expected


# --- the pieces -----------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_up_to_max_backoff() -> None:
    policy = RetryPolicy(
        max_attempts=5,
        initial_backoff=0.1,
        max_backoff=1.0,
        backoff_multiplier=3.0,
        retryable_status_codes=frozenset({UNAVAILABLE}),
    )
    ceilings = [backoff(policy, retry, lambda: 1.0) for retry in range(1, 6)]
    assert ceilings == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])
    assert backoff(policy, 2, lambda: 0.5) == pytest.approx(0.15)  # random(0, ceiling)
    assert backoff(policy, 10_000, lambda: 1.0) == 1.0  # no overflow


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        (((PUSHBACK, "250"),), 0.25),
        (((PUSHBACK, "0"),), 0.0),
        (((PUSHBACK, b"40"),), 0.04),
        (((PUSHBACK, "-5"),), STOP),
        (((PUSHBACK, "1.5"),), STOP),
        (((PUSHBACK, " 5"),), STOP),
        ((("other", "1"),), None),
    ],
)
def test_pushback_reads_as_a6_says(metadata: Any, expected: float | None) -> None:
    assert pushback(metadata) == expected


def test_throttle_counts_in_grpcs_milli_tokens() -> None:
    throttle = Throttle(RetryThrottling(max_tokens=10, token_ratio=0.1))
    assert throttle.allows()
    for _ in range(4):
        assert throttle.failed()  # 9, 8, 7, 6 left: more than half
    assert not throttle.failed()  # 5: no longer more than half
    assert not throttle.allows()
    throttle.succeeded()  # 5.1
    assert throttle.allows()
    assert throttle.tokens == 5100
    for _ in range(100):
        throttle.succeeded()
    assert throttle.tokens == 10_000  # never above max_tokens
    for _ in range(20):
        throttle.failed()
    assert throttle.tokens == 0  # never below none


def test_previous_attempts_replace_any_the_caller_gave() -> None:
    options = {"metadata": ((PREVIOUS_ATTEMPTS, "9"), ("k", "v")), "timeout": 1.0}
    assert with_previous(options, 0) is options
    assert with_previous(options, 2) == {
        "metadata": (("k", "v"), (PREVIOUS_ATTEMPTS, "2")),
        "timeout": 1.0,
    }
    assert with_previous({}, 1) == {"metadata": ((PREVIOUS_ATTEMPTS, "1"),)}


def test_a_refused_stream_is_told_by_its_details() -> None:
    assert is_refused(UNAVAILABLE, REFUSED)
    assert not is_refused(UNAVAILABLE, "Connection reset by peer")
    assert not is_refused(INTERNAL, REFUSED)
    assert not is_refused(UNAVAILABLE, None)


def test_the_next_attempt_goes_to_a_backend_the_call_has_not_tried() -> None:
    out = HandOut()
    slots = [slot(index) for index in range(4)]
    slots[3].backend = slots[0].backend  # two channels to the first backend
    for each in slots:
        out.add(each)
    slots[1].in_flight, slots[2].in_flight = 5, 3
    assert out.pick_avoiding([slots[0]]) is slots[2]  # the least loaded other backend
    assert out.pick_avoiding([slots[0], slots[2], slots[1]]) is slots[3]  # another channel
    chosen = out.pick_avoiding(slots)  # it tried them all: the pick
    assert chosen is out.slots[0] or chosen in slots


async def test_a_read_ahead_stream_gives_the_message_it_read_first() -> None:
    class Stream:
        def __init__(self) -> None:
            self.messages = [b"2", grpc.aio.EOF]

        async def read(self) -> Any:
            return self.messages.pop(0)

        def done(self) -> bool:
            return not self.messages

    stream = ReadAhead(Stream(), b"1")
    assert [message async for message in stream] == [b"1", b"2"]
