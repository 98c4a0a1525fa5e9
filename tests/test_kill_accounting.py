"""tests/_fleet.py's ``unexplained``: which failed calls a kill accounts for.

The live tests that kill backends under load (test_chaos.py, test_fleet.py) pass or fail
by it, so it is checked on its own, on a made-up record: a kill of backend A at t=10,
the pool hearing of its two lost channels at 10.01 and 10.02, A answering again at
10.50, and a later kill of A at 20.
"""

from __future__ import annotations

import pytest

from tests._fleet import Failure, Kill, Load, unexplained
from tests._probe import EventLog

A, B = "127.0.0.1:1001", "127.0.0.1:1002"
KILLS = [Kill(A, 10.0), Kill(A, 20.0)]


def record() -> tuple[Load, EventLog]:
    events = EventLog()
    for at, reason, backend in [
        (10.01, "connection_lost", A),
        (10.02, "connection_lost", A),
        (12.0, "connection_lost", B),  # B was not killed: it explains nothing
        (15.0, "max_age", A),  # a planned move explains nothing either
        (20.03, "connection_lost", A),
    ]:
        events.events.append(
            (("conngrpc", "channel", "disconnected"), {}, {"reason": reason, "backend": backend})
        )
        events.at.append(round(at * 1e9))
    load = Load(answered=[(A, 9.0), (B, 10.2), (A, 10.5), (A, 11.0), (A, 20.4)])
    return load, events


@pytest.mark.parametrize(
    ("failure", "accounted"),
    [
        (Failure("UNAVAILABLE", A, 9.9, 10.001), True),  # in flight at the kill
        (Failure("UNAVAILABLE", A, 10.015, 10.016), True),  # handed out before the pool heard
        (Failure("DEADLINE_EXCEEDED", A, 10.3, 11.3), True),  # sent before A answered again
        (Failure("DEADLINE_EXCEEDED", A, 10.6, 11.6), False),  # sent after A answered again
        (Failure("UNAVAILABLE", A, 9.0, 9.5), False),  # ended before the kill
        (Failure("UNAVAILABLE", B, 10.01, 10.02), False),  # another backend
        (Failure("UNAVAILABLE", None, 10.01, 10.02), False),  # nobody knows where it went
        (Failure("UNAVAILABLE", A, 15.0, 15.01), False),  # between the two kills
        (Failure("UNAVAILABLE", A, 20.02, 20.1), True),  # the second kill
    ],
)
def test_a_kill_accounts_for_the_calls_it_caught_and_no_other(
    failure: Failure, accounted: bool
) -> None:
    load, events = record()
    load.failures.append(failure)
    assert (unexplained(load, KILLS, events) == []) is accounted


def test_a_backend_that_never_answered_again_accounts_for_every_later_failure() -> None:
    load, events = record()
    load.answered = [(A, 9.0)]
    load.failures.append(Failure("DEADLINE_EXCEEDED", A, 13.0, 14.0))
    assert unexplained(load, KILLS[:1], events) == []
