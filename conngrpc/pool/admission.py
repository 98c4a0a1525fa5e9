"""Admission: the calls in flight through a pool, and those waiting for room.

With ``max_calls_per_channel``, a call finds room on the least-loaded channel or waits
here, first come first served, and starts the moment a channel has room: inside the
done callback of the call that ended, not at its own task's next turn.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Collection
from typing import Any

import grpc

from .handout import HandOut, Slot

__all__ = ["Admission"]

_now = time.monotonic
_READY = grpc.ChannelConnectivity.READY


def _limit(cap: int | None, slot: Slot) -> int | None:
    """The most calls ``slot`` takes: ``max_calls_per_channel`` (``cap``) when it is set
    (the user knows the server's cap), else the stream cap the slot learnt from its
    server, if any."""
    return slot.limit if cap is None else cap


class _Waiter:
    """A call waiting for room under ``max_calls_per_channel``.

    :meth:`Admission.dispatch` starts it, with ``start(slot)``, on the first slot that
    frees and resolves ``future`` with the call (or with what ``start`` raised); the
    pool's stop resolves it with None.
    """

    __slots__ = ("future", "start")

    def __init__(self, future: asyncio.Future[Any], start: Callable[[Slot], Any]) -> None:
        self.future = future
        self.start = start


class Admission:
    """Counts the calls in flight, and starts the calls waiting for room as room frees."""

    __slots__ = ("cap", "dispatching", "handout", "in_flight", "loop", "stopped", "waiting")

    def __init__(self, handout: HandOut, cap: int | None, loop: asyncio.AbstractEventLoop) -> None:
        self.handout = handout
        #: settings.max_calls_per_channel: calls beyond it wait, first come first served
        self.cap = cap
        self.loop = loop
        self.in_flight = 0
        self.waiting: collections.deque[_Waiter] = collections.deque()
        self.dispatching = False  # dispatch() runs: a call that ends meanwhile leaves it be
        self.stopped = False

    def __repr__(self) -> str:
        return f"<Admission in_flight={self.in_flight} waiting={len(self.waiting)}>"

    def placed(self, slot: Slot, avoid: Collection[Slot] = ()) -> Slot | None:
        """The slot a new call may start on now, without waiting: ``slot`` (the pick)
        while it is under its cap, else the least loaded other READY slot under its own
        (one not in ``avoid`` first: those a retried call tried); None when none is, or
        earlier calls wait.

        Always ``slot``, without ``max_calls_per_channel`` and with no stream cap learnt
        from a server (``max_calls_per_channel`` wins over a cap learnt).
        """
        if self.cap is None and slot.limit is None:
            return slot  # nothing caps it
        return None if self.waiting else self._under_cap(slot, avoid)

    def _under_cap(self, slot: Slot, avoid: Collection[Slot] = ()) -> Slot | None:
        cap = _limit(self.cap, slot)
        if cap is None or slot.in_flight < cap:
            return slot
        best: Slot | None = None
        fallback: Slot | None = None
        for other in self.handout.slots:  # caps learnt differ between slots
            cap = _limit(self.cap, other)
            if (cap is None or other.in_flight < cap) and other.channel.get_state() is _READY:
                if other in avoid:
                    if fallback is None or other.in_flight < fallback.in_flight:
                        fallback = other
                elif best is None or other.in_flight < best.in_flight:
                    best = other
        return best or fallback

    def track(self, slot: Slot, call: Any) -> Any:
        """Count ``call`` against ``slot`` until grpc says it is done; return it.

        The call keeps how many others its slot carried as it went
        (``conngrpc_carrying``): if its server refuses it, that is the server's stream
        cap, at most.
        """
        carrying = slot.in_flight
        slot.in_flight = carrying + 1
        self.in_flight += 1
        try:  # noqa: SIM105 - every call comes here: suppress() would cost a call more
            call.conngrpc_carrying = carrying
        except AttributeError:  # a stand-in without attributes of its own: counted at its end
            pass
        try:
            call.add_done_callback(slot.done)
        except NotImplementedError:  # an interceptor answered without a call: it is done
            slot.done()
        return call

    def ended(self) -> None:
        """A call ended (a slot's done callback): its room goes to the oldest waiter."""
        self.in_flight -= 1
        if self.waiting:
            self.dispatch()

    async def room(self, start: Callable[[Slot], Any], deadline: float | None) -> Any:
        """Wait, first come first served, until a channel is under ``max_calls_per_channel``;
        then ``start(slot)`` the call on it, at once, and return the call; None if the
        pool stopped.

        ``start`` runs inside :meth:`dispatch`, as the slot frees: the call goes out
        without waiting for this task's turn on the event loop, and it must count the
        call against the slot (:meth:`track`). What it raises, this raises.

        :raises TimeoutError: ``deadline`` (monotonic) passed first.
        """
        if self.stopped:
            return None
        future: asyncio.Future[Any] = self.loop.create_future()
        waiter = _Waiter(future, start)
        self.waiting.append(waiter)
        self.dispatch()
        if future.done():
            return future.result()
        timer = None
        if deadline is not None:
            timer = self.loop.call_later(max(0.0, deadline - _now()), self._expire, waiter)
        try:
            return await future
        except BaseException:
            if waiter in self.waiting:
                self.waiting.remove(waiter)
            elif future.done() and not future.cancelled() and future.exception() is None:
                call = future.result()  # started just as the wait was cancelled: cancel it
                if call is not None:
                    call.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: _Waiter) -> None:
        """A waiter's deadline passed before any slot had room."""
        if waiter in self.waiting:
            self.waiting.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(TimeoutError())

    def dispatch(self) -> None:
        """Start the calls that wait on the channels with room, oldest first.

        A call that ends while it runs (a start may end at once) leaves the loop to
        see the room it made: dispatch never runs inside itself.
        """
        if self.dispatching:
            return
        self.dispatching = True
        try:
            while self.waiting:
                slot = self.handout.pick()
                if slot is not None:
                    slot = self._under_cap(slot)
                if slot is None:
                    return
                waiter = self.waiting.popleft()
                if waiter.future.done():  # cancelled, its task not yet told: nothing to start
                    continue
                try:
                    call = waiter.start(slot)
                except Exception as error:  # the call could not start: its caller hears it
                    waiter.future.set_exception(error)
                else:
                    waiter.future.set_result(call)
        finally:
            self.dispatching = False

    def stop(self) -> None:
        """The pool stopped: calls waiting for room get None (there will be none)."""
        self.stopped = True
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_result(None)
