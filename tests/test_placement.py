"""Placement, the pool's decisions about backends, driven with a fake clock (no network)."""

from __future__ import annotations

from collections import Counter

from conngrpc import ExponentialBackoff
from conngrpc.pool.placement import Move, Placement
from tests._probe import FakeClock

A, B, C = "127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"


def placement(*backends: str) -> tuple[Placement, FakeClock]:
    clock = FakeClock()
    chosen = Placement(ExponentialBackoff(min=1.0, max=30.0, jitter=0), clock=clock)
    chosen.set_backends(backends)
    return chosen, clock


def connect_all(chosen: Placement, workers: int) -> Counter[str]:
    for index in range(workers):
        backend = chosen.pick(index)
        assert backend is not None
        chosen.holds(index, backend)
    return Counter(chosen.connected.values())


def test_workers_connecting_at_once_spread_evenly() -> None:
    chosen, _ = placement(A, B, C)
    assert sorted(connect_all(chosen, 7).values()) == [2, 2, 3]


def test_a_refusing_backend_is_skipped_while_another_accepts() -> None:
    chosen, clock = placement(A, B)
    first = chosen.pick(0)
    assert first is not None
    other = B if first == A else A
    assert chosen.failed(0, first, "refused") is True  # the other is worth a try at once
    assert chosen.pick(0) == other
    clock.now += 1.0
    assert first in chosen.available()  # tried again after its wait


def test_many_workers_refused_at_once_make_one_wait_not_many() -> None:
    chosen, clock = placement(A, B)
    for index in range(6):  # a restarting backend refuses every worker at once
        chosen.pick(index)
        chosen.failed(index, A, "refused")
    assert chosen.next_retry_at() == clock() + 1.0  # the first wait, not 2**6
    clock.now += 1.0
    chosen.failed(0, A, "refused again")
    assert chosen.next_retry_at() == clock() + 2.0  # it grows once per wait


def test_a_backend_that_lost_a_connection_is_suspect_for_new_ones() -> None:
    chosen, _ = placement(A, B)
    connect_all(chosen, 2)
    lost = chosen.connected[0]
    chosen.released(0)
    chosen.suspect(lost, "a connection to it was lost")
    assert lost not in chosen.available()
    assert chosen.pick(0) != lost  # the survivor's backend, though it holds one already


def test_when_every_backend_is_failing_the_least_loaded_is_tried_anyway() -> None:
    chosen, _ = placement(A, B)
    chosen.failed(0, A, "refused")
    chosen.failed(0, B, "refused")
    assert chosen.available() == []
    assert chosen.pick(0) in (A, B)


def test_a_vanished_backend_loses_its_channels_first_one_at_a_time() -> None:
    chosen, _ = placement(A, B, C)
    connect_all(chosen, 6)
    chosen.set_backends([A, B])
    move = chosen.next_move()
    assert move is not None
    assert move.reason == "backend_removed"
    assert chosen.connected[move.index] == C
    assert chosen.next_move() is None  # one at a time
    chosen.holds(move.index, move.to)
    assert chosen.next_move() is not None


def test_a_backend_with_two_fewer_channels_gets_one_moved_to_it() -> None:
    chosen, _ = placement(A, B)
    for index in range(4):
        chosen.pending.pop(index, None)
        chosen.holds(index, A)
    move = chosen.next_move()
    assert move == Move(3, B, "rebalance")
    chosen.holds(3, B)
    move = chosen.next_move()
    assert move is not None
    chosen.holds(move.index, move.to)
    assert sorted(Counter(chosen.connected.values()).values()) == [2, 2]
    assert chosen.next_move() is None  # even now


def test_an_uneven_spread_by_one_stays_put() -> None:
    chosen, _ = placement(A, B)
    connect_all(chosen, 3)
    assert chosen.next_move() is None
