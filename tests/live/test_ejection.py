"""Ejection, live: a replica whose calls fail leaves the pool's pick, then comes back.

Each replica is conngrpc._server in its own process on 127.0.0.1, named by what its Sleep
answers (``r0``, ``r1``, ...); the bad ones run with a fault (``--fail CODE``,
``--fail-percent``, ``--fail-after-ms``, ``--hang``; SIGUSR2 heals one), and the fault
modes are tested first (``--stall`` too, which the benchmarks of hedging use). Callers go
through ``Pool.channel``. Only the pool's default rules are under test
(conngrpc/pool/ejection.py): five server failures in a row eject a backend at once; a
sweep every second ejects one failing 20 points more than the rest; out for 5 s, then
back on probation; at most half of the backends out, never the last.

Marked slow (``make test-all``): the scenarios that wait for a sweep or a deadline
(2 to 3 s each) or a return (5 s out: 7 to 8 s). The default tier keeps a replica
failing every call, the cap, the last one left and the pool's stop (about 6 s).

The bounds are counts of calls, not times: a call belongs to the ejection it began
after (the pick is made as the call is made), and what was in flight on the backend when
it left is read from the pool's table at that moment.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from conngrpc import Pool, PoolNotStartedError, telemetry
from conngrpc._server import SLEEP_METHOD, Fault, ServerProcess, main, start_server
from conngrpc.channel.connector import raw_unary
from conngrpc.pool.ejection import Ejector
from conngrpc.pool.handout import Slot
from conngrpc.pool.runtime import BACKEND_EJECTED, BACKEND_RETURNED, PoolRuntime, pools
from tests._net import established_sockets
from tests._pools import live_pool
from tests._probe import WAIT_LIMIT, wait_until

pytestmark = pytest.mark.anyio

FAIL = ["--fail", "INTERNAL"]
#: The default rules' streak: this many server failures in a row eject a backend.
STREAK = 5
#: What a healthy replica takes per call, in ms: every replica answers in about the same
#: time, so the least-loaded pick spreads the calls evenly over the healthy ones.
HEALTHY_MS = b"20"
#: How long an ejection may take to come, in s: at once for a streak, at the next sweep
#: (every second) for a share of failures, at the calls' deadline for a replica that
#: hangs; generous for a busy 2-core machine.
EJECTED_WITHIN = 15.0
#: How long a return may take: the ejection's 5 s, then the next sweep; generous too.
RETURNED_WITHIN = 20.0


# --- the replicas ---------------------------------------------------------------------------


@asynccontextmanager
async def replicas(*flags: Sequence[str]) -> AsyncIterator[list[ServerProcess]]:
    """One replica per entry of ``flags`` (its fault's flags), started side by side; replica
    ``i`` answers ``r<i>``."""
    servers = [ServerProcess(args=["--name", f"r{i}", *each]) for i, each in enumerate(flags)]
    try:
        async with anyio.create_task_group() as starting:
            for server in servers:
                starting.start_soon(anyio.to_thread.run_sync, server.start)
        yield servers
    finally:
        for server in servers:
            server.kill()


def addresses(servers: list[ServerProcess]) -> list[str]:
    return [server.address for server in servers]


async def heal(server: ServerProcess) -> None:
    """Turn ``server``'s fault off (SIGUSR2), and wait until a call of its own says so."""
    server.signal(signal.SIGUSR2)
    async with grpc.aio.insecure_channel(server.address) as channel:
        sleep = raw_unary(channel, SLEEP_METHOD)
        with anyio.fail_after(WAIT_LIMIT):
            while True:
                try:
                    await sleep(b"0", timeout=WAIT_LIMIT)
                    return
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.INTERNAL:
                        raise


# --- the callers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call through the PooledChannel: when it began and ended (``time.monotonic()``),
    and the replica that answered it, or the status code it failed with."""

    began: float
    ended: float
    answer: str


@asynccontextmanager
async def calling(
    name: str, callers: int, *, deadline: float = 5.0, request: bytes = HEALTHY_MS
) -> AsyncIterator[list[Call]]:
    """``callers`` tasks calling Sleep through ``Pool.channel(name)`` until the block ends;
    the calls in the order they ended. Leaving the block waits for the calls in flight."""
    calls: list[Call] = []
    stop = anyio.Event()
    sleep = raw_unary(Pool.channel(name), SLEEP_METHOD)

    async def caller() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                answer = (await sleep(request, timeout=deadline)).decode()
            except grpc.aio.AioRpcError as error:
                answer = error.code().name
            calls.append(Call(began, time.monotonic(), answer))

    async with anyio.create_task_group() as tasks:
        for _ in range(callers):
            tasks.start_soon(caller)
        try:
            yield calls
        finally:
            stop.set()


async def more_calls(calls: list[Call], count: int, timeout: float = WAIT_LIMIT) -> None:
    """Wait until ``count`` more calls have ended."""
    target = len(calls) + count
    await wait_until(lambda: len(calls) >= target, timeout)


def between(calls: list[Call], after: float, before: float = float("inf")) -> list[Call]:
    """The calls that began after ``after`` and before ``before``."""
    return [call for call in calls if after < call.began < before]


def failed(calls: list[Call], code: str = "INTERNAL") -> int:
    return sum(1 for call in calls if call.answer == code)


# --- what the pool did ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A backend_ejected or backend_returned event: when (``time.monotonic()``), what it
    said, and the calls in flight on its backend then (read from the pool's table)."""

    at: float
    backend: str
    measurements: dict[str, Any]
    metadata: dict[str, Any]
    in_flight: int


class Ejections:
    """The pool's ejections and returns, recorded as they happen."""

    def __init__(self) -> None:
        self.ejected: list[Seen] = []
        self.returned: list[Seen] = []

    def handle(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        runtime = pools.get(metadata["pool_name"])
        backend = metadata["backend"]
        slots = runtime.table.slots() if runtime is not None else ()
        in_flight = sum(slot.in_flight for slot in slots if slot.backend == backend)
        seen = Seen(time.monotonic(), backend, dict(measurements), dict(metadata), in_flight)
        (self.ejected if tuple(event) == BACKEND_EJECTED else self.returned).append(seen)

    def most_out_at_once(self) -> int:
        """The most backends ejected at the same time, replaying the events in order."""
        changes = sorted([(s.at, 1) for s in self.ejected] + [(s.at, -1) for s in self.returned])
        out = most = 0
        for _, change in changes:
            out += change
            most = max(most, out)
        return most

    def returned_at(self, backend: str) -> float:
        """When ``backend`` first returned, or infinity."""
        return min((s.at for s in self.returned if s.backend == backend), default=float("inf"))


@contextmanager
def watching() -> Iterator[Ejections]:
    seen = Ejections()
    handler_id = ("test-ejections", id(seen))
    telemetry.attach_many(handler_id, [BACKEND_EJECTED, BACKEND_RETURNED], seen.handle)
    try:
        yield seen
    finally:
        still_attached = telemetry.detach(handler_id)
    assert still_attached, "the recorder raised and the bus detached it"


@dataclass(frozen=True, slots=True)
class Run:
    """A pool over replicas under load: the replicas, what the pool did, the calls."""

    servers: list[ServerProcess]
    seen: Ejections
    calls: list[Call]

    @property
    def addresses(self) -> list[str]:
        return addresses(self.servers)

    async def ejected(self) -> Seen:
        """Wait for the first ejection; return it."""
        await wait_until(lambda: self.seen.ejected, EJECTED_WITHIN)
        return self.seen.ejected[0]


@asynccontextmanager
async def under_load(
    pool_name: str,
    *flags: Sequence[str],
    size: int = 6,
    callers: int = 24,
    deadline: float = 5.0,
) -> AsyncIterator[Run]:
    """Replicas with ``flags`` (see :func:`replicas`), a pool of ``size`` over them, and
    ``callers`` calling through its PooledChannel with ``deadline``, for the block."""
    async with (
        replicas(*flags) as servers,
        live_pool(pool_name, addresses(servers), size, wait=True),
    ):
        with watching() as seen:
            async with calling(pool_name, callers, deadline=deadline) as calls:
                yield Run(servers, seen, calls)


# --- the replicas' faults, which the tests below rest on -----------------------------------


async def test_a_replica_fails_exactly_its_share_of_calls_evenly_spread() -> None:
    fault = Fault(grpc.StatusCode.INTERNAL, percent=30)
    server, port = await start_server(fault=fault, name="r0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answers = []
            for _ in range(100):
                try:
                    answers.append(await raw_unary(channel, SLEEP_METHOD)(b"0", timeout=5))
                except grpc.aio.AioRpcError as error:
                    answers.append(error.code().name.encode())
    finally:
        await server.stop(None)
    assert Counter(answers) == {b"r0": 70, b"INTERNAL": 30}
    assert b"INTERNAL" * 2 not in b"".join(answers)  # never two in a row


async def test_a_replica_fails_after_the_milliseconds_it_is_told() -> None:
    server, port = await start_server(fault=Fault(grpc.StatusCode.UNAVAILABLE, after_ms=100))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            began = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await raw_unary(channel, SLEEP_METHOD)(b"0", timeout=5)
            took = time.monotonic() - began
    finally:
        await server.stop(None)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert took >= 0.1


async def test_a_hanging_replica_answers_no_call_before_its_deadline() -> None:
    server, port = await start_server(fault=Fault(hang=True))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await raw_unary(channel, SLEEP_METHOD)(b"0", timeout=0.2)
    finally:
        await server.stop(None)
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stalling_replica_answers_its_share_of_calls_in_full_but_late() -> None:
    # Every other call stalls 1 s. An unstalled call must answer within 0.9 s (generous
    # for a call that waits 0 ms, on a busy machine), which a stalled one cannot.
    server, port = await start_server(fault=Fault(stall=True, percent=50, after_ms=1000), name="r0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            sleep = raw_unary(channel, SLEEP_METHOD)
            assert await sleep(b"0", timeout=0.9) == b"r0"
            began = time.monotonic()
            assert await sleep(b"0", timeout=10) == b"r0"  # the 2nd of 2: stalled
            took = time.monotonic() - began
            assert await sleep(b"0", timeout=0.9) == b"r0"
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await sleep(b"0", timeout=0.5)  # the 4th: stalled past its deadline
    finally:
        await server.stop(None)
    assert took >= 1.0
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_sigusr2_heals_a_replica_and_sigusr1_breaks_it_again() -> None:
    async with replicas(FAIL) as (server,), grpc.aio.insecure_channel(server.address) as channel:
        sleep = raw_unary(channel, SLEEP_METHOD)
        with pytest.raises(grpc.aio.AioRpcError, match="INTERNAL"):
            await sleep(b"0", timeout=5)
        await heal(server)
        assert await sleep(b"0", timeout=5) == b"r0"
        server.signal(signal.SIGUSR1)
        with (
            anyio.fail_after(WAIT_LIMIT),  # the signal is handled soon after it is sent
            pytest.raises(grpc.aio.AioRpcError, match="INTERNAL"),
        ):
            while True:
                await sleep(b"0", timeout=5)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--fail", "NOPE"], "expected one of OK, CANCELLED"),
        (["--fail", "OK"], "other than OK"),
        (["--fail", "INTERNAL", "--hang"], "not allowed with"),
        (["--hang", "--fail-percent", "101"], "from 0 to 100, got 101"),
        (["--fail-after-ms", "5"], "need --fail, --hang or --stall"),
        (["--stall"], "milliseconds > 0 for a stall"),
        (["--stall", "--hang"], "not allowed with"),
    ],
)
def test_a_bad_fault_is_refused_saying_why(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(flags)
    assert says in capsys.readouterr().err


# --- a replica failing every call -----------------------------------------------------------


async def test_a_replica_failing_every_call_is_ejected_at_once_and_gets_no_call_while_out(
    pool_name: str,
) -> None:
    async with under_load(pool_name, [], [], FAIL) as run:
        bad = run.addresses[2]
        runtime = pools.get(pool_name)
        assert runtime is not None
        its_channels = {s.channel for s in runtime.table.slots() if s.backend == bad}
        ejection = await run.ejected()
        status = Pool.status(pool_name)
        handed_out = []
        for _ in range(150):  # a channel handed out as each call ends
            await more_calls(run.calls, 1)
            if bad not in Pool.status(pool_name).ejected:
                break
            handed_out.append(Pool.get_channel(pool_name))
    calls = run.calls
    before = between(calls, 0, ejection.at)
    while_out = between(calls, ejection.at, run.seen.returned_at(bad))
    print(
        f"ejected after {failed(before)} failed calls ({ejection.in_flight} in flight on it "
        f"then); {len(while_out)} calls while it was out, {failed(while_out)} failed; "
        f"get_channel {len(handed_out)} times while out; ejection measurements "
        f"{ejection.measurements}"
    )
    reason = "consecutive_failures"
    assert ejection.metadata == {"pool_name": pool_name, "backend": bad, "reason": reason}
    assert ejection.measurements["consecutive_failures"] == STREAK
    assert ejection.measurements["ejections"] == 1
    # ejection_time is read right after the ejection: 5 s, less the microseconds between
    assert 4.5e9 < ejection.measurements["ejection_time"] <= 5e9
    assert set(status.ejected) == {bad}
    assert 0 < status.ejected[bad] - time.time() <= 5
    assert status.backends[bad] == 0
    # The failed calls: the streak, then those in flight on it when it left; none after.
    assert failed(before) == STREAK + ejection.in_flight
    assert failed(while_out) == 0
    assert len(while_out) >= 100  # of the 150 that ended since, 24 at most began before
    assert len(its_channels) == 2
    assert len(handed_out) > 0
    assert not its_channels & set(handed_out)
    assert {call.answer for call in calls} <= {"r0", "r1", "INTERNAL"}


@pytest.mark.slow
async def test_a_replica_still_failing_when_it_returns_is_ejected_again_for_twice_as_long(
    pool_name: str,
) -> None:
    async with under_load(pool_name, [], [], FAIL) as run:
        await run.ejected()
        await wait_until(lambda: run.seen.returned, RETURNED_WITHIN)
        await wait_until(lambda: len(run.seen.ejected) == 2)
        await more_calls(run.calls, 100)
    first, again = run.seen.ejected
    (back,) = run.seen.returned
    on_probation = between(run.calls, back.at, again.at)
    print(
        f"back after {back.measurements['duration'] / 1e9:.2f} s; "
        f"{failed(on_probation)} of {len(on_probation)} calls failed before it left again "
        f"({again.in_flight} in flight on it then): {again.measurements}"
    )
    assert again.backend == first.backend
    assert again.metadata["reason"] == "consecutive_failures"
    assert again.measurements["ejections"] == 2
    assert again.measurements["failures"] == 1  # the first failure since it returned
    assert 9.5e9 < again.measurements["ejection_time"] <= 10e9
    # On probation it takes one call at a time: the probe, which failed, and no other.
    assert again.in_flight == 0
    assert failed(on_probation) == 1
    assert failed(between(run.calls, again.at)) == 0


# --- a replica failing some calls, one that hangs ---------------------------------------------


@pytest.mark.slow
async def test_a_replica_failing_30_percent_after_20_ms_is_ejected_and_failures_drop(
    pool_name: str,
) -> None:
    flaky = [*FAIL, "--fail-percent", "30", "--fail-after-ms", "20"]
    async with under_load(pool_name, [], [], flaky, callers=30) as run:
        ejection = await run.ejected()
        await more_calls(run.calls, 600 + 30)
    calls = run.calls
    before = between(calls, 0, ejection.at)
    after = between(calls, ejection.at)
    share_before = failed(before) / len(before)
    share_after = failed(after) / len(after)
    print(
        f"ejected ({ejection.metadata['reason']}, {ejection.measurements}) after "
        f"{failed(before)} of {len(before)} calls failed ({share_before:.1%}); since: "
        f"{failed(after)} of {len(after)} ({share_after:.1%}); "
        f"ejections {len(run.seen.ejected)}, returns {len(run.seen.returned)}"
    )
    assert ejection.backend == run.addresses[2]
    assert ejection.metadata["reason"] in {"failure_percentage", "consecutive_failures"}
    # A third of its calls failed until it left (a tenth of the pool's); after, none goes
    # to it for 5 s, and back, one failure sends it out again.
    assert failed(before) > 0
    assert share_after < 0.025
    assert {call.answer for call in calls} <= {"r0", "r1", "r2", "INTERNAL"}


@pytest.mark.slow
async def test_a_replica_that_hangs_is_ejected_and_no_call_begun_after_hits_its_deadline(
    pool_name: str,
) -> None:
    async with under_load(pool_name, [], [], ["--hang"], callers=30, deadline=1.0) as run:
        ejection = await run.ejected()
        await more_calls(run.calls, 600 + 30)
    calls = run.calls
    before = between(calls, 0, ejection.at)
    while_out = between(calls, ejection.at, run.seen.returned_at(ejection.backend))
    timed_out = failed(before, "DEADLINE_EXCEEDED")
    print(
        f"ejected ({ejection.metadata['reason']}, {ejection.measurements}, "
        f"{ejection.in_flight} in flight on it) {ejection.at - calls[0].began:.2f} s after the "
        f"first call; {timed_out} of {len(before)} calls before hit their deadline; "
        f"{failed(while_out, 'DEADLINE_EXCEEDED')} of {len(while_out)} begun while it was out"
    )
    assert ejection.backend == run.addresses[2]
    assert ejection.metadata["reason"] == "consecutive_failures"
    assert timed_out == STREAK + ejection.in_flight
    assert len(while_out) >= 300
    assert {call.answer for call in while_out} <= {"r0", "r1"}


# --- a replica that recovers ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_replica_that_recovers_while_out_returns_and_gets_its_share_back(
    pool_name: str,
) -> None:
    async with under_load(pool_name, [], [], FAIL) as run:
        ejection = await run.ejected()
        await heal(run.servers[2])
        healed = time.monotonic()
        await wait_until(lambda: run.seen.returned, RETURNED_WITHIN)
        await more_calls(run.calls, 900 + 24)
    (back,) = run.seen.returned
    after = between(run.calls, back.at)
    shares = Counter(call.answer for call in after)
    print(
        f"ejected, healed {healed - ejection.at:.2f} s later, returned after "
        f"{back.measurements['duration'] / 1e9:.2f} s; answers since: {dict(shares)}"
    )
    assert run.seen.ejected == [ejection]
    assert back.metadata == {"pool_name": pool_name, "backend": run.addresses[2]}
    # 5 s out, and the sweep that returns it comes within a second after.
    assert 5e9 <= back.measurements["duration"] < 5e9 + RETURNED_WITHIN * 1e9
    assert failed(after) == 0
    # A third of the calls each, as the pick spreads them; at least a fifth for it.
    assert shares["r2"] >= len(after) / 5
    assert set(shares) == {"r0", "r1", "r2"}


# --- the cap: at most half out, never the last ------------------------------------------------


@pytest.mark.parametrize("failing", [2, pytest.param(3, marks=pytest.mark.slow)])
async def test_of_three_replicas_failing_at_most_one_is_out(pool_name: str, failing: int) -> None:
    flags = [[]] * (3 - failing) + [FAIL] * failing
    async with under_load(pool_name, *flags) as run:
        first = await run.ejected()
        # a streak ejects at the 5th failure: twenty streaks' worth on the others
        await wait_until(lambda: failed(between(run.calls, first.at)) >= 20 * STREAK)
        status = Pool.status(pool_name)
    print(
        f"{failing} failing: {len(run.seen.ejected)} ejected, {len(run.seen.returned)} "
        f"returned; {failed(between(run.calls, first.at))} calls failed since the first"
    )
    assert run.seen.most_out_at_once() == 1
    assert len(status.ejected) <= 1
    assert {s.backend for s in run.seen.ejected} <= set(run.addresses[3 - failing :])


async def test_the_only_replica_failing_every_call_is_never_ejected(pool_name: str) -> None:
    async with under_load(pool_name, FAIL, size=2, callers=10) as run:
        await wait_until(lambda: failed(run.calls) >= 20 * STREAK)
        status = Pool.status(pool_name)
    assert run.seen.ejected == []
    assert status.ejected == {}
    # Its calls still go to it and fail as it fails them, not for want of a channel.
    assert {call.answer for call in run.calls} == {"INTERNAL"}


async def test_an_ejected_replica_comes_back_at_once_when_it_is_the_last_one_left(
    pool_name: str,
) -> None:
    """Never the last: once every other replica is gone, the pool hands out the one it
    ejected, as Envoy's panic threshold and Finagle's balancers do, instead of nothing."""
    async with under_load(pool_name, [], [], FAIL, callers=12) as run:
        ejection = await run.ejected()
        await heal(run.servers[2])
        for server in run.servers[:2]:
            server.kill()
        killed = time.monotonic()
        others = run.addresses[:2]
        await wait_until(lambda: not any(Pool.status(pool_name).backends[a] for a in others))
        await more_calls(run.calls, 100)
        status = Pool.status(pool_name)
    since = between(run.calls, killed)
    print(
        f"{len(since)} calls since the others died: {dict(Counter(c.answer for c in since))}; "
        f"returned {[(s.backend, s.measurements) for s in run.seen.returned]}"
    )
    (back,) = run.seen.returned
    assert back.at < ejection.at + 5
    assert status.ejected == {}
    assert Counter(call.answer for call in since)["r2"] >= 50


# --- the application's answers are not failures ---------------------------------------------


class Sweeps:
    """The pool's sweeps as they run: what each counted per backend (successes, failures)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counted: list[dict[str, tuple[int, int]]] = []
        sweep = Ejector.sweep

        def counting(ejector: Ejector, in_service: int, now: float) -> Any:
            outcomes = ejector.by_backend.values()
            self.counted.append({o.backend: (o.successes, o.failures) for o in outcomes})
            return sweep(ejector, in_service, now)

        monkeypatch.setattr(Ejector, "sweep", counting)

    def with_volume(self, backends: list[str]) -> int:
        """The sweeps that counted 20 calls or more (the rule's volume) on each backend."""
        return sum(1 for c in self.counted if all(sum(c.get(b, (0, 0))) >= 20 for b in backends))


@pytest.mark.slow
async def test_application_errors_on_every_call_eject_nothing(
    pool_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps = Sweeps(monkeypatch)
    answers = [["--fail", "NOT_FOUND"], ["--fail", "INVALID_ARGUMENT"]]
    async with under_load(pool_name, [], *answers) as run:
        application = run.addresses[1:]
        # a streak would eject at the 5th; the sweep runs every second
        await wait_until(lambda: sweeps.with_volume(application) >= 2, EJECTED_WITHIN)
        status = Pool.status(pool_name)
    answered = Counter(call.answer for call in run.calls)
    print(f"answers {dict(answered)}; sweeps counted {sweeps.counted}")
    assert run.seen.ejected == []
    assert status.ejected == {}
    assert answered["NOT_FOUND"] >= 20 * STREAK
    assert answered["INVALID_ARGUMENT"] >= 20 * STREAK
    # The sweeps counted those answers as successes.
    assert all(c.get(b, (0, 0))[1] == 0 for c in sweeps.counted for b in application)


# --- nothing left behind ----------------------------------------------------------------------


def alive(kind: type, backends: list[str]) -> list[Any]:
    """The objects of ``kind`` still alive that belong to ``backends``' pool."""
    gc.collect()
    found = []
    for thing in gc.get_objects():
        if isinstance(thing, PoolRuntime) and kind is PoolRuntime:
            if set(thing.table.backends) & set(backends):
                found.append(thing)
        elif isinstance(thing, kind) and getattr(thing, "backend", None) in backends:
            found.append(thing)
    return found


async def test_a_pool_stopped_with_a_backend_ejected_leaves_no_task_or_channel(
    pool_name: str,
) -> None:
    async with replicas([], [], FAIL) as servers:
        backends = addresses(servers)
        await anyio.to_thread.run_sync(lambda: None)  # anyio's worker thread, once
        tasks_before = len(asyncio.all_tasks())
        async with live_pool(pool_name, backends, 6, wait=True):
            with watching() as seen:
                async with calling(pool_name, 12):
                    await wait_until(lambda: seen.ejected, EJECTED_WITHIN)
                assert set(Pool.status(pool_name).ejected) == {backends[2]}

        with pytest.raises(PoolNotStartedError):
            Pool.status(pool_name)
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before)
        # the ejected backend's channels closed as the others' were, its servers still up
        await wait_until(lambda: all(established_sockets(s.port) == 0 for s in servers))
        assert alive(PoolRuntime, backends) == []
        assert alive(Slot, backends) == []
