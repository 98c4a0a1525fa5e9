"""Stream-capped throughput, cold bursts and the overhead of a pool when nothing is capped.

The server runs in a child process with ``grpc.max_concurrent_streams=10`` and a 20 ms
handler, so one connection carries at most 500 calls/s: the stream cap is the
bottleneck a pool (or gRFC A105 connection scaling) exists to lift.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc.aio

from conngrpc import Pool, Supervisor
from conngrpc._server import ServerProcess
from tests._net import established_sockets
from tests._proxy import FaultProxy

from ._common import (
    LEVEL,
    GetChannel,
    Load,
    Section,
    a105_options,
    median,
    ms,
    percentile,
    run_load,
    sleep_call,
)

CAP = 10
DELAY_MS = b"20"
CAPPED_COLUMNS = (
    "client",
    "calls/s",
    "x one channel",
    "refused (UNAVAILABLE)",
    "other errors",
    "p50 ms",
    "p99 ms",
    "sockets",
    "client CPU %",
    "server CPU %",
)


@asynccontextmanager
async def _plain(address: str) -> AsyncIterator[GetChannel]:
    channel = grpc.aio.insecure_channel(address)
    await channel.channel_ready()
    try:
        yield lambda: channel
    finally:
        await channel.close()


@asynccontextmanager
async def _naive(address: str, count: int) -> AsyncIterator[GetChannel]:
    """``count`` channels with identical arguments, used round-robin: the trap."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(count)]
    for channel in channels:
        await channel.channel_ready()
    turn = itertools.cycle(channels)
    try:
        yield lambda: next(turn)
    finally:
        for channel in channels:
            await channel.close()


@asynccontextmanager
async def _a105(address: str, connections: int) -> AsyncIterator[GetChannel]:
    channel = grpc.aio.insecure_channel(address, options=a105_options(connections))
    await channel.channel_ready()
    try:
        yield lambda: channel
    finally:
        await channel.close()


_pool_names = itertools.count(1)


@asynccontextmanager
async def _pool(address: str, size: int) -> AsyncIterator[GetChannel]:
    name = f"bench-pool-{next(_pool_names)}"
    spec = Pool.child_spec(name=name, pool_size=size, channel={"address": address})
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=30)
        yield lambda: Pool.get_channel(name)


def _contenders() -> list[tuple[str, Callable[[str], object]]]:
    return [
        ("one plain channel", _plain),
        ("conngrpc pool of 1", lambda a: _pool(a, 1)),
        ("conngrpc pool of 4", lambda a: _pool(a, 4)),
        ("conngrpc pool of 16", lambda a: _pool(a, 16)),
        ("A105 N=4", lambda a: _a105(a, 4)),
        ("A105 N=16", lambda a: _a105(a, 16)),
        ("4 naive channels, identical args", lambda a: _naive(a, 4)),
    ]


async def _measure(
    make: Callable[[str], object], server: ServerProcess, callers: int, seconds: float
) -> tuple[Load, int]:
    async with make(server.address) as get:  # type: ignore[attr-defined]
        await run_load(get, callers=callers, seconds=min(0.3, seconds), request=DELAY_MS)
        load = await run_load(
            get, callers=callers, seconds=seconds, request=DELAY_MS, server_pid=server.pid
        )
        sockets = established_sockets(server.port)
    return load, sockets


#: Calls/s that a pool of N must reach: this share of N times one channel, or of the
#: no-cap ceiling where that is lower (the stream cap lifted N-fold, as far as the
#: machine can go).
SCALING = {4: 0.875, 16: 0.75}


async def ceiling(quick: bool) -> tuple[Section, float]:
    """The capped benchmark's workload against a server with no stream cap: the ceiling.

    One plain grpc channel and a pool of 16 take turns; the better of the two is what
    this machine does for 20 ms calls from 200 callers when no cap limits them.
    """
    seconds, rounds = (0.2, 1) if quick else (2.0, 2)
    section = Section(
        "Ceiling: the same 20 ms calls, 200 callers, server with no stream cap",
        ["client", "calls/s", "client CPU %", "server CPU %"],
    )
    makers: dict[str, Callable[[str], object]] = {
        "one plain channel": _plain,
        "conngrpc pool of 16": lambda a: _pool(a, 16),
    }
    best: dict[str, Load] = {}
    with ServerProcess(args=["--option", "grpc.http.overload_protection=0"]) as server:
        for round_ in range(rounds):
            order = list(makers) if round_ % 2 == 0 else list(makers)[::-1]
            for label in order:
                load, _ = await _measure(makers[label], server, 200, seconds)
                if label not in best or load.rate > best[label].rate:
                    best[label] = load
    for label in makers:
        load = best[label]
        section.add(
            label,
            load.rate,
            100 * load.client_cpu / load.seconds,
            100 * load.server_cpu / load.seconds,
        )
    section.notes.append(
        f"The best of {rounds} rounds of {seconds:g} s per client, the clients taking turns;"
        " the server (its own process) has no stream cap and overload protection off. The"
        " higher of the two rates is the ceiling the stream-capped tables are set against."
    )
    return section, max(load.rate for load in best.values())


def scaling(section: Section, size: int, rate: float, one: float, top: float) -> None:
    """The target of a pool of ``size``: against ``size`` x one channel, or the ceiling."""
    linear = size * one
    share = SCALING[size]
    name = f"conngrpc pool of {size}, calls/s"
    if (1 - LEVEL) * top < share * linear:
        section.target(name, rate, ">=", 1 - LEVEL, "the no-cap ceiling", top)
    else:
        section.target(name, rate, ">=", share, f"{size} x one plain channel", linear)


async def stream_capped(quick: bool, top: float) -> list[Section]:
    seconds, rounds = (0.2, 1) if quick else (1.0, 5)
    callers = 200
    sections = []
    for overload in ("on (grpc default)", "off"):
        args = ["--max-streams", str(CAP)]
        if overload == "off":
            args += ["--option", "grpc.http.overload_protection=0"]
        section = Section(
            f"Stream-capped throughput, overload protection {overload}", list(CAPPED_COLUMNS)
        )
        loads: dict[str, list[Load]] = {label: [] for label, _ in _contenders()}
        sockets: dict[str, int] = {}
        with ServerProcess(args=args) as server:
            # The contenders take turns, so drift hits them alike, and every other round
            # runs in reverse, so that none of them always goes first.
            order = _contenders()
            for round_ in range(rounds):
                for label, make in order if round_ % 2 == 0 else order[::-1]:
                    load, sockets[label] = await _measure(make, server, callers, seconds)
                    loads[label].append(load)
        rates = {label: median([load.rate for load in runs]) for label, runs in loads.items()}
        for label, runs in loads.items():
            latencies = [t for load in runs for t in load.latencies]
            errors: Counter[str] = sum((load.errors for load in runs), Counter())
            elapsed = sum(load.seconds for load in runs)
            section.add(
                label,
                rates[label],
                rates[label] / rates["one plain channel"],
                errors.get("UNAVAILABLE", 0),
                sum(n for code, n in errors.items() if code != "UNAVAILABLE"),
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                sockets[label],
                100 * sum(load.client_cpu for load in runs) / elapsed,
                100 * sum(load.server_cpu for load in runs) / elapsed,
            )
        capped_targets(section, rates, top)
        section.notes.append(
            f"{callers} concurrent callers, each calling a 20 ms handler on a server capped at "
            f"{CAP} concurrent streams per connection; {rounds} rounds of {seconds:g} s per "
            "client, the clients taking turns; calls/s is the median round, refused and other "
            "errors are summed. Sockets: connections this process held to the server at the "
            "end of its last round."
        )
        sections.append(section)
    return sections


def capped_targets(section: Section, rates: dict[str, float], top: float) -> None:
    """The stream-capped table's targets, from each client's calls/s and the ceiling."""
    one = rates["one plain channel"]
    scaling(section, 4, rates["conngrpc pool of 4"], one, top)
    section.target(
        "conngrpc pool of 4, calls/s",
        rates["conngrpc pool of 4"],
        ">=",
        1 - LEVEL,
        "A105 N=4",
        rates["A105 N=4"],
    )
    scaling(section, 16, rates["conngrpc pool of 16"], one, top)


@asynccontextmanager
async def link(address: str, latency_ms: float) -> AsyncIterator[str]:
    """``address`` itself, or a proxy in front of it adding ``latency_ms`` each way."""
    if not latency_ms:
        yield address
        return
    async with FaultProxy(address) as proxy:
        proxy.latency(latency_ms)
        yield proxy.address


async def cold_burst(quick: bool, latency_ms: float = 0) -> Section:
    """200 calls at once, the moment the client is ready: pre-connected vs lazily scaled."""
    burst = 200
    rounds = 1 if quick else 5
    where = f", over a link with {latency_ms:g} ms each way" if latency_ms else ", loopback"
    section = Section(
        f"Cold burst: 200 concurrent calls the moment the client is ready{where}",
        ["client", "p50 ms", "p99 ms", "max ms", "failed calls", "sockets after"],
    )
    contenders: list[tuple[str, Callable[[str], object]]] = [
        ("conngrpc pool of 4 (after wait_connected)", lambda a: _pool(a, 4)),
        ("fresh A105 N=4 channel (after channel_ready)", lambda a: _a105(a, 4)),
        ("one plain channel", _plain),
    ]
    server_args = ["--max-streams", str(CAP), "--option", "grpc.http.overload_protection=0"]
    for label, make in contenders:
        latencies: list[float] = []
        maxima: list[float] = []
        failed = 0
        for _ in range(rounds):
            with ServerProcess(args=server_args) as server:
                async with link(server.address, latency_ms) as address:
                    async with make(address) as get:  # type: ignore[attr-defined]
                        times, errors = await _burst(get, burst)
                    sockets = established_sockets(server.port)
            latencies += times
            maxima.append(max(times))
            failed += errors
        section.add(
            label,
            ms(percentile(latencies, 50)),
            ms(percentile(latencies, 99)),
            ms(median(maxima)),
            failed,
            sockets,
        )
    section.notes.append(
        f"{rounds} rounds, each against a fresh server process (capped at {CAP} streams, "
        "20 ms handler, overload protection off); 'max' is the median over rounds of each "
        "round's slowest call. Ideal for 40 streams: 5 x 20 ms = 100 ms at the slowest, plus "
        "a round trip. 'Sockets after' counts the client's connections once the burst is over."
        + (
            " The link is a TCP proxy in the client process that holds every chunk "
            f"{latency_ms:g} ms in each direction, a stand-in for a network between zones."
            if latency_ms
            else ""
        )
    )
    return section


async def _burst(get: GetChannel, size: int) -> tuple[list[float], int]:
    """Latencies of the calls that succeeded, and how many failed."""

    async def one() -> float | None:
        begin = time.perf_counter()
        try:
            await sleep_call(get())(DELAY_MS, timeout=30)
        except grpc.aio.AioRpcError:
            return None
        return time.perf_counter() - begin

    results = await asyncio.gather(*(one() for _ in range(size)))
    times = [t for t in results if t is not None]
    return times, size - len(times)


async def overhead(quick: bool) -> Section:
    """Pool of 1 against one plain channel, nothing capped: what the pool itself costs."""
    blocks = 2 if quick else 24
    sequential = 50 if quick else 400
    seconds = 0.2 if quick else 0.8
    section = Section(
        "Overhead when nothing is capped: pool of 1 vs one plain channel",
        ["client", "p50 us", "p99 us", "calls/s (50 callers)"],
    )
    with ServerProcess(args=["--option", "grpc.http.overload_protection=0"]) as server:
        async with _plain(server.address) as plain, _pool(server.address, 1) as pooled:
            samples: dict[str, list[float]] = {"plain": [], "pool": []}
            rates: dict[str, list[float]] = {"plain": [], "pool": []}
            clients = [("plain", plain), ("pool", pooled)]
            for block in range(blocks):  # interleaved, each first in every other block
                for key, get in clients if block % 2 == 0 else clients[::-1]:
                    samples[key] += await _round_trips(get, sequential)
                    load = await run_load(get, callers=50, seconds=seconds, request=b"0")
                    rates[key].append(load.rate)
    for key, label in (("plain", "one plain channel"), ("pool", "conngrpc pool of 1")):
        section.add(
            label,
            percentile(samples[key], 50) * 1e6,
            percentile(samples[key], 99) * 1e6,
            median(rates[key]),
        )
    plain_p50 = percentile(samples["plain"], 50) * 1e6
    section.target(
        "conngrpc pool of 1, p50 us",
        percentile(samples["pool"], 50) * 1e6,
        "<=",
        1 + LEVEL,
        "one plain channel",
        plain_p50,
    )
    section.target(
        "conngrpc pool of 1, calls/s",
        median(rates["pool"]),
        ">=",
        1 - LEVEL,
        "one plain channel",
        median(rates["plain"]),
    )
    section.notes.append(
        f"Round trips: {blocks} blocks of {sequential} sequential calls per client, "
        f"interleaved; throughput: the median of {blocks} runs of {seconds:g} s with 50 "
        "callers each. The handler answers at once."
    )
    return section


async def _round_trips(get: GetChannel, count: int) -> list[float]:
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        await sleep_call(get())(b"0", timeout=5)
        times.append(time.perf_counter() - begin)
    return times
