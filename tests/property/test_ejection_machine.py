"""A hypothesis state machine over a pool's table and its ejections (fake clock).

Two to six backends, one or two serving channels each. Calls end on them in any mix of
statuses (as a PooledChannel's done callbacks end them), time passes and the ejection
sweep runs, a trip is reported again, a backend's health flips, a backend recovers. The
rules are the default's, or grpc's ``outlier_detection_experimental``.

- At every step: the table agrees with itself, hands out exactly the serving channels
  of the backends not ejected, and reports each ejection and return once.
- At each ejection: the cap held (the default: at most half of the backends serving or
  ejected, so never the last, and so as backends leave service, the soonest due
  returning early; grpc's: the first, then while fewer than ``maxEjectionPercent``
  percent of those serving or ejected); a sweep ejects no backend without a failure that
  counts since the last sweep, a trip only the backend that failed enough in a row.
- At each sweep: every backend whose ejection time is over is back, none earlier.
- A backend that recovers (only successes from now on) is back within its ejection
  time and stays in.
"""

from __future__ import annotations

import grpc
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conngrpc.channel.changes import HealthChanged
from conngrpc.pool.ejection import Outcomes, Rules, default_rules, rules_from
from conngrpc.pool.handout import Slot
from conngrpc.pool.service_config import (
    FailurePercentageEjection,
    OutlierDetection,
    SuccessRateEjection,
)
from conngrpc.pool.table import FollowUps, Serving, Sweep, Tripped
from tests.test_ejection import Finished
from tests.test_table import Table

Code = grpc.StatusCode
ADDRESSES = [f"127.0.0.{i}:1" for i in range(1, 7)]
CODES = [
    Code.OK,
    Code.OK,
    Code.UNAVAILABLE,
    Code.INTERNAL,
    Code.DEADLINE_EXCEEDED,
    Code.NOT_FOUND,
    Code.CANCELLED,
]


def grpcs(max_ejection_percent: int, base: float, longest: float, success_rate: bool) -> Rules:
    """grpc's rules with small numbers, so that a few steps reach them."""
    return rules_from(
        OutlierDetection(
            interval=1.0,
            base_ejection_time=base,
            max_ejection_time=longest,
            max_ejection_percent=max_ejection_percent,
            success_rate_ejection=SuccessRateEjection(500, 100, 2, 5) if success_rate else None,
            failure_percentage_ejection=FailurePercentageEjection(50, 100, 2, 5),
        )
    )


grpcs_rules = st.builds(
    grpcs,
    st.sampled_from([0, 10, 34, 50, 100]),
    st.sampled_from([1.0, 3.0, 10.0]),
    st.sampled_from([0.5, 7.0, 30.0]),
    st.booleans(),
)


class EjectionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: Table
        self.policy: Rules  # not rules: the state machine's own
        self.backends: list[str] = []
        self.ejected: set[str] = set()  # the model, from the follow-ups
        self.on_probation: set[str] = set()  # returned since last ejected (the default)
        self.failed: dict[str, int] = {}  # failures that count, since the last sweep
        self.streak: dict[str, int] = {}  # failures that count, in a row

    @initialize(
        backends=st.integers(2, 6),
        per_backend=st.integers(1, 2),
        rules=st.one_of(st.builds(default_rules), grpcs_rules),
    )
    def start(self, backends: int, per_backend: int, rules: Rules) -> None:
        self.policy = rules
        self.backends = ADDRESSES[:backends]
        self.failed = dict.fromkeys(self.backends, 0)
        self.streak = dict.fromkeys(self.backends, 0)
        self.pool = Table(backends * per_backend, *self.backends, rules=rules)
        for index in range(backends * per_backend):
            self.pool.connect(index)
        assert sorted(self.pool.held().values()) == [per_backend] * backends

    # --- what happens ---------------------------------------------------------------------

    @rule(data=st.data(), code=st.sampled_from(CODES), times=st.integers(1, 25))
    def calls_end(self, data: st.DataObject, code: Code, times: int) -> None:
        """Calls on a backend end with ``code`` (on an ejected one too: calls that were
        running as it left)."""
        backend = data.draw(st.sampled_from(self.backends))
        slots = self.pool.slots(backend)
        self._end(backend, slots[data.draw(st.integers(0, len(slots) - 1))], code, times)

    def _end(self, backend: str, slot: Slot, code: Code, times: int) -> None:
        """``times`` calls on ``slot`` end with ``code``. The default's streak: at its
        fifth failure in a row (the first, back on probation) a backend not ejected is,
        if the cap lets it."""
        value = code.value[0]
        counts = value in self.policy.failure_codes
        for _ in range(times):
            if counts:
                self.streak[backend] += 1
            elif value not in self.policy.ignored:
                self.streak[backend] = 0
            # asked at each threshold'th failure in a row (again after as many more)
            due = counts and self.streak[backend] % self._threshold() == 0
            due = due and backend not in self.ejected
            out = (self.ejected | self._probing()) - {backend}  # on probation: out too
            may = len(out) < self._cap(self._in_service())
            slot.in_flight += 1
            slot.done(Finished(code))
            self.failed[backend] += counts
            self.pool.table.check()
            while self.pool.tripped:
                self._apply(Tripped(self.pool.tripped.pop(0)))
            if due:
                assert (backend in self.ejected) == may, (backend, self.streak, may)

    @rule(data=st.data(), times=st.integers(5, 30))
    def goes_bad(self, data: st.DataObject, times: int) -> None:
        """A replica fails every call for a while, as the others answer theirs."""
        bad = data.draw(st.sampled_from(self.backends))
        for backend in self.backends:
            slot = self.pool.slots(backend)[0]
            self._end(backend, slot, Code.UNAVAILABLE if backend == bad else Code.OK, times)

    @rule(data=st.data())
    def tripped_again(self, data: st.DataObject) -> None:
        """A trip reported a second time, as a backend's next failure does while the cap
        says no: at most one ejection comes of it."""
        streak = [o for o in self._outcomes() if o.consecutive >= self._threshold()]
        if streak:
            self._apply(Tripped(data.draw(st.sampled_from(streak))))

    @rule(seconds=st.sampled_from([0.25, 1.0, 1.0, 2.5, 5.0, 12.0]))
    def sweep(self, seconds: float) -> None:
        self.pool.clock.now += seconds
        self._apply(Sweep())

    @rule(data=st.data(), serving=st.booleans())
    def health_flips(self, data: st.DataObject, serving: bool) -> None:
        backend = data.draw(st.sampled_from(self.backends))
        status = "SERVING" if serving else "NOT_SERVING"
        for slot in self.pool.slots(backend):
            self._apply(HealthChanged(serving, status), slot.index)

    @rule(data=st.data())
    def recovers(self, data: st.DataObject) -> None:
        """An ejected backend answers every call from now on: it is still out just
        before its ejection time, back at the sweep at that time, and stays in."""
        if not self.ejected:
            return
        backend = data.draw(st.sampled_from(sorted(self.ejected)))
        until = self.pool.table.ejected()[backend]
        clock = self.pool.clock
        clock.now = max(clock.now, until - self.policy.interval / 4)
        self._apply(Sweep())
        clock.now = max(clock.now, until)
        self._apply(Sweep())
        assert backend not in self.ejected, (backend, until)
        for seconds in (self.policy.interval,) * 3 + (self.policy.longest,):
            for slot in self.pool.slots(backend):
                slot.in_flight += 5
                for _ in range(5):
                    slot.done(Finished(Code.OK))
                    while self.pool.tripped:  # a probe answered: back in full
                        self._apply(Tripped(self.pool.tripped.pop(0)))
            self.sweep(seconds)
            assert backend not in self.ejected
        self.streak[backend] = 0

    # --- what must hold -----------------------------------------------------------------------

    def _apply(self, change: Tripped | Sweep | HealthChanged, index: int | None = None) -> None:
        table = self.pool.table
        now = self.pool.clock()
        was = set(self.ejected)
        due = {b for b, until in table.ejected().items() if until <= now}
        in_service = self._in_service()
        streak = change.outcomes.consecutive if isinstance(change, Tripped) else 0
        follow: FollowUps = self.pool.apply(index, change)
        new = [e.backend for e in follow.ejected]
        back = [r.backend for r in follow.returned]
        for ejected in follow.ejected:
            event(f"ejected: {ejected.reason}")
        if back:
            event("returned")
        assert len(set(new)) == len(new), new
        assert not set(new) & was, (new, was)
        assert set(back) <= was, (back, was)
        early = set(back)
        if isinstance(change, Sweep):
            assert due <= set(back), (back, due)  # every one due
            early -= due
            for b in new:
                assert self.failed[b], (b, self.failed)  # a failure that counts, this interval
            self.failed = dict.fromkeys(self.backends, 0)
        if early:
            # Only the default returns a backend before its time: when backends left
            # service, so that more than half of those left were out; no more than that.
            assert self.policy.max_ejection_percent is None, early
            left = ((was | set(new)) - set(back)) | self._probing()
            assert len(left) == self._in_service() // 2, (early, left, self._in_service())
        if not isinstance(change, Sweep):
            if isinstance(change, Tripped):
                assert set(new) <= {change.outcomes.backend}, new
                assert not new or streak >= self._threshold(), (new, streak)
            else:
                assert not new
        if new:
            out = was | set(new) | self._probing()
            assert len(out) <= self._cap(in_service), (was, new, out, in_service)
        self.ejected = (was | set(new)) - set(back)
        if self.policy.consecutive_failures is not None:  # the default's probation
            self.on_probation = (self.on_probation | set(back)) - set(new)
        for b in new:
            self.streak[b] = 0
        for b in back:  # the default's probation: one failure ejects it again
            self.streak[b] = self._threshold() - 1 if self.policy.consecutive_failures else 0

    def _in_service(self) -> int:
        """The backends the pool balances over: serving a channel, ejected, or on
        probation."""
        table = self.pool.table
        out = set(table.ejected()) | self._probing()
        return len({s.backend for s in table.handout.slots} | out)

    def _probing(self) -> set[str]:
        return {o.backend for o in self.pool.table.ejector.by_backend.values() if o.probing}

    def _cap(self, in_service: int) -> int:
        """The most backends out at once, once one more is ejected."""
        percent = self.policy.max_ejection_percent
        if percent is None:
            return in_service // 2
        # grpc's: the first always (even of none serving), then while under the percent
        return max(
            1,
            next((k for k in range(1, in_service) if 100 * k / in_service >= percent), in_service),
        )

    def _outcomes(self) -> list[Outcomes]:
        return list(self.pool.table.ejector.by_backend.values())

    def _threshold(self) -> int:
        return self.policy.consecutive_failures or 2**62

    @invariant()
    def the_table_agrees_with_itself_and_the_model(self) -> None:
        if not self.backends:
            return
        table = self.pool.table
        table.check()
        assert set(table.ejected()) == self.ejected
        assert set(table.ejector.by_backend) == set(self.backends)
        # Back on the default's probation: out of the hand-out but for one probe call at
        # a time, on one of its serving channels.
        probing = {o.backend for o in table.ejector.by_backend.values() if o.probing}
        assert not probing & self.ejected, (probing, self.ejected)
        assert probing <= self.on_probation, (probing, self.on_probation)
        out = self.ejected | probing
        serving = [
            r.state.slot
            for r in table.records
            if isinstance(r.state, Serving) and r.state.slot.backend not in out
        ]
        assert table.handout.slots == tuple(serving)
        probed = {
            r.state.slot.backend
            for r in table.records
            if isinstance(r.state, Serving) and r.state.slot.backend in probing
        }
        assert {probe.backend for probe in table.handout.probes} == probed

    @invariant()
    def the_default_never_ejects_every_backend(self) -> None:
        if not self.backends or self.policy.max_ejection_percent is not None:
            return
        # At most half of those in service are out, as backends leave service too (an
        # ejected one returns early), and no more are in service than there are
        # backends: never all.
        out = self.ejected | self._probing()
        assert len(out) <= self._in_service() // 2, (out, self._in_service())
        assert len(self.ejected) <= len(self.backends) // 2


TestEjectionMachine = EjectionMachine.TestCase
# No explain phase: it traces every line of a failing example again and again, which
# took this machine past its time limit before the failure was reported.
TestEjectionMachine.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    phases=[phase for phase in Phase if phase is not Phase.explain],
)
