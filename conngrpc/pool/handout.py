"""The hand-out: the channels a pool serves now, round-robin or least loaded.

The pool's table publishes the serving channels here, as tuples replaced whole at every
change, so a hand-out reads a consistent snapshot without a lock. ``get_channel`` takes
them round-robin (:meth:`HandOut.next_ready`); the PooledChannel takes the one with the
fewest calls in flight (:meth:`HandOut.pick`).
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .ejection import refused, status_code

if TYPE_CHECKING:
    from .ejection import Outcomes
    from .service_config import Pick

__all__ = ["EXACT_PICK_UP_TO", "LIMIT_PROBE_SECONDS", "HandOut", "Slot"]

_READY = grpc.ChannelConnectivity.READY

#: Up to this many channels, the least-loaded pick scans them all; above, it compares
#: two picked at random (the power of two choices), which costs the same at any size.
EXACT_PICK_UP_TO = 8

#: How often a slot at the stream cap it learnt from its server, whose calls answer,
#: takes one call more: the server's cap may have risen (a refusal lowers it again).
LIMIT_PROBE_SECONDS = 0.5

_random = random.Random().random


class Slot:
    """A connected channel of the pool and the calls in flight on it (through the
    PooledChannel).

    A call counts against the slot it started on until grpc says it is done. A slot
    lives as long as its channel is held and, once the channel has left, while calls
    started on it still run (the table keeps it among the draining ones): a channel that
    rejoins (NOT_SERVING, then SERVING again) keeps its count, and the pick sees its calls.
    """

    __slots__ = (
        "backend",
        "callables",
        "channel",
        "drained",
        "ended",
        "in_flight",
        "index",
        "limit",
        "outcomes",
        "probe_at",
    )

    def __init__(
        self,
        index: int,
        channel: grpc.aio.Channel,
        backend: str,
        ended: Callable[[], None],
        outcomes: Outcomes,
    ) -> None:
        self.index = index
        self.channel = channel
        self.backend = backend
        #: how the calls on its backend ended, which may eject the backend
        self.outcomes = outcomes
        self.in_flight = 0
        #: what runs when one of its calls ends: the pool's admission counts it
        self.ended = ended
        #: once its channel left with calls running: what runs when the last one ends
        self.drained: Callable[[Slot], None] | None = None
        #: the channel's own multicallables, by what makes one (kind, method, serializers)
        self.callables: dict[tuple[object, ...], Any] = {}
        #: the stream cap learnt from its server: it refused a stream while the slot
        #: carried this many calls; None until one does. A full slot whose calls answer
        #: takes one more every LIMIT_PROBE_SECONDS (``probe_at``, monotonic): the
        #: server's cap may have risen, and a refusal says where it is.
        self.limit: int | None = None
        self.probe_at = 0.0

    def __repr__(self) -> str:
        return f"<Slot {self.index} {self.backend} in_flight={self.in_flight}>"

    def _refused(self, carrying: int) -> None:
        """Its server refused a call before it began: it had its cap of streams open
        then, at most as many as the slot carried when the call went (``carrying``: some
        may have ended before it came). The first refusal sets the cap learnt; each later
        one below it lowers it a step."""
        carrying = max(1, carrying)
        limit = self.limit
        if limit is None:
            self.limit = carrying
        elif carrying < limit:  # one step down: a server slow to free its streams
            self.limit = max(carrying, limit - 1)  # refuses below its cap now and then
        self.probe_at = time.monotonic() + LIMIT_PROBE_SECONDS

    def _answered(self, code: int | None) -> None:
        """A call ended with status ``code`` (its server took it): count it for ejection,
        and at the cap learnt, while its calls answer, ask for one more now and then."""
        self.outcomes.count(code)
        limit = self.limit
        if limit is not None and self.in_flight >= limit - 1:
            now = time.monotonic()
            if now >= self.probe_at:  # full, and answering: ask for one more
                self.limit = limit + 1
                self.probe_at = now + LIMIT_PROBE_SECONDS

    def done(self, call: object = None) -> None:
        """A call on this slot ended (grpc's done callback): count how, before its room
        goes to a waiting call (which must not go to a backend it just ejected).

        A call its server refused before it began (at the server's stream cap) is no
        failure of the backend: the slot learns the cap instead.
        """
        self.in_flight -= 1
        if call is not None:
            code = status_code(call)
            if refused(call, code):
                self._refused(getattr(call, "conngrpc_carrying", self.in_flight))
            else:
                self._answered(code)
        if self.drained is not None and not self.in_flight:
            self.drained(self)
        self.ended()

    def finish(self, code: int | None, was_refused: bool, carrying: int) -> None:
        """:meth:`done`, for a call whose status was read already (``conngrpc.sync``'s
        calls: grpc's sync calls keep it elsewhere); ``carrying``: the calls the slot
        carried when it went."""
        self.in_flight -= 1
        if was_refused:
            self._refused(carrying)
        else:
            self._answered(code)
        if self.drained is not None and not self.in_flight:
            self.drained(self)
        self.ended()


def _index(slot: Slot) -> int:
    return slot.index


def _least_loaded(slots: tuple[Slot, ...], start: int) -> Slot:
    """The slot with the fewest calls in flight, scanning from ``start`` (ties take turns)."""
    best = slots[start]
    for slot in slots[start + 1 :] + slots[:start]:
        if slot.in_flight < best.in_flight:
            best = slot
    return best


class HandOut:
    """The serving channels in index order, and the two ways to take one."""

    __slots__ = (
        "_channels",
        "_choices",
        "_mode",
        "_slots",
        "channels",
        "counter",
        "pick",
        "probes",
        "slots",
    )

    def __init__(self, pick: Pick = "least_loaded", choice_count: int = 2) -> None:
        self.slots: tuple[Slot, ...] = ()
        self.channels: tuple[grpc.aio.Channel, ...] = ()
        self.counter = itertools.count()
        self._slots: list[Slot] = []  # what slots is a copy of, kept in index order
        self._channels: list[grpc.aio.Channel] = []
        self._choices = choice_count
        #: the pick the pool's service config names
        self._mode: Callable[[], Slot | None] = {
            "least_loaded": self.least_loaded,
            "round_robin": self.round_robin,
            "least_request": self.least_request,
        }[pick]
        #: the serving channel a PooledChannel call goes to now that is READY, or None:
        #: the mode's pick, or a probe first while a backend is on probation
        self.pick = self._mode
        #: one channel of each backend on probation, each taking one call at a time
        self.probes: tuple[Slot, ...] = ()

    def __repr__(self) -> str:
        return f"<HandOut {list(self.slots)}>"

    def add(self, slot: Slot) -> None:
        """Serve ``slot`` from now on, in its index's place."""
        where = bisect.bisect_left(self._slots, slot.index, key=_index)
        self._slots.insert(where, slot)
        self._channels.insert(where, slot.channel)
        self._publish()

    def remove(self, slot: Slot) -> None:
        """Serve ``slot`` no more."""
        where = bisect.bisect_left(self._slots, slot.index, key=_index)
        if self._slots[where] is not slot:
            raise AssertionError(f"{slot!r} is not handed out: {self._slots!r}")
        del self._slots[where], self._channels[where]
        self._publish()

    def clear(self) -> None:
        """Serve nothing."""
        self._slots.clear()
        self._channels.clear()
        self._publish()
        self.set_probes(())

    def set_probes(self, probes: tuple[Slot, ...]) -> None:
        """Send a call to each of ``probes`` whenever it has none in flight (a backend
        back on probation), before picking among the channels handed out. Without
        probes the pick is the mode's own, at no cost."""
        self.probes = probes
        self.pick = self._probe_first if probes else self._mode

    def _probe_first(self) -> Slot | None:
        for probe in self.probes:
            if not probe.in_flight and probe.channel.get_state() is _READY:
                return probe
        return self._mode()

    def pick_avoiding(self, tried: list[Slot]) -> Slot | None:
        """The serving channel for a call's next attempt, READY, or None: the least loaded
        on a backend the call has not tried, else on a channel it has not tried, else
        the pick (it tried them all)."""
        if not tried:
            return self.pick()
        backends = {slot.backend for slot in tried}
        slots = self.slots
        size = len(slots)
        start = next(self.counter) % size if size else 0
        other_backend: Slot | None = None
        other_channel: Slot | None = None
        for slot in slots[start:] + slots[:start]:  # from a turning start: ties take turns
            if slot.channel.get_state() is not _READY:
                continue
            if slot.backend not in backends:
                if other_backend is None or slot.in_flight < other_backend.in_flight:
                    other_backend = slot
            elif slot not in tried and (
                other_channel is None or slot.in_flight < other_channel.in_flight
            ):
                other_channel = slot
        return other_backend or other_channel or self.pick()

    def _publish(self) -> None:
        # Copies in C, at most a few microseconds for a thousand channels: the hand-out
        # reads them without a lock, and they never change under it.
        self.slots = tuple(self._slots)
        self.channels = tuple(self._channels)

    def next_ready(self) -> grpc.aio.Channel | None:
        """The next serving channel that is READY, round-robin; None when none is.

        A channel found not READY is skipped, not taken out: its connection broke and
        grpc knows it, but the worker's notice of it waits its turn on the event loop
        (tens of milliseconds under load), and calls on it would fail meanwhile. The
        worker alone takes a channel out: after a GOAWAY grpc may reopen the same
        channel before the worker looks, and the channel, READY again, must be handed
        out again.
        """
        channels = self.channels
        size = len(channels)
        for _ in range(size):
            channel = channels[next(self.counter) % size]
            if channel.get_state() is _READY:
                return channel
        return None

    def least_loaded(self) -> Slot | None:
        """The serving channel with the fewest calls in flight that is READY, or None.

        Up to EXACT_PICK_UP_TO channels, a scan from a turning start (ties take turns);
        above, the less loaded of two picked at random. Should the choice not be READY,
        the least loaded of those that are (skipped, as in :meth:`next_ready`).
        """
        slots = self.slots
        size = len(slots)
        if size == 1:
            best = slots[0]
        elif size == 0:
            return None
        elif size <= EXACT_PICK_UP_TO:
            best = _least_loaded(slots, next(self.counter) % size)
        else:
            first, second = slots[int(_random() * size)], slots[int(_random() * size)]
            best = first if first.in_flight <= second.in_flight else second
        return best if best.channel.get_state() is _READY else self._least_loaded_ready()

    def _least_loaded_ready(self) -> Slot | None:
        """The least loaded of the READY slots (the choice was not READY), or None."""
        ready = tuple(slot for slot in self.slots if slot.channel.get_state() is _READY)
        return _least_loaded(ready, next(self.counter) % len(ready)) if ready else None

    def round_robin(self) -> Slot | None:
        """The next serving channel that is READY, in turn (``round_robin``), or None."""
        slots = self.slots
        size = len(slots)
        for _ in range(size):
            slot = slots[next(self.counter) % size]
            if slot.channel.get_state() is _READY:
                return slot
        return None

    def least_request(self) -> Slot | None:
        """The least loaded of ``choiceCount`` serving channels picked at random that is
        READY (``least_request_experimental``), or None."""
        slots = self.slots
        size = len(slots)
        if not size:
            return None
        best = slots[int(_random() * size)]
        for _ in range(self._choices - 1):
            other = slots[int(_random() * size)]
            if other.in_flight < best.in_flight:
                best = other
        return best if best.channel.get_state() is _READY else self._least_loaded_ready()
