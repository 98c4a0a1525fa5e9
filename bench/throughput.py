"""Stream-capped throughput, cold bursts and the overhead of a pool when nothing is capped.

The server runs in a child process with ``grpc.max_concurrent_streams=10`` and a 20 ms
handler, so one connection carries at most 500 calls/s: the stream cap is the
bottleneck a pool (or gRFC A105 connection scaling) exists to lift.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc.aio

from conngrpc import Pool, Supervisor
from conngrpc._server import ServerProcess
from tests._net import established_sockets

from ._common import (
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


async def client_cpu_limit(quick: bool) -> tuple[float, Load]:
    """Calls/s with nothing capped and no delay: what this client can drive at all."""
    seconds = 0.3 if quick else 3.0
    with ServerProcess(args=["--option", "grpc.http.overload_protection=0"]) as server:
        async with _pool(server.address, 16) as get:
            await run_load(get, callers=200, seconds=min(0.3, seconds), request=b"0")
            load = await run_load(
                get, callers=200, seconds=seconds, request=b"0", server_pid=server.pid
            )
    return load.rate, load


async def stream_capped(quick: bool, cpu_limit: float) -> list[Section]:
    seconds = 0.3 if quick else 3.0
    callers = 200
    sections = []
    for overload in ("on (grpc default)", "off"):
        args = ["--max-streams", str(CAP)]
        if overload == "off":
            args += ["--option", "grpc.http.overload_protection=0"]
        section = Section(
            f"Stream-capped throughput, overload protection {overload}",
            [
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
            ],
        )
        rates: dict[str, float] = {}
        with ServerProcess(args=args) as server:
            for label, make in _contenders():
                load, sockets = await _measure(make, server, callers, seconds)
                rates[label] = load.rate
                others = sum(n for code, n in load.errors.items() if code != "UNAVAILABLE")
                section.add(
                    label,
                    load.rate,
                    load.rate / rates["one plain channel"],
                    load.refused,
                    others,
                    ms(percentile(load.latencies, 50)),
                    ms(percentile(load.latencies, 99)),
                    sockets,
                    100 * load.client_cpu / load.seconds,
                    100 * load.server_cpu / load.seconds,
                )
        plain = rates["one plain channel"]
        pool4, pool16 = rates["conngrpc pool of 4"], rates["conngrpc pool of 16"]
        section.check("pool of 4 / one channel", pool4 / plain, ">= 3.5", pool4 / plain >= 3.5)
        section.check(
            "pool of 4 / A105 N=4",
            pool4 / rates["A105 N=4"],
            ">= 0.95",
            pool4 / rates["A105 N=4"] >= 0.95,
        )
        at_limit = pool16 >= 0.95 * cpu_limit
        section.check(
            "pool of 16 / one channel",
            pool16 / plain,
            ">= 12, or within 5% of the client CPU limit",
            pool16 / plain >= 12 or at_limit,
            f"pool of 16 = {pool16 / cpu_limit:.0%} of the limit, {cpu_limit:,.0f} calls/s",
        )
        section.notes.append(
            f"{callers} concurrent callers for {seconds:g} s per client, each calling a 20 ms "
            f"handler on a server capped at {CAP} concurrent streams per connection. "
            "Sockets: connections this process held to the server at the end of the run."
        )
        sections.append(section)
    return sections


async def cold_burst(quick: bool) -> Section:
    """200 calls at once, the moment the client is ready: pre-connected vs lazily scaled."""
    burst = 200
    rounds = 1 if quick else 5
    section = Section(
        "Cold burst: 200 concurrent calls the moment the client is ready",
        ["client", "p50 ms", "p99 ms", "max ms", "failed calls", "sockets after"],
    )
    contenders: list[tuple[str, Callable[[str], object]]] = [
        ("conngrpc pool of 4 (after wait_connected)", lambda a: _pool(a, 4)),
        ("fresh A105 N=4 channel (after channel_ready)", lambda a: _a105(a, 4)),
        ("one plain channel", _plain),
    ]
    p99: dict[str, float] = {}
    server_args = ["--max-streams", str(CAP), "--option", "grpc.http.overload_protection=0"]
    for label, make in contenders:
        latencies: list[float] = []
        maxima: list[float] = []
        failed = 0
        for _ in range(rounds):
            with ServerProcess(args=server_args) as server:
                async with make(server.address) as get:  # type: ignore[attr-defined]
                    times, errors = await _burst(get, burst)
                    sockets = established_sockets(server.port)
            latencies += times
            maxima.append(max(times))
            failed += errors
        p99[label] = percentile(latencies, 99)
        section.add(
            label,
            ms(percentile(latencies, 50)),
            ms(p99[label]),
            ms(median(maxima)),
            failed,
            sockets,
        )
    ratio = p99[contenders[1][0]] / p99[contenders[0][0]]
    section.check("A105 p99 / pool p99 (above 1: the pool is faster)", ratio, "report", True)
    section.notes.append(
        f"{rounds} rounds, each against a fresh server process (capped at {CAP} streams, "
        "20 ms handler, overload protection off); 'max' is the median over rounds of each "
        "round's slowest call. Ideal for 40 streams: 5 x 20 ms = 100 ms at the slowest."
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
    blocks = 2 if quick else 20
    sequential = 50 if quick else 500
    seconds = 0.2 if quick else 1.0
    section = Section(
        "Overhead when nothing is capped: pool of 1 vs one plain channel",
        ["client", "p50 us", "p99 us", "calls/s (50 callers)"],
    )
    with ServerProcess(args=["--option", "grpc.http.overload_protection=0"]) as server:
        async with _plain(server.address) as plain, _pool(server.address, 1) as pooled:
            samples: dict[str, list[float]] = {"plain": [], "pool": []}
            rates: dict[str, list[float]] = {"plain": [], "pool": []}
            for _ in range(blocks):  # interleaved, so drift hits both alike
                for key, get in (("plain", plain), ("pool", pooled)):
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
    p50_ratio = percentile(samples["pool"], 50) / percentile(samples["plain"], 50)
    rate_ratio = median(rates["plain"]) / median(rates["pool"])
    section.check("pool p50 / plain p50", p50_ratio, "<= 1.05", p50_ratio <= 1.05)
    section.check("plain calls/s / pool calls/s", rate_ratio, "<= 1.05", rate_ratio <= 1.05)
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
