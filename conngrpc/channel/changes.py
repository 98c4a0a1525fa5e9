"""What a channel worker tells the pool it belongs to, and what the pool answers.

A worker owns its channel's I/O (connecting, watching, closing); its pool owns every
fact about it (which backend it holds or tries, whether it is handed out, its latest
failure). The worker reports each transition with one call, :meth:`Owner.report`,
whose :class:`Reply` carries what the worker must do next; and it waits for the pool's
orders (a backend once one is known, a move) with :meth:`Owner.next_order`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .config import ChannelConfig

__all__ = [
    "NOTHING",
    "AttemptFailed",
    "Attempting",
    "BackingOff",
    "Change",
    "Connected",
    "Dial",
    "DialReason",
    "DisconnectReason",
    "Disconnected",
    "HealthChanged",
    "Mocked",
    "MoveReason",
    "Owner",
    "Refreshing",
    "Reply",
    "Stopped",
    "Swapped",
]

#: Why a channel was asked to move to another backend.
MoveReason = Literal["rebalance", "backend_removed"]
#: Why a channel left its worker: lost, stopped, crashed, or replaced (make before break).
DisconnectReason = Literal[
    "connection_lost", "shutdown", "crash", "max_age", "rebalance", "backend_removed"
]


#: Why a worker dials: its first connect or a reconnect, a refresh, or a move.
DialReason = Literal["connect", "max_age", "rebalance", "backend_removed"]


@dataclass(frozen=True, slots=True)
class Dial:
    """Where to connect: the backend's address (as reported) and the config to dial with."""

    backend: str
    config: ChannelConfig
    reason: DialReason = "connect"


# --- the changes a worker reports --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempting:
    """The worker is about to connect: which backend? (:attr:`Reply.dial`, None: wait)."""


@dataclass(frozen=True, slots=True)
class Refreshing:
    """The connected worker's channel is due for a replacement (``max_connection_age``)."""


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An attempt on ``backend`` (a connect, or a replacement's) failed for ``reason``."""

    backend: str
    reason: str


@dataclass(frozen=True, slots=True)
class BackingOff:
    """The worker waits its backoff before its next attempt."""


@dataclass(frozen=True, slots=True)
class Connected:
    """``channel`` to ``backend`` is READY; it is not handed out until HealthChanged."""

    channel: Any
    backend: str


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """Whether the connected channel may be handed out, its health status (None: not
    health-checked) and, when it may not, why (the worker's words)."""

    serving: bool
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Swapped:
    """A replacement, ``channel`` to ``backend``, takes the old one's place; its health
    check said ``health`` (SERVING or UNIMPLEMENTED; None: not health-checked)."""

    channel: Any
    backend: str
    health: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The worker's channel left it; the connection was lost when ``reason`` says so."""

    reason: DisconnectReason


@dataclass(frozen=True, slots=True)
class Stopped:
    """The worker stopped, or crashed with ``crash`` (its description)."""

    crash: str | None = None


@dataclass(frozen=True, slots=True)
class Mocked:
    """With ``mock``, the worker opens no connection and counts as connected."""


Change = (
    Attempting
    | Refreshing
    | AttemptFailed
    | BackingOff
    | Connected
    | HealthChanged
    | Swapped
    | Disconnected
    | Stopped
    | Mocked
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the worker does after a change it reported.

    ``dial``: where to connect now (after Attempting or Refreshing; None: no backend is
    known yet, wait with :meth:`Owner.next_order`). ``retry_now``: after AttemptFailed,
    another backend is worth a try at once, and ``failures`` counts the failed attempts
    since the last connect. ``close``: channels that left the pool, for
    the worker to close (shielded, its calls given ``shutdown_grace``). ``first_unimplemented``:
    this was the pool's first channel to find no health service (warn once).
    """

    dial: Dial | None = None
    retry_now: bool = False
    failures: int = 0
    close: tuple[Any, ...] = ()
    first_unimplemented: bool = False


NOTHING = Reply()


class Owner(Protocol):
    """The pool a worker belongs to: it keeps every fact about the worker's channel."""

    def report(self, index: int, change: Change) -> Reply:
        """Worker ``index`` changed; the pool's table takes it in and says what next."""

    async def next_order(self, index: int) -> Dial:
        """Wait until the pool has an order for worker ``index``: a backend to connect to
        (once one is known), or a move of its connected channel; return it."""
