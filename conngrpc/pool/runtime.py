"""A running pool: its workers, its hand-out state, and the supervisor that runs them.

A pool belongs to the asyncio event loop that started it (grpc.aio channels are bound
to one loop); calls that can check that at no cost to the hand-out do.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskStatus

from .. import telemetry
from .._checks import check_count, check_seconds
from .._tasks import task_group
from ..channel.worker import ChannelWorker, run_worker
from ..errors import NotConnectedError, PoolNotStartedError
from ..supervisor import ChildSpec, Registry, Supervisor
from .fleet import Fleet
from .resolver import default_resolver
from .settings import ResolvedSettings

__all__ = [
    "EXACT_PICK_UP_TO",
    "STATUS",
    "PoolRuntime",
    "PoolStatus",
    "Slot",
    "channels",
    "not_started",
    "pools",
    "run_pool",
    "wait_connected",
    "wait_registered",
]

STATUS = ("conngrpc", "pool", "status")

_READY = grpc.ChannelConnectivity.READY

#: Up to this many channels, the least-loaded pick scans them all; above, it compares
#: two picked at random (the power of two choices), which costs the same at any size.
EXACT_PICK_UP_TO = 8

Kind = Literal["pool", "channel"]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """How many channels a pool should have and how many are connected now.

    A snapshot of plain values: safe to take from any thread (a metrics exporter's,
    say), unlike the channels themselves, which belong to the pool's event loop.
    """

    name: str
    expected_size: int
    current_size: int
    #: Channels handed out now per backend address; every backend the resolver knows
    #: is listed, with 0 when it holds none.
    backends: Mapping[str, int] = field(default_factory=dict)
    #: Calls in flight through the pool's :class:`~conngrpc.PooledChannel`, in all.
    in_flight: int = 0
    #: Calls in flight by worker index: on its channel handed out now (0 when idle), and
    #: on any of its channels that left the hand-out while calls run on it (a health
    #: flap, a replacement draining). They add up to ``in_flight``.
    in_flight_by_channel: Mapping[int, int] = field(default_factory=dict)


class Slot:
    """A handed-out channel and the calls in flight on it (through the PooledChannel).

    A call counts against the slot it started on until grpc says it is done. A slot
    lives while its channel is handed out and, once it has left, while calls started
    on it still run: a channel that rejoins (NOT_SERVING, then SERVING again) finds its
    count where it was, and the pick sees its calls.
    """

    __slots__ = ("callables", "channel", "in_flight", "runtime", "worker")

    def __init__(self, worker: ChannelWorker, channel: grpc.aio.Channel, runtime: PoolRuntime):
        self.worker = worker
        self.channel = channel
        self.runtime = runtime
        self.in_flight = 0
        #: the channel's own multicallables, one per method of the facade
        self.callables: dict[object, Any] = {}

    def __repr__(self) -> str:
        return f"<Slot {self.worker.name} in_flight={self.in_flight}>"

    def done(self, _: object = None) -> None:
        """A call on this slot ended (grpc's done callback)."""
        self.in_flight -= 1
        runtime = self.runtime
        runtime.in_flight -= 1
        if runtime.waiting:
            runtime.dispatch()


def _least_loaded(slots: tuple[Slot, ...], start: int) -> Slot:
    """The slot with the fewest calls in flight, scanning from ``start`` (ties take turns)."""
    best = slots[start]
    for slot in slots[start + 1 :] + slots[:start]:
        if slot.in_flight < best.in_flight:
            best = slot
    return best


class _Waiter:
    """A call waiting for room under ``max_calls_per_channel``.

    :meth:`PoolRuntime.dispatch` starts it, with ``start(slot)``, on the first slot that
    frees and resolves ``future`` with the call (or with what ``start`` raised); the
    pool's stop resolves it with None.
    """

    __slots__ = ("future", "start")

    def __init__(self, future: asyncio.Future[Any], start: Callable[[Slot], Any]) -> None:
        self.future = future
        self.start = start


class PoolRuntime:
    """A running pool's state: every worker's record, and the connected ones in order.

    ``workers``, ``channels`` (the connected ones) and their ``slots`` are tuples
    replaced, never changed in place, whenever a worker joins or leaves, so the hand-out
    reads a consistent snapshot without a lock (``resting`` too is replaced whole).
    ``records`` holds every worker, connected or not, for status and for error messages
    that say why a pool is not connected.
    """

    __slots__ = (
        "_changed",
        "call_cap",
        "channels",
        "counter",
        "dispatching",
        "expected_size",
        "fleet",
        "in_flight",
        "kind",
        "loop",
        "mock",
        "name",
        "records",
        "resting",
        "slots",
        "stopped",
        "thread",
        "unimplemented_health_seen",
        "waiting",
        "workers",
    )

    def __init__(self, kind: Kind, settings: ResolvedSettings) -> None:
        name, config = settings.name, settings.channel
        self.kind = kind
        self.name = name
        self.expected_size = expected_size = settings.pool_size
        self.mock = config.mock
        resolver = settings.resolver or default_resolver(config)
        self.fleet = Fleet(name, config, resolver)
        self.unimplemented_health_seen = False
        self.records = tuple(ChannelWorker(name, index) for index in range(expected_size))
        self.workers: tuple[ChannelWorker, ...] = ()
        self.channels: tuple[grpc.aio.Channel, ...] = ()
        self.slots: tuple[Slot, ...] = ()
        #: slots whose channel left the hand-out with calls still running on it, kept
        #: until those end (dropped at a later change) or the channel rejoins
        self.resting: dict[grpc.aio.Channel, Slot] = {}
        self.in_flight = 0
        #: settings.max_calls_per_channel: calls beyond it wait here, first come first served
        self.call_cap = settings.max_calls_per_channel
        self.waiting: collections.deque[_Waiter] = collections.deque()
        self.dispatching = False  # dispatch() runs: a call that ends meanwhile leaves it be
        self.counter = itertools.count()
        self.stopped: str | None = None  # why the pool stopped, once it has
        self.loop = asyncio.get_running_loop()
        self.thread = threading.current_thread()
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        kind = self.kind.capitalize()
        return f"<{kind} {self.name!r} connected={len(self.workers)} expected={self.expected_size}>"

    # --- what the workers report (Membership) -------------------------------------

    def joined(self, worker: ChannelWorker) -> None:
        # Published again even when it is in already: a swap changed its channel.
        others = [w for w in self.workers if w is not worker]
        self._publish(sorted((*others, worker), key=lambda w: w.index))

    def left(self, worker: ChannelWorker) -> None:
        if worker in self.workers:
            self._publish([w for w in self.workers if w is not worker])

    def changed(self, worker: ChannelWorker) -> None:
        if self.resting:
            self.resting = {c: slot for c, slot in self.resting.items() if slot.in_flight}
        self._wake()

    def first_unimplemented_health(self) -> bool:
        first = not self.unimplemented_health_seen
        self.unimplemented_health_seen = True
        return first

    def _publish(self, workers: list[ChannelWorker]) -> None:
        self.workers = tuple(workers)
        # A mocked pool hands out mock() the long way: its fast path finds no channel.
        if self.mock is None:
            self.channels = tuple(w.channel for w in workers)  # type: ignore[misc]
            # One slot per channel for as long as calls run on it, out of the hand-out
            # or in: a channel that rejoins takes its slot, and its count, back.
            known = {**self.resting, **{slot.channel: slot for slot in self.slots}}
            self.slots = tuple(
                known.pop(c) if c in known else Slot(w, c, self)
                for w, c in zip(workers, self.channels, strict=True)
            )
            self.resting = {c: slot for c, slot in known.items() if slot.in_flight}
            if self.waiting:
                self.dispatch()  # a channel that joined has room
        self._wake()

    def stop(self, reason: str) -> None:
        """The pool is gone (the first reason given stays): wake everyone who waits."""
        if self.stopped is None:
            self.stopped = reason
        while self.waiting:  # calls waiting for room: there will be none (room() says so)
            future = self.waiting.popleft().future
            if not future.done():
                future.set_result(None)
        self._wake()

    def next_ready(self) -> grpc.aio.Channel | None:
        """The next handed-out channel that is READY, round-robin; None when none is.

        A channel found not READY is skipped, not taken out: its connection broke and
        grpc knows it, but the worker's notice of it waits its turn on the event loop
        (tens of milliseconds under load), and calls on it would fail meanwhile. The
        worker alone takes a channel out of the hand-out: after a GOAWAY grpc may reopen
        the same channel before the worker looks, and the channel, READY again, must be
        handed out again.
        """
        channels = self.channels
        size = len(channels)
        for _ in range(size):
            channel = channels[next(self.counter) % size]
            if channel.get_state() is _READY:
                return channel
        return None

    def pick(self) -> Slot | None:
        """The handed-out channel with the fewest calls in flight that is READY, or None.

        Up to EXACT_PICK_UP_TO channels, a scan from a turning start (ties take turns);
        above, the less loaded of two picked at random. Should the choice not be READY,
        the least loaded of those that are (skipped, as in :meth:`next_ready`).
        """
        slots = self.slots
        size = len(slots)
        if size == 1:
            best = slots[0]
        elif size == 0:
            return None
        elif size <= EXACT_PICK_UP_TO:
            best = _least_loaded(slots, next(self.counter) % size)
        else:
            first, second = slots[int(_random() * size)], slots[int(_random() * size)]
            best = first if first.in_flight <= second.in_flight else second
        if best.channel.get_state() is _READY:
            return best
        ready = tuple(slot for slot in slots if slot.channel.get_state() is _READY)
        return _least_loaded(ready, next(self.counter) % len(ready)) if ready else None

    def has_room(self, slot: Slot) -> bool:
        """Whether a new call may start on ``slot`` now (the least loaded) without waiting.

        Always, without ``max_calls_per_channel``; else while the slot is under it and
        no earlier call waits.
        """
        cap = self.call_cap
        return cap is None or (slot.in_flight < cap and not self.waiting)

    async def room(self, start: Callable[[Slot], Any], deadline: float | None) -> Any:
        """Wait, first come first served, until a channel is under ``max_calls_per_channel``;
        then ``start(slot)`` the call on it, at once, and return the call; None if the
        pool stopped.

        ``start`` runs inside :meth:`dispatch`, as the slot frees: the call goes out
        without waiting for this task's turn on the event loop, and it must count the
        call against the slot (:meth:`track`). What it raises, this raises.

        :raises TimeoutError: ``deadline`` (monotonic) passed first.
        """
        if self.stopped is not None:
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
            cap = self.call_cap
            while self.waiting:
                slot = self.pick()
                if slot is None or (cap is not None and slot.in_flight >= cap):
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

    def track(self, slot: Slot, call: Any) -> Any:
        """Count ``call`` against ``slot`` until grpc says it is done; return it."""
        slot.in_flight += 1
        self.in_flight += 1
        try:
            call.add_done_callback(slot.done)
        except NotImplementedError:  # an interceptor answered without a call: it is done
            slot.done()
        return call

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- what callers ask ---------------------------------------------------------

    def status(self) -> PoolStatus:
        workers = self.workers
        backends = self.fleet.backends(list(workers))
        by_channel = {slot.worker.index: slot.in_flight for slot in self.slots}
        for slot in self.resting.values():
            if slot.in_flight:
                index = slot.worker.index
                by_channel[index] = by_channel.get(index, 0) + slot.in_flight
        return PoolStatus(
            self.name, self.expected_size, len(workers), backends, self.in_flight, by_channel
        )

    def check_loop(self, call: str) -> None:
        """Raise unless the caller runs on the pool's own event loop.

        :raises RuntimeError: it runs in another thread or on another event loop.
        """
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is not self.loop:
            raise RuntimeError(
                f"{self.kind} {self.name!r}: {call} must run on the event loop that runs the "
                f"{self.kind} (thread {self.thread.name!r}), but it was called from thread "
                f"{threading.current_thread().name!r}"
                + (" on another event loop" if here is not None else " outside any event loop")
                + "; grpc.aio channels belong to one event loop"
            )

    def not_connected(self) -> NotConnectedError:
        """The error of a hand-out that finds no channel connected, saying why."""
        if self.kind == "channel":
            reason = "the channel is not connected now"
        else:
            reason = f"none of its {self.expected_size} channel(s) is connected now"
        return NotConnectedError(self.name, reason + self.why_not_connected())

    def why_not_connected(self) -> str:
        """``; <what the workers that are not connected are doing, and why>``, or ''."""
        waiting: dict[tuple[str, str | None], list[int]] = {}
        for record in self.records:
            if record not in self.workers:
                waiting.setdefault((record.state, record.last_failure), []).append(record.index)
        parts = []
        for (state, failure), indexes in waiting.items():
            who = "channel" if self.kind == "channel" else f"channel(s) {_ranges(indexes)}"
            part = f"{who} {state.replace('_', ' ')}"
            parts.append(part + (f" after: {failure}" if failure else ""))
        if self.fleet.resolve_failure is not None:
            parts.append(f"resolving failed: {self.fleet.resolve_failure}")
        return "; " + "; ".join(parts) if parts else ""

    async def wait_changed(self) -> None:
        await self._changed.wait()


def _ranges(indexes: list[int]) -> str:
    """``0-2, 5`` for [0, 1, 2, 5]."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


_random = random.Random().random
_now = time.monotonic


#: The process-wide registries of running pools and single channels, by name.
pools: Registry[PoolRuntime] = Registry("pools")
channels: Registry[PoolRuntime] = Registry("channels")

#: Set (and replaced) whenever a pool or channel of that kind registers its name.
_registered: dict[Kind, anyio.Event] = {}


async def wait_registered(kind: Kind) -> None:
    """Wait until the next pool (or channel) of ``kind`` registers its name."""
    event = _registered.get(kind)
    if event is None:
        event = _registered[kind] = anyio.Event()
    await event.wait()


def _announce(kind: Kind) -> None:
    event = _registered.pop(kind, None)
    if event is not None:
        event.set()


def not_started(kind: Kind, name: object) -> Exception:
    """The error for a name that no running pool (or channel) holds."""
    if not isinstance(name, str):
        return TypeError(f"expected a {kind} name as a str, got {name!r}")
    registry = pools if kind == "pool" else channels
    running = ", ".join(map(repr, registry.names())) or "none"
    return PoolNotStartedError(name, f"no {kind} of that name is running (running: {running})")


async def wait_connected(
    runtime: PoolRuntime,
    count: int | None,
    timeout: float,  # noqa: ASYNC109 - a bounded wait is the point
) -> PoolStatus:
    """Wait until ``count`` of ``runtime``'s channels (default: all) are connected."""
    runtime.check_loop("wait_connected")
    wanted = runtime.expected_size if count is None else count
    check_count("wait_connected: count", wanted)
    if wanted > runtime.expected_size:
        raise ValueError(
            f"wait_connected: count: expected 0 to {runtime.expected_size} "
            f"(the {runtime.kind} size), got {count!r}"
        )
    check_seconds("wait_connected: timeout", timeout, zero=True, infinite=True)
    with anyio.move_on_after(timeout):
        while len(runtime.workers) < wanted:
            if runtime.stopped is not None:
                raise PoolNotStartedError(
                    runtime.name, f"the {runtime.kind} stopped while waiting: {runtime.stopped}"
                )
            await runtime.wait_changed()
        return runtime.status()
    raise NotConnectedError(
        runtime.name,
        f"expected {wanted} connected channel(s) within {timeout:g} s, "
        f"but {len(runtime.workers)} are{runtime.why_not_connected()}",
    )


async def run_pool(
    kind: Kind, settings: ResolvedSettings, *, task_status: TaskStatus[Supervisor]
) -> None:
    """The pool's supervisor: registers the name, runs the workers and the status reporter.

    Channels that leave the pool are closed in ``closer``, which outlives the workers:
    when the pool stops, every channel drains its calls in flight at the same time.

    :raises RuntimeError: it was started outside asyncio (grpc.aio is asyncio-only).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{kind} {settings.name!r}: expected to run on asyncio (grpc.aio is asyncio-only), "
            "but no asyncio event loop runs here; run the supervisor with anyio.run(..., "
            "backend='asyncio') or asyncio.run()"
        ) from None
    runtime = PoolRuntime(kind, settings)
    registry = pools if kind == "pool" else channels
    try:
        async with task_group() as closer:
            with registry.register(settings.name, runtime):
                _announce(kind)
                placer = functools.partial(runtime.fleet.run, settings.resolve_interval)
                children = [ChildSpec("placer", placer)]
                children.extend(
                    ChildSpec(
                        f"channel-{record.index}",
                        functools.partial(
                            run_worker,
                            settings.channel,
                            worker=record,
                            membership=runtime,
                            placer=runtime.fleet,
                            closer=closer,
                        ),
                    )
                    for record in runtime.records
                )
                if kind == "pool":
                    reporter = functools.partial(
                        _report_status, runtime, settings.telemetry_interval
                    )
                    children.append(ChildSpec("status", reporter))
                async with Supervisor(
                    children,
                    name=settings.name,
                    max_restarts=settings.max_restarts,
                    max_seconds=settings.max_seconds,
                ) as supervisor:
                    task_status.started(supervisor)
                    await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        runtime.stop("it was stopped")
        raise
    except BaseException as error:
        runtime.stop(_describe(error))
        raise
    finally:
        runtime.stop("it stopped")


def _describe(error: BaseException) -> str:
    """``Type: message``, followed by each cause in the chain."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 5:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__
    return ", caused by ".join(parts)


async def _report_status(
    runtime: PoolRuntime, interval: float, *, task_status: TaskStatus[None]
) -> None:
    """Emit the pool's status every ``interval`` seconds."""
    task_status.started()
    while True:
        await anyio.sleep(interval)
        status = runtime.status()
        telemetry.execute(
            STATUS,
            {
                "expected_size": status.expected_size,
                "current_size": status.current_size,
                "in_flight": status.in_flight,
            },
            {"pool_name": runtime.name, "backends": status.backends},
        )
