"""The pool's table: every fact about a running pool, changed in one place.

One record per channel index, its state a tagged value (:class:`Idle`,
:class:`Connecting`, :class:`Joining`, :class:`Serving`, :class:`NotServing`,
:class:`Mocking`); the backends the resolver found and when each may be tried again;
which channels left with calls still running on them (draining). Workers report their
transitions and the resolver loop its findings, each as a change given to
:meth:`PoolTable.apply`, the one method that changes anything here. It decides at once
(which backend, which channel moves, what is handed out) and returns the follow-ups
(orders for workers, channels to close, room for waiting calls) for its caller to run
outside, as httpcore's connection pool does.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..channel.backoff import Backoff
from ..channel.changes import (
    NOTHING,
    AttemptFailed,
    Attempting,
    BackingOff,
    Change,
    Connected,
    Dial,
    DialReason,
    Disconnected,
    HealthChanged,
    Mocked,
    Refreshing,
    Reply,
    Stopped,
    Swapped,
)
from ..channel.config import ChannelConfig
from . import placement
from .ejection import Ejected, Ejector, Outcomes, Returned, Rules, default_rules
from .handout import HandOut, Slot
from .placement import Backend
from .resolver import dial_config

__all__ = [
    "ChannelWorker",
    "Closing",
    "Connecting",
    "FollowUps",
    "Idle",
    "Joining",
    "Mocking",
    "NotServing",
    "PoolTable",
    "Resolved",
    "Serving",
    "State",
    "Sweep",
    "Tick",
    "Tripped",
    "WorkerState",
]

#: A channel worker's state as :class:`ChannelWorker` shows it.
WorkerState = Literal[
    "starting",
    "connecting",
    "backing_off",
    "connected",
    "watching",
    "not_serving",
    "ejected",
    "disconnected",
    "mocked",
    "stopped",
    "crashed",
]

#: ``connecting`` is the moment between a failed attempt and the next (or the backoff).
IdlePhase = Literal["starting", "connecting", "backing_off", "disconnected", "stopped", "crashed"]


# --- a record's state ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    """Holds no channel and tries none: starting, backing off, stopped or crashed."""

    phase: IdlePhase


@dataclass(frozen=True, slots=True)
class Connecting:
    """Attempting a connection to ``backend`` (None: waiting for the resolver to find one)."""

    backend: str | None


@dataclass(frozen=True, slots=True)
class Joining:
    """Connected (READY); not handed out yet (``on_connect`` runs, health not yet heard)."""

    slot: Slot


@dataclass(frozen=True, slots=True)
class Serving:
    """Connected and handed out."""

    slot: Slot


@dataclass(frozen=True, slots=True)
class NotServing:
    """Connected, kept out of the hand-out: its health check says ``health``."""

    slot: Slot
    health: str


@dataclass(frozen=True, slots=True)
class Mocking:
    """With ``mock``: no connection, counted as connected; ``mock()`` answers instead."""


State = Idle | Connecting | Joining | Serving | NotServing | Mocking
_HOLDING = (Joining, Serving, NotServing)

_STATE_NAMES: dict[type[State], WorkerState] = {
    Connecting: "connecting",
    Joining: "connected",
    Serving: "watching",
    NotServing: "not_serving",
    Mocking: "mocked",
}


# --- what the resolver loop reports ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """The resolver answered ``addresses``, or failed with ``failure``."""

    addresses: tuple[str, ...] = ()
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: a failing backend's wait may be over."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """An ejection interval passed: count the outcomes, eject and return backends."""


@dataclass(frozen=True, slots=True)
class Tripped:
    """``outcomes``' backend failed enough calls in a row to be ejected at once."""

    outcomes: Outcomes


@dataclass(frozen=True, slots=True)
class Closing:
    """The pool is stopping: nothing is handed out from now on (its channels are about
    to close), and the workers' last reports leave the hand-out alone."""


@dataclass(frozen=True, slots=True)
class FollowUps:
    """What a change leaves to do outside the table.

    ``reply`` goes to the worker that reported; ``orders``: workers with a new order
    to wake (:meth:`PoolTable.order`); ``room``: a channel joined the hand-out, so
    calls waiting for room may start; ``ejected`` and ``returned``: backends that left
    the pick or came back.
    """

    reply: Reply = NOTHING
    orders: tuple[int, ...] = ()
    room: bool = False
    ejected: tuple[Ejected, ...] = ()
    returned: tuple[Returned, ...] = ()


# --- the snapshot callers see ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelWorker:
    """A snapshot of one channel worker of a pool, as ``Pool.get_all_workers`` lists them.

    Plain frozen values, taken when it was listed; the worker goes on changing.
    """

    #: the name of the worker's pool (or channel)
    pool_name: str
    #: the worker's index in its pool, from 0 to ``pool_size - 1``
    index: int
    #: ``"watching"`` (its channel is handed out) or ``"mocked"`` (with ``mock``): the
    #: workers ``get_all_workers`` lists are these
    state: WorkerState
    #: the channel it holds (a ``grpc.aio.Channel``; a ``conngrpc.sync`` pool's
    #: :class:`~conngrpc.sync.ThreadChannel`), None when it holds none (mocked)
    channel: Any = None
    #: the backend address its channel is connected to (None when mocked)
    backend: str | None = None
    #: the latest ``Health/Watch`` status (``"SERVING"``), None when not health-checked
    health: str | None = None
    #: when it connected, as a ``time.monotonic()`` value
    connected_at: float | None = None
    #: the reason of the latest failed attempt, crash or health refusal; None once
    #: connected and serving
    last_failure: str | None = None
    #: the failed attempts since the last connect
    failures: int = 0

    @property
    def name(self) -> str:
        """``pool_name[index]``, as telemetry and logs name the channel."""
        return f"{self.pool_name}[{self.index}]"


# --- the table -------------------------------------------------------------------------------


class _Record:
    """One channel index: its state, and what outlives a state (order, failures, health)."""

    __slots__ = ("connected_at", "failures", "health", "last_failure", "order", "state")

    def __init__(self) -> None:
        self.state: State = Idle("starting")
        self.order: Dial | None = None  # a backend to connect to or a move, not yet done
        self.last_failure: str | None = None
        self.failures = 0
        self.health: str | None = None
        self.connected_at: float | None = None

    def __repr__(self) -> str:
        return f"<_Record {self.state}>"

    @property
    def slot(self) -> Slot | None:
        state = self.state
        return state.slot if isinstance(state, _HOLDING) else None


@dataclass(slots=True)
class _Change:
    """What one change did, gathered while it is applied."""

    reply: Reply = NOTHING
    orders: list[int] = field(default_factory=list)
    joined: bool = False  # a channel joined the hand-out
    ejected: list[Ejected] = field(default_factory=list)
    returned: list[Returned] = field(default_factory=list)


class PoolTable:
    """A running pool's state: a record per channel index, the backends, the draining slots.

    Read it freely; change it only through :meth:`apply` (the end of the last call on a
    draining channel lets go of it too: :meth:`_drained`). ``held``, ``going``,
    ``placed`` and ``holding`` index the records for placement (who holds which
    backend, who is connecting where, and how many per backend), so that a change costs
    the same in a pool of 1,000 as in a pool of 10; :meth:`apply` alone keeps them in
    step with the records, and :meth:`check` proves it.
    """

    __slots__ = (
        "_backend_backoff",
        "_clock",
        "_config",
        "_dials",
        "_ended",
        "_failures_seen",
        "_tripped",
        "_turn",
        "backends",
        "closing",
        "draining",
        "ejector",
        "going",
        "handout",
        "held",
        "holding",
        "mocked",
        "moving",
        "name",
        "placed",
        "records",
        "resolve_failure",
        "settled",
        "unimplemented_health_seen",
    )

    def __init__(
        self,
        name: str,
        size: int,
        config: ChannelConfig,
        handout: HandOut,
        ended: Callable[[], None],
        backend_backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
        rules: Rules | None = None,
        tripped: Callable[[Outcomes], None] | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self.handout = handout
        self._ended = ended
        self._backend_backoff = backend_backoff
        self._clock = clock
        self._turn = 0  # rotates ties between equal backends
        self.records = tuple(_Record() for _ in range(size))
        #: the backends the resolver found, in its order, and the config to dial each with
        self.backends: dict[str, Backend] = {}
        self._dials: dict[str, Dial] = {}
        self.held: dict[int, str] = {}
        self.going: dict[int, str] = {}
        self.placed: Counter[str] = Counter()
        self.holding: Counter[str] = Counter()
        self.moving: int | None = None
        self.mocked = 0  # records in Mocking
        #: slots whose channel left with calls still running on it, until those end
        self.draining: dict[int, Slot] = {}  # by id(slot)
        self.resolve_failure: str | None = None
        #: a channel has served, or every one has failed: the pool is past its start
        self.settled = False
        self._failures_seen: set[int] = set()  # workers that failed, before it settled
        self.unimplemented_health_seen = False
        self.closing = False  # the pool is stopping: nothing is handed out
        #: the outcomes of the calls on each backend, and which backends are ejected
        self.ejector = Ejector(default_rules() if rules is None else rules)
        #: what a backend's outcomes call when it fails enough in a row (the runtime
        #: reports Tripped); by default the table applies it at once
        self._tripped = tripped or self._trip_here

    def __repr__(self) -> str:
        return (
            f"<PoolTable {self.name!r} serving={len(self.handout.slots)} "
            f"size={len(self.records)} backends={list(self.backends)}>"
        )

    # --- reading ------------------------------------------------------------------------

    def connected(self) -> Iterator[int]:
        """The indexes counted as connected: handed out, or mocked."""
        for index, record in enumerate(self.records):
            state = record.state
            if isinstance(state, Mocking) or (isinstance(state, Serving) and self._out(state)):
                yield index

    def _out(self, state: Serving) -> bool:
        """Whether a serving channel is handed out: its backend is neither ejected nor on
        probation (when one of its channels takes one call at a time: the probe)."""
        return not self.ejector.is_out(state.slot.backend)

    def ejected(self) -> dict[str, float]:
        """Backend -> when it returns to the pick (this table's clock), for the ejected."""
        rules = self.ejector.rules
        everyone = list(self.ejector.by_backend.values())  # one step: status() may run in
        # another thread while the loop adds a backend
        return {o.backend: o.returns_at(rules) or 0.0 for o in everyone if o.ejected_at is not None}

    def connected_count(self) -> int:
        """How many are counted as connected (at no cost: a pool of 1,000 asks it often)."""
        return len(self.handout.slots) + self.mocked

    def snapshot(self, index: int) -> ChannelWorker:
        """Worker ``index`` as it is now, in plain values."""
        record = self.records[index]
        state = record.state
        slot = record.slot
        name: WorkerState
        if isinstance(state, Idle):
            name = state.phase
        elif isinstance(state, Serving) and not self._out(state):
            name = "ejected"  # connected and serving, but its backend's calls failed
        else:
            name = _STATE_NAMES[type(state)]
        return ChannelWorker(
            self.name,
            index,
            name,
            None if slot is None else slot.channel,
            None if slot is None else slot.backend,
            record.health,
            record.connected_at,
            record.last_failure,
            record.failures,
        )

    def order(self, index: int) -> Dial | None:
        """Worker ``index``'s order not yet carried out: a backend to try, or a move."""
        return self.records[index].order

    def slots(self) -> Iterator[Slot]:
        """Every slot with a channel: held by a worker, or draining."""
        for record in self.records:
            slot = record.slot
            if slot is not None:
                yield slot
        yield from self.draining.values()

    def slots_out(self) -> list[Slot]:
        """The slots out of the hand-out: held but not serving, or draining."""
        held = [r.state.slot for r in self.records if isinstance(r.state, Joining | NotServing)]
        return held + list(self.draining.values())  # draining is replaced whole, never changed

    # --- changing -------------------------------------------------------------------------

    def apply(
        self, index: int | None, change: Change | Resolved | Tick | Sweep | Tripped | Closing
    ) -> FollowUps:
        """Take in what worker ``index`` (or the resolver loop, None) reports, decide what
        follows, and return the follow-ups for the caller to run outside the table."""
        done = _Change()
        if index is not None:
            self._worker_change(index, change, done)
        elif isinstance(change, Resolved):
            self._resolved(change, done)
        elif isinstance(change, Tripped):
            self._trip(change.outcomes, done)
        elif isinstance(change, Sweep):
            self._sweep(done)
        elif isinstance(change, Closing):
            self.closing = True
            self.handout.clear()  # at once, not one channel at a time as each worker stops
        elif not isinstance(change, Tick):
            raise TypeError(
                f"pool {self.name!r}: expected Resolved, Tick, Sweep, Tripped or Closing, "
                f"got {change!r}"
            )
        self._keep_cap(done)
        if self.handout.probes or any(o.probing for o in self.ejector.by_backend.values()):
            self._probe()
        move = placement.next_move(self, self._clock())
        if move is not None:
            self.moving = move.index
            self._go(move.index, move.to)
            self.records[move.index].order = self._dial(move.to, move.reason)
            done.orders.append(move.index)
        return FollowUps(
            done.reply,
            tuple(done.orders),
            done.joined,
            tuple(done.ejected),
            tuple(done.returned),
        )

    def _worker_change(self, index: int, change: object, done: _Change) -> None:
        """Worker ``index``'s transition, one branch per kind of change."""
        record = self.records[index]
        if isinstance(change, Attempting):
            self._forget_order(index)
            dial = self._connecting(index, record, done)
            if dial is not None:
                done.reply = Reply(dial=dial)
        elif isinstance(change, Refreshing):
            chosen = self._choose(index)
            if chosen is not None:
                self._go(index, chosen)
                done.reply = Reply(dial=self._dial(chosen, "max_age"))
        elif isinstance(change, AttemptFailed):
            self._failed(index)
            record.failures += 1
            record.last_failure = change.reason
            self._forget_order(index)
            if record.slot is None:  # a connect failed (a replacement's leaves it serving)
                self._set_state(record, Idle("connecting"), done)
            self._suspect(change.backend)
            others = placement.available(self, self._clock())
            retry = any(a != change.backend for a in others)
            done.reply = Reply(retry_now=retry, failures=record.failures)
        elif isinstance(change, Connected | Swapped):
            self._holds(index, record, change, done)
        elif isinstance(change, HealthChanged):
            self._health(index, record, change, done)
        elif isinstance(change, Disconnected):
            lost = record.slot if change.reason == "connection_lost" else None
            self._release(index, record, "disconnected", done)
            if lost is not None:
                self._suspect(lost.backend)
        elif isinstance(change, Stopped):
            if change.crash is not None:
                record.last_failure = change.crash
            self._release(index, record, "stopped" if change.crash is None else "crashed", done)
        elif isinstance(change, BackingOff):
            self._set_state(record, Idle("backing_off"), done)
        elif isinstance(change, Mocked):
            self.settled = True
            self._set_state(record, Mocking(), done)
        else:
            raise TypeError(f"pool {self.name!r}: expected a worker's change, got {change!r}")

    def _holds(
        self, index: int, record: _Record, change: Connected | Swapped, done: _Change
    ) -> None:
        """Worker ``index`` holds a new channel: connected (not handed out before its
        health is heard), or a replacement swapped in (handed out at once)."""
        old = record.slot
        outcomes = self.ejector.outcomes(change.backend, self._tripped)
        slot = Slot(index, change.channel, change.backend, self._ended, outcomes)
        if isinstance(change, Connected):
            self._set_state(record, Joining(slot), done)
        else:
            self.settled = True
            self._set_state(record, Serving(slot), done)
            record.health = change.health
            if old is not None:
                self._drain(old, done)
        self._forget_order(index)
        self._hold(index, change.backend)
        record.failures = 0
        record.last_failure = None
        record.connected_at = self._clock()
        backend = self.backends.get(change.backend)
        if backend is not None:
            backend.failing_until = None
            backend.backoff.reset()

    def _health(self, index: int, record: _Record, change: HealthChanged, done: _Change) -> None:
        """Worker ``index``'s channel may be handed out, or may not, as its health says."""
        slot = record.slot
        if slot is None:
            raise AssertionError(f"worker {index} reported {change!r} in state {record.state!r}")
        if change.serving:
            self.settled = True
        else:  # a channel its server refuses counts as failed, as in grpc's health checks
            self._failed(index)
        if change.status == "UNIMPLEMENTED" and not self.unimplemented_health_seen:
            self.unimplemented_health_seen = True
            done.reply = Reply(first_unimplemented=True)
        record.health = change.status
        if change.serving:
            self._set_state(record, Serving(slot), done)
            record.last_failure = None
        else:
            self._set_state(record, NotServing(slot, change.status or "NOT_SERVING"), done)
            record.last_failure = change.reason or f"the health check said {change.status}"

    def _release(self, index: int, record: _Record, phase: IdlePhase, done: _Change) -> None:
        """Worker ``index`` holds nothing now: its channel, if any, is closed by the worker."""
        slot = record.slot
        self._set_state(record, Idle(phase), done)
        record.health = record.connected_at = None
        self._forget_order(index)
        self._hold(index, None)
        if slot is not None:
            self._drain(slot, done)

    def _set_state(self, record: _Record, state: State, done: _Change) -> None:
        """Give ``record`` its new state; what is handed out follows it."""
        old = record.state
        record.state = state
        self.mocked += isinstance(state, Mocking) - isinstance(old, Mocking)
        if self.closing:
            return  # nothing is handed out any more
        same = isinstance(old, Serving) and isinstance(state, Serving) and old.slot is state.slot
        if same:
            return
        if isinstance(old, Serving) and self._out(old):
            self.handout.remove(old.slot)
        if isinstance(state, Serving) and self._out(state):
            self.handout.add(state.slot)
            done.joined = True

    # --- ejection -------------------------------------------------------------------------

    def _trip_here(self, outcomes: Outcomes) -> None:
        self.apply(None, Tripped(outcomes))

    def _in_service(self) -> int:
        """How many backends the cap on ejections counts: those the pool balances over,
        serving a channel or ejected. grpc counts every address of its channel, each of
        which has a connection; a pool smaller than its backends holds none to some,
        and ejecting by their number could take out every backend it serves."""
        serving = {slot.backend for slot in self.handout.slots}
        serving.update(o.backend for o in self.ejector.out())
        return len(serving)

    def _trip(self, outcomes: Outcomes, done: _Change) -> None:
        if self.closing or self.ejector.by_backend.get(outcomes.backend) is not outcomes:
            return  # stopping (its calls fail as the channels close), or forgotten since
        if outcomes.probing and not outcomes.consecutive:  # its probe answered
            if self.ejector.prove(outcomes):
                self._serve_backend(outcomes.backend, True, done)
            return
        ejected = self.ejector.trip(outcomes, self._in_service(), self._clock())
        if ejected is not None:
            self._eject(ejected, done)

    def _sweep(self, done: _Change) -> None:
        ejected, returned = self.ejector.sweep(self._in_service(), self._clock())
        for decided in ejected:
            self._eject(decided, done)
        for back in returned:
            done.returned.append(back)
            if not self.ejector.is_out(back.backend):  # else on probation: probed first
                self._serve_backend(back.backend, True, done)
        busy = {probe.backend for probe in self.handout.probes if probe.in_flight}
        for backend in self.ejector.settle_probes(self._clock(), busy):
            self._serve_backend(backend, True, done)
        keep = set(self.backends)
        keep.update(backend for backend, count in self.holding.items() if count)
        done.returned.extend(self.ejector.forget(keep, self._clock()))

    def _keep_cap(self, done: _Change) -> None:
        """Backends that left service may leave too many out: return the soonest due
        (asked only while one is out: counting those in service reads every channel)."""
        while not self.closing and next(iter(self.ejector.out()), None) is not None:
            back = self.ejector.over_cap(self._in_service(), self._clock())
            if back is None:
                return
            if not back.probation:  # news: it was ejected
                done.returned.append(back)
            self._serve_backend(back.backend, True, done)

    def _eject(self, ejected: Ejected, done: _Change) -> None:
        done.ejected.append(ejected)
        if not ejected.probation:  # else its channels were out already
            self._serve_backend(ejected.backend, False, done)

    def _probe(self) -> None:
        """One serving channel of each backend on probation takes one call at a time."""
        probing = {o.backend for o in self.ejector.by_backend.values() if o.probing}
        probes: dict[str, Slot] = {}
        if probing and not self.closing:
            for record in self.records:
                state = record.state
                if isinstance(state, Serving) and state.slot.backend in probing:
                    probes.setdefault(state.slot.backend, state.slot)
        chosen = tuple(probes.values())
        if chosen != self.handout.probes:
            self.handout.set_probes(chosen)

    def _serve_backend(self, backend: str, serve: bool, done: _Change) -> None:
        """Hand out the serving channels to ``backend`` (``serve``), or stop to."""
        if self.closing:
            return
        for record in self.records:
            state = record.state
            if isinstance(state, Serving) and state.slot.backend == backend:
                if serve:
                    self.handout.add(state.slot)
                    done.joined = True
                else:
                    self.handout.remove(state.slot)

    def _drain(self, slot: Slot, done: _Change) -> None:
        """``slot``'s channel left: the reporter closes it; its calls still count until
        the last ends (:meth:`_drained`)."""
        done.reply = Reply(close=(slot.channel,))
        if slot.in_flight:
            slot.drained = self._drained
            self.draining = {**self.draining, id(slot): slot}  # whole: status() reads it

    def _drained(self, slot: Slot) -> None:
        """The last call on a channel that left ended: the table lets go of it."""
        slot.drained = None
        self.draining = {k: s for k, s in self.draining.items() if s is not slot}

    def _failed(self, index: int) -> None:
        """Worker ``index`` failed: an attempt, or its health check. Once every worker
        has, and none serves, the pool is past its start (calls fail fast)."""
        self._failures_seen.add(index)
        if len(self._failures_seen) == len(self.records):
            self.settled = True

    def _go(self, index: int, backend: str | None) -> None:
        """Worker ``index`` is now connecting to ``backend`` (None: to nothing)."""
        self._count(index, -1)
        if backend is None:
            self.going.pop(index, None)
        else:
            self.going[index] = backend
        self._count(index, +1)

    def _hold(self, index: int, backend: str | None) -> None:
        """Worker ``index`` now holds a channel to ``backend`` (None: holds none)."""
        self._count(index, -1)
        previous = self.held.pop(index, None)
        if previous is not None:
            self.holding[previous] -= 1
        if backend is not None:
            self.held[index] = backend
            self.holding[backend] += 1
        self._count(index, +1)

    def _count(self, index: int, step: int) -> None:
        """Count worker ``index`` (or stop counting it) where it is placed: where it is
        going, else where it is."""
        where = self.going.get(index) or self.held.get(index)
        if where is not None:
            self.placed[where] += step

    def _forget_order(self, index: int) -> None:
        """Worker ``index`` is not going anywhere now (its order is done or stale)."""
        self.records[index].order = None
        self._go(index, None)
        if self.moving == index:
            self.moving = None

    def _choose(self, index: int) -> str | None:
        self._turn += 1
        return placement.choose(self, index, self._clock(), self._turn)

    def _suspect(self, address: str) -> None:
        """``address`` refused an attempt or lost a connection: leave it alone a while.

        Its wait grows once per wait, not once per worker: several workers refused at the
        same moment (a backend restarting) must not push it out of use for the longest
        backoff while it is back already.
        """
        backend = self.backends.get(address)
        if backend is None:
            return
        now = self._clock()
        if backend.failing_until is None or backend.failing_until <= now:
            backend.failing_until = now + backend.backoff.next()

    def _resolved(self, change: Resolved, done: _Change) -> None:
        addresses = change.addresses
        if change.failure is not None:
            self.resolve_failure = change.failure
            if self.backends:
                return  # keep the backends known last
            # Never found any: the target as written stands in as the one backend, so
            # that grpc's own attempt says why (an unresolvable name, say).
            addresses = (self._config.address,)
        else:
            self.resolve_failure = None
        wanted = list(dict.fromkeys(addresses))
        self.backends = {
            a: self.backends.get(a) or Backend(copy.copy(self._backend_backoff)) for a in wanted
        }
        self._dials = {a: self._dials.get(a) or self._new_dial(a) for a in wanted}
        for index, record in enumerate(self.records):
            if record.state == Connecting(None):  # waiting for a backend: now there is one
                record.order = self._connecting(index, record, done)
                if record.order is not None:
                    done.orders.append(index)

    def _connecting(self, index: int, record: _Record, done: _Change) -> Dial | None:
        """Worker ``index`` connects to the backend chosen now: where to (None: none known)."""
        chosen = self._choose(index)
        self._set_state(record, Connecting(chosen), done)
        if chosen is None:
            return None
        self._go(index, chosen)
        return self._dial(chosen)

    def _new_dial(self, backend: str) -> Dial:
        return Dial(backend, dial_config(self._config, backend))

    def _dial(self, backend: str, reason: DialReason = "connect") -> Dial:
        dial = self._dials.get(backend) or self._new_dial(backend)
        if reason == "connect":
            return dial
        return Dial(dial.backend, dial.config, reason)

    def stop(self) -> None:
        """The pool stopped: it holds nothing any more (no channel is left referenced)."""
        for record in self.records:
            if not isinstance(record.state, Idle):
                record.state = Idle("stopped")
            record.order = None
        self.held.clear()
        self.going.clear()
        self.placed.clear()
        self.holding.clear()
        for slot in self.draining.values():
            slot.drained = None
        self.draining = {}
        self.moving = None
        self.mocked = 0
        self.handout.clear()

    # --- what must always hold -----------------------------------------------------------

    def check(self) -> None:
        """Raise AssertionError unless the table agrees with itself (for tests)."""
        for index, record in enumerate(self.records):
            slot = record.slot
            if slot is None:
                assert index not in self.held, (index, record)
            else:
                assert slot.index == index, (index, slot)
                assert self.held.get(index) == slot.backend, (index, record, self.held)
                assert slot.in_flight >= 0, slot
            if isinstance(record.state, Connecting) and record.state.backend is not None:
                assert self.going.get(index) == record.state.backend, (index, record)
            if index in self.going:
                assert isinstance(record.state, Connecting | Joining | Serving | NotServing)
        serving = tuple(
            r.state.slot
            for r in self.records
            if isinstance(r.state, Serving) and self._out(r.state)
        )
        if self.closing:
            serving = ()
        assert self.handout.slots == serving, (self.handout.slots, serving)
        for probe in self.handout.probes:
            assert self.ejector.by_backend[probe.backend].probing, probe
            assert isinstance(self.records[probe.index].state, Serving), probe
            assert self.records[probe.index].slot is probe, probe
        probed = [probe.backend for probe in self.handout.probes]
        assert len(probed) == len(set(probed)), probed
        assert self.handout.channels == tuple(s.channel for s in serving)
        placed = Counter(self.going.get(i) or a for i, a in self.held.items())
        placed.update(a for i, a in self.going.items() if i not in self.held)
        assert +self.placed == placed, (self.placed, placed)
        assert +self.holding == Counter(self.held.values()), (self.holding, self.held)
        channels = [s.channel for s in self.slots()]
        assert len(channels) == len({id(c) for c in channels}), "a channel in two slots"
        assert all(s.in_flight > 0 for s in self.draining.values()), self.draining
        if self.moving is not None:
            assert self.moving in self.going, self.moving
            assert self.moving in self.held, self.moving
        assert self.mocked == sum(isinstance(r.state, Mocking) for r in self.records)
        if not self.closing:
            assert self.connected_count() == len(list(self.connected()))


def backends_served(table: PoolTable) -> Mapping[str, int]:
    """Channels handed out now per backend; every known backend is listed."""
    counts = dict.fromkeys(table.backends, 0)
    for slot in table.handout.slots:
        counts[slot.backend] = counts.get(slot.backend, 0) + 1
    return counts
