"""Ejection: the backends a pool's pick leaves alone for a while, from its calls' outcomes.

Every call through the PooledChannel ends in a status; the slot it ran on counts it
against its backend (:meth:`Outcomes.record`, in grpc's done callback). Two kinds of
rule take a backend out of the pick:

- **at once**, on the Nth server failure in a row (the default's, as Envoy's
  ``consecutive_5xx`` and Finagle's failure accrual do): a replica failing every call
  leaves after a handful of them, not at the next sweep;
- **at each sweep** (every ``interval``), on the share of calls that failed since the
  last one, as gRFC A50 (grpc's ``outlier_detection_experimental``) does.

An ejected backend comes back after ``base_ejection_time`` times how many times it was
ejected (capped), and that multiplier shrinks again while it behaves. The pool's
default returns it on probation: one call at a time goes to it (a probe), until one
succeeds (then it is back in full) or fails (then it is out again, for longer); a
backend no probe reached within a sweep interval is back in full too.

Two sets of rules: :func:`default_rules` (no configuration: only the server's own
failures count, at most half the backends in service may be out, never the last) and
:func:`rules_from` (a user's ``outlier_detection_experimental``, applied as grpc applies
it: every non-OK status counts, up to ``maxEjectionPercent``).

Nothing here awaits: the table calls it, with a clock a test can fake.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import grpc.aio

from .service_config import FailurePercentageEjection, OutlierDetection, SuccessRateEjection

__all__ = [
    "REFUSED_STREAM",
    "SERVER_FAILURES",
    "Ejected",
    "Ejector",
    "Outcomes",
    "Returned",
    "Rules",
    "default_rules",
    "refused",
    "rules_from",
    "status_code",
]


def _code(status: grpc.StatusCode) -> int:
    value: int = status.value[0]
    return value


#: The codes that say a server failed, not that it answered: what the default counts.
#: NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED and the rest are the application's
#: answers. DEADLINE_EXCEEDED counts, so that a replica that hangs leaves; a caller whose
#: deadlines are too short for every backend cannot empty the pool (the cap).
SERVER_FAILURES: frozenset[int] = frozenset(
    _code(status)
    for status in (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)
_EVERY_FAILURE = frozenset(_code(status) for status in grpc.StatusCode) - {0}
_CANCELLED = frozenset({_code(grpc.StatusCode.CANCELLED)})
_NO_STREAK = 2**62  # a consecutive-failure threshold never reached

EjectionReason = Literal["consecutive_failures", "failure_percentage", "success_rate"]


@dataclass(frozen=True, slots=True)
class Rules:
    """What takes a backend out of the pick, and for how long.

    ``failure_codes``: the status codes that count as the backend's failure;
    ``ignored``: codes that count neither way (a call the caller cancelled says nothing
    of the server); every other code is a success. ``consecutive_failures``: eject at
    once at that many failures in a row (None: never at once). ``max_ejection_percent``
    None is the default's cap (at most half of the backends in service, never the
    last); a number is grpc's rule (eject while fewer than that percentage of the
    backends are out, and always the first). ``relative``: a failure percentage counts
    above the rest of the pool's (a failure every backend shares is not one backend's
    fault). ``decay_every``: how long a backend must stay in for its multiplier to
    shrink by one.
    """

    failure_codes: frozenset[int]
    ignored: frozenset[int]
    consecutive_failures: int | None
    interval: float
    base_ejection_time: float
    max_ejection_time: float
    max_ejection_percent: int | None
    success_rate: SuccessRateEjection | None
    failure_percentage: FailurePercentageEjection | None
    relative: bool
    decay_every: float

    @property
    def longest(self) -> float:
        """The longest ejection: ``max_ejection_time``, but never below the base (A50)."""
        return max(self.base_ejection_time, self.max_ejection_time)

    def ejection_time(self, multiplier: int) -> float:
        """How long a backend ejected with ``multiplier`` stays out: the base times the
        multiplier, capped at :attr:`longest` (so never below the base), as grpc does."""
        return min(self.base_ejection_time * multiplier, self.longest)

    @property
    def sweeps(self) -> bool:
        """Whether anything can eject a backend (grpc runs no timer when nothing can)."""
        return bool(self.consecutive_failures or self.success_rate or self.failure_percentage)


def default_rules() -> Rules:
    """The pool's rules when it is given none.

    Five server failures in a row eject a backend at once (Envoy's ``consecutive_5xx``
    default); every second, a backend that took at least 20 calls and failed 20
    percentage points more of them than the rest of the pool did is ejected too (a
    replica failing a third of its calls). Ejection lasts 5 s times the times it was
    ejected, at most 60 s, so that a replica that recovered has its share back within
    a minute; the multiplier shrinks by one per 5 s in service. At most half of the
    backends in service are out at once, never the last.
    """
    return Rules(
        failure_codes=SERVER_FAILURES,
        ignored=_CANCELLED,
        consecutive_failures=5,
        interval=1.0,
        base_ejection_time=5.0,
        max_ejection_time=60.0,
        max_ejection_percent=None,
        success_rate=None,
        failure_percentage=FailurePercentageEjection(
            threshold=20, enforcement_percentage=100, minimum_hosts=2, request_volume=20
        ),
        relative=True,
        decay_every=5.0,
    )


def rules_from(config: OutlierDetection) -> Rules:
    """A user's ``outlier_detection_experimental``, applied as grpc applies it."""
    return Rules(
        failure_codes=_EVERY_FAILURE,
        ignored=frozenset(),
        consecutive_failures=None,
        interval=config.interval,
        base_ejection_time=config.base_ejection_time,
        max_ejection_time=config.max_ejection_time,
        max_ejection_percent=config.max_ejection_percent,
        success_rate=config.success_rate_ejection,
        failure_percentage=config.failure_percentage_ejection,
        relative=False,
        decay_every=0.0,  # at every sweep, as grpc
    )


def status_code(call: Any) -> int | None:
    """The status a finished grpc.aio call ended with, as grpc's number; None if unknown.

    Read from what grpc.aio keeps (its own ``_raise_for_status`` does the same), at the
    cost of two attribute reads: this runs in every call's done callback. A call made
    through client interceptors is read through the call its interceptors made.
    """
    try:
        code: int = call._cython_call._status.code()
        return code
    except AttributeError:
        pass
    task = getattr(call, "_interceptors_task", None)
    if task is None or not task.done() or task.cancelled():
        return None
    error = task.exception()
    if isinstance(error, grpc.aio.AioRpcError):
        return _code(error.code())
    if error is not None:
        return None
    inner = task.result()
    return None if inner is call else status_code(inner)


#: What grpc core writes in the details of a stream the server refused before it
#: began (HTTP/2 RST_STREAM with REFUSED_STREAM, 7): the only sign of one in Python.
REFUSED_STREAM = "RST_STREAM with error code 7"
_UNAVAILABLE_CODE = _code(grpc.StatusCode.UNAVAILABLE)


def refused(call: Any, code: int | None) -> bool:
    """Whether a finished call (of status ``code``) was refused by its server before it
    began: the server was at its stream cap (grpc's overload protection)."""
    if code != _UNAVAILABLE_CODE:
        return False
    try:
        details: str = call._cython_call._status.details()
    except AttributeError:
        return False
    return REFUSED_STREAM in details


class Outcomes:
    """One backend's calls, counted as they end, and its ejection.

    ``successes`` and ``failures`` count since the last sweep; ``consecutive`` the
    failures in a row. ``ejected_at`` is set while the backend is out.
    """

    __slots__ = (
        "backend",
        "consecutive",
        "ejected_at",
        "ejections",
        "failure_codes",
        "failures",
        "ignored",
        "kept_since",
        "multiplier",
        "probing",
        "successes",
        "threshold",
        "tripped",
    )

    def __init__(self, backend: str, rules: Rules, tripped: Callable[[Outcomes], None]) -> None:
        self.backend = backend
        self.failure_codes = rules.failure_codes
        self.ignored = rules.ignored
        self.threshold = rules.consecutive_failures or _NO_STREAK
        #: called at each threshold'th failure in a row while not ejected
        self.tripped = tripped
        self.successes = 0
        self.failures = 0
        self.consecutive = 0
        self.ejected_at: float | None = None
        self.multiplier = 0
        self.ejections = 0  # in all, for telemetry
        self.kept_since = 0.0  # when the multiplier last shrank, or the backend returned
        #: back on probation: one call at a time, until one ends (the default's rules)
        self.probing = False

    def __repr__(self) -> str:
        out = "" if self.ejected_at is None else f" ejected_at={self.ejected_at}"
        out += " probing" if self.probing else ""
        return (
            f"<Outcomes {self.backend} ok={self.successes} failed={self.failures} "
            f"in_a_row={self.consecutive} multiplier={self.multiplier}{out}>"
        )

    def record(self, call: Any) -> None:
        """A call on this backend ended: count how (grpc's done callback, via the slot)."""
        self.count(status_code(call))

    def count(self, code: int | None) -> None:
        """A call on this backend ended with status ``code`` (grpc's number): count it."""
        if code is None or code in self.ignored:
            return
        if code in self.failure_codes:
            self.failures += 1
            self.consecutive += 1
            # at each threshold'th in a row: once refused by the cap, it is asked again
            # after as many more, not at every failure (an outage fails them all)
            if not self.consecutive % self.threshold and self.ejected_at is None:
                self.tripped(self)
        else:
            self.successes += 1
            self.consecutive = 0
            if self.probing:  # its probe answered: back in full
                self.tripped(self)

    def returns_at(self, rules: Rules) -> float | None:
        """When an ejected backend comes back (None: it is in)."""
        if self.ejected_at is None:
            return None
        return self.ejected_at + rules.ejection_time(self.multiplier)


@dataclass(frozen=True, slots=True)
class Ejected:
    """``backend`` left the pick until ``until`` (the ejector's clock), for ``reason``;
    ``probation``: it was out already, on probation."""

    backend: str
    reason: EjectionReason
    until: float
    successes: int
    failures: int
    consecutive: int
    ejections: int
    probation: bool = False


@dataclass(frozen=True, slots=True)
class Returned:
    """``backend`` is back in the pick after ``ejected_for`` seconds; ``probation``: it
    was back already, on probation, and is now in full (no news: no event)."""

    backend: str
    ejected_for: float
    probation: bool = False


class Ejector:
    """The outcomes of every backend, and the rules that eject them.

    The table owns it: it asks :meth:`trip` when a backend failed enough in a row, and
    :meth:`sweep` every ``rules.interval``; both return what changed, and the table
    takes the ejected backends' channels out of the hand-out.
    """

    __slots__ = ("_random", "by_backend", "rules")

    def __init__(self, rules: Rules, rand: Callable[[], float] = random.random) -> None:
        self.rules = rules
        self._random = rand
        self.by_backend: dict[str, Outcomes] = {}

    def __repr__(self) -> str:
        return f"<Ejector ejected={list(self.ejected())}>"

    def outcomes(self, backend: str, tripped: Callable[[Outcomes], None]) -> Outcomes:
        """The outcomes of ``backend``, made on first use."""
        found = self.by_backend.get(backend)
        if found is None:
            found = self.by_backend[backend] = Outcomes(backend, self.rules, tripped)
        return found

    def ejected(self) -> Iterable[Outcomes]:
        return (o for o in self.by_backend.values() if o.ejected_at is not None)

    def out(self) -> Iterable[Outcomes]:
        """The backends out of the hand-out: ejected, or on probation."""
        return (o for o in self.by_backend.values() if o.ejected_at is not None or o.probing)

    def is_ejected(self, backend: str) -> bool:
        found = self.by_backend.get(backend)
        return found is not None and found.ejected_at is not None

    def is_out(self, backend: str) -> bool:
        """Whether ``backend``'s channels are kept out of the hand-out."""
        found = self.by_backend.get(backend)
        return found is not None and (found.ejected_at is not None or found.probing)

    def prove(self, outcomes: Outcomes) -> bool:
        """``outcomes``' probe answered: its backend is back in full (False: it was not
        on probation)."""
        if not outcomes.probing:
            return False
        outcomes.probing = False
        return True

    def settle_probes(self, now: float, busy: Collection[str]) -> list[str]:
        """The backends on probation that no probe reached for a sweep interval (nobody
        calls through the PooledChannel): back in full, for ``get_channel``. A probe
        still running (``busy``) keeps its backend on probation until it ends, or for
        the longest ejection time at most (a stream that never ends)."""
        rules = self.rules
        due = [
            o
            for o in self.by_backend.values()
            if o.probing
            and now - o.kept_since >= rules.interval
            and (o.backend not in busy or now - o.kept_since >= rules.longest)
        ]
        for outcomes in due:
            outcomes.probing = False
        return [o.backend for o in due]

    def forget(self, keep: Collection[str], now: float) -> list[Returned]:
        """Let go of the backends not in ``keep`` (the resolver dropped them); those
        ejected end their ejection now (for whoever counts the ejected ones)."""
        gone = [o for b, o in self.by_backend.items() if b not in keep]
        for outcomes in gone:
            del self.by_backend[outcomes.backend]
        return [Returned(o.backend, now - o.ejected_at) for o in gone if o.ejected_at is not None]

    def may_eject(self, in_service: int, ejected: int) -> bool:
        """Whether one more backend may go, with ``ejected`` of ``in_service`` out.

        The default: at most half, so never the last. grpc's: always the first, then
        while fewer than ``max_ejection_percent`` percent are out.
        """
        percent = self.rules.max_ejection_percent
        if percent is None:
            return ejected < in_service // 2
        return ejected == 0 or 100.0 * ejected / max(in_service, 1) < percent

    def over_cap(self, in_service: int, now: float) -> Returned | None:
        """The default's cap holds as backends leave service, not only when one is
        ejected: while more are out than half of ``in_service``, the one due back first
        returns now (so the last backend left is never out). grpc's rule: never."""
        if self.rules.max_ejection_percent is not None:
            return None
        out = list(self.out())
        if len(out) <= in_service // 2:
            return None
        rules = self.rules
        # on probation first (back already, but for the probe), then the soonest due
        soonest = min(out, key=lambda o: (not o.probing, o.returns_at(rules) or 0.0))
        if soonest.probing:
            soonest.probing = False
            return Returned(soonest.backend, 0.0, probation=True)
        assert soonest.ejected_at is not None
        back = Returned(soonest.backend, now - soonest.ejected_at)
        self._return(soonest, now, probe=False)
        return back

    def trip(self, outcomes: Outcomes, in_service: int, now: float) -> Ejected | None:
        """``outcomes``' backend failed ``consecutive_failures`` times in a row: eject it
        now, unless the cap says no (it is asked again after as many more)."""
        if outcomes.ejected_at is not None or outcomes.consecutive < outcomes.threshold:
            return None  # out already, or a stale report (a success came since)
        ejected = sum(1 for o in self.out() if o is not outcomes)
        if not self.may_eject(in_service, ejected):
            return None
        counts = (outcomes.successes, outcomes.failures)
        return self._eject(outcomes, "consecutive_failures", now, counts)

    def _eject(
        self, outcomes: Outcomes, reason: EjectionReason, now: float, counts: tuple[int, int]
    ) -> Ejected:
        """Take ``outcomes``' backend out; ``counts``: the successes and failures that
        decided it."""
        outcomes.ejected_at = now
        outcomes.multiplier += 1
        outcomes.ejections += 1
        in_a_row, outcomes.consecutive = outcomes.consecutive, 0
        outcomes.successes = outcomes.failures = 0
        probation, outcomes.probing = outcomes.probing, False
        until = now + self.rules.ejection_time(outcomes.multiplier)
        return Ejected(
            outcomes.backend, reason, until, *counts, in_a_row, outcomes.ejections, probation
        )

    def sweep(self, in_service: int, now: float) -> tuple[list[Ejected], list[Returned]]:
        """An interval passed: eject by the share of failed calls, return the backends
        whose time is up, and start counting afresh (gRFC A50's timer, step by step)."""
        rules = self.rules
        counted = [
            (o, o.successes, o.failures)
            for o in self.by_backend.values()
            if o.ejected_at is None and o.successes + o.failures
        ]
        for outcomes, _, _ in counted:
            outcomes.successes = outcomes.failures = 0
        out = sum(1 for _ in self.out())
        ejections: list[Ejected] = []
        for reason, rule, candidates in self._candidates(counted):
            for outcomes, counts in candidates:
                # grpc draws 1..99 and ejects below enforcement_percentage: 100 always
                if outcomes.ejected_at is not None:
                    continue
                if 1 + int(self._random() * 99) >= rule.enforcement_percentage:
                    continue
                others = out - outcomes.probing  # on probation, it is out already
                if self.may_eject(in_service, others):
                    ejections.append(self._eject(outcomes, reason, now, counts))
                    out = others + 1
        returned: list[Returned] = []
        for outcomes in self.by_backend.values():
            until = outcomes.returns_at(rules)
            if until is None:
                behaves = outcomes.multiplier and not outcomes.probing  # not yet, on probation
                if behaves and now - outcomes.kept_since >= rules.decay_every:
                    outcomes.multiplier -= 1
                    outcomes.kept_since = now
            elif until <= now:
                assert outcomes.ejected_at is not None
                returned.append(Returned(outcomes.backend, now - outcomes.ejected_at))
                self._return(outcomes, now)
        return ejections, returned

    def _candidates(
        self, counted: list[tuple[Outcomes, int, int]]
    ) -> Iterator[
        tuple[
            EjectionReason,
            SuccessRateEjection | FailurePercentageEjection,
            list[tuple[Outcomes, tuple[int, int]]],
        ]
    ]:
        """The backends each sweep rule finds out of line, rule by rule (success rate
        first, as grpc), each with its successes and failures."""
        rules = self.rules
        rate = rules.success_rate
        if rate is not None:
            volume = [(o, s, f) for o, s, f in counted if s + f >= rate.request_volume]
            if volume and len(volume) >= rate.minimum_hosts:
                rates = [100.0 * s / (s + f) for _, s, f in volume]
                mean = sum(rates) / len(rates)
                stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
                threshold = mean - stdev * (rate.stdev_factor / 1000)
                low = [
                    (o, (s, f)) for (o, s, f), r in zip(volume, rates, strict=True) if r < threshold
                ]
                yield "success_rate", rate, low
        share = rules.failure_percentage
        if share is not None:
            volume = [(o, s, f) for o, s, f in counted if s + f >= share.request_volume]
            if volume and len(volume) >= share.minimum_hosts:
                high = []
                for outcomes, s, f in volume:
                    failed = 100.0 * f / (s + f)
                    if rules.relative:
                        failed -= _rest(counted, outcomes)
                    if failed > share.threshold:
                        high.append((outcomes, (s, f)))
                yield "failure_percentage", share, high

    def _return(self, outcomes: Outcomes, now: float, probe: bool = True) -> None:
        """Back, on the default's probation: its first server failure ejects it again,
        and (``probe``) one call at a time goes to it until a call ends."""
        outcomes.ejected_at = None
        outcomes.kept_since = now
        outcomes.successes = outcomes.failures = 0
        if self.rules.consecutive_failures is not None:
            outcomes.consecutive = self.rules.consecutive_failures - 1
            outcomes.probing = probe


def _rest(counted: list[tuple[Outcomes, int, int]], this: Outcomes) -> float:
    """The percentage of calls that failed on every backend but ``this``."""
    successes = sum(s for o, s, _ in counted if o is not this)
    failures = sum(f for o, _, f in counted if o is not this)
    total = successes + failures
    return 100.0 * failures / total if total else 0.0
