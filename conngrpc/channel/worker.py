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

The worker asks its :class:`Placer` which backend to try and tells it what it holds,
and tells its :class:`Membership` when its channel joins or leaves the hand-out, so the
owner's hand-out never checks a channel's state.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import random
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import grpc
import grpc.aio
from anyio.abc import TaskGroup, TaskStatus

from .. import _health, telemetry
from .._log import get_logger
from .._tasks import reraise_if_cancelled, task_group
from ..errors import ConnectFailedError
from .backoff import Backoff, ExponentialBackoff
from .config import Callback, ChannelConfig
from .connector import connect_grpc, raw_unary, raw_unary_stream

__all__ = [
    "CONNECTED",
    "CONNECTION_FAILED",
    "CURRENT_WORKER",
    "DISCONNECTED",
    "HEALTH_CHANGED",
    "RETRYABLE",
    "ChannelWorker",
    "Dial",
    "Membership",
    "Placer",
    "WorkerState",
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

WorkerState = Literal[
    "starting",
    "connecting",
    "backing_off",
    "connected",
    "watching",
    "not_serving",
    "disconnected",
    "mocked",
    "stopped",
    "crashed",
]


class ChannelWorker:
    """One channel's worker, as its pool sees it: state, channel, backend, latest failure.

    The pool keeps one per index for its whole life; a worker restarted by its
    supervisor carries on with the same record. ``backend`` is the address its channel
    is connected to; ``health`` the latest ``Health/Watch`` status (None when not
    health-checked); ``last_failure`` the reason of the latest failed attempt or crash
    (None once connected); ``failures`` counts the failed attempts since the last
    connect.
    """

    __slots__ = (
        "backend",
        "channel",
        "connected_at",
        "failures",
        "health",
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
        self.backend: str | None = None
        self.health: str | None = None
        self.connected_at: float | None = None  # time.monotonic() of the connect
        self.last_failure: str | None = None
        self.failures = 0

    def __repr__(self) -> str:
        where = f" {self.backend}" if self.backend else ""
        return f"<ChannelWorker {self.name} {self.state}{where}>"


@dataclass(frozen=True, slots=True)
class Dial:
    """Where to connect: the backend's address (as reported) and the config to dial with."""

    backend: str
    config: ChannelConfig
    reason: str = "connect"  # for a move: "rebalance" or "backend_removed"


class Placer(Protocol):
    """Where the worker's channel goes: the owner's placement over its backends."""

    async def dial(self, worker: ChannelWorker) -> Dial:
        """Where to connect now; waits until the resolver knows a backend."""

    def refresh_dial(self, worker: ChannelWorker) -> Dial | None:
        """Where a connected worker's replacement should go now (None: no backend)."""

    async def move(self, worker: ChannelWorker) -> Dial:
        """Wait until the owner asks this connected worker to move; where to."""

    def attempt_failed(self, worker: ChannelWorker, dial: Dial, reason: str) -> bool:
        """An attempt failed; True if another backend is worth trying at once."""

    def holds(self, worker: ChannelWorker, backend: str) -> None:
        """``worker`` is connected to ``backend`` (a connect, or a replacement swapped in)."""

    def lost(self, worker: ChannelWorker, backend: str) -> None:
        """``worker``'s connection to ``backend`` was lost (not shut down)."""

    def released(self, worker: ChannelWorker) -> None:
        """``worker`` holds no connection now."""


class Membership(Protocol):
    """The worker's owner (a pool): hands its channel out while it is usable."""

    def joined(self, worker: ChannelWorker) -> None:
        """``worker.channel`` may be handed out (again, or anew after a swap)."""

    def left(self, worker: ChannelWorker) -> None:
        """``worker`` must not be handed out any more (called again harmlessly)."""

    def changed(self, worker: ChannelWorker) -> None:
        """``worker``'s state or latest failure changed (for waiters and status)."""

    def first_unimplemented_health(self) -> bool:
        """True the first time one of the owner's channels finds no health service."""


#: The worker whose task this is: a connector may read it to know whom it connects for
#: (``conngrpc.testing.FakeConnector`` does, so a test can drop worker 2's connection).
CURRENT_WORKER: contextvars.ContextVar[ChannelWorker | None] = contextvars.ContextVar(
    "conngrpc_current_worker", default=None
)


async def run_worker(
    config: ChannelConfig,
    *,
    worker: ChannelWorker,
    membership: Membership,
    placer: Placer,
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
            retiring = closer if closer is not None else own_closer
            await _Life(config, worker, membership, placer, retiring).run()
    except anyio.get_cancelled_exc_class():
        _set_state(worker, membership, "stopped")
        raise
    except BaseException as crash:
        worker.last_failure = f"crash: {type(crash).__name__}: {crash}"
        _set_state(worker, membership, "crashed")
        raise
    finally:
        placer.released(worker)


@dataclass(slots=True)
class _Connection:
    """A READY channel the worker holds, and where and when it was made."""

    channel: grpc.aio.Channel
    dial: Dial
    began_ns: int  # when its attempt began
    connected_ns: int = 0  # when it became READY


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
        "log",
        "membership",
        "metadata",
        "placer",
        "worker",
    )

    def __init__(
        self,
        config: ChannelConfig,
        worker: ChannelWorker,
        membership: Membership,
        placer: Placer,
        closer: TaskGroup,
    ) -> None:
        self.config = config
        self.worker = worker
        self.membership = membership
        self.placer = placer
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
            self.state("connecting")
            dial = await self.placer.dial(self.worker)
            began = time.monotonic_ns()
            try:
                connection = await self.attempt(dial, began)
            except RETRYABLE as error:
                if not self.failed(error, dial, began):
                    await self.back_off()
                continue
            self.placer.holds(self.worker, dial.backend)
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
        worker = self.worker
        worker.failures += 1
        worker.last_failure = str(error)
        telemetry.execute(
            CONNECTION_FAILED,
            {"duration": time.monotonic_ns() - began, "error": error},
            {**self.metadata, "backend": dial.backend, "reason": worker.last_failure},
        )
        if worker.failures == 1 or self.config.debug:
            self.log.warning(
                "channel connection failed",
                backend=dial.backend,
                reason=worker.last_failure,
                attempt=worker.failures,
            )
        self.membership.changed(worker)
        return self.placer.attempt_failed(worker, dial, worker.last_failure)

    # --- serving ---------------------------------------------------------------------

    async def serve(self, connection: _Connection) -> int:
        """Hand channels out until the connection is lost; return how long it was up (ns).

        Every way out (lost, cancelled, crashed) leaves the hand-out, emits
        ``disconnected`` with its reason and retires the channel, in :meth:`retire`.
        A replacement swapped in retires its predecessor there too.
        """
        worker = self.worker
        self.connected_event(connection)
        reason, lost_state = "crash", None
        try:
            self.state("connected")
            await _run_callback(self.config.on_connect)
            while True:
                worker.channel = connection.channel
                worker.backend = connection.dial.backend
                worker.connected_at = time.monotonic()
                try:
                    lost_state = await self.watch(connection)
                except _Replaced as replaced:
                    old, connection = connection, replaced.replacement
                    self.swap(old, connection)
                    await self.retire(old, connection.dial.reason, None)
                    continue
                reason = "connection_lost"
                self.placer.lost(worker, connection.dial.backend)
                return time.monotonic_ns() - connection.connected_ns
        except anyio.get_cancelled_exc_class():
            reason = "shutdown"
            raise
        finally:
            self.membership.left(worker)
            self.placer.released(worker)
            worker.channel = worker.backend = worker.connected_at = worker.health = None
            if lost_state is not None:
                self.log.warning(
                    "channel disconnected", backend=connection.dial.backend, state=lost_state.name
                )
            self.state("disconnected")
            await self.retire(connection, reason, lost_state)

    def connected_event(self, connection: _Connection) -> None:
        self.worker.failures = 0
        self.worker.last_failure = None
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

                async def follow_connectivity() -> None:
                    lost.append(await _wait_until_not_ready(connection.channel))
                    tasks.cancel_scope.cancel()

                async def replace_when_due() -> None:
                    replacements.append(await self.replacement(connection))
                    tasks.cancel_scope.cancel()

                tasks.start_soon(follow_connectivity)
                tasks.start_soon(replace_when_due)
                if self.config.health_check is None:
                    self.state("watching")
                    self.membership.joined(self.worker)
                else:
                    tasks.start_soon(self.gate_by_health, connection)
        except BaseException:
            for replacement in replacements:  # ready, but never announced: it goes
                await self.close(replacement)
            raise
        if replacements and not lost:
            raise _Replaced(replacements[0])
        if replacements:  # lost at the same moment: the replacement, never announced, goes
            await self.close(replacements[0])
        return lost[0]

    async def gate_by_health(self, connection: _Connection) -> None:
        """Join while ``Health/Watch`` says SERVING, leave while it says anything else."""
        service = self.config.health_check
        assert service is not None
        watch = raw_unary_stream(connection.channel, _health.WATCH_METHOD)
        retry = ExponentialBackoff(min=0.05, max=5.0)
        while True:
            call = watch(_health.encode_request(service))
            try:
                async for message in call:
                    self.health(
                        connection,
                        _health.STATUS_NAMES.get(_health.decode_response(message), "UNKNOWN"),
                    )
                    retry.reset()
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                    self.health(connection, "UNIMPLEMENTED")
                    await anyio.sleep_forever()
                self.health(connection, f"UNKNOWN ({error.code().name}: {error.details()})")
            except asyncio.CancelledError:
                await reraise_if_cancelled()
                self.health(connection, "UNKNOWN (grpc cancelled the watch)")
            finally:
                call.cancel()
            # The stream ended or failed while the connection is up: watch again, as
            # grpc's own health checking does, and hand nothing out meanwhile.
            await anyio.sleep(retry.next())

    def health(self, connection: _Connection, status: str) -> None:
        """Record a health status; join or leave the hand-out as it says."""
        worker = self.worker
        previous, worker.health = worker.health, status
        if status == previous:
            return
        serving = status.split(" ")[0] in _SERVING
        if status == "UNIMPLEMENTED" and self.membership.first_unimplemented_health():
            self.log.warning(
                "the server has no grpc.health.v1 service: its channels count as serving",
                backend=connection.dial.backend,
                service=self.config.health_check,
            )
        telemetry.execute(
            HEALTH_CHANGED,
            {},
            {
                **self.metadata,
                "backend": connection.dial.backend,
                "status": status,
                "previous": previous,
                "serving": serving,
            },
        )
        if serving:
            self.state("watching")
            self.membership.joined(worker)
        else:
            self.membership.left(worker)
            self.state("not_serving")

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
                dial = await self.placer.move(self.worker)
            else:
                with anyio.move_on_after(max(0.0, (due_ns - time.monotonic_ns()) / 1e9)):
                    dial = await self.placer.move(self.worker)
                if dial is None:
                    dial = self.placer.refresh_dial(self.worker)
                    if dial is None:
                        due_ns = time.monotonic_ns() + int(self.backoff.next() * 1e9)
                        continue
                    dial = Dial(dial.backend, dial.config, "max_age")
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
            await self.close(connection)  # never announced (connected), so never retired
            raise
        return connection

    async def verify_serving(self, connection: _Connection) -> None:
        """With ``health_check``, a replacement must say SERVING before it is swapped in.

        :raises _NotServing: it said anything else, or its health call failed.
        """
        service = self.config.health_check
        if service is None:
            return
        check = raw_unary(connection.channel, _health.CHECK_METHOD)
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
            raise _NotServing(connection.dial.config.address, f"the health check said {status}")

    def swap(self, old: _Connection, new: _Connection) -> None:
        """Hand ``new`` out in place of ``old``, in one change; the caller retires ``old``."""
        worker = self.worker
        worker.channel, worker.backend = new.channel, new.dial.backend
        self.connected_event(new)
        self.placer.holds(worker, new.dial.backend)
        self.membership.joined(worker)  # the hand-out now holds new.channel

    async def retire(
        self,
        connection: _Connection,
        reason: str,
        lost_state: grpc.ChannelConnectivity | None,
    ) -> None:
        """Emit ``disconnected`` for an announced connection, and :meth:`close` it."""
        metadata = {**self.metadata, "backend": connection.dial.backend, "reason": reason}
        if lost_state is not None:
            metadata["state"] = lost_state.name
        up_ns = time.monotonic_ns() - connection.connected_ns
        telemetry.execute(DISCONNECTED, {"duration": up_ns}, metadata)
        await self.close(connection)

    async def close(self, connection: _Connection) -> None:
        """Close the channel in the background, shielded from cancellation.

        Calls in flight get ``shutdown_grace`` to finish (grpc cancels them after),
        while the worker goes on.
        """
        with anyio.CancelScope(shield=True):
            await self.closer.start(_retire, connection.channel, self.config.shutdown_grace)

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
