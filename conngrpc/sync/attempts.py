"""A ``conngrpc.sync`` call under a retry or a hedging policy: the asyncio pool's attempts.

What decides a call's attempts (retryable codes, commit, pushback, backoff, throttling,
the deadline across attempts, hedging's copies) is :class:`conngrpc.pool.retry.Attempts`,
run on the sync pool's event loop. Each attempt is a grpc sync ``future()`` on the
connection the pool picks for it (one the call has not tried, on another backend
first), which the loop awaits as it would a grpc.aio call (:class:`OnLoop`).

A retried call made with ``__call__`` or ``with_call`` sends its first attempt from the
caller's thread, as a call without a policy goes: the loop takes part only once it fails
in a way that retries. Hedged calls and ``future()`` run their attempts on the loop from
the start; the calling thread waits (``__call__``) or holds a :class:`PolicyFuture`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import grpc.aio

from .._log import get_logger
from ..pool.calls import FailedCall, within
from ..pool.handout import Slot
from ..pool.retry import Attempts, Ended
from ..pool.service_config import MethodPolicy
from .channel import OwnThread, finished, when_done
from .failed import failed_call
from .runtime import ThreadRuntime

if TYPE_CHECKING:
    from .pooled import _Multicallable

_log = get_logger("conngrpc.sync")

__all__ = [
    "AnsweredLater",
    "OnLoop",
    "PolicyFuture",
    "attempts_of",
    "call_with_policy",
    "deliver",
    "ended_of",
    "forget_after_fork",
    "future_when_ready",
    "future_with_policy",
    "outcome",
]

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
#: How often an attempt waiting on the loop for a channel with room looks again (room
#: frees in other threads, which do not wake the loop).
ROOM_POLL_SECONDS = 0.005


def _metadata(pairs: Any) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(*(pairs or ()))


class OnLoop:
    """A sync attempt (grpc's ``future()``), awaited on the pool's loop as the attempts
    machinery awaits a grpc.aio call: its response, or ``grpc.aio.AioRpcError``."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call

    def __await__(self) -> Any:
        return self._answer().__await__()

    async def _answer(self) -> Any:
        call = self.call
        await finished(call)
        code = call.code()
        if code is _OK:
            return call.result()
        raise grpc.aio.AioRpcError(
            code,
            _metadata(call.initial_metadata()),
            _metadata(call.trailing_metadata()),
            details=call.details(),
        )

    def cancel(self) -> bool:
        return bool(self.call.cancel())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.call.add_done_callback(lambda _: callback(self))


def attempts_of(
    multicallable: _Multicallable, runtime: ThreadRuntime, policy: MethodPolicy, request: Any
) -> Attempts:
    """The attempts of one call of ``multicallable`` under ``policy``, each sent on the
    pool's loop (:func:`_send`)."""

    async def send(
        tried: list[Slot], options: dict[str, Any], deadline: float | None
    ) -> tuple[Any, Slot]:
        return await _send(multicallable, runtime, request, tried, options, deadline)

    return Attempts(
        send,
        pool=runtime.name,
        method=multicallable._method,
        retry=policy.retry,
        hedging=policy.hedging,
        throttle=runtime.throttle,
    )


async def _send(
    multicallable: _Multicallable,
    runtime: ThreadRuntime,
    request: Any,
    tried: list[Slot],
    options: dict[str, Any],
    deadline: float | None,
) -> tuple[Any, Slot]:
    """Send one attempt, on the loop, on a connection the call has not tried where there
    is one (another backend first), the least loaded; add it to ``tried``.

    :raises grpc.aio.AioRpcError: no channel took it before ``deadline``, or none is
        connected and the call does not wait for one.
    """
    admission = runtime.admitted
    wait_for_ready = bool(options.get("wait_for_ready"))
    while True:
        with runtime.lock:
            slot = runtime.handout.pick_avoiding(tried)
            capped = slot is not None
            if slot is not None:
                slot = admission.placed(slot, tried)
            if slot is not None:
                carrying = admission.begin(slot)
                break
            joined = runtime.handout.slots
        if capped:  # every channel at its cap: in the queue, first come first served
            taken = await room(runtime, tried, deadline)
            if taken is not None:
                slot, carrying = taken
                break
            continue
        if runtime.stopped is not None or (
            not joined and not wait_for_ready and runtime.table.settled
        ):
            reason = runtime.stopped or runtime.not_connected().reason
            details = f"conngrpc.sync pool {runtime.name!r}: {reason}"
            raise grpc.aio.AioRpcError(_UNAVAILABLE, details=details)
        if deadline is not None and time.monotonic() >= deadline:
            raise grpc.aio.AioRpcError(_DEADLINE_EXCEEDED, details="Deadline Exceeded")
        with anyio.move_on_after(ROOM_POLL_SECONDS):
            await runtime.wait_ready()
    tried.append(slot)
    try:
        call = multicallable._real(slot).future(request, **within(options, deadline))
    except BaseException:
        multicallable._end(runtime, slot, carrying, None)
        raise
    when_done(call, multicallable._ended(runtime, slot, carrying))
    return OnLoop(call), slot


class _LoopWaiter:
    """An attempt waiting on the pool's loop for room, in the queue of the threads that
    wait for it (:meth:`~conngrpc.sync.runtime.ThreadAdmission.wait_room`): ``notify()``
    wakes it, from any thread."""

    __slots__ = ("event", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            self.loop.call_soon_threadsafe(self.event.set)


async def room(
    runtime: ThreadRuntime, tried: list[Slot], deadline: float | None
) -> tuple[Slot, int] | None:
    """Wait in the pool's queue for a channel under its cap; the channel, the call
    counted on it, and the calls it carried before; None if no channel serves now (look
    again).

    :raises grpc.aio.AioRpcError: DEADLINE_EXCEEDED, naming the cap, or UNAVAILABLE if
        the pool stopped.
    """
    admission = runtime.admitted
    waiter = _LoopWaiter(asyncio.get_running_loop())
    with runtime.lock:
        admission.waiting.append(waiter)
    try:
        while True:
            with runtime.lock:
                if admission.stopped:
                    details = f"conngrpc.sync pool {runtime.name!r}: it stopped ({runtime.stopped})"
                    raise grpc.aio.AioRpcError(_UNAVAILABLE, details=details)
                if admission.waiting[0] is waiter:
                    slot = runtime.handout.pick_avoiding(tried)
                    if slot is None:
                        return None  # no channel serves now: the caller looks again
                    slot = admission._under_cap(slot, tried)
                    if slot is not None:
                        return slot, admission.begin(slot)
                waiter.event.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                cap = (
                    "the stream cap its server showed"
                    if admission.cap is None
                    else f"max_calls_per_channel={admission.cap}"
                )
                details = (
                    f"conngrpc.sync pool {runtime.name!r}: every channel had {cap} calls in "
                    "flight until the deadline"
                )
                raise grpc.aio.AioRpcError(_DEADLINE_EXCEEDED, details=details)
            with anyio.move_on_after(left if left is not None else math.inf):
                await waiter.event.wait()
    finally:
        with runtime.lock:
            head = admission.waiting[0] is waiter
            admission.waiting.remove(waiter)
            if head and admission.waiting:  # the next may have room too
                admission.waiting[0].notify()


def answer_of(call: Any) -> Any:
    """The sync call (or failed call) that answers, from what the attempts returned: an
    attempt's call, a call that could not go out, or the first attempt's own error (sent
    from the caller's thread, when throttling stops the retries)."""
    if isinstance(call, OnLoop):
        return call.call
    if isinstance(call, FailedCall):
        error = call.error
        assert isinstance(error, grpc.aio.AioRpcError), error
        return failed_call(error.code(), error.details() or "")
    assert isinstance(call, grpc.RpcError), call
    return call


def outcome(
    runtime: ThreadRuntime,
    running: concurrent.futures.Future[Any],
    timeout: float | None = None,
    cancelled: bool = False,
) -> Any:
    """The sync call (or failed call) that answers a call whose attempts ran on the
    pool's loop (``running``), once they are over: within ``timeout``; ``cancelled`` if
    the program cancelled it.

    :raises grpc.FutureTimeoutError: ``timeout`` passed first.
    """
    try:
        return answer_of(running.result(timeout))
    except concurrent.futures.TimeoutError:
        raise grpc.FutureTimeoutError() from None
    except concurrent.futures.CancelledError:
        if cancelled:
            return failed_call(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        stopped = f"conngrpc.sync pool {runtime.name!r}: it stopped ({runtime.stopped})"
        return failed_call(_UNAVAILABLE, stopped)
    except grpc.aio.AioRpcError as error:  # the deadline passed between attempts
        return failed_call(error.code(), error.details() or "")


def call_with_policy(
    multicallable: _Multicallable,
    runtime: ThreadRuntime,
    policy: MethodPolicy,
    request: Any,
    options: dict[str, Any],
    with_call: bool,
) -> Any:
    """A blocking unary call under ``policy``: its response (and call, ``with_call``).

    :raises grpc.RpcError: the call failed, for good (grpc's own error of the attempt
        that answers).
    """
    timeout = options.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    attempts = attempts_of(multicallable, runtime, policy, request)
    taken = runtime.take_now() if policy.retry is not None else None
    if taken is None:  # hedged, or no connection takes it now: every attempt from the loop
        run = attempts.run(options, deadline)
        return _answered(outcome(runtime, _on_loop(runtime, run)), with_call)
    slot, carrying = taken
    plan = attempts.plan()
    plan.may_send(0)
    attempts.sent = 1
    try:
        response, call = multicallable._real(slot).with_call(request, **options)
    except grpc.RpcError as error:
        multicallable._end(runtime, slot, carrying, error)
        ended = ended_of(error, error, slot)
        pause = plan.after(ended)
        if pause is None:
            raise
        resume = attempts.resume(plan, [slot], options, deadline, ended, pause)
        return _answered(outcome(runtime, _on_loop(runtime, resume)), with_call)
    except BaseException:
        multicallable._end(runtime, slot, carrying, None)
        raise
    multicallable._end(runtime, slot, carrying, call)
    plan.after(Ended(call, slot, _OK))  # a success, for retryThrottling's tokens
    return (response, call) if with_call else response


def _answered(call: Any, with_call: bool) -> Any:
    """What a blocking call returns (or raises) for the call that answered."""
    if call.code() is not _OK:
        raise call
    response = call.result()
    return (response, call) if with_call else response


def _on_loop(runtime: ThreadRuntime, run: Any) -> concurrent.futures.Future[Any]:
    """Run the coroutine ``run`` on the pool's loop (a future failed UNAVAILABLE if the
    pool's loop is gone).

    :raises RuntimeError: called on the pool's own thread, where it would wait for itself.
    """
    if threading.current_thread() is runtime.thread:
        run.close()
        raise RuntimeError(
            f"conngrpc.sync pool {runtime.name!r}: a call under a policy (or waiting for a "
            "channel) was made on the pool's own thread, where it would wait for itself"
        )
    try:
        return asyncio.run_coroutine_threadsafe(run, runtime.loop)
    except RuntimeError:  # the loop closed: the pool stopped
        run.close()
        gone: concurrent.futures.Future[Any] = concurrent.futures.Future()
        gone.cancel()
        return gone


def future_with_policy(
    multicallable: _Multicallable,
    runtime: ThreadRuntime,
    policy: MethodPolicy,
    request: Any,
    options: dict[str, Any],
) -> PolicyFuture:
    """``future()`` under ``policy``: the attempts run on the loop, and this answers."""
    timeout = options.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    attempts = attempts_of(multicallable, runtime, policy, request)
    running = _on_loop(runtime, attempts.run(options, deadline))
    return PolicyFuture(runtime, running, attempts, deadline)


def future_when_ready(
    multicallable: _Multicallable, runtime: ThreadRuntime, request: Any, options: dict[str, Any]
) -> PolicyFuture:
    """``future()`` while no connection takes the call now (the pool starting, every
    channel down or at its cap): the pool's thread starts it once one does, within its
    deadline, and the caller's thread goes on at once, as with grpc's ``future()``."""
    timeout = options.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout

    async def start() -> Any:
        try:
            call, _ = await _send(multicallable, runtime, request, [], options, deadline)
        except grpc.aio.AioRpcError as error:
            return FailedCall(error, deadline)
        with contextlib.suppress(grpc.aio.AioRpcError):  # how it ended is its own to tell
            await call
        return call

    return PolicyFuture(runtime, _on_loop(runtime, start()), None, deadline)


def ended_of(call: Any, outcome: Any, slot: Slot, *, committed: bool = False) -> Ended:
    """How ``call`` ended, for its policy: read from ``outcome``, the grpc sync call or
    the ``grpc.RpcError`` it raised (which is one). Committed by response headers, or
    by ``committed`` (its requests no longer fit the retry buffer)."""
    return Ended(
        call,
        slot,
        outcome.code(),
        committed=bool(outcome.initial_metadata()) or committed,
        details=outcome.details(),
        metadata=outcome.trailing_metadata(),
    )


def _run_callback(due: tuple[Callable[[Any], None], Any]) -> None:
    fn, future = due
    try:
        fn(future)
    except Exception as error:  # as grpc: logged, and the others still run
        _log.error("a done callback of a conngrpc.sync future raised", exc_info=error)


#: Runs the done callbacks of the futures whose calls the pool's thread sent (never that
#: thread: a callback may block, or call through the pool).
_callbacks = OwnThread("conngrpc.sync callbacks", _run_callback)


def deliver(fn: Callable[[Any], None], future: Any) -> None:
    """Call ``fn(future)`` on the callbacks' thread."""
    _callbacks.put((fn, future))


def forget_after_fork() -> None:
    """A forked child's: the callbacks' thread stayed in the parent."""
    _callbacks.forget_after_fork()


class AnsweredLater(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[type-arg]
    """A sync call whose answer is another call, known later (:class:`PolicyFuture`,
    ``RetriedStream``): the methods of grpc.Call that are that call's, once known
    (``_answer``), and what is left of the call's deadline (``_deadline``)."""

    _deadline: float | None

    def _answer(self, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def trailing_metadata(self) -> Any:
        return self._answer().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._answer().code()  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._answer().details()  # type: ignore[no-any-return]

    def debug_error_string(self) -> str:
        return self._answer().debug_error_string()  # type: ignore[no-any-return]

    # (grpc's own calls answer None without a deadline, as this does; grpc's types say float)
    def time_remaining(self) -> float | None:  # type: ignore[override]
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())


class PolicyFuture(AnsweredLater):
    """A ``future()`` whose call the pool's thread sends (under a retry or a hedging
    policy, or once a connection takes it), answering as grpc's own future does: every
    method waits for the attempt that answers and is that attempt's (a grpc sync
    call's), and ``attempts`` says how many were sent."""

    def __init__(
        self,
        runtime: ThreadRuntime,
        running: concurrent.futures.Future[Any],
        attempts: Attempts | None,
        deadline: float | None,
    ) -> None:
        self._runtime = runtime
        self._running = running
        self._attempts = attempts
        self._deadline = deadline
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<conngrpc.sync future {self._attempts or 'waiting for a channel'!r}>"

    @property
    def attempts(self) -> int:
        """How many attempts the call sent (one, without a policy)."""
        return 1 if self._attempts is None else self._attempts.sent

    def _answer(self, timeout: float | None = None) -> Any:
        return outcome(self._runtime, self._running, timeout, self._cancelled)

    # grpc.Future
    def cancel(self) -> bool:
        self._cancelled = self._running.cancel()
        return self._cancelled

    def cancelled(self) -> bool:
        return self._running.cancelled()

    def running(self) -> bool:
        return not self._running.done()

    def done(self) -> bool:
        return self._running.done()

    def result(self, timeout: float | None = None) -> Any:
        return self._settled(timeout).result()

    def exception(self, timeout: float | None = None) -> Any:
        return self._settled(timeout).exception()

    def traceback(self, timeout: float | None = None) -> types.TracebackType | None:
        return self._settled(timeout).traceback()  # type: ignore[no-any-return]

    def _settled(self, timeout: float | None) -> Any:
        """The answer, for the methods of grpc.Future.

        :raises grpc.FutureCancelledError: it was cancelled, as grpc's futures say.
        """
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._answer(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(self)`` once it is done: at once if it is, else on the callbacks'
        thread (grpc calls its own on a thread of its, never on the pool's)."""
        if self._running.done():
            fn(self)
        else:
            self._running.add_done_callback(lambda _: deliver(fn, self))

    # grpc.Call
    def initial_metadata(self) -> Any:
        return self._answer().initial_metadata()

    def is_active(self) -> bool:
        return not self._running.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._running.done():
            return False
        self._running.add_done_callback(lambda _: deliver(lambda _: callback(), self))
        return True
