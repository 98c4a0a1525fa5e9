"""Where each call lands: the PooledChannel's least-loaded pick against round-robin and A105.

Every client is used as a stub would use it: a multicallable made once and called again
and again, except ``get_channel``, whose users make a stub (so a multicallable) per call.

1. Slow replica: three replicas answering in 20, 20 and 200 ms, 30 callers.
2. Stream cap: one server capped at 10 streams per connection, 20 ms calls, 200 callers.
3. Mixed call lengths: the same capped server, 10% of the calls 500 ms and 90% 5 ms,
   100 callers; what counts is the short calls' p99.
   Both with grpc's overload protection on (the server refuses streams past the cap)
   and off (they wait), since refused calls end early and leave the percentiles.
4. Overhead: a pool of 1 and one plain channel against a server answering at once; and
   the pick and its counting alone, in nanoseconds, for pools of 1 to 1,000 channels.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import timeit
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import grpc.aio

from conngrpc import Pool, Supervisor
from conngrpc._server import SLEEP_METHOD, ServerProcess
from conngrpc.pool.runtime import pools
from conngrpc.testing import FakeConnector

from ._common import LEVEL, Section, a105_options, cpu_seconds, ms, percentile
from ._fleet_server import COUNT_METHOD, SERVICE

#: A client under test: ``call(request, timeout)`` makes one call and returns its answer.
Call = Callable[[bytes, float], Awaitable[bytes]]

FLEET_SLEEP = f"/{SERVICE}/Sleep"

SLOW_POOLED = "PooledChannel, pool of 6"
SLOW_RR = "grpc round_robin"
_names = itertools.count(1)


def _multicallable(channel: grpc.aio.Channel, method: str) -> Callable[..., Awaitable[bytes]]:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@asynccontextmanager
async def _pooled(
    target: str, size: int, method: str, name: str = "", **pool: object
) -> AsyncIterator[Call]:
    """The PooledChannel over a pool of ``size`` (named ``name``, or a fresh name): one
    multicallable, built once."""
    name = name or f"bench-pooled-{next(_names)}"
    spec = Pool.child_spec(name=name, pool_size=size, channel={"address": target}, **pool)  # type: ignore[arg-type]
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=30)
        call = _multicallable(Pool.channel(name), method)
        yield lambda request, timeout: call(request, timeout=timeout)


@asynccontextmanager
async def _round_robin_pool(target: str, size: int, method: str) -> AsyncIterator[Call]:
    """get_channel round-robin over a pool of ``size``: a multicallable per call."""
    name = f"bench-rr-{next(_names)}"
    spec = Pool.child_spec(name=name, pool_size=size, channel={"address": target})
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=30)
        yield lambda request, timeout: _multicallable(Pool.get_channel(name), method)(
            request, timeout=timeout
        )


@asynccontextmanager
async def _grpc(target: str, method: str, options: list[tuple[str, str]]) -> AsyncIterator[Call]:
    """One grpc channel with these options: one multicallable, built once."""
    channel = grpc.aio.insecure_channel(target, options)
    await channel.channel_ready()
    call = _multicallable(channel, method)
    try:
        yield lambda request, timeout: call(request, timeout=timeout)
    finally:
        await channel.close()


def _errors(run: Run) -> str:
    """``CODE count, ...`` of the calls that failed, or 0."""
    return ", ".join(f"{code} {count:,}" for code, count in sorted(run.errors.items())) or "0"


def _round_robin_config() -> list[tuple[str, str]]:
    return [("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))]


@dataclass
class Run:
    """What a closed-loop load achieved with one client."""

    latencies: list[float] = field(default_factory=list)
    short: list[float] = field(default_factory=list)  # the short calls' latencies (mixed)
    by_answer: Counter[bytes] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: when (time.perf_counter()) each call that hit its deadline began
    deadline_starts: list[float] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds, this process
    server_cpu: float = 0.0  # CPU seconds, the server's process (when one is given)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def cpu(self) -> tuple[float, float]:
        """Client and server CPU, in % of one core, over the run."""
        seconds = self.seconds or float("nan")
        return 100 * self.client_cpu / seconds, 100 * self.server_cpu / seconds


async def _load(
    call: Call,
    callers: int,
    seconds: float,
    request: Callable[[], bytes],
    run: Run,
    server_pid: int | None = None,
    timeout: float = 10.0,
) -> None:
    """``callers`` tasks calling back to back for ``seconds``, each call with a deadline
    ``timeout`` seconds away; add what they saw to ``run``."""
    stop = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < stop:
            body = request()
            began = time.perf_counter()
            try:
                answer = await call(body, timeout)
            except grpc.aio.AioRpcError as error:
                run.errors[error.code().name] += 1
                if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    run.deadline_starts.append(began)
                continue
            took = time.perf_counter() - began
            run.latencies.append(took)
            run.by_answer[answer] += 1
            if body == SHORT:
                run.short.append(took)

    began, cpu = time.monotonic(), cpu_seconds()
    server = cpu_seconds(server_pid) if server_pid else 0.0
    await asyncio.gather(*(caller() for _ in range(callers)))
    run.seconds += time.monotonic() - began
    run.client_cpu += cpu_seconds() - cpu
    run.server_cpu += (cpu_seconds(server_pid) - server) if server_pid else 0.0


async def _rounds(
    clients: list[tuple[str, Callable[[], object]]],
    rounds: int,
    callers: int,
    seconds: float,
    request: Callable[[], bytes],
    server_pid: int | None = None,
) -> dict[str, Run]:
    """Each client in turn, ``rounds`` times (every other round reversed), after a warm-up."""
    runs = {label: Run() for label, _ in clients}
    for round_ in range(rounds):
        for label, make in clients if round_ % 2 == 0 else clients[::-1]:
            async with make() as call:  # type: ignore[attr-defined]
                await _load(call, callers, min(0.3, seconds), request, Run())  # warm-up
                await _load(call, callers, seconds, request, runs[label], server_pid)
    return runs


# --- 1. a slow replica ----------------------------------------------------------------------


async def slow_replica(quick: bool) -> Section:
    seconds, rounds, callers = (0.3, 1, 30) if quick else (4.0, 2, 30)
    servers = slow_replicas()
    for server in servers:
        await asyncio.to_thread(server.start)
    target = "ipv4:" + ",".join(s.address for s in servers)
    clients: list[tuple[str, Callable[[], object]]] = [
        (SLOW_POOLED, lambda: _pooled(target, 6, FLEET_SLEEP)),
        (SLOW_RR, lambda: _grpc(target, FLEET_SLEEP, _round_robin_config())),
        ("get_channel round-robin, pool of 6", lambda: _round_robin_pool(target, 6, FLEET_SLEEP)),
    ]
    try:
        runs = await _rounds(clients, rounds, callers, seconds, lambda: b"0")
    finally:
        for server in servers:
            server.kill()
    return slow_table(runs, str(servers[2].port).encode(), callers, rounds, seconds)


def slow_replicas() -> list[ServerProcess]:
    """The three replicas, not started: two answer in 20 ms, the last (the slow one) in 200."""
    return [
        ServerProcess(module="bench._fleet_server", args=["--delay-ms", str(delay)])
        for delay in (20, 20, 200)
    ]


def slow_table(
    runs: dict[str, Run],
    slow: bytes,
    callers: int,
    rounds: int,
    seconds: float,
    title: str = "Slow replica",
) -> Section:
    """The slow-replica table from each client's run (``slow``: the slow replica's answer)."""
    section = Section(
        f"{title}: three replicas at 20, 20 and 200 ms, {callers} callers",
        ["client", "calls/s", "p50 ms", "p99 ms", "slow replica's share", "errors"],
    )
    for label, run in runs.items():
        share = run.by_answer[slow] / max(1, len(run.latencies))
        section.add(
            label,
            run.rate,
            ms(percentile(run.latencies, 50)),
            ms(percentile(run.latencies, 99)),
            f"{share:.1%}",
            _errors(run),
        )
    pooled, rr = runs[SLOW_POOLED], runs[SLOW_RR]
    section.target(f"{SLOW_POOLED}, calls/s", pooled.rate, ">=", 2.4, SLOW_RR, rr.rate)
    share = pooled.by_answer[slow] / max(1, len(pooled.latencies))
    # Below a tenth, yet above none: the least-loaded pick still tries the slow replica.
    name = "slow replica's share through the PooledChannel, %"
    section.target(name, 100 * share, "<", 10)
    section.target(name, 100 * share, ">", 0)
    section.notes.append(
        f"{rounds} rounds of {seconds:g} s per client, the clients taking turns (every other "
        "round reversed), each after a warm-up. The replicas (bench._fleet_server, each in "
        "its own process) add their delay to every call and say who answered."
    )
    return section


# --- 2. and 3. one stream-capped server ------------------------------------------------------

CAP = 10
PLAIN_POOL = "PooledChannel, pool of 4"
CAPPED_POOL = f"{PLAIN_POOL}, max_calls_per_channel={CAP}"
A105 = "A105 N=4"
CPU_COLUMNS = ("client CPU %", "server CPU %")
SHORT = b"5"
LONG = b"500"


#: The two server conditions: grpc's overload protection refuses streams past the cap
#: (UNAVAILABLE) once a connection is over it; with it off, calls past the cap wait.
PROTECTION = {
    "overload protection on (grpc default)": [],
    "overload protection off": ["--option", "grpc.http.overload_protection=0"],
}


async def stream_cap(quick: bool) -> list[Section]:
    """The stream-capped and mixed-length tables, under each server condition."""
    sections: list[Section] = []
    for condition, server_args in PROTECTION.items():
        sections += await _stream_cap(quick, condition, server_args)
    return sections


async def _stream_cap(quick: bool, condition: str, server_args: list[str]) -> list[Section]:
    seconds, rounds = (0.3, 1) if quick else (3.0, 3)
    with ServerProcess(args=["--max-streams", str(CAP), *server_args]) as server:
        address = server.address
        capped: list[tuple[str, Callable[[], object]]] = [
            (
                CAPPED_POOL,
                lambda: _pooled(address, 4, SLEEP_METHOD, max_calls_per_channel=CAP),
            ),
            (PLAIN_POOL, lambda: _pooled(address, 4, SLEEP_METHOD)),
            (A105, lambda: _grpc(address, SLEEP_METHOD, a105_options(4))),
            (
                "get_channel round-robin, pool of 4",
                lambda: _round_robin_pool(address, 4, SLEEP_METHOD),
            ),
        ]
        steady = await _rounds(capped, rounds, 200, seconds, lambda: b"20", server.pid)
        mixer = random.Random(20261125)
        mixed = await _rounds(
            capped,
            rounds,
            100,
            seconds,
            lambda: LONG if mixer.random() < 0.1 else SHORT,
            server.pid,
        )
    return [
        cap_table(condition, server_args, steady, rounds, seconds),
        mixed_table(condition, server_args, mixed, rounds, seconds),
    ]


def _cap_notes(server_args: list[str], rounds: int, seconds: float) -> str:
    server = (
        "has grpc's overload protection on, as by default: it refuses (UNAVAILABLE) streams"
        " that a client opens past the cap"
        if not server_args
        else "has grpc's overload protection off: streams past the cap wait, none is refused"
    )
    return (
        f"{rounds} rounds of {seconds:g} s per client, the clients taking turns, each "
        f"after a warm-up; the server (its own process) {server}. Latencies are those of "
        "the calls that succeeded: a client whose calls the server refused had those "
        "calls end early, outside its percentiles. With "
        f"max_calls_per_channel={CAP}, the PooledChannel keeps calls beyond the server's "
        "stream cap in one queue of its own, first come first served, and sends each to "
        "the first connection with a free stream, as A105 does."
    )


def steady_cells(run: Run) -> list[object]:
    """A run's calls/s, p50 and p99 ms, errors, and client and server CPU % (CPU_COLUMNS)."""
    return [
        run.rate,
        ms(percentile(run.latencies, 50)),
        ms(percentile(run.latencies, 99)),
        _errors(run),
        *run.cpu(),
    ]


def cap_table(
    condition: str, server_args: list[str], steady: dict[str, Run], rounds: int, seconds: float
) -> Section:
    """The stream-capped table from each client's run of 20 ms calls."""
    cap = Section(
        f"Stream cap: one server capped at {CAP} streams per connection, 20 ms calls,"
        f" 200 callers, {condition}",
        ["client", "calls/s", "p50 ms", "p99 ms", "errors", *CPU_COLUMNS],
    )
    for label, run in steady.items():
        cap.add(label, *steady_cells(run))
    pooled, a105 = steady[CAPPED_POOL], steady[A105]
    cap.target("PooledChannel (capped), calls/s", pooled.rate, ">=", 1 - LEVEL, A105, a105.rate)
    cap.target(
        "PooledChannel (capped), p99 ms",
        ms(percentile(pooled.latencies, 99)),
        "<=",
        1 + LEVEL,
        A105,
        ms(percentile(a105.latencies, 99)),
    )
    if not server_args:  # overload protection on: the server refuses streams past its cap
        plain = steady[PLAIN_POOL]
        refused = plain.errors.get("UNAVAILABLE", 0)
        cap.target(
            "PooledChannel (no cap set: learnt), refused calls",
            refused,
            "<=",
            0.02,
            A105,
            max(1, a105.errors.get("UNAVAILABLE", 0)),
        )
        cap.target(
            "PooledChannel (no cap set: learnt), calls/s", plain.rate, ">=", 0.98, A105, a105.rate
        )
    cap.notes.append(_cap_notes(server_args, rounds, seconds))
    return cap


def mixed_table(
    condition: str, server_args: list[str], mixed: dict[str, Run], rounds: int, seconds: float
) -> Section:
    """The mixed-length table from each client's run of short and long calls."""
    mix = Section(
        "Mixed call lengths: one capped server, 10% of calls 500 ms, 90% 5 ms, 100 callers,"
        f" {condition}",
        ["client", "calls/s", "short calls' p50 ms", "short calls' p99 ms", "errors", *CPU_COLUMNS],
    )
    for label, run in mixed.items():
        mix.add(
            label,
            run.rate,
            ms(percentile(run.short, 50)),
            ms(percentile(run.short, 99)),
            _errors(run),
            *run.cpu(),
        )
    ours = ms(percentile(mixed[CAPPED_POOL].short, 99))
    for label, run in mixed.items():
        if not label.startswith("PooledChannel"):
            theirs = ms(percentile(run.short, 99))
            mix.target("PooledChannel (capped), short calls' p99 ms", ours, "<", 1, label, theirs)
    mix.notes.append(_cap_notes(server_args, rounds, seconds))
    return mix


# --- 4. overhead --------------------------------------------------------------------------------

#: The callers of the overhead's loaded runs (its p50 is one caller's).
OVERHEAD_CALLERS = 50
POOL_OF_1 = "PooledChannel, pool of 1"
PLAIN = "one plain channel"


async def overhead(quick: bool) -> list[Section]:
    seconds, rounds = (0.3, 1) if quick else (2.0, 6)
    with ServerProcess(args=["--option", "grpc.http.overload_protection=0"]) as server:
        address = server.address
        clients: list[tuple[str, Callable[[], object]]] = [
            (POOL_OF_1, lambda: _pooled(address, 1, SLEEP_METHOD)),
            (PLAIN, lambda: _grpc(address, SLEEP_METHOD, [])),
        ]
        sequential = await _rounds(clients, rounds * 2, 1, seconds / 2, lambda: b"0")
        loaded = await _rounds(clients, rounds, OVERHEAD_CALLERS, seconds, lambda: b"0")
    section = overhead_table(
        "Overhead of the PooledChannel: pool of 1 vs one plain channel", sequential, loaded
    )
    return [section, await stream_cost(quick), await pick_cost(quick)]


def overhead_table(title: str, sequential: dict[str, Run], loaded: dict[str, Run]) -> Section:
    """The overhead table from each client's runs with one caller and with many."""
    section = Section(
        f"{title}, nothing capped",
        [
            "client",
            "p50 us (one caller)",
            "p99 us (one caller)",
            f"calls/s ({OVERHEAD_CALLERS} callers)",
        ],
    )
    for label in sequential:
        section.add(
            label,
            percentile(sequential[label].latencies, 50) * 1e6,
            percentile(sequential[label].latencies, 99) * 1e6,
            loaded[label].rate,
        )
    ours, plain = POOL_OF_1, PLAIN
    p50 = {label: percentile(sequential[label].latencies, 50) * 1e6 for label in (ours, plain)}
    section.target(f"{ours}, p50 us", p50[ours], "<=", 1 + LEVEL, plain, p50[plain])
    rate = {label: loaded[label].rate for label in (ours, plain)}
    section.target(f"{ours}, calls/s", rate[ours], ">=", 1 - LEVEL, plain, rate[plain])
    return section


def _streaming(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(COUNT_METHOD, request_serializer=None, response_deserializer=None)


async def stream_cost(quick: bool) -> Section:
    """What reading a response stream costs through the PooledChannel, which wraps each
    stream so that one left unread is cancelled, against a plain channel's own."""
    messages, rounds = (2_000, 2) if quick else (20_000, 7)
    best: dict[str, float] = {}
    name = f"bench-stream-{next(_names)}"
    with ServerProcess(module="bench._fleet_server") as server:
        spec = Pool.child_spec(name=name, pool_size=1, channel={"address": server.address})
        async with Supervisor([spec]), grpc.aio.insecure_channel(server.address) as plain:
            await Pool.wait_connected(name, timeout=30)
            clients = {
                "PooledChannel, pool of 1": _streaming(Pool.channel(name)),
                "one plain channel": _streaming(plain),
            }
            for _ in range(rounds):  # interleaved, so drift hits both alike
                for label, count in clients.items():
                    began = time.perf_counter()
                    read = 0
                    async for _message in count(str(messages).encode(), timeout=60):
                        read += 1
                    assert read == messages, (label, read)
                    rate = messages / (time.perf_counter() - began)
                    best[label] = max(best.get(label, 0.0), rate)
    section = Section(
        "Reading a response stream: pool of 1 vs one plain channel",
        ["client", "messages/s (best round)"],
    )
    for label, rate in best.items():
        section.add(label, rate)
    ours, plain_label = "PooledChannel, pool of 1", "one plain channel"
    section.target(
        f"{ours}, messages/s", best[ours], ">=", 1 - LEVEL, plain_label, best[plain_label]
    )
    section.notes.append(
        f"One caller reads a stream of {messages:,} small messages ({rounds} rounds, each "
        "client in turn; the best round counts). The PooledChannel hands out each stream "
        "call in a wrapper that cancels it once nobody holds it (an `async for` left early, "
        "a call dropped), where grpc.aio holds it open until its deadline."
    )
    return section


class _Status:
    """grpc.aio's status of a finished call, as the done callback reads it: OK."""

    __slots__ = ()

    def code(self) -> int:
        return 0


class _CythonCall:
    __slots__ = ("_status",)

    def __init__(self) -> None:
        self._status = _Status()


class _DoneCall:
    """Stands in for a grpc call in the micro-benchmark: it ends (OK) as soon as it is
    tracked, and its done callback counts its outcome as a real call's does; it takes
    the mark of what its slot carried, as a real call does."""

    __slots__ = ("conngrpc_carrying",)

    _cython_call = _CythonCall()

    def add_done_callback(self, callback: Callable[[_DoneCall], object]) -> None:
        callback(self)


async def pick_cost(quick: bool) -> Section:
    """The pick and its counting alone (fake channels, so no grpc call is made)."""
    sizes = (1, 8, 9, 100) if quick else (1, 8, 9, 100, 1000)
    number, repeat = (20_000, 3) if quick else (200_000, 9)
    connector = FakeConnector()
    specs = [
        Pool.child_spec(
            name=f"bench-pick-{size}",
            pool_size=size,
            channel={"address": "f:1", "connector": connector},
        )
        for size in sizes
    ]
    section = Section(
        "The pick and its counting, per call",
        ["pool size", "pick (ns)", "pick + count + done (ns)"],
    )
    async with Supervisor(specs):
        timers = {}
        for size in sizes:
            await Pool.wait_connected(f"bench-pick-{size}", timeout=30)
            runtime = pools.get(f"bench-pick-{size}")
            assert runtime is not None
            call = _DoneCall()
            namespace = {"runtime": runtime, "call": call}
            timers[size] = (
                timeit.Timer("runtime.handout.pick()", globals=namespace),
                timeit.Timer(
                    "runtime.admission.track(runtime.handout.pick(), call)", globals=namespace
                ),
            )
        best = {size: [float("inf"), float("inf")] for size in sizes}
        for _ in range(repeat):
            for size, (pick, full) in timers.items():
                best[size][0] = min(best[size][0], pick.timeit(number) / number * 1e9)
                best[size][1] = min(best[size][1], full.timeit(number) / number * 1e9)
    for size in sizes:
        section.add(size, *best[size])
    largest = max(sizes)
    name = f"pick + count + done, pool of {largest} (ns)"
    section.target(name, best[largest][1], "<", 2000)
    dearest = max(best[s][1] for s in sizes if s <= 8)
    section.target(name, best[largest][1], "<=", 1.2, "the dearest pool of 8 or fewer", dearest)
    section.notes.append(
        "Fake channels (conngrpc.testing), so that the figures are the pick's own: a real "
        "channel adds grpc's READY check (see 'get_channel cost, real channels') and grpc's "
        "own done-callback registration. The count includes the outcome's (a call that "
        "ends OK, read as the done callback reads a real call's status). Up to 8 channels "
        "the pick scans them all; above, it compares two drawn at random."
    )
    return section


async def _main() -> None:
    import logging
    import sys

    logging.getLogger("conngrpc").setLevel(logging.ERROR)  # the figures, not the faults
    quick = "--quick" in sys.argv
    sections = [await slow_replica(quick), *await stream_cap(quick), *await overhead(quick)]
    for section in sections:
        print(section.text())


if __name__ == "__main__":
    asyncio.run(_main())
