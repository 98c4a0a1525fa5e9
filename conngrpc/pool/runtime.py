"""A running pool: its table, hand-out and admission, and the supervisor that runs it.

A pool belongs to the asyncio event loop that started it (grpc.aio channels are bound
to one loop); calls that can check that at no cost to the hand-out do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import anyio
from anyio.abc import TaskStatus

from .. import telemetry
from .._checks import check_count, check_seconds
from .._log import get_logger
from .._tasks import task_group
from ..channel.changes import Change, Dial, Reply
from ..channel.config import ChannelConfig, Connector
from ..channel.worker import run_worker
from ..errors import NotConnectedError, PoolNotStartedError
from ..supervisor import ChildSpec, Registry, Supervisor
from .admission import Admission
from .ejection import Ejected, Outcomes, Returned, default_rules, rules_from
from .fleet import backend_backoff, follow_resolver
from .handout import HandOut
from .resolver import default_resolver
from .retry import Throttle, buffer_size
from .service_config import MethodPolicy
from .settings import ResolvedSettings
from .table import (
    ChannelWorker,
    Closing,
    PoolTable,
    Resolved,
    Sweep,
    Tick,
    Tripped,
    backends_served,
)

__all__ = [
    "BACKEND_EJECTED",
    "BACKEND_RETURNED",
    "STATUS",
    "Kind",
    "PoolRuntime",
    "PoolStatus",
    "channels",
    "forked_from",
    "not_connected_in_time",
    "not_started",
    "pools",
    "run_pool",
    "stopped_while_waiting",
    "thread_pools",
    "wait_connected",
    "wait_registered",
    "wanted_count",
]

STATUS = ("conngrpc", "pool", "status")
BACKEND_EJECTED = ("conngrpc", "pool", "backend_ejected")
BACKEND_RETURNED = ("conngrpc", "pool", "backend_returned")

Kind = Literal["pool", "channel"]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """How many channels a pool should have and how many are connected now.

    A snapshot of plain values: safe to take from any thread (a metrics exporter's,
    say), unlike the channels themselves, which belong to the pool's event loop.
    """

    #: the pool's (or channel's) name
    name: str
    #: the channels it should have: its ``pool_size`` (1 for a :class:`~conngrpc.Channel`)
    expected_size: int
    #: the channels handed out now (connected, serving, their backend not ejected), or
    #: mocked
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
    #: The backends ejected now (their calls failed), each with when it comes back
    #: (``time.time()`` seconds, at the earliest: a sweep returns it). Their channels
    #: stay connected but are not handed out, nor counted in ``current_size`` or
    #: ``backends``. A backend back on probation is no longer listed, though until its
    #: probe answers only that one call at a time goes to it.
    ejected: Mapping[str, float] = field(default_factory=dict)


class PoolRuntime:
    """A running pool: its table, its hand-out and its admission, and who waits on them.

    The workers report to it (:meth:`report`, :meth:`next_order`: the
    :class:`~conngrpc.channel.changes.Owner` protocol); it hands each change to the
    table and runs what follows outside it: orders for workers, calls that may start,
    waiters to wake.
    """

    __slots__ = (
        "_changed",
        "_orders",
        "_ready",
        "admission",
        "expected_size",
        "handout",
        "kind",
        "log",
        "loop",
        "mock",
        "name",
        "policies",
        "retry_buffer",
        "service_config",
        "stopped",
        "table",
        "thread",
        "throttle",
    )

    def __init__(self, kind: Kind, settings: ResolvedSettings) -> None:
        name, config = settings.name, settings.channel
        self.kind = kind
        self.name = name
        self.expected_size = settings.pool_size
        self.mock = config.mock
        self.loop = asyncio.get_running_loop()
        self.thread = threading.current_thread()
        balancing = settings.balancing
        self.handout = HandOut(balancing.pick, balancing.choice_count)
        self.admission = self.make_admission(settings.max_calls_per_channel)
        outliers = balancing.outlier_detection
        self.table = PoolTable(
            name,
            settings.pool_size,
            config,
            self.handout,
            self.admission.ended,
            backend_backoff(config),
            rules=default_rules() if outliers is None else rules_from(outliers),
            tripped=self._tripped,
        )
        self.log = get_logger("conngrpc.pool").bind(pool_name=name)
        self.stopped: str | None = None  # why the pool stopped, once it has
        self._changed = anyio.Event()
        #: set when a call waiting for a channel may go on: one joined, the pool settled
        #: (its channels failed), or it stopped; not at every change, which 1,000 waiting
        #: calls would each hear
        self._ready = anyio.Event()
        self._orders: dict[int, anyio.Event] = {}  # a worker waiting for an order
        self.service_config = balancing
        #: the methodConfig entries the pool applies, by method as calls name it, found
        #: once per method (None when the service config has none)
        self.policies: dict[str, MethodPolicy | None] | None = {} if balancing.methods else None
        #: retryThrottling's token bucket, for every retried or hedged call of the pool
        throttling = balancing.retry_throttling
        self.throttle = None if throttling is None else Throttle(throttling)
        #: grpc.per_rpc_retry_buffer_size: past it, a call's requests commit it
        self.retry_buffer = buffer_size(config.options)

    # --- what a front end other than asyncio's changes (conngrpc.sync) ------------------

    def make_admission(self, cap: int | None) -> Admission:
        """The admission of the pool's calls (``cap``: ``max_calls_per_channel``)."""
        return Admission(self.handout, cap, self.loop)

    def registry(self) -> Registry[PoolRuntime]:
        """Where the pool's name is held while it runs."""
        return pools if self.kind == "pool" else channels

    def announce(self) -> None:
        """Its name is registered: wake whoever waits for a pool to run."""
        _announce(self.kind)

    def connector(self, config: ChannelConfig) -> Connector | None:
        """What opens the pool's channels (None: the config's connector, else grpc.aio)."""
        return None

    def __repr__(self) -> str:
        return (
            f"<{self.kind.capitalize()} {self.name!r} connected={self.table.connected_count()} "
            f"expected={self.expected_size} in_flight={self.admission.in_flight} "
            f"waiting={len(self.admission.waiting)}"
            + (f" stopped={self.stopped!r}>" if self.stopped is not None else ">")
        )

    # --- what the workers (and the resolver loop) report: the Owner protocol --------------

    def report(
        self, index: int | None, change: Change | Resolved | Tick | Sweep | Tripped | Closing
    ) -> Reply:
        """Apply ``change`` to the table, then run its follow-ups; the reporter's reply."""
        settled = self.table.settled
        follow = self.table.apply(index, change)
        for ejected in follow.ejected:
            self._ejected(ejected)
        for back in follow.returned:
            self._returned(back)
        for ordered in follow.orders:
            event = self._orders.pop(ordered, None)
            if event is not None:
                event.set()
        if follow.room:
            if self.admission.waiting:
                self.admission.dispatch()  # a channel joined: it has room
            self._wake_ready()
        elif self.table.settled is not settled:
            self._wake_ready()
        self._wake()
        return follow.reply

    def _tripped(self, outcomes: Outcomes) -> None:
        """A backend failed enough calls in a row, or its probe answered (a call's done
        callback, which grpc does not guard: nothing may escape it)."""
        try:
            self.report(None, Tripped(outcomes))
        except Exception as error:
            self.log.error("ejection failed", backend=outcomes.backend, exc_info=error)

    def _ejected(self, ejected: Ejected) -> None:
        seconds = ejected.until - time.monotonic()
        telemetry.execute(
            BACKEND_EJECTED,
            {
                "successes": ejected.successes,
                "failures": ejected.failures,
                "consecutive_failures": ejected.consecutive,
                "ejections": ejected.ejections,
                "ejection_time": round(max(0.0, seconds) * 1e9),
            },
            {"pool_name": self.name, "backend": ejected.backend, "reason": ejected.reason},
        )
        self.log.warning(
            "backend ejected",
            backend=ejected.backend,
            reason=ejected.reason,
            failures=ejected.failures,
            successes=ejected.successes,
            consecutive_failures=ejected.consecutive,
            seconds=round(seconds, 3),
        )

    def _returned(self, back: Returned) -> None:
        telemetry.execute(
            BACKEND_RETURNED,
            {"duration": round(back.ejected_for * 1e9)},
            {"pool_name": self.name, "backend": back.backend},
        )
        self.log.info("backend returned", backend=back.backend, after=round(back.ejected_for, 3))

    def method_policy(self, method: str) -> MethodPolicy | None:
        """The methodConfig entry that applies to calls of ``method``, or None."""
        policies = self.policies
        if policies is None:
            return None
        try:
            return policies[method]
        except KeyError:
            policy = policies[method] = self.service_config.method_policy(method)
            return policy

    async def next_order(self, index: int) -> Dial:
        """Wait until the table has an order for worker ``index``; return it."""
        while (order := self.table.order(index)) is None:
            event = self._orders.get(index)
            if event is None:
                event = self._orders[index] = anyio.Event()
            await event.wait()  # its own event: a change wakes only the worker it concerns
        return order

    def stop(self, reason: str) -> None:
        """The pool is gone (the first reason given stays): wake everyone who waits, and
        let go of every channel."""
        if self.stopped is None:
            self.stopped = reason
        self.admission.stop()
        self.table.stop()
        self._wake()
        self._wake_ready()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _wake_ready(self) -> None:
        self._ready.set()
        self._ready = anyio.Event()

    async def wait_changed(self) -> None:
        """Wait until the table changes next."""
        await self._changed.wait()

    async def wait_ready(self) -> None:
        """Wait until a channel joins the hand-out, the pool settles, or it stops."""
        await self._ready.wait()

    # --- what callers ask ---------------------------------------------------------

    def status(self) -> PoolStatus:
        table = self.table
        by_channel = {slot.index: slot.in_flight for slot in self.handout.slots}
        for slot in table.slots_out():
            if slot.in_flight:
                by_channel[slot.index] = by_channel.get(slot.index, 0) + slot.in_flight
        return PoolStatus(
            self.name,
            self.expected_size,
            table.connected_count(),
            backends_served(table),
            self.admission.in_flight,
            by_channel,
            self.ejected(),
        )

    def ejected(self) -> dict[str, float]:
        """Backend -> when it returns (``time.time()`` seconds), for the ejected ones."""
        ejected = self.table.ejected()
        if not ejected:
            return ejected
        shift = time.time() - time.monotonic()
        return {backend: until + shift for backend, until in ejected.items()}

    def workers(self) -> list[ChannelWorker]:
        """Snapshots of the connected workers, in index order."""
        return [self.table.snapshot(index) for index in self.table.connected()]

    def check_loop(self, call: str) -> None:
        """Raise unless the caller runs on the pool's own event loop.

        :raises RuntimeError: it runs in another thread or on another event loop.
        """
        here = asyncio._get_running_loop()
        if here is not self.loop:
            raise self.wrong_loop(call, here)

    def wrong_loop(self, call: str, here: asyncio.AbstractEventLoop | None) -> RuntimeError:
        """The error for ``call`` made outside the pool's event loop (``here`` instead)."""
        return RuntimeError(
            f"{self.kind} {self.name!r}: {call} must run on the event loop that runs the "
            f"{self.kind} (in thread {self.thread.name!r}), but it was called from thread "
            f"{threading.current_thread().name!r}"
            + (" on another event loop" if here is not None else " outside any event loop")
            + "; grpc.aio channels belong to one event loop: call from a coroutine on that "
            "loop, or hand the work to it with asyncio.run_coroutine_threadsafe(coro, loop)"
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
        connected = set(self.table.connected())
        for index in range(self.expected_size):
            if index not in connected:
                worker = self.table.snapshot(index)
                waiting.setdefault((worker.state, worker.last_failure), []).append(index)
        parts = []
        for (state, failure), indexes in waiting.items():
            who = "channel" if self.kind == "channel" else f"channel(s) {_ranges(indexes)}"
            part = f"{who} {state.replace('_', ' ')}"
            parts.append(part + (f" after: {failure}" if failure else ""))
        if self.table.resolve_failure is not None:
            parts.append(f"resolving failed: {self.table.resolve_failure}")
        return "; " + "; ".join(parts) if parts else ""


def _ranges(indexes: list[int]) -> str:
    """``0-2, 5`` for [0, 1, 2, 5]."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


#: The process-wide registries of running pools and single channels, by name.
pools: Registry[PoolRuntime] = Registry("pools")
channels: Registry[PoolRuntime] = Registry("channels")
#: The running ``conngrpc.sync`` pools, by name (a name space of their own).
thread_pools: Registry[PoolRuntime] = Registry("conngrpc.sync pools")
#: The sync pools that ran in the parent process when this one forked, by name: the
#: parent's pid (see conngrpc.sync.fork).
forked_from: dict[str, int] = {}

#: Set (and replaced) whenever a pool or channel of that kind registers its name: one
#: event per waiting event loop, each set on its own loop.
_registered: dict[Kind, dict[asyncio.AbstractEventLoop, anyio.Event]] = {}


async def wait_registered(kind: Kind) -> None:
    """Wait until the next pool (or channel) of ``kind`` registers its name."""
    waiting = _registered.setdefault(kind, {})
    loop = asyncio.get_running_loop()
    event = waiting.get(loop)
    if event is None:
        event = waiting[loop] = anyio.Event()
    await event.wait()


def _announce(kind: Kind) -> None:
    here = asyncio.get_running_loop()
    for loop, event in _registered.pop(kind, {}).items():
        if loop is here:
            event.set()
        else:  # a waiter on another loop, who will hear that the pool is not its loop's
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)


def not_started(kind: Kind, name: object, front: str = "asyncio") -> Exception:
    """The error for a name that no running pool (or channel) of ``front`` holds; it
    says so when the other front end runs a pool of that name."""
    if not isinstance(name, str):
        return TypeError(f"expected a {kind} name as a str, got {name!r}")
    what: str = kind
    if front == "asyncio":
        registry, other = (pools if kind == "pool" else channels), thread_pools
        hint = "a conngrpc.sync pool of that name runs: use conngrpc.sync.Pool for it"
    else:
        registry, other, what = thread_pools, pools, "conngrpc.sync pool"
        hint = "an asyncio pool of that name runs: use conngrpc.Pool for it"
    running = ", ".join(map(repr, registry.names())) or "none"
    reason = f"no {what} of that name is running (running: {running})"
    if kind == "pool" and name in other:
        reason += f"; {hint}"
    if front != "asyncio" and name in forked_from:
        reason += (
            f"; it ran in the parent process (pid {forked_from[name]}) before this one "
            "forked, and a pool is never inherited: start it in this process (gunicorn's "
            "post_fork, Celery's worker_process_init)"
        )
    return PoolNotStartedError(name, reason)


def wanted_count(runtime: PoolRuntime, count: int | None, timeout: float) -> int:
    """How many connected channels ``wait_connected(count=..., timeout=...)`` waits for.

    :raises ValueError: ``count`` is outside ``0..size``, or ``timeout`` is negative.
    """
    wanted = runtime.expected_size if count is None else count
    check_count("wait_connected: count", wanted)
    if wanted > runtime.expected_size:
        raise ValueError(
            f"wait_connected: count: expected 0 to {runtime.expected_size} "
            f"(the {runtime.kind} size), got {count!r}"
        )
    check_seconds("wait_connected: timeout", timeout, zero=True, infinite=True)
    return wanted


def stopped_while_waiting(runtime: PoolRuntime) -> PoolNotStartedError:
    assert runtime.stopped is not None
    return PoolNotStartedError(
        runtime.name, f"the {runtime.kind} stopped while waiting: {runtime.stopped}"
    )


def not_connected_in_time(runtime: PoolRuntime, wanted: int, timeout: float) -> NotConnectedError:
    return NotConnectedError(
        runtime.name,
        f"expected {wanted} connected channel(s) within {timeout:g} s, "
        f"but {runtime.table.connected_count()} are{runtime.why_not_connected()}",
    )


async def wait_connected(
    runtime: PoolRuntime,
    count: int | None,
    timeout: float,  # noqa: ASYNC109 - a bounded wait is the point
) -> PoolStatus:
    """Wait until ``count`` of ``runtime``'s channels (default: all) are connected."""
    runtime.check_loop("wait_connected")
    wanted = wanted_count(runtime, count, timeout)
    with anyio.move_on_after(timeout):
        while runtime.table.connected_count() < wanted:
            if runtime.stopped is not None:
                raise stopped_while_waiting(runtime)
            await runtime.wait_changed()
        return runtime.status()
    raise not_connected_in_time(runtime, wanted, timeout)


async def run_pool(
    kind: Kind,
    settings: ResolvedSettings,
    make_runtime: Callable[[Kind, ResolvedSettings], PoolRuntime] | None = None,
    *,
    task_status: TaskStatus[Supervisor],
) -> None:
    """The pool's supervisor: registers the name, runs the workers and the status reporter.

    Channels that leave the pool are closed in ``closer``, which outlives the workers:
    when the pool stops, every channel drains its calls in flight at the same time.
    ``make_runtime`` makes the front end's runtime (``conngrpc.sync``'s); asyncio's by
    default.

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
    runtime = (make_runtime or PoolRuntime)(kind, settings)
    registry = runtime.registry()
    connect = runtime.connector(settings.channel)
    try:
        async with task_group() as closer:
            with registry.register(settings.name, runtime):
                runtime.announce()
                resolver = settings.resolver or default_resolver(settings.channel)
                follow = functools.partial(
                    follow_resolver, runtime, resolver, settings.resolve_interval
                )
                children = [ChildSpec("resolver", follow)]
                children.extend(
                    ChildSpec(
                        f"channel-{index}",
                        functools.partial(
                            run_worker,
                            settings.channel,
                            pool_name=settings.name,
                            index=index,
                            owner=runtime,
                            closer=closer,
                            connect=connect,
                        ),
                    )
                    for index in range(settings.pool_size)
                )
                rules = runtime.table.ejector.rules
                if rules.sweeps:
                    sweeper = functools.partial(_sweep, runtime, rules.interval)
                    children.append(ChildSpec("ejection", sweeper))
                if kind == "pool":
                    reporter = functools.partial(
                        _report_status, runtime, settings.telemetry_interval
                    )
                    children.append(ChildSpec("status", reporter))
                # The children do not depend on one another to stop (channels drain in
                # ``closer``, which outlives them): all are stopped at once.
                async with Supervisor(
                    children,
                    name=settings.name,
                    max_restarts=settings.max_restarts,
                    max_seconds=settings.max_seconds,
                    stop_order="all_at_once",
                ) as supervisor:
                    task_status.started(supervisor)
                    try:
                        await anyio.sleep_forever()
                    finally:  # hand nothing out while the workers stop
                        runtime.report(None, Closing())
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


async def _sweep(runtime: PoolRuntime, interval: float, *, task_status: TaskStatus[None]) -> None:
    """Every ``interval`` seconds: weigh the backends' outcomes, eject and return them."""
    task_status.started()
    while True:
        await anyio.sleep(interval)
        runtime.report(None, Sweep())


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
