"""A ``conngrpc.sync`` response stream under a retry policy: retried until it commits.

As the asyncio pool's (A6): an attempt that fails with a retryable status before the
stream commits (its first message read, or response headers with metadata in them) is
sent again, after the policy's backoff (or the server's pushback), on a connection the
call has not tried; maxAttempts, retryThrottling and the call's deadline bound them, and
:class:`conngrpc.pool.retry` decides (``_Plan``).

grpc's sync streams are read in the caller's thread and end in grpc's: whichever sees an
attempt end first decides what follows, the reader (while one reads) or the attempt's
end (while none does, as for a stream nobody reads yet). The next attempt goes out from
the pool's thread, after its backoff. The stream answers every method of grpc's own
(iteration, ``code()``, ``cancel()``, done callbacks, ...) as the attempt that answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ..pool.calls import within
from ..pool.handout import Slot
from ..pool.retry import Ended, serialized_size, with_previous
from ..pool.service_config import MethodPolicy
from .attempts import (
    ROOM_POLL_SECONDS,
    AnsweredLater,
    attempts_of,
    deliver,
    ended_of,
    room,
)
from .channel import when_done
from .failed import failed_call
from .runtime import ThreadRuntime

if TYPE_CHECKING:
    from .pooled import _Multicallable

__all__ = ["ReplayedRequests", "RetriedStream", "client_stream_with_policy"]

_OK = grpc.StatusCode.OK
_OVER = object()  # no request any more, for a view of ReplayedRequests


class ReplayedRequests:
    """A client stream's requests, kept for the next attempt (A6's retry buffer) while
    their serialized size stays within ``limit``; past it the call commits and none is
    kept any more.

    Each attempt reads them through a :meth:`view` of its own: the kept ones, in order,
    then new ones from the caller's iterator, kept as they are drawn (by whichever
    attempt draws them: an attempt that ended may have drawn one that grpc dropped, and
    the next gets it). One attempt draws at a time.
    """

    def __init__(self, requests: Any, serializer: Callable[[Any], bytes] | None, limit: int):
        self._source = iter(requests)
        self._serializer = serializer
        self._limit = limit
        self._lock = threading.Lock()
        self._kept: list[Any] = []
        self._size = 0
        self._ended = False
        self._failed: BaseException | None = None
        self._drawer: object = None  # the view that drew the latest request
        #: past the buffer: no other attempt may go out
        self.committed = False

    def view(self) -> Any:
        """The requests, for one attempt."""
        me = object()  # this view: past the buffer, only the one that drew last goes on
        index = 0
        while True:
            request = self._next(me, index)
            if request is _OVER:
                return
            index += 1
            yield request

    def _next(self, view: object, index: int) -> Any:
        """The request at ``index`` for ``view``: a kept one, or one drawn now; _OVER
        once there is none (the caller's iterator ended, or the call committed to
        another attempt)."""
        with self._lock:
            if self.committed:
                if self._drawer is not view:
                    return _OVER
            elif index < len(self._kept):
                return self._kept[index]
            if self._failed is not None:
                raise self._failed
            if self._ended:
                return _OVER
            self._drawer = view
            try:
                request = next(self._source)
            except StopIteration:
                self._ended = True
                return _OVER
            except BaseException as error:
                self._failed = error
                raise
            self._keep(request)
            return request

    def _keep(self, request: Any) -> None:
        """Under the lock: keep ``request`` for another attempt, unless past the buffer."""
        if self.committed:
            return
        self._size += serialized_size(request, self._serializer)
        if self._size > self._limit:
            self.committed = True
            self._kept.clear()
        else:
            self._kept.append(request)


def client_stream_with_policy(
    multicallable: _Multicallable,
    runtime: ThreadRuntime,
    policy: MethodPolicy,
    replay: ReplayedRequests,
    options: dict[str, Any],
    with_call: bool,
) -> Any:
    """A blocking stream-unary call under a retry policy: its attempts one after the
    other from the caller's thread, each sent the requests again (:class:`ReplayedRequests`).

    :raises grpc.RpcError: the call failed, for good (grpc's own error of the attempt
        that answers).
    """
    timeout = options.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    attempts = attempts_of(multicallable, runtime, policy, None)
    plan = attempts.plan()
    plan.may_send(0)
    tried: list[Slot] = []
    while True:
        taken = runtime.take_avoiding(tried) if tried else None
        if taken is None:
            taken = multicallable._take(within(options, deadline))[1:3]
        slot, carrying = taken
        previous = attempts.sent
        attempts.sent = previous + 1
        cause = plan.sent()
        if previous:
            attempts._tell(previous + 1, cause, slot)
        tried.append(slot)
        sent = within(with_previous(options, previous), deadline)
        try:
            response, call = multicallable._real(slot).with_call(replay.view(), **sent)
        except grpc.RpcError as error:
            multicallable._end(runtime, slot, carrying, error)
            ended = ended_of(error, error, slot, committed=replay.committed)
            pause = plan.after(ended)
            if pause is None:
                raise
            if deadline is not None and time.monotonic() + pause >= deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))  # the backoff, in its thread
                raise failed_call(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            time.sleep(pause)  # the backoff, in the caller's thread, which waits for the call
            if not plan.may_send(attempts.sent):
                raise
            continue
        except BaseException:
            multicallable._end(runtime, slot, carrying, None)
            raise
        multicallable._end(runtime, slot, carrying, call)
        plan.after(Ended(call, slot, _OK))  # a success, for retryThrottling's tokens
        return (response, call) if with_call else response


class RetriedStream(AnsweredLater):
    """A response stream under a retry policy (see the module).

    Each attempt's end is decided once (:meth:`_ended`): by the reader while one reads
    (the attempt's end, seen meanwhile, waits for it: a message it got commits the
    stream), else by the attempt's end. Its waits end at its deadline at the latest.
    """

    def __init__(
        self,
        multicallable: _Multicallable,
        runtime: ThreadRuntime,
        policy: MethodPolicy,
        request: Any,
        options: dict[str, Any],
        requests: ReplayedRequests | None = None,
    ) -> None:
        self._multicallable = multicallable
        self._runtime = runtime
        self._request = request
        #: a bidirectional stream's requests, sent again to each attempt
        self._requests = requests
        self._options = options
        timeout = options.get("timeout")
        self._deadline: float | None = None if timeout is None else time.monotonic() + timeout
        self._attempts = attempts_of(multicallable, runtime, policy, request)
        self._plan = self._attempts.plan()
        self._lock = threading.Condition()
        self._tried: list[Slot] = []
        self._call: Any = None  # the attempt running now (None until the first goes)
        self._slot: Slot | None = None
        self._number = 0  # the attempt's, from 1
        self._decided = 0  # the latest attempt whose end was decided
        self._final: Any = None  # the call that answers, once known
        self._read = False  # a message was read: the stream committed
        self._ahead: list[Any] = []  # a message read ahead (by initial_metadata)
        self._readers = 0
        #: an attempt's end seen while a reader read: the reader decides it
        self._seen: tuple[int, Slot, Any] | None = None
        self._cancelled = False
        self._allowed = False  # the next attempt counted against maxAttempts already
        self._callbacks: list[Callable[[Any], None]] = []
        with runtime.lock:
            runtime.streams.add(self)
        self._plan.may_send(0)
        taken = runtime.take_now()
        if taken is None:  # no connection takes it now: the pool's thread sends it
            self._allowed = True
            self._soon(0.0)
        else:
            self._launch(*taken)

    def __repr__(self) -> str:
        return f"<conngrpc.sync retried stream {self._attempts!r}>"

    @property
    def attempts(self) -> int:
        """How many attempts the call sent."""
        return self._attempts.sent

    # --- the attempts ----------------------------------------------------------------

    def _launch(self, slot: Slot, carrying: int) -> None:
        """Send the next attempt on ``slot`` (counted against it already)."""
        multicallable, runtime = self._multicallable, self._runtime
        previous = self._attempts.sent
        options = within(with_previous(self._options, previous), self._deadline)
        requests = self._requests
        request = self._request if requests is None else requests.view()
        try:
            call = multicallable._real(slot)(request, **options)
        except BaseException as error:
            multicallable._end(runtime, slot, carrying, None)
            self._settle(failed_call(grpc.StatusCode.UNAVAILABLE, f"{error}"))
            return
        self._attempts.sent = previous + 1
        cause = self._plan.sent()
        if previous:
            self._attempts._tell(previous + 1, cause, slot)
        self._tried.append(slot)
        call = when_done(call, multicallable._ended(runtime, slot, carrying))
        if not hasattr(call, "add_done_callback"):  # an interceptor's plain iterator:
            self._settle(call)  # its end cannot be seen, so it goes once
            return
        with self._lock:
            stale = self._final is not None or self._cancelled
            if not stale:
                self._number += 1
                self._call, self._slot = call, slot
                self._allowed = False
                self._lock.notify_all()
            number = self._number
        if stale:
            call.cancel()
            return
        own = weakref.ref(self)
        when_done(call, lambda outcome: _attempt_ended(own, number, slot, outcome))

    def _ended(self, number: int, slot: Slot, outcome: Any, reader: bool) -> None:
        """Attempt ``number`` ended (``outcome``: its ``code()``, ``details()`` and
        metadata): it answers, or the next goes after its backoff; decided once."""
        pause = None
        callbacks: list[Callable[[Any], None]] = []
        with self._lock:
            if self._final is not None or number <= self._decided:
                return
            if self._readers and not reader:
                self._seen = (number, slot, outcome)  # the reader decides, when it is done
                return
            self._decided = number
            self._seen = None
            call = self._call
            code = outcome.code()
            if code is _OK or self._read or self._cancelled:
                callbacks = self._settled(call)
            else:
                requests = self._requests
                replayed_past = requests is not None and requests.committed
                ended = ended_of(call, outcome, slot, committed=replayed_past)
                pause = self._plan.after(ended)
                allowed = pause is not None and self._plan.may_send(self._attempts.sent)
                deadline = self._deadline
                if pause is None or not allowed:
                    callbacks = self._settled(call)
                    pause = None
                elif deadline is not None and time.monotonic() + pause >= deadline:
                    # the deadline passes first: the call ends then, between attempts
                    pause = max(0.0, deadline - time.monotonic())
                    self._allowed = True
                else:
                    self._allowed = True
        self._run(callbacks)
        if pause is not None:
            self._soon(pause)

    def _soon(self, pause: float) -> None:
        """Send the next attempt from the pool's thread after ``pause`` seconds."""
        loop = self._runtime.loop
        own = weakref.ref(self)
        try:
            loop.call_soon_threadsafe(loop.call_later, pause, _next_of, own)
        except RuntimeError:  # the loop closed: the pool stopped
            self.stopped()

    def _next(self) -> None:
        """On the pool's thread: send the next attempt, once a connection takes it (in
        the pool's queue, first come first served, while every one is at its cap)."""
        with self._lock:
            if self._final is not None or self._cancelled or not self._allowed:
                return
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._expired()
            return
        runtime = self._runtime
        taken = runtime.take_avoiding(self._tried)
        if taken is not None:
            self._launch(*taken)
            return
        wait_for_ready = bool(self._options.get("wait_for_ready"))
        if runtime.stopped is not None:
            self.stopped()
        elif runtime.handout.slots:  # at the cap: in the queue
            task = runtime.loop.create_task(self._queued())
            _queued.add(task)  # held until it ends (the loop holds its tasks weakly)
            task.add_done_callback(_queued.discard)
        elif not wait_for_ready and runtime.table.settled:
            details = f"conngrpc.sync pool {runtime.name!r}: {runtime.not_connected().reason}"
            self._settle(failed_call(grpc.StatusCode.UNAVAILABLE, details))
        else:
            runtime.loop.call_later(ROOM_POLL_SECONDS, _next_of, weakref.ref(self))

    async def _queued(self) -> None:
        """Wait in the pool's queue for room, then send the next attempt."""
        try:
            taken = await room(self._runtime, self._tried, self._deadline)
        except grpc.aio.AioRpcError as error:
            self._settle(failed_call(error.code(), error.details() or ""))
            return
        if taken is None:  # no channel serves now: look again
            self._runtime.loop.call_later(ROOM_POLL_SECONDS, _next_of, weakref.ref(self))
        else:
            self._launch(*taken)

    def _expired(self) -> None:
        """Its deadline passed with no attempt running: it ends DEADLINE_EXCEEDED."""
        self._settle(failed_call(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def stopped(self) -> None:
        """The pool stopped: a call not yet committed fails as UNAVAILABLE (one that
        committed ends as its channel's close ends it, as a stream without a policy)."""
        runtime = self._runtime
        details = f"conngrpc.sync pool {runtime.name!r}: it stopped ({runtime.stopped})"
        with self._lock:
            if self._read:
                return
            call = None if self._final is not None else self._call
        if call is not None:
            call.cancel()
        self._settle(failed_call(grpc.StatusCode.UNAVAILABLE, details))

    def _settle(self, final: Any) -> None:
        with self._lock:
            callbacks = [] if self._final is not None else self._settled(final)
        self._run(callbacks)

    def _settled(self, final: Any) -> list[Callable[[Any], None]]:
        """Under the lock: ``final`` answers; the callbacks to run (outside it)."""
        self._final = final
        self._lock.notify_all()
        with self._runtime.lock:
            self._runtime.streams.discard(self)
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _run(self, callbacks: list[Callable[[Any], None]]) -> None:
        """Run done callbacks: never on the pool's thread (grpc never runs them on the
        program's), where they go to the callbacks' thread."""
        on_loop = threading.current_thread() is self._runtime.thread
        for callback in callbacks:
            if on_loop:
                deliver(callback, self)
            else:
                with contextlib.suppress(Exception):  # as grpc: its failure is its own
                    callback(self)

    def _wait(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Under the lock: wait until ``done()``, at most ``timeout`` seconds, and no
        later than the deadline, where the call ends DEADLINE_EXCEEDED (cancelled)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            limits = [t for t in (end, self._deadline) if t is not None]
            if limits and now >= min(limits):
                if self._deadline is not None and now >= self._deadline and end != min(limits):
                    self._lock.release()
                    try:
                        self._late()
                    finally:
                        self._lock.acquire()
                    continue
                return False
            self._lock.wait(None if not limits else min(limits) - now)
        return True

    def _late(self) -> None:
        """Its deadline passed while someone waited: grpc ends it with the running
        attempt (cancelled after the deadline), or now between attempts."""
        with self._lock:
            call = None if self._final is not None else self._call
        if call is not None:
            call.cancel()
        self._expired()

    def _answer(self, timeout: float | None = None) -> Any:
        """The call that answers, once known (within ``timeout``)."""
        with self._lock:
            if not self._wait(lambda: self._final is not None, timeout):
                raise grpc.FutureTimeoutError()
            return self._final

    # --- iteration ---------------------------------------------------------------------

    def __iter__(self) -> RetriedStream:
        return self

    def __next__(self) -> Any:
        while True:
            with self._lock:
                if self._ahead:
                    return self._ahead.pop(0)
                self._wait(lambda: self._call is not None or self._final is not None)
                final, call, number, slot = self._final, self._call, self._number, self._slot
                if final is None:
                    self._readers += 1
            if final is not None:
                return next(final)
            assert slot is not None
            try:
                message = next(call)
            except StopIteration:
                self._reader_done(number, slot, call)
                raise
            except grpc.RpcError:
                self._reader_done(number, slot, call)
                with self._lock:  # until it answers, or the next attempt went out
                    self._wait(functools.partial(self._moved_on, number))
                continue
            except BaseException:
                self._reader_done()
                raise
            self._reader_done(read=True)
            return message

    def _moved_on(self, number: int) -> bool:
        """Under the lock: whether it answered, or sent an attempt after ``number``."""
        return self._final is not None or self._number != number

    def next(self) -> Any:
        return self.__next__()

    def _reader_done(
        self, number: int = 0, slot: Slot | None = None, ended: Any = None, read: bool = False
    ) -> None:
        """A read is over: it got a message (``read``: the stream committed), or saw
        attempt ``number`` end (``ended``: it decides); or an end seen meanwhile, once
        no reader reads, is decided now."""
        with self._lock:
            self._readers -= 1
            if read:
                self._read = True
            seen = self._seen if not self._readers else None
        if ended is not None and slot is not None:
            self._ended(number, slot, ended, reader=True)
        elif seen is not None:
            self._ended(*seen, reader=True)

    # --- grpc.Call, grpc.Future ------------------------------------------------------------

    def initial_metadata(self) -> Any:
        """The response headers of the attempt that answers: with metadata in them, they
        commit it; empty, a message read ahead does (kept for the reader)."""
        while True:
            with self._lock:
                self._wait(lambda: self._call is not None or self._final is not None)
                final, call, read = self._final, self._call, self._read or bool(self._ahead)
            if final is not None:
                return final.initial_metadata()
            metadata = call.initial_metadata()
            if metadata or read:
                return metadata
            try:
                message = self.__next__()
            except (StopIteration, grpc.RpcError):
                continue  # it answered, with no message: its headers are the answer's
            with self._lock:
                self._ahead.append(message)

    def cancel(self) -> bool:
        with self._lock:
            if self._final is not None:
                return False
            self._cancelled = True
            call = self._call
        if call is None or not call.cancel():
            cancelled = failed_call(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
            self._settle(cancelled)
        return True

    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled and self._final is not None

    def running(self) -> bool:
        return self._final is None

    def done(self) -> bool:
        return self._final is not None

    def is_active(self) -> bool:
        return self._final is None

    def result(self, timeout: float | None = None) -> Any:
        return self._answer(timeout).result()

    def exception(self, timeout: float | None = None) -> Any:
        return self._answer(timeout).exception()

    def traceback(self, timeout: float | None = None) -> Any:
        return self._answer(timeout).traceback()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if self._final is None:
                self._callbacks.append(fn)
                return
        fn(self)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._final is not None:
                return False
            self._callbacks.append(lambda _: callback())
            return True


#: The streams' tasks waiting in their pools' queues for room.
_queued: set[asyncio.Task[None]] = set()


def _attempt_ended(own: weakref.ref[RetriedStream], number: int, slot: Slot, outcome: Any) -> None:
    """An attempt's end (grpc's thread): the stream decides, if anyone still holds it."""
    stream = own()
    if stream is not None:
        stream._ended(number, slot, outcome, reader=False)


def _next_of(own: weakref.ref[RetriedStream]) -> None:
    """The pool's thread sends a stream's next attempt, if anyone still holds it."""
    stream = own()
    if stream is not None:
        stream._next()
