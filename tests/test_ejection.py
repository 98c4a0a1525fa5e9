"""Ejection rules, one at a time, with a fake clock and fake draws.

Each test drives an Ejector over a few backends, all in service, as the table does:
calls end (``Outcomes.record``, with stand-ins for finished grpc.aio calls), a backend
that failed enough in a row asks to be ejected (``trip``), and a sweep runs every
interval. The default rules are the pool's own; the others are grpc's
``outlier_detection_experimental`` (gRFC A50) as grpc core's outlier_detection.cc
applies them. The last tests read the status of real grpc.aio calls, plain and through
client interceptors, against a server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import Pool
from conngrpc.pool.ejection import (
    SERVER_FAILURES,
    Ejected,
    Ejector,
    Outcomes,
    Returned,
    Rules,
    default_rules,
    rules_from,
    status_code,
)
from conngrpc.pool.runtime import pools
from conngrpc.pool.service_config import (
    FailurePercentageEjection,
    OutlierDetection,
    SuccessRateEjection,
)
from conngrpc.testing import FakeConnector
from tests._pools import fake_channel, running_pool
from tests._probe import FakeClock

Code = grpc.StatusCode
OK, CANCELLED = Code.OK, Code.CANCELLED
INTERNAL, UNAVAILABLE, NOT_FOUND = Code.INTERNAL, Code.UNAVAILABLE, Code.NOT_FOUND
A, B, C, D, E, F = (f"127.0.0.{i}:1" for i in range(1, 7))

#: The application's answers: a server that says them is working.
APPLICATION_CODES = (
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION,
    Code.ABORTED,
    Code.OUT_OF_RANGE,
    Code.UNIMPLEMENTED,
    Code.UNAUTHENTICATED,
)
SERVER_FAILURE_CODES = (
    Code.UNKNOWN,
    Code.DEADLINE_EXCEEDED,
    Code.INTERNAL,
    Code.UNAVAILABLE,
    Code.DATA_LOSS,
)


# --- stand-ins --------------------------------------------------------------------------------


class _Status:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class _CythonCall:
    def __init__(self, status: _Status | None) -> None:
        self._status = status


class Finished:
    """Stands in for a finished grpc.aio call: what ``status_code`` reads of one
    (``call._cython_call._status.code()``, grpc's number)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._cython_call = _CythonCall(_Status(code.value[0]))


class Running:
    """Stands in for a grpc.aio call not finished yet: it has no status."""

    def __init__(self) -> None:
        self._cython_call = _CythonCall(None)


def spread(failures: int, successes: int, failure: Code = INTERNAL) -> list[Code]:
    """``failures`` calls ending in ``failure`` among ``successes`` OK ones, evenly spread
    (never five failures in a row while at most four in five fail)."""
    total = failures + successes
    return [
        failure if (i + 1) * failures // total > i * failures // total else OK for i in range(total)
    ]


class Fleet:
    """An Ejector over ``backends``, every one in service, as the table drives it: a
    backend that trips asks the ejector at once; ``sweep`` moves the clock an interval
    and sweeps. ``draw`` is what the ejector's random draws return (grpc's
    enforcement percentage), counted in ``draws``."""

    def __init__(self, rules: Rules, *backends: str, draw: float = 0.0) -> None:
        self.rules = rules
        self.clock = FakeClock()
        self.draw = draw
        self.draws = 0
        self.ejector = Ejector(rules, rand=self._rand)
        self.ejected: list[Ejected] = []
        self.returned: list[Returned] = []
        self.outcomes = {b: self.ejector.outcomes(b, self._tripped) for b in backends}

    def _rand(self) -> float:
        self.draws += 1
        return self.draw

    def _tripped(self, outcomes: Outcomes) -> None:
        if outcomes.probing and not outcomes.consecutive:  # its probe answered
            self.ejector.prove(outcomes)
            return
        decided = self.ejector.trip(outcomes, len(self.outcomes), self.clock())
        if decided is not None:
            self.ejected.append(decided)

    def calls(self, backend: str, codes: Iterable[Code]) -> None:
        record = self.outcomes[backend].record
        for code in codes:
            record(Finished(code))

    def call(self, backend: str, code: Code, times: int = 1) -> None:
        self.calls(backend, [code] * times)

    def sweep(self, after: float | None = None) -> tuple[list[Ejected], list[Returned]]:
        """Move the clock ``after`` seconds (an interval by default), then sweep."""
        self.clock.now += self.rules.interval if after is None else after
        ejected, returned = self.ejector.sweep(len(self.outcomes), self.clock())
        self.ejected += ejected
        self.returned += returned
        return ejected, returned

    def sweep_until_returned(self, backend: str, limit: int = 1000) -> float:
        """Sweep every interval until ``backend`` is back; how long it was out."""
        for _ in range(limit):
            _, returned = self.sweep()
            for back in returned:
                if back.backend == backend:
                    return back.ejected_for
        raise AssertionError(f"{backend} not back after {limit} sweeps")

    def out(self) -> set[str]:
        return {o.backend for o in self.ejector.ejected()}


def a50(
    *,
    failure_percentage: FailurePercentageEjection | None = None,
    success_rate: SuccessRateEjection | None = None,
    max_ejection_percent: int = 100,
    base_ejection_time: float = 30.0,
    max_ejection_time: float = 300.0,
) -> Rules:
    """grpc's rules for an ``outlier_detection_experimental`` with these fields."""
    return rules_from(
        OutlierDetection(
            interval=10.0,
            base_ejection_time=base_ejection_time,
            max_ejection_time=max_ejection_time,
            max_ejection_percent=max_ejection_percent,
            success_rate_ejection=success_rate,
            failure_percentage_ejection=failure_percentage,
        )
    )


def failure_percentage(
    threshold: int = 25, minimum_hosts: int = 3, request_volume: int = 20, enforcement: int = 100
) -> Rules:
    """grpc's failure percentage rule alone (the issue's benchmark settings by default)."""
    rule = FailurePercentageEjection(threshold, enforcement, minimum_hosts, request_volume)
    return a50(failure_percentage=rule)


# --- status codes -----------------------------------------------------------------------------


def test_every_status_code_is_a_success_a_server_failure_or_ignored() -> None:
    assert {c.value[0] for c in SERVER_FAILURE_CODES} == SERVER_FAILURES
    assert set(Code) == {OK, CANCELLED, *SERVER_FAILURE_CODES, *APPLICATION_CODES}
    rules = default_rules()
    assert rules.failure_codes == SERVER_FAILURES
    assert rules.ignored == {CANCELLED.value[0]}
    grpcs = a50()
    assert grpcs.failure_codes == {c.value[0] for c in Code} - {0}  # every non-OK, as grpc
    assert grpcs.ignored == frozenset()


def test_status_code_reads_a_finished_call_and_not_a_running_one() -> None:
    assert status_code(Finished(INTERNAL)) == INTERNAL.value[0]
    assert status_code(Finished(OK)) == 0
    assert status_code(Running()) is None
    assert status_code(object()) is None


def test_a_call_whose_status_is_unknown_counts_neither_way() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 4)
    fleet.outcomes[A].record(Running())
    fleet.outcomes[A].record(object())
    outcomes = fleet.outcomes[A]
    assert (outcomes.successes, outcomes.failures, outcomes.consecutive) == (0, 4, 4)


# --- the default: consecutive failures ------------------------------------------------------


def test_the_fifth_server_failure_in_a_row_ejects_at_once() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(B, OK, 3)
    fleet.call(A, OK, 2)
    fleet.call(A, UNAVAILABLE, 4)
    assert fleet.out() == set()
    fleet.call(A, UNAVAILABLE)
    assert fleet.out() == {A}
    (ejected,) = fleet.ejected
    assert ejected == Ejected(
        A,
        "consecutive_failures",
        until=fleet.clock() + 5.0,
        successes=2,
        failures=5,
        consecutive=5,
        ejections=1,
    )
    fleet.call(A, UNAVAILABLE, 10)  # calls still ending on it: no second ejection
    assert len(fleet.ejected) == 1


def test_a_success_between_failures_starts_the_count_again() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 4)
    fleet.call(A, OK)
    fleet.call(A, INTERNAL, 4)
    assert fleet.out() == set()
    fleet.call(A, INTERNAL)
    assert fleet.out() == {A}


@pytest.mark.parametrize("code", SERVER_FAILURE_CODES, ids=lambda c: c.name)
def test_each_server_failure_counts_in_the_default(code: Code) -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, code, 5)
    assert fleet.out() == {A}


@pytest.mark.parametrize("code", APPLICATION_CODES, ids=lambda c: c.name)
def test_an_application_answer_is_a_success_in_the_default(code: Code) -> None:
    """A server that says NOT_FOUND is working: no ejection, at once or at a sweep, and
    the answer ends a run of failures as a success does."""
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, code, 100)
    fleet.call(B, OK, 100)
    assert fleet.sweep() == ([], [])
    fleet.call(A, INTERNAL, 4)
    fleet.call(A, code)
    fleet.call(A, INTERNAL, 4)
    assert fleet.out() == set()
    assert fleet.outcomes[A].successes == 1


def test_a_cancelled_call_counts_neither_way_in_the_default() -> None:
    """The caller cancelled: that says nothing of the server. It neither ends a run of
    failures nor adds to the calls a sweep weighs."""
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 4)
    fleet.call(A, CANCELLED, 50)
    outcomes = fleet.outcomes[A]
    assert (outcomes.successes, outcomes.failures, outcomes.consecutive) == (0, 4, 4)
    fleet.call(A, INTERNAL)
    assert fleet.out() == {A}


def test_a_backend_the_cap_kept_in_is_asked_again_after_as_many_failures() -> None:
    """Not at every failure past the fifth: in an outage every call fails, and each ask
    costs a pass over the pool."""
    fleet = Fleet(default_rules(), A, B)
    asked = []
    fleet.outcomes[B].tripped = lambda outcomes: (
        asked.append(outcomes.consecutive),
        fleet._tripped(outcomes),
    )[1]
    fleet.call(A, INTERNAL, 5)
    fleet.call(B, INTERNAL, 5)
    assert fleet.out() == {A}  # at most one of two
    fleet.sweep_until_returned(A)
    fleet.call(A, OK)  # its probe answered: back in full, behaving
    fleet.call(B, INTERNAL, 4)
    assert fleet.out() == set()
    fleet.call(B, INTERNAL)
    assert fleet.out() == {B}
    assert asked == [5, 10]


# --- the default: failure percentage, at each sweep ------------------------------------------


def test_a_sweep_ejects_a_backend_failing_a_third_of_its_calls_more_than_the_rest() -> None:
    fleet = Fleet(default_rules(), A, B, C)
    fleet.calls(A, spread(7, 14))
    fleet.call(B, OK, 30)
    fleet.call(C, OK, 30)
    assert fleet.out() == set()  # no streak of five
    (ejected,), returned = fleet.sweep()
    assert returned == []
    assert (ejected.backend, ejected.reason) == (A, "failure_percentage")
    assert (ejected.successes, ejected.failures) == (14, 7)


@pytest.mark.parametrize(
    ("failed", "rest_failed", "ejected"),
    [
        (21, 0, True),
        (20, 0, False),  # strictly more than 20 points above
        (60, 40, False),
        (61, 40, True),
        (80, 80, False),  # every backend failing alike: none is at fault
        (80, 60, False),
    ],
)
def test_the_default_weighs_a_backend_against_the_rest_of_the_pool(
    failed: int, rest_failed: int, ejected: bool
) -> None:
    fleet = Fleet(default_rules(), A, B, C)
    fleet.calls(A, spread(failed, 100 - failed))
    for other in (B, C):
        fleet.calls(other, spread(rest_failed, 100 - rest_failed))
    assert fleet.out() == set()
    fleet.sweep()
    assert fleet.out() == ({A} if ejected else set())


def test_every_backend_failing_alike_ejects_none_in_the_default() -> None:
    """A caller whose deadlines are too short for every backend: each fails four calls in
    five, none in a row of five, and the sweep finds no outlier."""
    fleet = Fleet(default_rules(), A, B, C, D)
    for _ in range(5):
        for backend in (A, B, C, D):
            fleet.calls(backend, spread(40, 10, Code.DEADLINE_EXCEEDED))
        assert fleet.sweep() == ([], [])


def test_the_default_weighs_a_backend_only_from_twenty_calls_an_interval() -> None:
    fleet = Fleet(default_rules(), A, B, C)
    fleet.calls(A, spread(15, 4))  # 19 calls, 79% failed
    fleet.call(B, OK, 30)
    fleet.call(C, OK, 30)
    assert fleet.sweep() == ([], [])
    fleet.calls(A, spread(16, 4))  # 20 in this interval: the last one's do not carry over
    fleet.call(B, OK, 30)
    fleet.call(C, OK, 30)
    assert [e.backend for e in fleet.sweep()[0]] == [A]


def test_the_default_weighs_backends_only_when_two_have_enough_calls() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.calls(A, spread(15, 15))
    fleet.call(B, OK, 19)
    assert fleet.sweep() == ([], [])
    fleet.calls(A, spread(15, 15))
    fleet.call(B, OK, 20)
    assert [e.backend for e in fleet.sweep()[0]] == [A]


def test_a_sweep_draws_nothing_for_the_default() -> None:
    """Enforcement is 100% in the default: no backend's fate depends on a draw."""
    fleet = Fleet(default_rules(), A, B, C, draw=0.999)
    fleet.calls(A, spread(15, 15))
    fleet.call(B, OK, 30)
    fleet.call(C, OK, 30)
    fleet.sweep()
    assert fleet.out() == {A}


# --- the cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_service", "allowed"), [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3)]
)
def test_the_default_ejects_at_most_half_never_the_last(in_service: int, allowed: int) -> None:
    backends = [A, B, C, D, E, F][:in_service]
    fleet = Fleet(default_rules(), *backends)
    for backend in backends:
        fleet.call(backend, UNAVAILABLE, 5)
    assert len(fleet.out()) == allowed
    ejector = fleet.ejector
    assert [ejector.may_eject(in_service, n) for n in range(in_service + 1)] == [
        n < allowed for n in range(in_service + 1)
    ]


def test_the_default_cap_holds_in_a_sweep_too() -> None:
    fleet = Fleet(default_rules(), A, B, C, D, E)
    for backend in (A, B, C):
        fleet.calls(backend, spread(30, 10))
    fleet.call(D, OK, 40)
    fleet.call(E, OK, 40)
    ejected, _ = fleet.sweep()
    assert len(ejected) == 2  # three stand out; two of five may go


@pytest.mark.parametrize(
    ("max_percent", "backends", "allowed"),
    [
        (10, 3, 1),  # the first always goes
        (0, 4, 1),
        (50, 4, 2),  # 0%, then 25% < 50%
        (50, 5, 3),  # 0%, 20%, 40% < 50%: a third goes, as in grpc
        (100, 4, 4),  # every one, as grpc
    ],
)
def test_grpc_ejects_the_first_then_while_fewer_than_max_ejection_percent(
    max_percent: int, backends: int, allowed: int
) -> None:
    names = [A, B, C, D, E, F][:backends]
    rule = FailurePercentageEjection(threshold=50, minimum_hosts=1, request_volume=10)
    fleet = Fleet(a50(failure_percentage=rule, max_ejection_percent=max_percent), *names)
    for backend in names:
        fleet.call(backend, INTERNAL, 10)
    fleet.sweep()
    assert len(fleet.out()) == allowed


# --- growth and decay of the ejection time ---------------------------------------------------


def test_the_default_ejection_time_grows_by_five_seconds_up_to_a_minute() -> None:
    """Each time it comes back and fails at once (probation), out for 5 s longer."""
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 4)
    times = []
    for _ in range(14):
        fleet.call(A, INTERNAL)
        (ejected,) = fleet.ejected[-1:]
        assert ejected.backend == A
        times.append(ejected.until - fleet.clock())
        assert fleet.sweep_until_returned(A) == times[-1]  # back at the first sweep after
    assert times == [5.0 * n for n in range(1, 13)] + [60.0, 60.0]
    assert [e.ejections for e in fleet.ejected] == list(range(1, 15))


def test_a_backend_is_back_at_the_first_sweep_once_its_time_is_over() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 5)
    assert fleet.sweep(after=4.9) == ([], [])
    assert fleet.out() == {A}
    _, returned = fleet.sweep(after=0.1)
    assert returned == [Returned(A, 5.0)]
    assert fleet.out() == set()
    fleet.call(A, INTERNAL, 5)
    _, returned = fleet.sweep(after=37.0)  # a sweep long after: back then
    assert returned == [Returned(A, 37.0)]


def test_the_default_ejection_time_shrinks_by_one_step_per_five_seconds_in_service() -> None:
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 5)
    for _ in range(2):
        fleet.sweep_until_returned(A)
        fleet.call(A, INTERNAL)  # on probation
    fleet.sweep_until_returned(A)
    outcomes = fleet.outcomes[A]
    assert outcomes.multiplier == 3
    fleet.call(A, OK)
    multipliers = []
    for _ in range(16):
        fleet.call(A, OK, 3)
        fleet.sweep()
        multipliers.append(outcomes.multiplier)
    assert multipliers == [3] * 4 + [2] * 5 + [1] * 5 + [0] * 2
    fleet.call(A, INTERNAL, 5)
    assert fleet.ejected[-1].until == fleet.clock() + 5.0  # as the first time


def test_a_returned_backend_is_on_probation_in_the_default() -> None:
    """Back in, its first server failure ejects it again at once; a success (or an
    application's answer) ends the probation, a cancelled call does not."""
    fleet = Fleet(default_rules(), A, B)
    fleet.call(A, INTERNAL, 5)
    fleet.sweep_until_returned(A)
    fleet.call(A, CANCELLED)
    fleet.call(A, UNAVAILABLE)
    assert fleet.out() == {A}
    assert fleet.ejected[-1].reason == "consecutive_failures"
    fleet.sweep_until_returned(A)
    fleet.call(A, NOT_FOUND)
    fleet.call(A, UNAVAILABLE, 4)
    assert fleet.out() == set()
    fleet.call(A, UNAVAILABLE)
    assert fleet.out() == {A}


def test_grpc_returns_a_backend_without_probation() -> None:
    fleet = Fleet(failure_percentage(minimum_hosts=2), A, B)
    fleet.call(A, INTERNAL, 20)
    fleet.call(B, OK, 20)
    fleet.sweep()
    assert fleet.out() == {A}
    fleet.sweep_until_returned(A)
    fleet.call(A, INTERNAL, 100)  # no consecutive rule: only the next sweep may eject
    assert fleet.out() == set()
    fleet.call(B, OK, 20)
    fleet.sweep()
    assert fleet.out() == {A}


def test_grpc_ejection_time_is_base_times_ejections_capped_at_max() -> None:
    rule = FailurePercentageEjection(threshold=50, minimum_hosts=2, request_volume=10)
    fleet = Fleet(a50(failure_percentage=rule, base_ejection_time=5, max_ejection_time=12), A, B)
    times = []
    for _ in range(4):
        fleet.call(A, INTERNAL, 10)
        fleet.call(B, OK, 10)
        (ejected,), _ = fleet.sweep()
        times.append(ejected.until - fleet.clock())
        fleet.sweep_until_returned(A)
    assert times == [5.0, 10.0, 12.0, 12.0]


def test_grpc_ejection_time_never_below_the_base_when_max_is_lower() -> None:
    rule = FailurePercentageEjection(threshold=50, minimum_hosts=2, request_volume=10)
    rules = a50(failure_percentage=rule, base_ejection_time=30, max_ejection_time=5)
    assert rules.longest == 30
    fleet = Fleet(rules, A, B)
    for _ in range(3):
        fleet.call(A, INTERNAL, 10)
        fleet.call(B, OK, 10)
        (ejected,), _ = fleet.sweep()
        assert ejected.until - fleet.clock() == 30.0
        assert fleet.sweep_until_returned(A) == 30.0


def test_grpc_ejection_time_shrinks_by_one_step_per_sweep_in_service() -> None:
    """As grpc: every sweep that finds it in, not the sweep that returns it."""
    fleet = Fleet(failure_percentage(minimum_hosts=2), A, B)
    for _ in range(2):
        fleet.call(A, INTERNAL, 20)
        fleet.call(B, OK, 20)
        fleet.sweep()
        fleet.sweep_until_returned(A)
    outcomes = fleet.outcomes[A]
    assert outcomes.multiplier == 2
    fleet.sweep()
    assert outcomes.multiplier == 1
    fleet.sweep()
    assert outcomes.multiplier == 0
    fleet.sweep()
    assert outcomes.multiplier == 0


# --- grpc's failure percentage (gRFC A50) ---------------------------------------------------


@pytest.mark.parametrize(("failed", "ejected"), [(5, False), (6, True)])
def test_grpc_failure_percentage_must_be_above_the_threshold(failed: int, ejected: bool) -> None:
    fleet = Fleet(failure_percentage(threshold=25), A, B, C)
    fleet.calls(A, [INTERNAL] * failed + [OK] * (20 - failed))  # 25% or 30% of 20
    fleet.call(B, OK, 20)
    fleet.call(C, OK, 20)
    fleet.sweep()
    assert fleet.out() == ({A} if ejected else set())


def test_grpc_failure_percentage_is_absolute_not_against_the_rest() -> None:
    """grpc ejects every backend above the threshold, up to maxEjectionPercent, even
    when all fail alike (the default would eject none)."""
    rule = FailurePercentageEjection(threshold=25, minimum_hosts=3, request_volume=20)
    fleet = Fleet(a50(failure_percentage=rule, max_ejection_percent=50), A, B, C)
    for backend in (A, B, C):
        fleet.calls(backend, spread(10, 10))
    fleet.sweep()
    assert len(fleet.out()) == 2  # 0%, then 33% < 50%


@pytest.mark.parametrize(
    ("minimum_hosts", "short"),
    [
        (3, C),  # two of three at volume: too few hosts
        (2, A),  # the failing one short of volume
    ],
)
def test_grpc_failure_percentage_needs_minimum_hosts_at_request_volume(
    minimum_hosts: int, short: str
) -> None:
    fleet = Fleet(failure_percentage(minimum_hosts=minimum_hosts, request_volume=20), A, B, C)
    found = []
    for volume in (19, 20):
        for backend, code in ((A, INTERNAL), (B, OK), (C, OK)):
            fleet.call(backend, code, volume if backend == short else 20)
        found.append([e.backend for e in fleet.sweep()[0]])
    assert found == [[], [A]]


@pytest.mark.parametrize(
    ("enforcement", "draw", "ejected"),
    [
        (0, 0.0, False),  # 0: never
        (100, 0.9999, True),  # 100: always
        (50, 0.49, True),  # grpc draws 1..99 and ejects below the percentage: 49
        (50, 0.5, False),  # 50
        (1, 0.0, False),  # the lowest draw is 1
    ],
)
def test_grpc_enforcement_percentage(enforcement: int, draw: float, ejected: bool) -> None:
    fleet = Fleet(failure_percentage(enforcement=enforcement), A, B, C, draw=draw)
    fleet.call(A, INTERNAL, 20)
    fleet.call(B, OK, 20)
    fleet.call(C, OK, 20)
    fleet.sweep()
    assert fleet.out() == ({A} if ejected else set())
    assert fleet.draws == 1  # one draw per backend found out of line


@pytest.mark.parametrize("code", [*APPLICATION_CODES, CANCELLED], ids=lambda c: c.name)
def test_grpc_counts_every_status_but_ok_as_a_failure(code: Code) -> None:
    fleet = Fleet(failure_percentage(), A, B, C)
    fleet.call(A, code, 20)
    fleet.call(B, OK, 20)
    fleet.call(C, OK, 20)
    fleet.sweep()
    assert fleet.out() == {A}


def test_grpc_never_ejects_at_once_on_failures_in_a_row() -> None:
    fleet = Fleet(failure_percentage(), A, B, C)
    fleet.call(A, UNAVAILABLE, 1000)
    assert fleet.out() == set()
    assert fleet.outcomes[A].consecutive == 1000


# --- grpc's success rate (gRFC A50) ------------------------------------------------------------


def success_rate(
    stdev_factor: int = 1900, minimum_hosts: int = 5, request_volume: int = 100
) -> Rules:
    rule = SuccessRateEjection(stdev_factor, 100, minimum_hosts, request_volume)
    return a50(success_rate=rule)


RATES = {A: 100, B: 95, C: 90, D: 70, E: 40}  # mean 79, population stdev 22


@pytest.mark.parametrize(
    ("stdev_factor", "ejected"),
    [
        (1000, {E}),  # below 79 - 22 = 57
        (409, {D, E}),  # below 79 - 8.998
        (410, {E}),  # 70 is not below 79 - 9.02
        (0, {D, E}),  # below the mean
        (2000, set()),  # below 35
    ],
)
def test_grpc_success_rate_ejects_below_mean_minus_stdev_times_factor_over_1000(
    stdev_factor: int, ejected: set[str]
) -> None:
    assert statistics.mean(RATES.values()) == 79
    assert statistics.pstdev(RATES.values()) == 22
    fleet = Fleet(success_rate(stdev_factor=stdev_factor), *RATES)
    for backend, rate in RATES.items():
        fleet.calls(backend, [OK] * rate + [INTERNAL] * (100 - rate))
    found, _ = fleet.sweep()
    assert fleet.out() == ejected
    assert {e.reason for e in found} <= {"success_rate"}


def test_grpc_success_rate_needs_minimum_hosts_at_request_volume() -> None:
    fleet = Fleet(success_rate(1000, minimum_hosts=5, request_volume=100), *RATES)
    for backend, rate in RATES.items():
        calls = [OK] * rate + [INTERNAL] * (100 - rate)
        fleet.calls(backend, calls[1:] if backend == A else calls)  # A: 99 calls
    assert fleet.sweep() == ([], [])
    for backend, rate in RATES.items():
        fleet.calls(backend, [OK] * rate + [INTERNAL] * (100 - rate))
    assert [e.backend for e in fleet.sweep()[0]] == [E]


def test_grpc_success_rate_leaves_out_a_backend_below_request_volume() -> None:
    """A backend short of requestVolume is neither weighed nor counted in the mean."""
    fleet = Fleet(success_rate(1000, minimum_hosts=4, request_volume=100), *RATES, F)
    for backend, rate in RATES.items():
        fleet.calls(backend, [OK] * rate + [INTERNAL] * (100 - rate))
    fleet.call(F, INTERNAL, 99)
    fleet.sweep()
    assert fleet.out() == {E}


def test_grpc_runs_success_rate_before_failure_percentage() -> None:
    rules = a50(
        success_rate=SuccessRateEjection(1000, 100, 5, 100),
        failure_percentage=FailurePercentageEjection(50, 100, 5, 100),
    )
    fleet = Fleet(rules, *RATES)
    for backend, rate in RATES.items():
        fleet.calls(backend, [OK] * rate + [INTERNAL] * (100 - rate))
    found, _ = fleet.sweep()
    assert [(e.backend, e.reason) for e in found] == [(E, "success_rate")]  # once


def test_nothing_sweeps_without_a_rule_that_can_eject() -> None:
    assert default_rules().sweeps
    assert not a50().sweeps
    assert failure_percentage().sweeps
    assert success_rate().sweeps


def test_forgetting_an_ejected_backend_returns_it() -> None:
    fleet = Fleet(default_rules(), A, B, C)
    fleet.call(A, INTERNAL, 5)
    assert fleet.ejector.forget({B, C}, fleet.clock() + 2.0) == [Returned(A, 2.0)]
    assert set(fleet.ejector.by_backend) == {B, C}
    assert fleet.ejector.forget({B}, fleet.clock()) == []


# --- status_code on real grpc.aio calls ----------------------------------------------------------

SERVICE = "conngrpc.test.Ejection"
OK_METHOD, ABORT_METHOD, HANG_METHOD = (f"/{SERVICE}/{m}" for m in ("Ok", "Abort", "Hang"))


class Replica:
    """An in-process grpc.aio server on 127.0.0.1: ``Ok`` answers, ``Abort`` fails with
    INTERNAL (``context.abort``), ``Hang`` never answers (``hanging`` is set once it
    runs)."""

    def __init__(self) -> None:
        self.hanging = asyncio.Event()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

        async def ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return b""

        async def abort(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            await context.abort(INTERNAL, "this replica fails every call")

        async def hang(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.hanging.set()
            await asyncio.Event().wait()
            return b""

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Ok": grpc.unary_unary_rpc_method_handler(ok),
                "Abort": grpc.unary_unary_rpc_method_handler(abort),
                "Hang": grpc.unary_unary_rpc_method_handler(hang),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        assert port
        self.address = f"127.0.0.1:{port}"


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    server = Replica()
    await server.server.start()
    try:
        yield server
    finally:
        await server.server.stop(None)


class PassThrough(grpc.aio.UnaryUnaryClientInterceptor):
    """Makes the call as asked: the call the pool sees is grpc's intercepted one."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(client_call_details, request)


class Refusing(grpc.aio.UnaryUnaryClientInterceptor):
    """Fails the call itself, with the status of its choosing, before any call is made."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        raise grpc.aio.AioRpcError(
            UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused by an interceptor"
        )


class Answering(grpc.aio.UnaryUnaryClientInterceptor):
    """Answers the call itself (a cache, say): no call reaches a server."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return b"cached"


async def ending(call: Any, finish: Callable[[Any], Any] | None = None) -> int | None:
    """Await ``call`` (after ``finish(call)``, if given) and return ``status_code`` as
    grpc's done callback sees it, which is where the pool reads it."""
    seen: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    call.add_done_callback(lambda done: seen.set_result(status_code(done)))
    if finish is not None:
        await finish(call)
    with anyio.fail_after(5):  # ample: each call ends in milliseconds
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await call
        code = await seen
    assert status_code(call) == code  # the same once it is over
    return code


@pytest.mark.anyio
@pytest.mark.parametrize("interceptors", [(), (PassThrough(),), (PassThrough(), PassThrough())])
async def test_status_code_reads_real_grpc_calls(
    replica: Replica, interceptors: Sequence[Any]
) -> None:
    async with grpc.aio.insecure_channel(replica.address, interceptors=interceptors) as channel:

        def method(name: str) -> Any:
            return channel.unary_unary(name)

        assert await ending(method(OK_METHOD)(b"")) == OK.value[0]
        assert await ending(method(ABORT_METHOD)(b"")) == INTERNAL.value[0]
        missing = method(f"/{SERVICE}/Missing")(b"")
        assert await ending(missing) == Code.UNIMPLEMENTED.value[0]
        deadline = method(HANG_METHOD)(b"", timeout=0.2)
        assert await ending(deadline) == Code.DEADLINE_EXCEEDED.value[0]

        async def cancel_once_it_hangs(call: Any) -> None:
            replica.hanging.clear()
            with anyio.fail_after(5):
                await replica.hanging.wait()
            assert status_code(call) is None  # running: no status yet
            call.cancel()

        hanging = method(HANG_METHOD)(b"")
        assert await ending(hanging, cancel_once_it_hangs) == CANCELLED.value[0]
        if interceptors:
            assert hasattr(hanging, "_interceptors_task")  # the branch under test


@pytest.mark.anyio
async def test_status_code_reads_an_error_an_interceptor_raised(replica: Replica) -> None:
    async with grpc.aio.insecure_channel(replica.address, interceptors=[Refusing()]) as channel:
        method: Any = channel.unary_unary(OK_METHOD)
        call = method(b"")
        assert await ending(call) == UNAVAILABLE.value[0]


@pytest.mark.anyio
async def test_an_answer_an_interceptor_made_up_has_no_status(replica: Replica) -> None:
    """No server answered: nothing to count against a backend."""
    async with grpc.aio.insecure_channel(replica.address, interceptors=[Answering()]) as channel:
        method: Any = channel.unary_unary(OK_METHOD)
        call = method(b"")
        assert await ending(call) is None
        assert await call == b"cached"


@pytest.mark.anyio
async def test_real_failures_eject_a_backend_through_outcomes(replica: Replica) -> None:
    """The whole way: five real INTERNAL calls, each counted in its done callback."""
    fleet = Fleet(default_rules(), A, B)
    async with grpc.aio.insecure_channel(replica.address) as channel:
        abort: Any = channel.unary_unary(ABORT_METHOD)
        for _ in range(5):
            call = abort(b"")
            call.add_done_callback(fleet.outcomes[A].record)
            assert await ending(call) == INTERNAL.value[0]  # recorded before ending saw it
    assert fleet.out() == {A}


def test_helpers_spread_failures_without_five_in_a_row() -> None:
    for failures, successes in [(16, 4), (15, 4), (7, 14), (80, 20), (40, 10)]:
        calls = spread(failures, successes)
        assert calls.count(INTERNAL) == failures
        assert calls.count(OK) == successes
        runs = [len(list(g)) for k, g in itertools.groupby(calls) if k is INTERNAL]
        assert max(runs) <= 4


@pytest.mark.anyio
async def test_a_call_whose_deadline_passed_while_it_waited_is_neither_sent_nor_counted(
    pool_name: str,
) -> None:
    """Calls waiting for room expire in bunches under overload: were they sent with no
    time left, each would end DEADLINE_EXCEEDED and count as its backend's failure."""
    async with running_pool(pool_name, 1, fake_channel(FakeConnector())):
        runtime = pools.get(pool_name)
        assert runtime is not None
        slot = runtime.handout.pick()
        assert slot is not None
        method = Pool.channel(pool_name).unary_unary("/conngrpc.test.v1.Test/Call")
        expired = time.monotonic() - 0.001
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            method._start_on(runtime.admission, (b"",), {}, expired, slot)  # type: ignore[attr-defined]
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline passed while the call waited" in (raised.value.details() or "")
        assert (slot.in_flight, runtime.admission.in_flight) == (0, 0)
        assert (slot.outcomes.failures, slot.outcomes.consecutive) == (0, 0)
