"""Start-up, stopping, failure detection and recovery, and memory per pooled channel."""

from __future__ import annotations

import gc
import itertools
import time

import anyio
import grpc.aio

from conngrpc import NotConnectedError, Pool, Supervisor
from conngrpc._server import ServerProcess

from ._common import Section, median, ms, rss_bytes, run_load

_names = itertools.count(1)


async def startup(quick: bool) -> Section:
    sizes = (1, 4) if quick else (1, 16, 64)
    runs = 2 if quick else 9
    section = Section(
        "Start-up: until every channel is connected",
        ["channels", "conngrpc pool, median ms", "min ms", "max ms", "plain grpc.aio, median ms"],
    )
    pool: dict[int, float] = {}
    plain: dict[int, float] = {}
    with ServerProcess() as server:
        for size in sizes:
            pool_times, plain_times = [], []
            for _ in range(runs):  # interleaved, so drift hits both alike
                name = f"bench-startup-{next(_names)}"
                pool_times.append(await _start_pool(name, size, server.address))
                plain_times.append(await _open_plain_channels(size, server.address))
            pool[size], plain[size] = median(pool_times), median(plain_times)
            section.add(
                size, ms(pool[size]), ms(min(pool_times)), ms(max(pool_times)), ms(plain[size])
            )
    largest = max(sizes)
    section.target(
        f"pool of {largest}, median ms",
        ms(pool[largest]),
        "<=",
        3.0,
        f"{largest} plain grpc.aio channels",
        ms(plain[largest]),
    )
    section.notes.append(
        f"Median of {runs} starts per size, from entering the supervisor to `wait_connected`"
        " returning, against a server in another process; 'plain grpc.aio' opens as many"
        " channels (each its own connection) at once and awaits `channel_ready()` on all of"
        " them, the floor for this machine. Loopback only: how start-up grows across a real"
        " network, where each connect waits on round trips, was not measured."
    )
    return section


async def _start_pool(name: str, size: int, address: str) -> float:
    """Seconds from entering the supervisor until every channel is connected."""
    spec = Pool.child_spec(name=name, pool_size=size, channel={"address": address})
    began = time.perf_counter()
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=30)
        return time.perf_counter() - began


async def _open_plain_channels(size: int, address: str) -> float:
    """Seconds to open ``size`` grpc.aio channels, each its own connection, at once."""
    began = time.perf_counter()
    channels = [
        grpc.aio.insecure_channel(address, options=[("bench.channel", index)])
        for index in range(size)
    ]
    try:
        async with anyio.create_task_group() as group:
            for channel in channels:
                group.start_soon(channel.channel_ready)
        return time.perf_counter() - began
    finally:
        for channel in channels:
            await channel.close()


async def shutdown(quick: bool) -> Section:
    """Leave the supervisor of an idle pool: how long, and how it grows with the pool."""
    sizes = (10, 40) if quick else (100, 1000, 3000)
    runs = 1 if quick else 3
    section = Section(
        "Stop: leaving the supervisor of an idle pool",
        ["channels", "conngrpc pool, median ms", "max ms", "plain grpc.aio close, median ms"],
    )
    pool: dict[int, float] = {}
    with ServerProcess() as server:
        for size in sizes:
            pool_times, plain_times = [], []
            for _ in range(runs):
                name = f"bench-stop-{next(_names)}"
                pool_times.append(await _stop_pool(name, size, server.address))
                plain_times.append(await _close_plain_channels(size, server.address))
            pool[size] = median(pool_times)
            section.add(size, ms(pool[size]), ms(max(pool_times)), ms(median(plain_times)))
    if 1000 in pool:
        section.target("pool of 1000, stop (s)", pool[1000], "<=", 0.5)
    small, large = sizes[-2], sizes[-1]
    # In proportion to the pool's size: the larger pool's stop may take at most 1.5 times
    # its share of the smaller one's.
    section.target(
        f"pool of {large}, stop (s)",
        pool[large],
        "<=",
        1.5 * large / small,
        f"pool of {small}",
        pool[small],
    )
    section.notes.append(
        f"Median of {runs} stops per size, from leaving the `async with Supervisor` block"
        " until it returns, with every channel connected and no call in flight, against a"
        " server in another process; 'plain grpc.aio close' closes as many connected"
        " channels one after another."
    )
    return section


async def _stop_pool(name: str, size: int, address: str) -> float:
    """Seconds to leave the supervisor of a connected, idle pool of ``size``."""
    spec = Pool.child_spec(name=name, pool_size=size, channel={"address": address})
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=120)
        began = time.perf_counter()
    return time.perf_counter() - began


async def _close_plain_channels(size: int, address: str) -> float:
    """Seconds to close ``size`` connected grpc.aio channels, one after another."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("bench.channel", index)])
        for index in range(size)
    ]
    async with anyio.create_task_group() as group:
        for channel in channels:
            group.start_soon(channel.channel_ready)
    began = time.perf_counter()
    for channel in channels:
        await channel.close()
    return time.perf_counter() - began


async def failure_and_recovery(quick: bool) -> Section:
    """Kill the server under load; time until get_channel fails, then until the pool is back."""
    rounds = 1 if quick else 10
    size = 4
    section = Section(
        "Failure detection and recovery (server SIGKILLed under load, restarted on its port)",
        ["round", "kill -> NotConnectedError ms", "server back -> pool connected ms"],
    )
    detections: list[float] = []
    recoveries: list[float] = []
    backoff_min = 1.0  # the default ExponentialBackoff(min=1.0, max=30.0)
    with ServerProcess() as server:
        name = f"bench-recovery-{next(_names)}"
        spec = Pool.child_spec(name=name, pool_size=size, channel={"address": server.address})
        async with Supervisor([spec]):
            for round_ in range(1, rounds + 1):
                await Pool.wait_connected(name, timeout=30)
                async with anyio.create_task_group() as load:
                    load.start_soon(_keep_calling, name)
                    await anyio.sleep(0.2)  # the pool is busy when the server dies
                    killed = time.perf_counter()
                    server.kill()
                    while True:
                        try:
                            Pool.get_channel(name)
                        except NotConnectedError:
                            break
                        await anyio.sleep(0.0005)
                    detected = time.perf_counter() - killed
                    load.cancel_scope.cancel()
                await anyio.to_thread.run_sync(server.start)
                back = time.perf_counter()
                await Pool.wait_connected(name, timeout=30)
                recovered = time.perf_counter() - back
                detections.append(detected)
                recoveries.append(recovered)
                section.add(round_, ms(detected), ms(recovered))
    section.add("median", ms(median(detections)), ms(median(recoveries)))
    section.target("median kill -> NotConnectedError, ms", ms(median(detections)), "<=", 500)
    section.target(
        f"median server back -> pool connected, ms (backoff min {backoff_min:g} s + 0.3 s)",
        ms(median(recoveries)),
        "<=",
        ms(backoff_min + 0.3),
    )
    section.notes.append(
        f"Pool of {size} with the default backoff (1 s to 30 s, jitter up to +20%), 50 callers "
        "making 5 ms calls. The server is restarted as soon as the pool has emptied; starting "
        "its process takes part of the first backoff."
    )
    return section


async def _keep_calling(name: str) -> None:
    await run_load(lambda: Pool.get_channel(name), callers=50, seconds=3600, request=b"5")


async def memory(quick: bool) -> Section:
    sizes = (20,) if quick else (100, 500)
    section = Section(
        "Memory: resident set growth per 100 pooled channels",
        ["channels", "RSS growth KiB", "KiB per 100 channels"],
    )
    with ServerProcess() as server:
        for size in (10, *sizes):  # the first, small pool warms grpc up and is not reported
            name = f"bench-memory-{next(_names)}"
            spec = Pool.child_spec(name=name, pool_size=size, channel={"address": server.address})
            gc.collect()
            before = rss_bytes()
            async with Supervisor([spec]):
                await Pool.wait_connected(name, timeout=60)
                gc.collect()
                grown = (rss_bytes() - before) / 1024
            if size in sizes:
                section.add(size, grown, grown / size * 100)
    section.notes.append(
        "Client process RSS after all channels connected, minus before: what grpc and "
        "conngrpc allocate per connection together (how it splits between them was not "
        "measured)."
    )
    return section
