"""The hand-out's picks: least loaded (the default), round_robin and least_request.

Slots over stand-in channels whose connectivity a test sets; the random draws of the
picks that draw are scripted or seeded (``conngrpc.pool.handout._random``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest

from conngrpc.pool import handout as handout_module
from conngrpc.pool.admission import Admission
from conngrpc.pool.ejection import REFUSED_STREAM, Outcomes, default_rules
from conngrpc.pool.handout import EXACT_PICK_UP_TO, LIMIT_PROBE_SECONDS, HandOut, Slot
from conngrpc.pool.service_config import Pick
from tests.test_ejection import Finished

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING


class Channel:
    """Stands in for a grpc.aio channel: the picks ask only its state."""

    def __init__(self) -> None:
        self.state = READY

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state


def handout(loads: Sequence[int], pick: Pick = "least_loaded", choice_count: int = 2) -> HandOut:
    """A hand-out of ``len(loads)`` READY slots, slot i with ``loads[i]`` calls in flight."""
    out = HandOut(pick, choice_count)
    for index, load in enumerate(loads):
        backend = f"127.0.0.{index + 1}:1"
        outcomes = Outcomes(backend, default_rules(), lambda _: None)
        slot = Slot(index, Channel(), backend, lambda: None, outcomes)  # type: ignore[arg-type]
        slot.in_flight = load
        out.add(slot)
    return out


def picks(out: HandOut, times: int) -> list[int | None]:
    return [None if (slot := out.pick()) is None else slot.index for _ in range(times)]


def set_state(out: HandOut, index: int, state: grpc.ChannelConnectivity) -> None:
    channel = out.slots[index].channel
    assert isinstance(channel, Channel)
    channel.state = state


class Draws:
    """The picks' random draws: scripted values, or a seeded generator's; each kept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, source: Callable[[], float]) -> None:
        self.source = source
        self.drawn: list[float] = []
        monkeypatch.setattr(handout_module, "_random", self)

    def __call__(self) -> float:
        value = self.source()
        self.drawn.append(value)
        return value


def scripted(values: Sequence[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# --- round_robin -------------------------------------------------------------------------------


def test_round_robin_takes_turns_whatever_the_load() -> None:
    out = handout([0, 50, 3, 9], "round_robin")
    assert picks(out, 8) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_round_robin_skips_a_channel_not_ready() -> None:
    out = handout([0, 0, 0, 0], "round_robin")
    set_state(out, 1, CONNECTING)
    taken = picks(out, 9)
    assert Counter(taken) == {0: 3, 2: 3, 3: 3}
    assert all(a != b for a, b in itertools.pairwise(taken))  # still in turn
    set_state(out, 1, READY)  # skipped, not taken out
    assert 1 in picks(out, 4)


def test_round_robin_with_nothing_ready_gives_none() -> None:
    out = handout([0, 0], "round_robin")
    for index in range(2):
        set_state(out, index, CONNECTING)
    assert picks(out, 3) == [None] * 3
    assert HandOut("round_robin").pick() is None


# --- least_request -----------------------------------------------------------------------------


@pytest.mark.parametrize("choice_count", [2, 3, 5])
def test_least_request_draws_choice_count_and_takes_the_least_loaded(
    monkeypatch: pytest.MonkeyPatch, choice_count: int
) -> None:
    loads = [4, 0, 7, 2, 2, 9, 1, 3, 5, 6, 1, 8]
    out = handout(loads, "least_request", choice_count)
    draws = Draws(monkeypatch, random.Random(1234).random)
    for _ in range(200):
        before = len(draws.drawn)
        slot = out.pick()
        drawn = [int(d * len(loads)) for d in draws.drawn[before:]]
        assert len(drawn) == choice_count
        assert slot is not None
        least = min(loads[i] for i in drawn)
        assert slot.index == next(i for i in drawn if loads[i] == least)  # ties: the first


def test_least_request_spreads_by_load_with_a_seeded_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of two drawn among four, the idle one wins whenever it is drawn (7 in 16)."""
    out = handout([0, 5, 5, 5], "least_request", 2)
    Draws(monkeypatch, random.Random(99).random)
    share = picks(out, 1600).count(0) / 1600
    assert 0.40 < share < 0.48  # 7/16 = 0.4375; deterministic with this seed


def test_least_request_falls_back_to_the_least_loaded_ready_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = handout([0, 3, 1, 2], "least_request", 2)
    set_state(out, 0, CONNECTING)
    Draws(monkeypatch, scripted([0.0, 0.0]))  # slot 0 twice: not READY
    slot = out.pick()
    assert slot is not None
    assert slot.index == 2


def test_least_request_with_nothing_to_pick_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = Draws(monkeypatch, scripted([]))
    assert HandOut("least_request").pick() is None
    assert draws.drawn == []


# --- least_loaded, the default -----------------------------------------------------------------


def test_the_default_pick_is_least_loaded() -> None:
    out = HandOut()
    assert out.pick == out.least_loaded


def test_least_loaded_takes_the_fewest_calls_in_flight() -> None:
    out = handout([3, 1, 4, 1, 5, 9, 2, 6])
    assert len(out.slots) == EXACT_PICK_UP_TO  # the exact scan
    assert set(picks(out, 10)) == {1, 3}  # the two least loaded, taking turns


def test_least_loaded_ties_take_turns() -> None:
    out = handout([2, 2, 2])
    assert set(picks(out, 3)) == {0, 1, 2}


def test_least_loaded_skips_a_channel_not_ready() -> None:
    out = handout([0, 4, 1])
    set_state(out, 0, CONNECTING)
    assert set(picks(out, 5)) == {2}
    for index in range(3):
        set_state(out, index, CONNECTING)
    assert picks(out, 2) == [None, None]


def test_least_loaded_above_the_exact_size_takes_the_less_loaded_of_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = [5, 1, 7, 3, 0, 8, 2, 6, 4]
    assert len(loads) > EXACT_PICK_UP_TO
    out = handout(loads)
    draws = Draws(monkeypatch, scripted([0.0, 0.2, 0.5, 0.3, 0.85, 0.1]))
    assert picks(out, 3) == [1, 4, 0]  # slots 0 and 1: 5 vs 1; 4 and 2: 0 vs 7; 7 and 0: 6 vs 5
    assert len(draws.drawn) == 6


# --- the stream cap a slot learns from its server ----------------------------------------------


class _RefusedStatus:
    def code(self) -> int:
        return grpc.StatusCode.UNAVAILABLE.value[0]

    def details(self) -> str:
        return f"Stream removed (RST_STREAM (Received {REFUSED_STREAM}))"


class Refused:
    """Stands in for a finished call its server refused, sent while its slot carried
    ``carrying`` others (as Admission.track marks each call)."""

    def __init__(self, carrying: int) -> None:
        self.conngrpc_carrying = carrying
        self._cython_call = type("_Call", (), {"_status": _RefusedStatus()})()


def test_a_refusal_teaches_a_slot_its_servers_cap_and_is_no_failure() -> None:
    out = handout([12])
    slot = out.slots[0]
    assert slot.limit is None
    slot.done(Refused(carrying=10))
    assert slot.limit == 10
    assert slot.outcomes.failures == 0  # not the backend's failure
    assert slot.in_flight == 11
    slot.done(Refused(carrying=7))  # below the cap learnt: a step down, not to 7
    assert slot.limit == 9
    slot.done(Refused(carrying=30))  # sent before the cap was known: nothing learnt
    assert slot.limit == 9


def test_a_full_slot_whose_calls_answer_asks_its_server_for_one_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(handout_module.time, "monotonic", lambda: now[0])
    out = handout([5])
    slot = out.slots[0]
    slot.done(Refused(carrying=4))
    assert slot.limit == 4
    slot.in_flight = 4  # full
    slot.done(Finished(grpc.StatusCode.OK))
    assert slot.limit == 4  # not before LIMIT_PROBE_SECONDS
    now[0] += LIMIT_PROBE_SECONDS
    slot.in_flight = 4
    slot.done(Finished(grpc.StatusCode.OK))
    assert slot.limit == 5
    slot.in_flight = 1  # not full: nothing to ask
    now[0] += 10 * LIMIT_PROBE_SECONDS
    slot.done(Finished(grpc.StatusCode.OK))
    assert slot.limit == 5


def test_a_call_with_no_attributes_of_its_own_is_counted_all_the_same() -> None:
    # Admission.track marks each call with what its slot carried; a stand-in call with
    # __slots__ (a test's, a mock channel's) cannot take the mark, and is counted anyway.
    class Slotted:
        __slots__ = ("ended",)

        def __init__(self) -> None:
            self.ended: list[object] = []

        def add_done_callback(self, callback: Any) -> None:
            self.ended.append(callback)

    out = handout([0])
    slot = out.slots[0]
    loop = asyncio.new_event_loop()  # Admission keeps it, for calls that wait (none here)
    try:
        admission = Admission(out, None, loop)
        call = Slotted()
        assert admission.track(slot, call) is call
        assert (slot.in_flight, admission.in_flight) == (1, 1)
        assert call.ended == [slot.done]
    finally:
        loop.close()
