"""A running ``conngrpc.sync`` pool: asyncio's pool runtime, its state shared with threads.

The pool's table, hand-out, ejection and settings are the asyncio pool's own: the
workers run on the sync supervisor's event loop and report there. What differs is who
reads and counts: any thread picks a channel and counts its calls, and grpc's threads
end them. One lock (:attr:`ThreadRuntime.lock`) orders it all: the table changes under
it on the loop, and each call's pick, count and end take it, for about a microsecond.
A backend tripped by a call's end is ejected on the loop (the call's thread hands it
over); threads that wait for a channel or for room wait on conditions of the same lock.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
import weakref
from typing import Any, cast

from ..channel.changes import Change, Reply
from ..channel.config import ChannelConfig, Connector
from ..pool.admission import Admission
from ..pool.ejection import Outcomes
from ..pool.handout import Slot
from ..pool.retry import Throttle
from ..pool.runtime import PoolRuntime, PoolStatus, thread_pools
from ..pool.table import Closing, Resolved, Sweep, Tick, Tripped
from ..supervisor import Registry
from . import fork
from .channel import SyncConnector, ThreadChannel, connect_thread

__all__ = ["ThreadAdmission", "ThreadRuntime", "registered", "renew_after_fork", "thread_pools"]

#: Notified whenever a sync pool registers its name, changes or stops: calls waiting
#: for a pool that does not run yet, and PooledChannel subscriptions, wait on it.
registered = threading.Condition()


class LockedThrottle(Throttle):
    """``retryThrottling``'s token bucket, shared by the threads that end a sync pool's
    calls: each change under a lock of its own."""

    __slots__ = ("_lock",)

    def __init__(self, throttle: Throttle) -> None:
        self._most, self._half, self._ratio = throttle._most, throttle._half, throttle._ratio
        self.tokens = throttle.tokens
        self._lock = threading.Lock()

    def failed(self) -> bool:
        with self._lock:
            return super().failed()

    def succeeded(self) -> None:
        with self._lock:
            super().succeeded()


class ThreadAdmission(Admission):
    """Counts a sync pool's calls in flight, and wakes the threads waiting for room
    (``max_calls_per_channel``, or a stream cap learnt) first come first served.

    Every method runs under the runtime's lock.
    """

    __slots__ = ("lock",)

    def __init__(self, runtime: ThreadRuntime, cap: int | None) -> None:
        super().__init__(runtime.handout, cap, runtime.loop)
        self.lock = runtime.lock
        #: threads waiting for room, oldest first, each on its own condition
        self.waiting: collections.deque[Any] = collections.deque()

    def begin(self, slot: Slot) -> int:
        """Count a call starting on ``slot`` (and on its channel, which drains by it);
        the calls it carried before (the call's ``carrying``)."""
        carrying = slot.in_flight
        slot.in_flight = carrying + 1
        self.in_flight += 1
        cast("ThreadChannel", slot.channel).in_flight += 1
        return carrying

    def end(self, slot: Slot, code: int | None, was_refused: bool, carrying: int) -> None:
        """A call counted by :meth:`begin` ended with status ``code``."""
        slot.finish(code, was_refused, carrying)
        cast("ThreadChannel", slot.channel).ended()

    def ended(self) -> None:
        """A call ended (its slot's ``finish``): its room goes to the oldest waiter."""
        self.in_flight -= 1
        if self.waiting:
            self.dispatch()

    def dispatch(self) -> None:
        """Wake the oldest thread waiting for room: it looks for a channel with room."""
        if self.waiting:
            self.waiting[0].notify()

    def stop(self) -> None:
        self.stopped = True
        for waiter in self.waiting:
            waiter.notify()

    def wait_room(self, deadline: float | None) -> Slot | None:
        """Wait, first come first served, until a channel is under its cap; return it
        (the caller counts its call on it at once, under the lock); None when the pool
        stopped or ``deadline`` (monotonic) passed first."""
        waiter = threading.Condition(self.lock)
        self.waiting.append(waiter)
        try:
            while not self.stopped:
                if self.waiting[0] is waiter:
                    slot = self.handout.pick()
                    if slot is not None:
                        slot = self._under_cap(slot)
                    if slot is not None:
                        return slot
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                waiter.wait(remaining)
            return None
        finally:
            head = self.waiting[0] is waiter
            self.waiting.remove(waiter)
            if head and self.waiting:  # the next may have room too
                self.waiting[0].notify()


class ThreadRuntime(PoolRuntime):
    """A ``conngrpc.sync`` pool's runtime: the asyncio pool's, its state under one lock."""

    __slots__ = ("admitted", "changed", "connect", "lock", "streams")

    def __init__(self, kind: Any, settings: Any, connector: SyncConnector | None = None) -> None:
        self.lock = threading.RLock()
        #: notified at every change of the table, and when the pool stops
        self.changed = threading.Condition(self.lock)
        self.connect = connector
        #: its retried response streams under way, which its stop ends
        self.streams: weakref.WeakSet[Any] = weakref.WeakSet()
        fork.check_usable(health_checked=settings.channel.health_check is not None)
        super().__init__(kind, settings)
        #: its admission, as the sync front end uses it (the same object)
        self.admitted = cast("ThreadAdmission", self.admission)
        if self.throttle is not None:
            self.throttle = LockedThrottle(self.throttle)

    def make_admission(self, cap: int | None) -> Admission:
        return ThreadAdmission(self, cap)

    def take_avoiding(self, tried: list[Slot]) -> tuple[Slot, int] | None:
        """:meth:`take_now` for a call's next attempt: a connection it has not tried
        first, another backend first."""
        with self.lock:
            slot = self.handout.pick_avoiding(tried)
            if slot is not None:
                admission = self.admitted
                slot = admission.placed(slot, tried)
                if slot is not None:
                    return slot, admission.begin(slot)
        return None

    def take_now(self) -> tuple[Slot, int] | None:
        """The connection a call goes to now (counted against it) and the calls it
        carried before; None when none is serving, or every one is at its cap."""
        with self.lock:
            slot = self.handout.pick()
            if slot is not None:
                admission = self.admitted
                slot = admission.placed(slot)
                if slot is not None:
                    return slot, admission.begin(slot)
        return None

    def registry(self) -> Registry[PoolRuntime]:
        return thread_pools

    def connector(self, config: ChannelConfig) -> Connector | None:
        return cast("Connector", functools.partial(connect_thread, self.connect, self.lock))

    def report(
        self, index: int | None, change: Change | Resolved | Tick | Sweep | Tripped | Closing
    ) -> Reply:
        with self.lock:
            reply = super().report(index, change)
            self.changed.notify_all()
        _tell_everyone()
        return reply

    def announce(self) -> None:
        super().announce()
        _tell_everyone()

    def _tripped(self, outcomes: Outcomes) -> None:
        """A call's end tripped a backend (on the call's thread): eject it on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the pool is gone
            self.loop.call_soon_threadsafe(super()._tripped, outcomes)

    def stop(self, reason: str) -> None:
        with self.lock:
            super().stop(reason)
            self.changed.notify_all()
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            stream.stopped()
        _tell_everyone()

    def status(self) -> PoolStatus:
        with self.lock:
            return super().status()


def renew_after_fork() -> None:
    """A forked child's: a thread of the parent may have held ``registered`` as it forked."""
    global registered
    registered = threading.Condition()


def _tell_everyone() -> None:
    """A sync pool registered, changed or stopped: wake whoever waits on ``registered``."""
    with registered:
        registered.notify_all()
