"""The channel worker: one persistent channel's life, read top to bottom.

connecting -> connected -> watching -> disconnected -> backing_off -> connecting ...

- **connecting**: open a channel and wait until it is READY, within ``connect_timeout``.
  An attempt the network refused is reported (``connection_failed``) and retried after
  ``backoff.next()`` seconds (``backing_off``); an attempt that can never succeed
  (see :class:`~conngrpc.Connector`) crashes the worker, for its supervisor to handle.
- **connected**: ``on_connect`` runs; the channel is not handed out yet.
- **watching**: the channel is in its owner's hand-out, and the worker follows its
  connectivity until it leaves READY.
- **disconnected**: the channel has left the hand-out (``disconnected`` is emitted on
  every way out: lost, shutdown, crash) and is closed in the background, its calls
  given ``shutdown_grace``; then ``on_disconnect`` runs, for a lost connection only.

The worker reports to its owner (a pool) through a :class:`Membership`: it joins when
its channel is watched and leaves the moment it is not, so the owner's hand-out never
checks a channel's state.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
import time
from typing import Any, Literal, Protocol

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskGroup, TaskStatus

from .. import telemetry
from .._log import get_logger
from .._tasks import task_group
from ..errors import ConnectFailedError
from .backoff import Backoff
from .config import Callback, ChannelConfig
from .connector import connect_grpc

__all__ = [
    "CONNECTED",
    "CONNECTION_FAILED",
    "CURRENT_WORKER",
    "DISCONNECTED",
    "RETRYABLE",
    "ChannelWorker",
    "Membership",
    "WorkerState",
    "run_worker",
]

CONNECTED = ("conngrpc", "channel", "connected")
CONNECTION_FAILED = ("conngrpc", "channel", "connection_failed")
DISCONNECTED = ("conngrpc", "channel", "disconnected")

#: What a failed attempt may raise and still be worth retrying: the network said no.
#: Anything else means the attempt can never succeed, and crashes the worker.
RETRYABLE: tuple[type[Exception], ...] = (
    ConnectFailedError,
    TimeoutError,
    OSError,
    grpc.RpcError,
)

_READY = grpc.ChannelConnectivity.READY

#: The worker whose task this is: a connector may read it to know whom it connects for
#: (``conngrpc.testing.FakeConnector`` does, so a test can drop worker 2's connection).
CURRENT_WORKER: contextvars.ContextVar[ChannelWorker | None] = contextvars.ContextVar(
    "conngrpc_current_worker", default=None
)

#: A lost connection that had been up at least this long is reopened without backoff.
RECONNECT_AT_ONCE_AFTER_NS = 1_000_000_000
_log = get_logger("conngrpc.channel")

WorkerState = Literal[
    "starting",
    "connecting",
    "backing_off",
    "connected",
    "watching",
    "disconnected",
    "mocked",
    "stopped",
    "crashed",
]


class ChannelWorker:
    """One channel's worker, as its pool sees it: its state, channel and latest failure.

    The pool keeps one per index for its whole life; a worker restarted by its
    supervisor carries on with the same record. ``last_failure`` is the reason of the
    latest failed attempt or crash (None once connected); ``failures`` counts the
    failed attempts since the last connect.
    """

    __slots__ = (
        "channel",
        "connected_at",
        "failures",
        "index",
        "last_failure",
        "name",
        "pool_name",
        "state",
    )

    def __init__(self, pool_name: str, index: int) -> None:
        self.pool_name = pool_name
        self.index = index
        self.name = f"{pool_name}[{index}]"
        self.state: WorkerState = "starting"
        self.channel: grpc.aio.Channel | None = None
        self.connected_at: float | None = None  # time.monotonic() of the connect
        self.last_failure: str | None = None
        self.failures = 0

    def __repr__(self) -> str:
        return f"<ChannelWorker {self.name} {self.state}>"


class Membership(Protocol):
    """The worker's owner: told when a channel becomes usable and when it stops being so."""

    def joined(self, worker: ChannelWorker) -> None:
        """``worker.channel`` is connected and may be handed out."""

    def left(self, worker: ChannelWorker) -> None:
        """``worker`` must not be handed out any more (called again harmlessly)."""

    def changed(self, worker: ChannelWorker) -> None:
        """``worker``'s state or latest failure changed (for waiters and status)."""


async def run_worker(
    config: ChannelConfig,
    *,
    worker: ChannelWorker,
    membership: Membership,
    closer: TaskGroup | None = None,
    task_status: TaskStatus[ChannelWorker],
) -> None:
    """Keep one channel connected for ever; a supervisor runs this as a child.

    It reports ``started`` at once and connects in the background, so a pool starts
    even while its server is down. A raising ``on_connect`` / ``on_disconnect``, or a
    connection attempt that can never succeed, is a crash for the supervisor to handle.

    A channel that leaves is closed in the background, in ``closer`` when given (a
    task group that outlives the worker: a pool passes one, so that all its channels
    drain at once when it stops), letting its calls in flight finish first.
    """
    worker.state = "starting"
    CURRENT_WORKER.set(worker)  # the worker's task is its own: this stays within it
    task_status.started(worker)
    try:
        if config.mock is not None:
            await _stand_in_for_a_connection(worker, membership)
            return
        async with task_group() as own_closer:
            life = _Life(config, worker, membership, closer if closer is not None else own_closer)
            await life.run()
    except anyio.get_cancelled_exc_class():
        _set_state(worker, membership, "stopped")
        raise
    except BaseException as crash:
        worker.last_failure = f"crash: {type(crash).__name__}: {crash}"
        _set_state(worker, membership, "crashed")
        raise


class _Life:
    """The worker's loop and what it needs at every phase: connect, serve, back off."""

    __slots__ = (
        "backoff",
        "closer",
        "config",
        "connect",
        "log",
        "membership",
        "metadata",
        "worker",
    )

    def __init__(
        self,
        config: ChannelConfig,
        worker: ChannelWorker,
        membership: Membership,
        closer: TaskGroup,
    ) -> None:
        self.config = config
        self.worker = worker
        self.membership = membership
        self.closer = closer
        self.backoff: Backoff = copy.copy(config.backoff)
        self.connect = config.connector if config.connector is not None else connect_grpc
        self.metadata: dict[str, Any] = {
            "pool_name": worker.pool_name,
            "channel_name": worker.name,
            "channel_index": worker.index,
        }
        self.log = _log.bind(**self.metadata)

    async def run(self) -> None:
        while True:
            channel, began = await self.connected_channel()
            up_ns = await self.serve(channel, began)
            await _run_callback(self.config.on_disconnect)
            if up_ns < RECONNECT_AT_ONCE_AFTER_NS:
                # It died young: the server may be failing, so wait before trying again.
                # A connection that served a while (then rotated, drained, or its server
                # restarted) is reopened at once; should that fail, the backoff applies.
                await self.back_off()

    async def connected_channel(self) -> tuple[grpc.aio.Channel, int]:
        """Attempt until a channel is READY; return it and when its attempt began (ns)."""
        config = self.config
        while True:
            self.state("connecting")
            began = time.monotonic_ns()
            try:
                with anyio.move_on_after(config.connect_timeout) as deadline:
                    channel = await self.connect(config)
                if deadline.cancelled_caught:
                    raise _timeout_error(config)
            except RETRYABLE as error:
                # Its traceback holds the attempt's closed channel: a handler that keeps
                # events must not keep channels alive.
                error.__traceback__ = None
                self.failed(error, time.monotonic_ns() - began)
                await self.back_off()
                continue
            return channel, began

    def failed(self, error: Exception, duration: int) -> None:
        worker = self.worker
        worker.failures += 1
        worker.last_failure = str(error)
        telemetry.execute(
            CONNECTION_FAILED,
            {"duration": duration, "error": error},
            {**self.metadata, "reason": worker.last_failure},
        )
        if worker.failures == 1 or self.config.debug:
            self.log.warning(
                "channel connection failed", reason=worker.last_failure, attempt=worker.failures
            )

    async def serve(self, channel: grpc.aio.Channel, began: int) -> int:
        """Hand the channel out until its connection is lost; return how long it was up (ns).

        Every way out (lost, cancelled, crashed) leaves the pool, emits ``disconnected``
        with its reason and retires the channel, here and only here.
        """
        worker = self.worker
        connected_ns = time.monotonic_ns()
        worker.failures = 0
        worker.last_failure = None
        telemetry.execute(CONNECTED, {"duration": connected_ns - began}, self.metadata)
        if self.config.debug:
            self.log.debug("channel connected", connect_ms=(connected_ns - began) / 1e6)
        reason, lost_state = "crash", None
        try:
            self.state("connected")
            await _run_callback(self.config.on_connect)
            worker.channel = channel
            worker.connected_at = time.monotonic()
            self.state("watching")
            self.membership.joined(worker)
            self.backoff.reset()
            lost_state = await _wait_until_not_ready(channel)
            reason = "connection_lost"
        except anyio.get_cancelled_exc_class():
            reason = "shutdown"
            raise
        finally:
            self.membership.left(worker)
            worker.channel = None
            worker.connected_at = None
            up_ns = time.monotonic_ns() - connected_ns
            metadata = {**self.metadata, "reason": reason}
            if lost_state is not None:
                metadata["state"] = lost_state.name
                self.log.warning("channel disconnected", state=lost_state.name)
            self.state("disconnected")
            telemetry.execute(DISCONNECTED, {"duration": up_ns}, metadata)
            # Calls in flight get shutdown_grace to finish (grpc cancels them after), in
            # the background: the worker backs off and reconnects meanwhile.
            with anyio.CancelScope(shield=True):
                await self.closer.start(_retire, channel, self.config.shutdown_grace)
        return up_ns

    async def back_off(self) -> None:
        self.state("backing_off")
        await anyio.sleep(self.backoff.next())

    def state(self, state: WorkerState) -> None:
        _set_state(self.worker, self.membership, state)


def _set_state(worker: ChannelWorker, membership: Membership, state: WorkerState) -> None:
    worker.state = state
    membership.changed(worker)


async def _retire(
    channel: grpc.aio.Channel, grace: float, *, task_status: TaskStatus[None]
) -> None:
    """Close a channel that has left the pool, letting its calls in flight finish first."""
    with anyio.CancelScope(shield=True):  # entered before started(): always closes
        task_status.started()
        await channel.close(grace)


async def _stand_in_for_a_connection(worker: ChannelWorker, membership: Membership) -> None:
    """With ``mock``, no connection is opened: the worker counts as connected until stopped."""
    _set_state(worker, membership, "mocked")
    membership.joined(worker)
    try:
        await anyio.sleep_forever()
    finally:
        membership.left(worker)


async def _wait_until_not_ready(channel: grpc.aio.Channel) -> grpc.ChannelConnectivity:
    """Follow the channel's connectivity until it leaves READY; return the new state."""
    state = channel.get_state()
    while state is _READY:
        await channel.wait_for_state_change(state)
        state = channel.get_state()
    return state


async def _run_callback(callback: Callback | None) -> None:
    if callback is None:
        return
    result = callback()
    if inspect.isawaitable(result):
        await result


def _timeout_error(config: ChannelConfig) -> TimeoutError:
    return TimeoutError(
        f"expected a READY channel to {config.address!r} within "
        f"connect_timeout={config.connect_timeout:g} s, but none came"
    )
