"""Placement: which backend each of a pool's channels connects to, as pure functions.

A pool's channels are spread evenly over the backends its resolver found: with N
channels over K backends that accept, each holds floor(N/K) or ceil(N/K). The facts
live in the pool's table (:class:`~conngrpc.pool.table.PoolTable`); these functions read
them and decide, and the table applies what they decide:

- :func:`choose`: the backend a (re)connecting worker should try, the least loaded
  among those not known to be failing;
- :func:`next_move`: the one channel that should move now, make before break, because
  a backend vanished, appeared, recovered or holds too many.

Nothing here awaits or changes anything, so a test can drive it with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..channel.backoff import Backoff
from ..channel.changes import MoveReason

__all__ = [
    "Backend",
    "Move",
    "Places",
    "available",
    "choose",
    "load",
    "next_move",
    "next_retry_at",
]


class Backend:
    """A backend the resolver found: when it may be tried again after a failure."""

    __slots__ = ("backoff", "failing_until")

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failing_until: float | None = None  # clock time when it may be tried again

    def __repr__(self) -> str:
        return f"<Backend failing_until={self.failing_until}>"


@dataclass(frozen=True, slots=True)
class Move:
    """Worker ``index`` should open a channel to ``to`` and then let its old one go."""

    index: int
    to: str
    reason: MoveReason


class Places(Protocol):
    """What placement reads: the backends, where each worker is or is going, and the
    counts of both per backend (kept by the table as it changes, so that a decision
    costs as many steps as there are backends, not channels)."""

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The known backends, in the resolver's order."""

    @property
    def held(self) -> Mapping[int, str]:
        """Worker index -> the backend of the connected channel it holds."""

    @property
    def going(self) -> Mapping[int, str]:
        """Worker index -> the backend it is connecting to (a first connect or a move)."""

    @property
    def placed(self) -> Mapping[str, int]:
        """Backend -> the workers counted on it: where each is going, else where it is."""

    @property
    def holding(self) -> Mapping[str, int]:
        """Backend -> the workers holding a channel to it."""

    @property
    def moving(self) -> int | None:
        """The worker moving now, if any (one at a time)."""


def available(places: Places, now: float) -> list[str]:
    """The backends not known to be failing (or whose wait is over)."""
    return [
        a for a, b in places.backends.items() if b.failing_until is None or b.failing_until <= now
    ]


def next_retry_at(places: Places, now: float) -> float | None:
    """When the next failing backend may be tried again, after ``now`` (None: none waits)."""
    waits = [
        b.failing_until
        for b in places.backends.values()
        if b.failing_until is not None and b.failing_until > now
    ]
    return min(waits) if waits else None


def load(places: Places) -> dict[str, int]:
    """Channels per known backend: where each worker is going, else where it is.

    A worker replacing its channel (a move, a refresh) counts where it is going.
    """
    placed = places.placed
    return {a: placed.get(a, 0) for a in places.backends}


def choose(places: Places, index: int, now: float, turn: int) -> str | None:
    """The backend worker ``index`` should connect to now (None: no backend known).

    The least loaded of the available backends; when every backend is failing, the
    least loaded of all (the worker's own backoff then paces its attempts). A worker
    that is connected already (a refresh) does not count against its own backend;
    nor does where it was going. ``turn`` rotates ties, so equal backends take turns.
    """
    if not places.backends:
        return None
    counts = load(places)
    own = places.going.get(index) or places.held.get(index)
    if own is not None and own in counts:
        counts[own] -= 1
    candidates = available(places, now) or list(places.backends)
    rotation = {a: (i - turn) % len(candidates) for i, a in enumerate(candidates)}
    return min(candidates, key=lambda a: (counts[a], rotation[a]))


def next_move(places: Places, now: float) -> Move | None:
    """The one move to make now, or None: the spread is even and nothing is stranded.

    A channel on a backend that vanished moves first; then one from the most loaded
    available backend to the least loaded, while they differ by two or more. A failing
    backend whose wait is over counts as available with no channel: the move to it is
    its retry. Never while a move runs or a worker is still connecting.
    """
    if places.moving is not None or places.going:
        return None
    candidates = available(places, now)
    if not candidates:
        return None
    counts = load(places)
    target = min(candidates, key=lambda a: counts[a])
    held = places.held
    held_on = [a for a, n in places.holding.items() if n]
    stranded = {a for a in held_on if a not in places.backends}
    if stranded:  # the lowest index first
        index = min(i for i, a in held.items() if a in stranded)
        return Move(index, target, "backend_removed")
    source = max(candidates, key=lambda a: counts[a])
    for address in held_on:
        if address not in candidates and counts[address] > counts[source]:
            source = address  # a failing backend still holding channels
    if counts[source] - counts[target] < 2:
        return None
    return Move(max(i for i, a in held.items() if a == source), target, "rebalance")
