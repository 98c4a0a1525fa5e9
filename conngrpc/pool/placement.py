"""Placement: which backend each of a pool's channels connects to.

A pool's channels are spread evenly over the backends its resolver found: with N
channels over K backends that accept, each holds floor(N/K) or ceil(N/K). The state
is kept here, in one synchronous object, and every decision is one of three:

- :meth:`Placement.pick`: the backend a (re)connecting worker should try, the least
  loaded among those not known to be failing;
- :meth:`Placement.failed`: an attempt was refused; the backend is left alone for a
  while (its own backoff) unless nothing else is left, and the worker may try
  another backend at once;
- :meth:`Placement.next_move`: the one channel that should move now, make before
  break, because a backend vanished, appeared, recovered or holds too many.

The pool's placer task applies the moves one at a time; the workers report what they
hold. Nothing here awaits, so a test can drive it with a fake clock.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..channel.backoff import Backoff

__all__ = ["Move", "Placement"]


@dataclass(frozen=True, slots=True)
class Move:
    """Worker ``index`` should open a channel to ``to`` and then let its old one go."""

    index: int
    to: str
    reason: str  # "backend_removed" or "rebalance"


class _Backend:
    __slots__ = ("backoff", "failing_until", "last_failure")

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = copy.copy(backoff)
        self.failing_until: float | None = None  # clock time when it may be tried again
        self.last_failure: str | None = None


class Placement:
    """Which backend each worker holds or is trying, and which backends are failing.

    ``backoff`` is copied per backend: after a refused attempt, a backend is not picked
    again for ``backoff.next()`` seconds while another backend is available.
    """

    __slots__ = ("_backends", "_backoff", "_clock", "_turn", "connected", "moving", "pending")

    def __init__(self, backoff: Backoff, clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff
        self._clock = clock
        self._backends: dict[str, _Backend] = {}
        self._turn = 0  # rotates ties, so equal backends take turns
        #: worker index -> the backend its watched channel is connected to
        self.connected: dict[int, str] = {}
        #: worker index -> the backend it is connecting to (a first connect or a move)
        self.pending: dict[int, str] = {}
        #: the worker moving now, if any (one at a time)
        self.moving: int | None = None

    def __repr__(self) -> str:
        return f"<Placement backends={list(self._backends)} load={self.load()}>"

    # --- the backends -------------------------------------------------------------

    @property
    def backends(self) -> list[str]:
        return list(self._backends)

    def set_backends(self, addresses: Iterable[str]) -> tuple[list[str], list[str]]:
        """Replace the known backends (order kept); return (added, removed)."""
        wanted = list(dict.fromkeys(addresses))
        removed = [a for a in self._backends if a not in wanted]
        added = [a for a in wanted if a not in self._backends]
        self._backends = {a: self._backends.get(a) or _Backend(self._backoff) for a in wanted}
        return added, removed

    def available(self) -> list[str]:
        """The backends not known to be failing (or whose wait is over)."""
        now = self._clock()
        return [
            a
            for a, b in self._backends.items()
            if b.failing_until is None or b.failing_until <= now
        ]

    def next_retry_at(self) -> float | None:
        """When the next failing backend may be tried again (None: none is failing)."""
        waits = [b.failing_until for b in self._backends.values() if b.failing_until is not None]
        return min(waits) if waits else None

    def last_failure(self, address: str) -> str | None:
        backend = self._backends.get(address)
        return backend.last_failure if backend is not None else None

    # --- what workers ask and report ------------------------------------------------

    def load(self) -> dict[str, int]:
        """Channels per known backend: where each worker is connecting, else connected.

        A worker replacing its channel (a move, a refresh) counts where it is going.
        """
        counts = dict.fromkeys(self._backends, 0)
        for index, address in self.connected.items():
            if index not in self.pending and address in counts:
                counts[address] += 1
        for address in self.pending.values():
            if address in counts:
                counts[address] += 1
        return counts

    def pick(self, index: int) -> str | None:
        """The backend worker ``index`` should connect to now (None: no backend known).

        The least loaded of the available backends; when every backend is failing, the
        least loaded of all (the worker's own backoff then paces its attempts). A worker
        that is connected already (a refresh) does not count against its own backend.
        """
        self.pending.pop(index, None)
        if not self._backends:
            return None
        counts = self.load()
        if index in self.connected and self.connected[index] in counts:
            counts[self.connected[index]] -= 1
        candidates = self.available() or list(self._backends)
        self._turn += 1
        rotation = {a: (i - self._turn) % len(candidates) for i, a in enumerate(candidates)}
        choice = min(candidates, key=lambda a: (counts[a], rotation[a]))
        self.pending[index] = choice
        return choice

    def failed(self, index: int, address: str, reason: str) -> bool:
        """Worker ``index``'s attempt on ``address`` failed; True if another is worth a try now."""
        if self.pending.get(index) == address:
            del self.pending[index]
        if index == self.moving:
            self.moving = None
        self.suspect(address, reason)
        return any(a != address for a in self.available())

    def suspect(self, address: str, reason: str) -> None:
        """``address`` refused an attempt or lost a connection: leave it alone a while.

        Its wait grows once per wait, not once per worker: several workers refused at the
        same moment (a backend restarting) must not push it out of use for the longest
        backoff while it is back already.
        """
        backend = self._backends.get(address)
        if backend is None:
            return
        now = self._clock()
        if backend.failing_until is None or backend.failing_until <= now:
            backend.failing_until = now + backend.backoff.next()
        backend.last_failure = reason

    def holds(self, index: int, address: str) -> None:
        """Worker ``index`` is connected to ``address`` (after a connect or a move)."""
        self.pending.pop(index, None)
        self.connected[index] = address
        if index == self.moving:
            self.moving = None
        backend = self._backends.get(address)
        if backend is not None:
            backend.failing_until = None
            backend.backoff.reset()

    def released(self, index: int) -> None:
        """Worker ``index`` holds nothing now (its connection was lost, or it stopped)."""
        self.connected.pop(index, None)
        self.pending.pop(index, None)
        if index == self.moving:
            self.moving = None

    # --- moving -------------------------------------------------------------------

    def next_move(self) -> Move | None:
        """The one move to make now, or None: the spread is even and nothing is stranded.

        A channel on a backend that vanished moves first; then one from the most loaded
        available backend to the least loaded, while they differ by two or more. A
        failing backend whose wait is over counts as available with no channel: the
        move to it is its retry.
        """
        if self.moving is not None or self.pending:
            return None  # one at a time, and never while workers are still connecting
        available = self.available()
        if not available:
            return None
        counts = self.load()
        target = min(available, key=lambda a: counts[a])
        for index, address in sorted(self.connected.items()):
            if address not in self._backends:
                return self._start_move(index, target, "backend_removed")
        source = max(available, key=lambda a: counts[a])
        held = {a for a in self.connected.values() if a not in available}
        for address in held:  # a failing backend still holding channels that stay up
            if counts[address] > counts[source]:
                source = address
        if counts[source] - counts[target] < 2:
            return None
        index = max(i for i, a in self.connected.items() if a == source)
        return self._start_move(index, target, "rebalance")

    def _start_move(self, index: int, to: str, reason: str) -> Move:
        self.moving = index
        self.pending[index] = to
        return Move(index, to, reason)

    def held(self) -> Mapping[str, int]:
        """Connected channels per backend, every known backend listed (0 if none)."""
        counts = dict.fromkeys(self._backends, 0)
        for address in self.connected.values():
            counts[address] = counts.get(address, 0) + 1
        return counts
