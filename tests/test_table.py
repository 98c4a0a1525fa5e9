"""The pool's table: every transition a worker or the resolver reports, with a fake clock.

No network and no event loop: the table is synchronous, so each test reports changes
and reads what the table decided (replies, orders, the hand-out). ``check()`` runs
after every change: the table must always agree with itself.
"""

from __future__ import annotations

from collections import Counter

import grpc
import pytest

from conngrpc import ChannelConfig, ExponentialBackoff
from conngrpc.channel.changes import (
    AttemptFailed,
    Attempting,
    BackingOff,
    Change,
    Connected,
    Disconnected,
    HealthChanged,
    Mocked,
    Refreshing,
    Stopped,
    Swapped,
)
from conngrpc.pool.ejection import Outcomes, Returned, Rules, rules_from
from conngrpc.pool.handout import HandOut, Slot
from conngrpc.pool.placement import next_retry_at
from conngrpc.pool.service_config import FailurePercentageEjection, OutlierDetection
from conngrpc.pool.table import (
    Closing,
    Connecting,
    FollowUps,
    Idle,
    Joining,
    NotServing,
    PoolTable,
    Resolved,
    Serving,
    Sweep,
    Tick,
    Tripped,
)
from tests._probe import FakeClock
from tests.test_ejection import Finished

A, B, C, D = "127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"


class Channel:
    """Stands in for a grpc.aio channel: the table only keeps and compares them (the
    hand-out asks its state)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"<Channel {self.backend}>"

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY


class Table:
    """A table of ``size`` records over ``backends``, and helpers that report for workers.

    A backend that fails enough calls in a row is reported as the runtime reports it
    (``Tripped``, by :meth:`end_calls`), so that a test sees the follow-ups."""

    def __init__(self, size: int, *backends: str, rules: Rules | None = None) -> None:
        self.clock = FakeClock()
        self.ended = 0
        self.tripped: list[Outcomes] = []
        self.table = PoolTable(
            "pool",
            size,
            ChannelConfig("fleet:1"),
            HandOut(),
            self._ended,
            ExponentialBackoff(min=1.0, max=30.0, jitter=0),
            clock=self.clock,
            rules=rules,
            tripped=self.tripped.append,
        )
        if backends:
            self.apply(None, Resolved(backends))

    def _ended(self) -> None:
        self.ended += 1

    def apply(
        self, index: int | None, change: Change | Resolved | Tick | Sweep | Tripped | Closing
    ) -> FollowUps:
        follow = self.table.apply(index, change)
        self.table.check()
        return follow

    def connect(self, index: int) -> Channel:
        """Worker ``index`` connects where the table says and is handed out."""
        dial = self.apply(index, Attempting()).reply.dial
        assert dial is not None
        channel = Channel(dial.backend)
        self.apply(index, Connected(channel, dial.backend))
        self.apply(index, HealthChanged(serving=True))
        return channel

    def held(self) -> Counter[str]:
        return Counter(self.table.held.values())

    def slots(self, backend: str) -> list[Slot]:
        """The held slots on ``backend``."""
        return [
            slot
            for r in self.table.records
            if (slot := r.slot) is not None and slot.backend == backend
        ]

    def end_calls(self, backend: str, code: grpc.StatusCode, times: int = 1) -> list[FollowUps]:
        """``times`` calls on ``backend``'s first slot end with ``code``, as a PooledChannel
        call's done callback ends them; the follow-ups of each ``Tripped`` reported."""
        slot = self.slots(backend)[0]
        follows = []
        for _ in range(times):
            slot.in_flight += 1
            slot.done(Finished(code))
            self.table.check()
            while self.tripped:
                follows.append(self.apply(None, Tripped(self.tripped.pop(0))))
        return follows

    def eject(self, backend: str) -> FollowUps:
        """``backend`` fails five calls in a row: the default ejects it."""
        (*_, follow) = self.end_calls(backend, grpc.StatusCode.UNAVAILABLE, 5)
        assert backend in self.table.ejected(), follow
        return follow

    def sweep(self, after: float = 1.0) -> FollowUps:
        self.clock.now += after
        return self.apply(None, Sweep())

    def handed_out(self) -> list[str]:
        """The backend of each channel handed out, in index order."""
        return [slot.backend for slot in self.table.handout.slots]

    def orders(self) -> dict[int, tuple[str, str]]:
        return {
            i: (order.backend, order.reason)
            for i in range(len(self.table.records))
            if (order := self.table.order(i)) is not None
        }


# --- placement ---------------------------------------------------------------------------


def test_workers_connecting_at_once_spread_evenly() -> None:
    pool = Table(7, A, B, C)
    for index in range(7):
        pool.connect(index)
    assert sorted(pool.held().values()) == [2, 2, 3]
    assert len(pool.table.handout.slots) == 7


def test_a_refusing_backend_is_skipped_while_another_accepts() -> None:
    pool = Table(1, A, B)
    first = pool.apply(0, Attempting()).reply.dial
    assert first is not None
    other = B if first.backend == A else A
    failed = pool.apply(0, AttemptFailed(first.backend, "refused"))
    assert failed.reply.retry_now  # the other is worth a try at once
    assert failed.reply.failures == 1
    again = pool.apply(0, Attempting()).reply.dial
    assert again is not None
    assert again.backend == other
    pool.clock.now += 1.0
    assert next_retry_at(pool.table, pool.clock()) is None  # its wait is over


def test_many_workers_refused_at_once_make_one_wait_not_many() -> None:
    pool = Table(6, A, B)
    now = pool.clock()
    for index in range(6):  # a restarting backend refuses every worker at once
        pool.apply(index, Attempting())
        pool.apply(index, AttemptFailed(A, "refused"))
    assert next_retry_at(pool.table, now) == now + 1.0  # the first wait, not 2**6
    pool.clock.now += 1.0
    pool.apply(0, AttemptFailed(A, "refused again"))
    assert next_retry_at(pool.table, pool.clock()) == pool.clock() + 2.0  # grows once a wait


def test_a_backend_that_lost_a_connection_is_suspect_for_new_ones() -> None:
    pool = Table(2, A, B)
    lost = pool.connect(0)
    pool.connect(1)
    pool.apply(0, Disconnected("connection_lost"))
    dial = pool.apply(0, Attempting()).reply.dial
    assert dial is not None
    assert dial.backend != lost.backend  # the survivor's backend, though it holds one already


def test_a_channel_shut_down_leaves_its_backend_in_good_standing() -> None:
    pool = Table(1, A)
    pool.connect(0)
    pool.apply(0, Disconnected("shutdown"))
    assert next_retry_at(pool.table, pool.clock()) is None


def test_when_every_backend_is_failing_the_least_loaded_is_tried_anyway() -> None:
    pool = Table(1, A, B)
    pool.apply(0, AttemptFailed(A, "refused"))
    assert not pool.apply(0, AttemptFailed(B, "refused")).reply.retry_now
    dial = pool.apply(0, Attempting()).reply.dial
    assert dial is not None
    assert dial.backend in (A, B)


def test_a_vanished_backend_loses_its_channels_first_one_at_a_time() -> None:
    pool = Table(6, A, B, C)
    for index in range(6):
        pool.connect(index)
    follow = pool.apply(None, Resolved((A, B)))
    (moving,) = follow.orders
    assert pool.table.held[moving] == C
    assert pool.orders() == {moving: (pool.orders()[moving][0], "backend_removed")}
    assert pool.apply(None, Tick()).orders == ()  # one at a time
    to = pool.orders()[moving][0]
    follow = pool.apply(moving, Swapped(Channel(to), to))
    assert len(follow.reply.close) == 1  # the old channel, for the worker to close
    assert len(follow.orders) == 1  # the next one moves


def test_a_backend_with_two_fewer_channels_gets_one_moved_to_it() -> None:
    pool = Table(4, A)
    for index in range(4):
        pool.connect(index)
    follow = pool.apply(None, Resolved((A, B)))
    assert follow.orders == (3,)
    assert pool.orders() == {3: (B, "rebalance")}
    follow = pool.apply(3, Swapped(Channel(B), B))
    (second,) = follow.orders
    pool.apply(second, Swapped(Channel(B), B))
    assert sorted(pool.held().values()) == [2, 2]
    assert pool.orders() == {}  # even now


def test_an_uneven_spread_by_one_stays_put() -> None:
    pool = Table(3, A, B)
    for index in range(3):
        pool.connect(index)
    assert pool.apply(None, Tick()).orders == ()


def test_a_failed_move_is_forgotten_and_asked_again_later() -> None:
    pool = Table(4, A)
    for index in range(4):
        pool.connect(index)
    pool.apply(None, Resolved((A, B)))
    follow = pool.apply(3, AttemptFailed(B, "refused"))
    assert follow.orders == ()  # B waits its backoff first
    assert pool.table.moving is None
    pool.clock.now += 1.0
    assert pool.apply(None, Tick()).orders == (3,)  # the move to it is its retry


def test_workers_waiting_for_a_backend_are_ordered_to_one_once_it_is_known() -> None:
    pool = Table(2)
    assert pool.apply(0, Attempting()).reply.dial is None
    assert pool.table.records[0].state == Connecting(None)
    follow = pool.apply(None, Resolved((A,)))
    assert follow.orders == (0,)
    assert pool.orders() == {0: (A, "connect")}


def test_a_resolver_that_never_found_a_backend_stands_the_target_in() -> None:
    pool = Table(1)
    pool.apply(0, Attempting())
    pool.apply(None, Resolved((), failure="no such host"))
    assert list(pool.table.backends) == ["fleet:1"]
    assert pool.table.resolve_failure == "no such host"
    pool.apply(None, Resolved((A,)))
    pool.apply(None, Resolved((), failure="down"))
    assert list(pool.table.backends) == [A]  # the last ones known stay


def test_a_refresh_goes_to_the_least_loaded_backend_not_counting_its_own() -> None:
    pool = Table(2, A, B)
    first = pool.connect(0)
    pool.connect(1)
    dial = pool.apply(0, Refreshing()).reply.dial
    assert dial is not None
    assert (dial.backend, dial.reason) == (first.backend, "max_age")


# --- the hand-out --------------------------------------------------------------------------


def test_a_channel_is_handed_out_only_once_its_health_says_serving() -> None:
    pool = Table(1, A)
    dial = pool.apply(0, Attempting()).reply.dial
    assert dial is not None
    channel = Channel(A)
    pool.apply(0, Connected(channel, A))
    assert isinstance(pool.table.records[0].state, Joining)
    assert pool.table.handout.channels == ()
    follow = pool.apply(0, HealthChanged(serving=True, status="SERVING"))
    assert follow.room
    assert pool.table.handout.channels == (channel,)
    follow = pool.apply(0, HealthChanged(False, "NOT_SERVING", "the check said NOT_SERVING"))
    assert pool.table.handout.channels == ()
    assert isinstance(pool.table.records[0].state, NotServing)
    assert pool.table.snapshot(0).last_failure == "the check said NOT_SERVING"
    assert pool.table.snapshot(0).channel is channel  # held, not handed out


def test_a_channel_that_rejoins_keeps_its_slot_and_its_count() -> None:
    pool = Table(1, A)
    pool.connect(0)
    (slot,) = pool.table.handout.slots
    slot.in_flight = 3
    pool.apply(0, HealthChanged(False, "NOT_SERVING"))
    pool.apply(0, HealthChanged(True, "SERVING"))
    assert pool.table.handout.slots == (slot,)
    assert slot.in_flight == 3
    slot.in_flight = 0


def test_a_channel_that_leaves_with_calls_running_drains_until_they_end() -> None:
    pool = Table(1, A)
    channel = pool.connect(0)
    (slot,) = pool.table.handout.slots
    slot.in_flight = 2
    follow = pool.apply(0, Disconnected("connection_lost"))
    assert follow.reply.close == (channel,)
    assert list(pool.table.draining.values()) == [slot]
    slot.done()
    assert list(pool.table.draining.values()) == [slot]
    slot.done()
    assert pool.ended == 2
    assert pool.table.draining == {}  # let go as its last call ended
    pool.table.check()


def test_the_first_health_without_a_service_is_flagged_once() -> None:
    pool = Table(2, A)
    for index in range(2):
        pool.apply(index, Attempting())
        pool.apply(index, Connected(Channel(A), A))
    first = pool.apply(0, HealthChanged(True, "UNIMPLEMENTED"))
    second = pool.apply(1, HealthChanged(True, "UNIMPLEMENTED"))
    assert (first.reply.first_unimplemented, second.reply.first_unimplemented) == (True, False)


def test_the_pool_is_settled_once_a_channel_serves_or_every_one_has_failed() -> None:
    serving, failing = Table(2, A, B), Table(2, A, B)
    for pool in (serving, failing):
        for index in range(2):
            pool.apply(index, Attempting())
        assert not pool.table.settled
    serving.apply(0, AttemptFailed(A, "refused"))
    serving.apply(1, Connected(Channel(B), B))
    assert not serving.table.settled  # one failed, one connected but not yet handed out
    serving.apply(1, HealthChanged(True))
    assert serving.table.settled
    failing.apply(0, AttemptFailed(A, "refused"))
    failing.apply(0, AttemptFailed(B, "refused"))
    assert not failing.table.settled  # worker 1 may still connect: calls wait for it
    failing.apply(1, Connected(Channel(B), B))
    failing.apply(1, HealthChanged(False, "NOT_SERVING"))  # as grpc's health checks count it
    assert failing.table.settled


def test_a_replacement_brings_what_its_health_check_said() -> None:
    pool = Table(1, A, B)
    pool.connect(0)
    pool.apply(0, HealthChanged(False, "NOT_SERVING"))
    pool.apply(0, Swapped(Channel(B), B, "SERVING"))
    worker = pool.table.snapshot(0)
    assert (worker.state, worker.health, worker.backend) == ("watching", "SERVING", B)


def test_the_resolver_loop_reports_only_what_it_knows() -> None:
    pool = Table(1, A)
    with pytest.raises(TypeError, match="expected Resolved, Tick, Sweep, Tripped or Closing"):
        pool.apply(None, Attempting())


# --- records -------------------------------------------------------------------------------


def test_a_record_says_what_its_worker_does_and_why() -> None:
    pool = Table(1, A)
    assert pool.table.snapshot(0).state == "starting"
    pool.apply(0, Attempting())
    pool.apply(0, AttemptFailed(A, "refused"))
    pool.apply(0, BackingOff())
    worker = pool.table.snapshot(0)
    assert (worker.state, worker.last_failure, worker.failures) == ("backing_off", "refused", 1)
    pool.connect(0)
    worker = pool.table.snapshot(0)
    assert (worker.state, worker.last_failure, worker.failures) == ("watching", None, 0)
    assert worker.backend == A
    pool.apply(0, Stopped("crash: RuntimeError: boom"))
    worker = pool.table.snapshot(0)
    assert (worker.state, worker.last_failure, worker.channel) == (
        "crashed",
        "crash: RuntimeError: boom",
        None,
    )


def test_a_mocked_worker_counts_as_connected_until_it_stops() -> None:
    pool = Table(2, A)
    pool.apply(0, Mocked())
    pool.apply(1, Mocked())
    assert pool.table.connected_count() == 2
    pool.apply(1, Stopped())
    assert pool.table.connected_count() == 1
    assert pool.table.records[1].state == Idle("stopped")


def test_a_stopped_table_holds_no_channel() -> None:
    pool = Table(2, A, B)
    pool.connect(0)
    channel = pool.connect(1)
    (slot, _) = pool.table.handout.slots
    slot.in_flight = 1
    pool.apply(0, Disconnected("shutdown"))
    pool.table.stop()
    pool.table.check()
    assert list(pool.table.slots()) == []
    assert pool.table.handout.channels == ()
    assert all(isinstance(r.state, Idle) for r in pool.table.records)
    assert channel not in [r.slot for r in pool.table.records]


def test_a_change_the_table_does_not_know_is_a_type_error() -> None:
    pool = Table(1, A)
    with pytest.raises(TypeError, match="expected a worker's change"):
        pool.apply(0, Tick())


def test_health_from_a_worker_that_holds_nothing_is_a_bug_said_aloud() -> None:
    pool = Table(1, A)
    with pytest.raises(AssertionError, match="reported HealthChanged"):
        pool.apply(0, HealthChanged(True))


def test_serving_counts_as_the_hand_out_state() -> None:
    pool = Table(1, A)
    pool.connect(0)
    assert isinstance(pool.table.records[0].state, Serving)


def test_a_closing_pool_hands_nothing_out_while_its_workers_stop() -> None:
    pool = Table(3, A, B)
    for index in range(3):
        pool.connect(index)
    pool.apply(None, Closing())
    assert pool.table.handout.slots == ()
    assert pool.table.connected_count() == 0
    for index in range(3):  # the workers' last reports, as each stops
        follow = pool.apply(index, Disconnected("shutdown"))
        assert len(follow.reply.close) == 1
        pool.apply(index, Stopped())
    assert pool.table.held == {}


# --- ejection ------------------------------------------------------------------------------

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def serving(size: int, *backends: str, rules: Rules | None = None) -> Table:
    """A table whose ``size`` workers all connected and serve."""
    pool = Table(size, *backends, rules=rules)
    for index in range(size):
        pool.connect(index)
    return pool


def ejections(follows: list[FollowUps]) -> list[str]:
    """The backends the follow-ups say were ejected."""
    return [ejected.backend for follow in follows for ejected in follow.ejected]


def grpcs_rules(max_ejection_percent: int) -> Rules:
    """grpc's ``outlier_detection_experimental``: failure percentage over 10 calls."""
    rule = FailurePercentageEjection(threshold=50, minimum_hosts=1, request_volume=10)
    return rules_from(
        OutlierDetection(
            interval=1.0,
            base_ejection_time=5.0,
            max_ejection_percent=max_ejection_percent,
            failure_percentage_ejection=rule,
        )
    )


def test_a_tripped_backend_leaves_the_hand_out_at_once_and_returns_after_its_time() -> None:
    pool = serving(4, A, B)
    assert sorted(pool.handed_out()) == [A, A, B, B]
    follow = pool.eject(A)
    (ejected,) = follow.ejected
    assert (ejected.backend, ejected.reason, ejected.until) == (
        A,
        "consecutive_failures",
        pool.clock() + 5.0,
    )
    assert pool.handed_out() == [B, B]
    assert pool.table.connected_count() == 2
    assert pool.table.ejected() == {A: pool.clock() + 5.0}
    states = [
        "ejected" if pool.table.records[i].slot.backend == A else "watching" for i in range(4)
    ]
    assert [w.state for w in map(pool.table.snapshot, range(4))] == states
    for _ in range(4):
        follow = pool.sweep()
        assert (follow.ejected, follow.returned) == ((), ())
        assert pool.handed_out() == [B, B]
    follow = pool.sweep()
    assert follow.returned == (Returned(A, 5.0),)
    assert pool.table.ejected() == {}
    # On probation: one of its channels takes one call at a time, before the others.
    assert pool.handed_out() == [B, B]
    (probe,) = pool.table.handout.probes
    assert probe.backend == A
    assert pool.table.handout.pick() is probe
    probe.in_flight += 1  # the probe call runs: the pick goes elsewhere meanwhile
    assert {pool.table.handout.pick().backend for _ in range(4)} == {B}  # type: ignore[union-attr]
    probe.in_flight -= 1
    follows = pool.end_calls(A, grpc.StatusCode.OK)  # it answered: back in full
    assert [f.room for f in follows] == [True]  # calls waiting for room may go to it
    assert sorted(pool.handed_out()) == [A, A, B, B]
    assert [s.index for s in pool.table.handout.slots] == [0, 1, 2, 3]
    assert pool.table.handout.probes == ()


def test_a_probe_that_fails_ejects_its_backend_again_for_longer() -> None:
    pool = serving(4, A, B)
    pool.eject(A)
    while not pool.sweep().returned:
        pass
    (follow,) = pool.end_calls(A, grpc.StatusCode.UNAVAILABLE)
    (ejected,) = follow.ejected
    assert (ejected.backend, ejected.ejections, ejected.probation) == (A, 2, True)
    assert ejected.until == pool.clock() + 10.0
    assert pool.handed_out() == [B, B]
    assert pool.table.handout.probes == ()


def test_a_probe_still_running_keeps_its_backend_on_probation() -> None:
    """A probe that hangs must not let every caller follow it at the next sweep; a probe
    that never ends (a stream) holds probation for the longest ejection at most."""
    pool = serving(4, A, B)
    pool.eject(A)
    while not pool.sweep().returned:
        pass
    (probe,) = pool.table.handout.probes
    probe.in_flight += 1
    for _ in range(3):
        pool.sweep()
        assert pool.handed_out() == [B, B]
        assert pool.table.handout.pick() is not probe
    pool.sweep(after=60.0)  # default_rules(): 60 s at most
    assert sorted(pool.handed_out()) == [A, A, B, B]
    probe.in_flight -= 1


def test_a_trip_while_the_pool_stops_ejects_nothing() -> None:
    pool = serving(4, A, B)
    pool.apply(None, Closing())
    follows = pool.end_calls(A, grpc.StatusCode.UNAVAILABLE, 5)
    assert [f.ejected for f in follows] == [()]
    assert pool.table.ejected() == {}


def test_a_backend_no_probe_reached_is_back_in_full_a_sweep_later() -> None:
    """With no call through the PooledChannel (get_channel's users only), nothing probes
    a backend on probation: after a sweep interval it is handed out in full."""
    pool = serving(4, A, B)
    pool.eject(A)
    while not pool.sweep().returned:
        pass
    assert pool.table.handout.probes != ()
    follow = pool.sweep()
    assert follow.room
    assert sorted(pool.handed_out()) == [A, A, B, B]
    assert pool.table.handout.probes == ()


def test_a_channel_that_connects_to_an_ejected_backend_waits_for_its_return() -> None:
    pool = Table(3, A, B)
    for index in range(2):
        pool.connect(index)
    dial = pool.apply(2, Attempting()).reply.dial
    assert dial is not None
    out, other = dial.backend, B if dial.backend == A else A
    pool.eject(out)  # while worker 2 connects to it
    new = Channel(out)
    pool.apply(2, Connected(new, out))
    follow = pool.apply(2, HealthChanged(serving=True, status="SERVING"))
    assert not follow.room
    assert isinstance(pool.table.records[2].state, Serving)
    assert pool.handed_out() == [other]
    (slot,) = pool.slots(other)
    follow = pool.apply(slot.index, Swapped(Channel(out), out, "SERVING"))  # a replacement
    # The ejected backend is the last one served now: it returns at once (never the last).
    assert follow.returned == (Returned(out, 0.0),)
    assert follow.room
    assert pool.handed_out() == [out, out, out]


def test_get_channel_takes_turns_among_the_channels_not_ejected() -> None:
    pool = serving(4, A, B)
    pool.eject(A)
    b_channels = {slot.channel for slot in pool.slots(B)}
    taken = [pool.table.handout.next_ready() for _ in range(6)]
    assert set(taken) == b_channels
    assert taken[0] != taken[1]
    assert [pool.table.handout.pick() for _ in range(4)] != [None] * 4
    assert {slot.backend for slot in (pool.table.handout.pick() for _ in range(8)) if slot} == {B}


def test_a_channel_that_joins_and_leaves_while_its_backend_is_out_stays_out() -> None:
    pool = serving(2, A, B)
    pool.eject(A)
    (a_slot,) = pool.slots(A)
    pool.apply(a_slot.index, HealthChanged(False, "NOT_SERVING"))
    pool.apply(a_slot.index, HealthChanged(True, "SERVING"))
    assert pool.handed_out() == [B]
    pool.apply(a_slot.index, Disconnected("connection_lost"))
    assert pool.handed_out() == [B]
    assert A in pool.table.ejected()  # the backend stays out, not the channel


def test_the_default_cap_counts_backends_serving_or_ejected() -> None:
    pool = serving(4, A, B, C, D)
    for backend in (C, D):
        (slot,) = pool.slots(backend)
        pool.apply(slot.index, HealthChanged(False, "NOT_SERVING"))
    pool.eject(A)  # one of the two serving
    assert ejections(pool.end_calls(B, UNAVAILABLE, 5)) == []  # the last serving one stays
    assert set(pool.table.ejected()) == {A}
    for backend in (C, D):
        (slot,) = pool.slots(backend)
        pool.apply(slot.index, HealthChanged(True, "SERVING"))
    follows = pool.end_calls(B, UNAVAILABLE, 5)  # still failing: asked again, and now
    assert ejections(follows) == [B]
    assert sorted(pool.handed_out()) == [C, D]
    assert ejections(pool.end_calls(C, UNAVAILABLE, 5)) == []


def test_an_ejected_backend_with_no_channel_left_still_counts_for_the_cap() -> None:
    pool = serving(2, A, B)
    pool.eject(A)
    (a_slot,) = pool.slots(A)
    pool.apply(a_slot.index, Disconnected("shutdown"))
    pool.apply(a_slot.index, Stopped())
    assert ejections(pool.end_calls(B, UNAVAILABLE, 10)) == []
    assert pool.handed_out() == [B]


def test_grpcs_cap_counts_the_backends_the_pool_serves() -> None:
    """grpc's maxEjectionPercent is of the backends the pool balances over (serving or
    ejected), not of every address found: a pool of two over four backends holds
    channels to two, and at 50% only one of them may go (grpc's first always may)."""
    pool = serving(2, A, B, C, D, rules=grpcs_rules(max_ejection_percent=50))
    held = sorted(pool.held())
    assert len(held) == 2
    for backend in held:
        assert ejections(pool.end_calls(backend, UNAVAILABLE, 10)) == []  # none at once
    follow = pool.sweep()
    assert len(follow.ejected) == 1
    assert len(pool.handed_out()) == 1


def test_a_backend_the_resolver_drops_while_ejected_is_let_go() -> None:
    pool = serving(2, A, B)
    pool.eject(A)
    (a_slot,) = pool.slots(A)
    follow = pool.apply(None, Resolved((B,)))
    assert follow.orders == (a_slot.index,)  # its channel moves, though out of the hand-out
    assert A in pool.table.ejected()  # until the backend is gone, it stays ejected
    pool.apply(a_slot.index, Swapped(Channel(B), B, "SERVING"))
    assert pool.handed_out() == [B, B]
    follow = pool.sweep()
    assert follow.returned == (Returned(A, 1.0),)  # reported, as every ejection's end
    assert pool.table.ejected() == {}
    assert A not in pool.table.ejector.by_backend
    pool.apply(None, Resolved((A, B)))
    assert A not in pool.table.ejected()  # back as new


def test_a_trip_from_a_backend_let_go_since_is_ignored() -> None:
    pool = serving(2, A, B)
    (a_slot,) = pool.slots(A)
    stale = a_slot.outcomes
    a_slot.in_flight = 1  # a call still running on it as it leaves
    pool.apply(None, Resolved((B,)))
    pool.apply(a_slot.index, Swapped(Channel(B), B, "SERVING"))
    pool.sweep()
    assert A not in pool.table.ejector.by_backend
    follow = pool.apply(None, Tripped(stale))
    assert follow.ejected == ()
    a_slot.done(Finished(UNAVAILABLE))
    assert pool.table.draining == {}


def test_a_closing_pool_with_a_backend_ejected_hands_nothing_out() -> None:
    pool = serving(3, A, B)
    pool.eject(A)
    pool.apply(None, Closing())
    assert pool.handed_out() == []
    follow = pool.sweep(after=5.0)
    assert [r.backend for r in follow.returned] == [A]
    assert pool.handed_out() == []  # back, but the pool is stopping
    for index in range(3):
        pool.apply(index, Disconnected("shutdown"))
        pool.apply(index, Stopped())
    assert pool.table.held == {}
