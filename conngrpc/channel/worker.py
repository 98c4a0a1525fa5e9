"""The channel worker: one persistent channel's life, read top to bottom.

connecting -> connected -> watching -> disconnected -> backing off -> connecting ...

The worker reports to its owner (a pool, or a single ``Channel``) through a
:class:`Membership`: it joins when its channel is connected and leaves the moment it
is not, so the owner's hand-out never checks a channel's state.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Literal, Protocol

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskGroup, TaskStatus

from .. import telemetry
from .._log import get_logger
from .._tasks import task_group
from .config import Callback, ChannelConfig
from .connector import connect_grpc

__all__ = [
    "CONNECTED",
    "CONNECTION_FAILED",
    "DISCONNECTED",
    "ChannelWorker",
    "Membership",
    "run_worker",
]

CONNECTED = ("conngrpc", "channel", "connected")
CONNECTION_FAILED = ("conngrpc", "channel", "connection_failed")
DISCONNECTED = ("conngrpc", "channel", "disconnected")

_READY = grpc.ChannelConnectivity.READY

#: A lost connection that had been up at least this long is reopened without backoff.
RECONNECT_AT_ONCE_AFTER_NS = 1_000_000_000
_log = get_logger("conngrpc.channel")

WorkerState = Literal["starting", "connecting", "connected", "backing_off", "mocked"]


class ChannelWorker:
    """One channel's worker, as its pool sees it: where it is and its channel if connected."""

    __slots__ = ("channel", "connected_at", "index", "name", "pool_name", "state")

    def __init__(self, pool_name: str, index: int) -> None:
        self.pool_name = pool_name
        self.index = index
        self.name = f"{pool_name}[{index}]"
        self.state: WorkerState = "starting"
        self.channel: grpc.aio.Channel | None = None
        self.connected_at: float | None = None  # time.monotonic() of the connect

    def __repr__(self) -> str:
        return f"<ChannelWorker {self.name} {self.state}>"


class Membership(Protocol):
    """The worker's owner: told when a channel becomes usable and when it stops being so."""

    def joined(self, worker: ChannelWorker) -> None:
        """``worker.channel`` is connected and may be handed out."""

    def left(self, worker: ChannelWorker) -> None:
        """``worker`` must not be handed out any more (called again harmlessly)."""


async def run_worker(
    config: ChannelConfig,
    *,
    pool_name: str,
    index: int,
    membership: Membership,
    closer: TaskGroup | None = None,
    task_status: TaskStatus[ChannelWorker],
) -> None:
    """Keep one channel connected for ever; a supervisor runs this as a child.

    It reports ``started`` at once and connects in the background, so a pool starts
    even while its server is down. Connection failures are not crashes: they are
    reported (``connection_failed``) and retried after ``backoff.next()`` seconds. A
    raising ``on_connect`` / ``on_disconnect`` is a crash, for the supervisor to handle.

    A channel that leaves is closed in the background, in ``closer`` when given (a
    task group that outlives the worker: a pool passes one, so that all its channels
    drain at once when it stops), letting its calls in flight finish first.
    """
    worker = ChannelWorker(pool_name, index)
    backoff = copy.copy(config.backoff)
    connect = config.connector if config.connector is not None else connect_grpc
    metadata = {"pool_name": pool_name, "channel_name": worker.name, "channel_index": index}
    log = _log.bind(**metadata)
    task_status.started(worker)

    if config.mock is not None:
        await _stand_in_for_a_connection(worker, membership)
        return

    failures = 0
    async with task_group() as own_closer:
        retiring = closer if closer is not None else own_closer
        while True:
            # --- connecting ------------------------------------------------------------
            worker.state = "connecting"
            begin = time.monotonic_ns()
            try:
                with anyio.move_on_after(config.connect_timeout) as deadline:
                    channel = await connect(config)
                if deadline.cancelled_caught:
                    raise _timeout_error(config)
            except Exception as error:
                # Its traceback holds the attempt's closed channel: a handler that keeps
                # events must not keep channels alive.
                error.__traceback__ = None
                failures += 1
                telemetry.execute(
                    CONNECTION_FAILED,
                    {"duration": time.monotonic_ns() - begin, "error": error},
                    {**metadata, "reason": str(error)},
                )
                if failures == 1 or config.debug:
                    log.warning("channel connection failed", reason=str(error), attempt=failures)
                worker.state = "backing_off"
                await anyio.sleep(backoff.next())
                continue

            # --- connected -------------------------------------------------------------
            connected_at = time.monotonic_ns()
            failures = 0
            telemetry.execute(CONNECTED, {"duration": connected_at - begin}, metadata)
            if config.debug:
                log.debug("channel connected", connect_ms=(connected_at - begin) / 1e6)
            lost = False
            try:
                await _run_callback(config.on_connect)
                worker.channel = channel
                worker.connected_at = time.monotonic()
                worker.state = "connected"
                membership.joined(worker)
                backoff.reset()

                # --- watching ----------------------------------------------------------
                state = await _wait_until_not_ready(channel)

                # --- disconnected ------------------------------------------------------
                lost = True
                membership.left(worker)
                telemetry.execute(
                    DISCONNECTED,
                    {"duration": time.monotonic_ns() - connected_at},
                    {**metadata, "reason": "connection_lost", "state": state.name},
                )
                log.warning("channel disconnected", state=state.name)
                await _run_callback(config.on_disconnect)
            except BaseException as exc:
                if not lost:
                    membership.left(worker)
                    cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                    telemetry.execute(
                        DISCONNECTED,
                        {"duration": time.monotonic_ns() - connected_at},
                        {**metadata, "reason": "shutdown" if cancelled else "crash"},
                    )
                raise
            finally:
                worker.channel = None
                worker.connected_at = None
                # Calls in flight get shutdown_grace to finish (grpc cancels them after), in
                # the background: the worker backs off and reconnects meanwhile.
                with anyio.CancelScope(shield=True):
                    await retiring.start(_retire, channel, config.shutdown_grace)

            # --- backing off -----------------------------------------------------------
            if time.monotonic_ns() - connected_at < RECONNECT_AT_ONCE_AFTER_NS:
                # It died young: the server may be failing, so wait before trying again.
                # A connection that served a while (then rotated, drained, or its server
                # restarted) is reopened at once; should that fail, the backoff applies.
                worker.state = "backing_off"
                await anyio.sleep(backoff.next())


async def _retire(
    channel: grpc.aio.Channel, grace: float, *, task_status: TaskStatus[None]
) -> None:
    """Close a channel that has left the pool, letting its calls in flight finish first."""
    with anyio.CancelScope(shield=True):  # entered before started(): always closes
        task_status.started()
        await channel.close(grace)


async def _stand_in_for_a_connection(worker: ChannelWorker, membership: Membership) -> None:
    """With ``mock``, no connection is opened: the worker counts as connected until stopped."""
    worker.state = "mocked"
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
