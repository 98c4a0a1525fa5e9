"""The fleet: a pool's backends, where its workers connect, and the task that keeps them spread.

:class:`Fleet` is the workers' :class:`~conngrpc.channel.worker.Placer`: it answers
"where should I connect" from its :class:`~.placement.Placement`, waits while no backend
is known, and hands the moves its placer task decides to the workers that must make
them. The placer task resolves the target every ``resolve_interval`` seconds (sooner
while resolving fails or finds nothing) and applies one move at a time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
from anyio.abc import TaskStatus

from .. import telemetry
from .._log import get_logger
from ..channel.backoff import ExponentialBackoff
from ..channel.config import ChannelConfig
from ..channel.worker import ChannelWorker, Dial
from .placement import Placement
from .resolver import Resolver, dial_config, run_resolver

__all__ = ["RESOLVED", "RESOLVE_FAILED", "Fleet"]

RESOLVED = ("conngrpc", "pool", "resolved")
RESOLVE_FAILED = ("conngrpc", "pool", "resolve_failed")

_log = get_logger("conngrpc.pool")


class Fleet:
    """A pool's backends and its workers' places on them."""

    __slots__ = (
        "_asked",
        "_changed",
        "_dials",
        "_moves",
        "config",
        "name",
        "placement",
        "resolve_failure",
        "resolver",
    )

    def __init__(self, name: str, config: ChannelConfig, resolver: Resolver) -> None:
        self.name = name
        self.config = config
        self.resolver = resolver
        self.placement = Placement(_backend_backoff(config))
        self.resolve_failure: str | None = None
        self._dials: dict[str, Dial] = {}
        self._moves: dict[int, Dial] = {}
        self._asked: dict[int, anyio.Event] = {}  # a worker waiting to be asked to move
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<Fleet {self.name!r} {self.placement!r}>"

    # --- the Placer protocol, for the workers --------------------------------------------

    async def dial(self, worker: ChannelWorker) -> Dial:
        while True:
            backend = self.placement.pick(worker.index)
            if backend is not None:
                self._wake()
                return self._dial(backend)
            await self._changed.wait()  # no backend known yet: the resolver will say

    def refresh_dial(self, worker: ChannelWorker) -> Dial | None:
        backend = self.placement.pick(worker.index)
        return self._dial(backend) if backend is not None else None

    async def move(self, worker: ChannelWorker) -> Dial:
        while worker.index not in self._moves:
            asked = self._asked.get(worker.index)
            if asked is None:
                asked = self._asked[worker.index] = anyio.Event()
            await asked.wait()  # its own event: a fleet change wakes only the worker asked
        self._asked.pop(worker.index, None)
        return self._moves.pop(worker.index)

    def attempt_failed(self, worker: ChannelWorker, dial: Dial, reason: str) -> bool:
        self._moves.pop(worker.index, None)  # a move not yet taken is stale now
        another = self.placement.failed(worker.index, dial.backend, reason)
        self._wake()
        return another

    def holds(self, worker: ChannelWorker, backend: str) -> None:
        self._moves.pop(worker.index, None)  # a move not yet taken is stale now
        self.placement.holds(worker.index, backend)
        self._wake()

    def lost(self, worker: ChannelWorker, backend: str) -> None:
        # A lost connection makes its backend suspect: reconnect to another while one is
        # available (a backend that dies takes its connections first, its new ones after).
        self.placement.suspect(backend, "a connection to it was lost")
        self._wake()

    def released(self, worker: ChannelWorker) -> None:
        self._moves.pop(worker.index, None)
        self.placement.released(worker.index)
        self._wake()

    # --- the placer task -------------------------------------------------------------------

    async def run(self, interval: float, *, task_status: TaskStatus[None]) -> None:
        """Resolve every ``interval`` seconds and apply one move at a time, for ever."""
        task_status.started()
        retry = ExponentialBackoff(min=min(0.1, interval), max=interval)
        resolve_at = 0.0
        while True:
            if time.monotonic() >= resolve_at:
                found = await self.resolve()
                resolve_at = time.monotonic() + (interval if found else retry.next())
                if found:
                    retry.reset()
            move = self.placement.next_move()
            if move is not None:
                self._moves[move.index] = self._dial(move.to, move.reason)
                asked = self._asked.pop(move.index, None)
                if asked is not None:
                    asked.set()
                self._wake()
            now = time.monotonic()
            wake_at = resolve_at
            retry_at = self.placement.next_retry_at()
            if retry_at is not None and retry_at > now:
                wake_at = min(wake_at, retry_at)
            with anyio.move_on_after(wake_at - now):
                await self._changed.wait()

    async def resolve(self) -> bool:
        """Ask the resolver for the backends; False when it failed or found none.

        When it has never found any, the target as written stands in as the one backend,
        so that grpc's own attempt says why (an unresolvable name, say).
        """
        reason: str | None = None
        try:
            addresses = await run_resolver(self.resolver)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            addresses = []
        if not addresses and reason is None:
            reason = "the resolver found no addresses"
        if reason is not None:
            if self.resolve_failure != reason:
                _log.warning("resolving failed", pool_name=self.name, reason=reason)
            self.resolve_failure = reason
            telemetry.execute(RESOLVE_FAILED, {}, {"pool_name": self.name, "reason": reason})
            if self.placement.backends:
                return False  # keep the backends known last
            addresses = [self.config.address]
        else:
            self.resolve_failure = None
        added, removed = self.placement.set_backends(addresses)
        for address in removed:
            self._dials.pop(address, None)
        if added or removed:
            telemetry.execute(
                RESOLVED,
                {"backends": len(addresses)},
                {
                    "pool_name": self.name,
                    "backends": tuple(addresses),
                    "added": tuple(added),
                    "removed": tuple(removed),
                },
            )
            self._wake()
        return reason is None

    # --- what the pool's status reports ------------------------------------------------------

    def backends(self, handed_out: list[ChannelWorker]) -> Mapping[str, int]:
        """Channels handed out now per backend; every known backend is listed."""
        counts = dict.fromkeys(self.placement.backends, 0)
        for worker in handed_out:
            if worker.backend is not None:
                counts[worker.backend] = counts.get(worker.backend, 0) + 1
        return counts

    # --- helpers -----------------------------------------------------------------------------

    def _dial(self, backend: str, reason: str = "connect") -> Dial:
        dial = self._dials.get(backend)
        if dial is None:
            dial = self._dials[backend] = Dial(backend, dial_config(self.config, backend))
        return dial if reason == "connect" else Dial(dial.backend, dial.config, reason)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def _backend_backoff(config: ChannelConfig) -> ExponentialBackoff:
    """How long a refusing backend is left alone: the channel backoff's bounds when it is
    an ExponentialBackoff, else the defaults. A custom backoff object stays the workers'
    own (its calls are theirs alone: advanced on each of their failed attempts)."""
    backoff = config.backoff
    if isinstance(backoff, ExponentialBackoff):
        return ExponentialBackoff(min=backoff.minimum, max=backoff.maximum)
    return ExponentialBackoff()
