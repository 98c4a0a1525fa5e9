"""The channel worker: one persistent channel's life, read top to bottom.

connecting -> connected -> watching -> disconnected -> backing_off -> connecting ...

- **connecting**: ask the owner for a backend, open a channel to it and wait until it
  is READY, within ``connect_timeout``. An attempt the network refused is reported
  (``connection_failed``); the worker tries another backend at once if the owner has
  one that is not failing, else it waits ``backoff.next()`` seconds (``backing_off``).
  An attempt that can never succeed (see :class:`~conngrpc.Connector`) crashes the
  worker, for its supervisor to handle.
- **connected**: ``on_connect`` runs; the channel is not handed out yet.
- **watching**: the channel is in its owner's hand-out while it is READY (and, with
  ``health_check``, while ``Health/Watch`` says SERVING: ``not_serving`` otherwise,
  without reconnecting). Meanwhile, when ``max_connection_age`` is reached or the owner
  asks the channel to move to another backend, a replacement is opened, made READY
  (and SERVING), swapped in, and only then is the old channel let go: make before break.
- **disconnected**: the channel has left the hand-out (``disconnected`` is emitted on
  every way out: lost, shutdown, crash, refreshed) and is closed in the background, its
  calls given ``shutdown_grace``; then ``on_disconnect`` runs, for a lost connection.

The worker keeps no fact about the pool: it reports every transition to its
:class:`~conngrpc.channel.changes.Owner` (the pool's table), which answers where to
connect, whether to try another backend at once and which channels to close, and it
waits for the owner's orders (a backend once one is known, a move).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import random
import time
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskGroup, TaskStatus

from .. import _health, telemetry
from .._log import get_logger
from .._tasks import clear_frames, clearing_frames, reraise_if_cancelled, task_group
from ..errors import ConnectFailedError
from .backoff import Backoff, ExponentialBackoff
from .changes import (
    AttemptFailed,
    Attempting,
    BackingOff,
    Change,
    Connected,
    Dial,
    Disconnected,
    DisconnectReason,
    HealthChanged,
    Mocked,
    Owner,
    Refreshing,
    Reply,
    Stopped,
    Swapped,
)
from .config import Callback, ChannelConfig, Connector
from .connector import connect_grpc, raw_unary, raw_unary_stream

__all__ = [
    "CONNECTED",
    "CONNECTION_FAILED",
    "CURRENT_INDEX",
    "DISCONNECTED",
    "HEALTH_CHANGED",
    "RETRYABLE",
    "run_worker",
]

CONNECTED = ("conngrpc", "channel", "connected")
CONNECTION_FAILED = ("conngrpc", "channel", "connection_failed")
DISCONNECTED = ("conngrpc", "channel", "disconnected")
HEALTH_CHANGED = ("conngrpc", "channel", "health_changed")

#: What a failed attempt may raise and still be worth retrying: the network said no.
#: Anything else means the attempt can never succeed, and crashes the worker.
RETRYABLE: tuple[type[Exception], ...] = (
    ConnectFailedError,
    TimeoutError,
    OSError,
    grpc.RpcError,
)

_READY = grpc.ChannelConnectivity.READY
_SERVING = frozenset({"SERVING", "UNIMPLEMENTED"})

#: A lost connection that had been up at least this long is reopened without backoff.
#: It is short enough for a server that rotates connections every half second (GOAWAY,
#: ``grpc.max_connection_age_ms``) to lose no time to the backoff, and long enough that a
#: server dropping every connection as it comes reconnects at most 10 times a second.
RECONNECT_AT_ONCE_AFTER_NS = 100_000_000
#: How far ``max_connection_age`` is jittered either way, so a pool's channels do not
#: all refresh at once.
AGE_JITTER = 0.1
_log = get_logger("conngrpc.channel")

#: The index of the pool worker whose task this is: a connector may read it to know whom
#: it connects for (``conngrpc.testing.FakeConnector`` does, so a test can drop worker
#: 2's connection).
CURRENT_INDEX: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "conngrpc_current_index", default=None
)


async def run_worker(
    config: ChannelConfig,
    *,
    pool_name: str,
    index: int,
    owner: Owner,
    closer: TaskGroup | None = None,
    connect: Connector | None = None,
    task_status: TaskStatus[None],
) -> None:
    """Keep channel ``index`` of ``pool_name`` connected for ever; a supervisor runs this.

    It reports ``started`` at once and connects in the background, so a pool starts
    even while its server is down. A raising ``on_connect`` / ``on_disconnect``, or a
    connection attempt that can never succeed, is a crash for the supervisor to handle.
    Every transition goes to ``owner`` (its pool), which keeps the facts.

    A channel that leaves is closed in the background, in ``closer`` when given (a
    task group that outlives the worker: a pool passes one, so that all its channels
    drain at once when it stops), letting its calls in flight finish first.

    ``connect`` opens each channel: by default the config's ``connector``, else grpc.aio
    (``conngrpc.sync`` pools pass their own, which opens grpc's sync channels).
    """
    CURRENT_INDEX.set(index)  # the worker's task is its own: this stays within it
    task_status.started()
    try:
        if config.mock is not None:
            await _stand_in_for_a_connection(owner, index)
            return
        async with task_group() as own_closer:
            retiring = closer if closer is not None else own_closer
            await _Life(config, pool_name, index, owner, retiring, connect).run()
    except anyio.get_cancelled_exc_class():
        owner.report(index, Stopped())
        raise
    except BaseException as crash:
        # Its traceback's frames hold the worker's channels, and the supervisor keeps the
        # crash (in a reference cycle): let the channels go now, not with the collector.
        clear_frames(crash)
        owner.report(index, Stopped(f"crash: {type(crash).__name__}: {crash}"))
        raise
    owner.report(index, Stopped())


@dataclass(slots=True)
class _Connection:
    """A READY channel the worker holds, and where and when it was made."""

    channel: grpc.aio.Channel
    dial: Dial
    began_ns: int  # when its attempt began
    connected_ns: int = 0  # when it became READY
    health: str | None = None  # what its health check said before it was swapped in


class _NotServing(ConnectFailedError):
    """A replacement connected but its health check did not say SERVING."""


class _Replaced(Exception):
    """The watch ended because a replacement is ready (not an error: a way out)."""

    def __init__(self, replacement: _Connection) -> None:
        self.replacement = replacement


class _Life:
    """The worker's loop and what every phase needs: connect, serve, replace, back off."""

    __slots__ = (
        "backoff",
        "closer",
        "config",
        "connect",
        "health_heard",
        "index",
        "log",
        "metadata",
        "owner",
    )

    def __init__(
        self,
        config: ChannelConfig,
        pool_name: str,
        index: int,
        owner: Owner,
        closer: TaskGroup,
        connect: Connector | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.owner = owner
        self.closer = closer
        self.backoff: Backoff = copy.copy(config.backoff)
        self.connect = connect or config.connector or connect_grpc
        #: the latest health status this worker heard and reported (None: none yet)
        self.health_heard: str | None = None
        self.metadata: dict[str, Any] = {
            "pool_name": pool_name,
            "channel_name": f"{pool_name}[{index}]",
            "channel_index": index,
        }
        self.log = _log.bind(**self.metadata)

    def report(self, change: Change) -> Reply:
        return self.owner.report(self.index, change)

    async def run(self) -> None:
        while True:
            connection = await self.connected()
            up_ns = await self.serve(connection)
            await _run_callback(self.config.on_disconnect)
            if up_ns < RECONNECT_AT_ONCE_AFTER_NS:
                # It died young: the server may be failing, so wait before trying again.
                # A connection that served a while (then rotated, drained, or its server
                # restarted) is reopened at once; should that fail, the backoff applies.
                await self.back_off()

    # --- connecting ----------------------------------------------------------------

    async def connected(self) -> _Connection:
        """Attempt until a channel is READY, trying other backends before backing off."""
        while True:
            dial = self.report(Attempting()).dial
            if dial is None:  # no backend known yet: the resolver will say
                dial = await self.owner.next_order(self.index)
            began = time.monotonic_ns()
            try:
                connection = await self.attempt(dial, began)
            except RETRYABLE as error:
                if not self.failed(error, dial, began):
                    await self.back_off()
                continue
            self.report(Connected(connection.channel, dial.backend))
            return connection

    async def attempt(self, dial: Dial, began: int) -> _Connection:
        """One attempt: a READY channel to ``dial``, within ``connect_timeout``."""
        with anyio.move_on_after(self.config.connect_timeout) as deadline:
            channel = await self.connect(dial.config)
        if deadline.cancelled_caught:
            raise _timeout_error(dial.config)
        return _Connection(channel, dial, began, time.monotonic_ns())

    def failed(self, error: Exception, dial: Dial, began: int) -> bool:
        """Report a failed attempt; True if another backend is worth trying at once."""
        # Its traceback holds the attempt's closed channel: a handler that keeps events
        # must not keep channels alive.
        error.__traceback__ = None
        reason = str(error)
        reply = self.report(AttemptFailed(dial.backend, reason))
        telemetry.execute(
            CONNECTION_FAILED,
            {"duration": time.monotonic_ns() - began, "error": error},
            {**self.metadata, "backend": dial.backend, "reason": reason},
        )
        if reply.failures == 1 or self.config.debug:
            self.log.warning(
                "channel connection failed",
                backend=dial.backend,
                reason=reason,
                attempt=reply.failures,
            )
        return reply.retry_now

    # --- serving ---------------------------------------------------------------------

    async def serve(self, connection: _Connection) -> int:
        """Hand channels out until the connection is lost; return how long it was up (ns).

        Every way out (lost, cancelled, crashed) leaves the hand-out, emits
        ``disconnected`` with its reason and retires the channel, in :meth:`retire`.
        A replacement swapped in retires its predecessor there too.
        """
        reason: DisconnectReason = "crash"
        lost_state = None
        try:
            self.connected_event(connection)
            await _run_callback(self.config.on_connect)
            while True:
                try:
                    lost_state = await self.watch(connection)
                except _Replaced as replaced:
                    old, connection = connection, replaced.replacement
                    await self.swap(old, connection)
                    continue
                reason = "connection_lost"
                return time.monotonic_ns() - connection.connected_ns
        except anyio.get_cancelled_exc_class():
            reason = "shutdown"
            raise
        finally:
            self.health_heard = None
            reply = self.report(Disconnected(reason))
            if lost_state is not None:
                self.log.warning(
                    "channel disconnected", backend=connection.dial.backend, state=lost_state.name
                )
            await self.retire(connection, reason, lost_state, reply.close)

    def connected_event(self, connection: _Connection) -> None:
        self.backoff.reset()
        duration = connection.connected_ns - connection.began_ns
        telemetry.execute(
            CONNECTED, {"duration": duration}, {**self.metadata, "backend": connection.dial.backend}
        )
        if self.config.debug:
            self.log.debug(
                "channel connected", backend=connection.dial.backend, connect_ms=duration / 1e6
            )

    async def watch(self, connection: _Connection) -> grpc.ChannelConnectivity:
        """Serve ``connection`` until it leaves READY (return the state it went to).

        Alongside: the health gate (join only while SERVING) and the replacer (when the
        channel is due for a refresh or asked to move), which raises :class:`_Replaced`.
        """
        lost: list[grpc.ChannelConnectivity] = []
        replacements: list[_Connection] = []
        try:
            async with task_group() as tasks:
                # The connection is passed, not closed over, and each task lets go of its
                # frames when cancelled: anyio keeps a cancelled task's error, and so its
                # frames, in a reference cycle, and a cleared frame keeps its function's
                # closure (clearing_frames says more).
                async def follow_connectivity(connection: _Connection) -> None:
                    lost.append(await _wait_until_not_ready(connection.channel))
                    tasks.cancel_scope.cancel()

                async def replace_when_due(connection: _Connection) -> None:
                    replacements.append(await self.replacement(connection))
                    tasks.cancel_scope.cancel()

                tasks.start_soon(clearing_frames, follow_connectivity, connection)
                tasks.start_soon(clearing_frames, replace_when_due, connection)
                if self.config.health_check is None:
                    self.report(HealthChanged(serving=True))
                else:
                    tasks.start_soon(clearing_frames, self.gate_by_health, connection)
        except BaseException:
            while replacements:  # ready, but never announced: it goes
                await self.close(replacements.pop().channel)
            raise
        if replacements and not lost:
            raise _Replaced(replacements.pop())
        while replacements:  # lost at the same moment: the replacement, never announced, goes
            await self.close(replacements.pop().channel)
        return lost[0]

    async def gate_by_health(self, connection: _Connection) -> None:
        """Join while ``Health/Watch`` says SERVING, leave while it says anything else."""
        service = self.config.health_check
        assert service is not None
        watch = raw_unary_stream(_for_health(connection.channel), _health.WATCH_METHOD)
        retry = ExponentialBackoff(min=0.05, max=5.0)
        while True:
            call = watch(_health.encode_request(service))
            ended: str | None = None  # how the watch failed, if it did
            try:
                async for message in call:
                    self.health(
                        connection,
                        _health.STATUS_NAMES.get(_health.decode_response(message), "UNKNOWN"),
                    )
                    retry.reset()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    ended = "UNIMPLEMENTED"
                else:
                    ended = f"UNKNOWN ({code.name}: {error.details()})"
            except asyncio.CancelledError:
                await reraise_if_cancelled()
                ended = "UNKNOWN (grpc cancelled the watch)"
            finally:
                call.cancel()
            if ended is not None:
                self.health(connection, ended)
            if ended == "UNIMPLEMENTED":
                # Out of the except block: the cancellation that ends this wait must not
                # carry grpc's error (and its metadata) as its context.
                await anyio.sleep_forever()
            # The stream ended or failed while the connection is up: watch again, as
            # grpc's own health checking does, and hand nothing out meanwhile.
            await anyio.sleep(retry.next())

    def health(self, connection: _Connection, status: str) -> None:
        """Report a health status: the pool hands the channel out or not, as it says."""
        previous, self.health_heard = self.health_heard, status
        if status == previous:
            return
        serving = status.split(" ")[0] in _SERVING
        reason = None if serving else _health_refusal(self.config.health_check, status)
        reply = self.report(HealthChanged(serving, status, reason))
        backend = connection.dial.backend
        if reply.first_unimplemented:
            self.log.warning(
                "the server has no grpc.health.v1 service: its channels count as serving",
                backend=backend,
                service=self.config.health_check,
            )
        if status == "SERVICE_UNKNOWN":
            self.log.warning("channel not serving", backend=backend, reason=reason)
        telemetry.execute(
            HEALTH_CHANGED,
            {},
            {
                **self.metadata,
                "backend": backend,
                "status": status,
                "previous": previous,
                "serving": serving,
            },
        )

    # --- replacing: make before break -------------------------------------------------

    async def replacement(self, current: _Connection) -> _Connection:
        """Wait until the channel is due (its age) or asked to move; return its successor.

        A failed attempt is reported and the current channel keeps serving; a refresh is
        tried again after the backoff, a move when the owner asks again.
        """
        age = self.config.max_connection_age
        due_ns = None
        if age is not None:
            jitter = 1 + AGE_JITTER * (2 * random.random() - 1)
            due_ns = current.connected_ns + int(age * jitter * 1e9)
        while True:
            dial: Dial | None = None
            if due_ns is None:
                dial = await self.owner.next_order(self.index)
            else:
                with anyio.move_on_after(max(0.0, (due_ns - time.monotonic_ns()) / 1e9)):
                    dial = await self.owner.next_order(self.index)
                if dial is None:
                    dial = self.report(Refreshing()).dial
                    if dial is None:
                        due_ns = time.monotonic_ns() + int(self.backoff.next() * 1e9)
                        continue
            began = time.monotonic_ns()
            try:
                return await self.successor(dial, began)
            except RETRYABLE as error:
                self.failed(error, dial, began)
                if dial.reason == "max_age":  # a move waits until the owner asks again
                    due_ns = time.monotonic_ns() + int(self.backoff.next() * 1e9)

    async def successor(self, dial: Dial, began: int) -> _Connection:
        """A replacement: READY, SERVING when health-checked, ``on_connect`` run.

        :raises _NotServing: its health check did not say SERVING (it is let go).
        """
        connection = await self.attempt(dial, began)
        try:
            await self.verify_serving(connection)
            await _run_callback(self.config.on_connect)
        except BaseException:
            await self.close(connection.channel)  # never announced, so never retired
            raise
        return connection

    async def verify_serving(self, connection: _Connection) -> None:
        """With ``health_check``, a replacement must say SERVING before it is swapped in.

        :raises _NotServing: it said anything else, or its health call failed.
        """
        service = self.config.health_check
        if service is None:
            return
        check = raw_unary(_for_health(connection.channel), _health.CHECK_METHOD)
        try:
            with anyio.fail_after(self.config.connect_timeout):
                answer = await check(_health.encode_request(service))
            status = _health.STATUS_NAMES.get(_health.decode_response(answer), "UNKNOWN")
        except grpc.aio.AioRpcError as error:
            code = error.code()
            status = "UNIMPLEMENTED" if code is grpc.StatusCode.UNIMPLEMENTED else code.name
        except asyncio.CancelledError:
            await reraise_if_cancelled()
            status = "no answer (grpc cancelled the health check)"
        except TimeoutError:
            status = f"no answer within connect_timeout={self.config.connect_timeout:g} s"
        if status not in _SERVING:
            raise _NotServing(connection.dial.config.address, _health_refusal(service, status))
        connection.health = status

    async def swap(self, old: _Connection, new: _Connection) -> None:
        """Hand ``new`` out in place of ``old``, in one change, and retire ``old``."""
        self.connected_event(new)
        # What the replacement's health check said is what was last heard: a watch on it
        # that says otherwise is news, even if the old channel's last said the same.
        self.health_heard = new.health
        reply = self.report(Swapped(new.channel, new.dial.backend, new.health))
        reason = new.dial.reason
        assert reason != "connect", new.dial
        await self.retire(old, reason, None, reply.close)

    async def retire(
        self,
        connection: _Connection,
        reason: DisconnectReason,
        lost_state: grpc.ChannelConnectivity | None,
        close: tuple[grpc.aio.Channel, ...],
    ) -> None:
        """Emit ``disconnected`` for an announced connection, and close what left the pool."""
        metadata = {**self.metadata, "backend": connection.dial.backend, "reason": reason}
        if lost_state is not None:
            metadata["state"] = lost_state.name
        up_ns = time.monotonic_ns() - connection.connected_ns
        telemetry.execute(DISCONNECTED, {"duration": up_ns}, metadata)
        for channel in close:
            await self.close(channel)

    async def close(self, channel: grpc.aio.Channel) -> None:
        """Close the channel in the background, shielded from cancellation.

        Calls in flight get ``shutdown_grace`` to finish (grpc cancels them after),
        while the worker goes on.
        """
        with anyio.CancelScope(shield=True):
            await self.closer.start(_retire, channel, self.config.shutdown_grace)

    async def back_off(self) -> None:
        self.report(BackingOff())
        await anyio.sleep(self.backoff.next())


def _health_refusal(service: str | None, status: str) -> str:
    """Why a channel is kept out, in words: the health check's answer and what it means."""
    said = f"the health check of service {service!r} said {status}"
    if status in ("SERVICE_UNKNOWN", "NOT_FOUND"):
        return said + " (the server knows no such service: check health_check's name)"
    return said


async def _retire(
    channel: grpc.aio.Channel, grace: float, *, task_status: TaskStatus[None]
) -> None:
    """Close a channel that has left the pool, letting its calls in flight finish first."""
    with anyio.CancelScope(shield=True):  # entered before started(): always closes
        task_status.started()
        # A conngrpc.sync channel drains its calls itself (grpc's sync close has no grace).
        retire = getattr(channel, "conngrpc_retire", None)
        await (channel.close(grace) if retire is None else retire(grace))


def _for_health(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """The channel that asks ``channel``'s server its health: itself, or for a
    ``conngrpc.sync`` channel (grpc's sync calls block a thread) a grpc.aio twin."""
    twin = getattr(channel, "conngrpc_health_channel", None)
    return channel if twin is None else twin()


async def _stand_in_for_a_connection(owner: Owner, index: int) -> None:
    """With ``mock``, no connection is opened: the worker counts as connected until stopped."""
    owner.report(index, Mocked())
    await anyio.sleep_forever()


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
