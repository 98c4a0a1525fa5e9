"""The hand-out and the telemetry bus: nanoseconds per call, next to the physical floor.

The floor is what a user would write for the cheapest round-robin: a function that
indexes a list with an ``itertools.count()`` counter. The pools here are connected
through the fake connector: ``get_channel`` runs the same code whatever is behind a
channel, and a pool of 1000 real connections would measure nothing more.
"""

from __future__ import annotations

import itertools
import timeit
from typing import Any

from conngrpc import Pool, Supervisor, telemetry
from conngrpc._server import start_server
from conngrpc.pool.pool import GET_CHANNEL
from conngrpc.testing import FakeConnector

from ._common import Section


def _best_ns(timings: dict[str, tuple[timeit.Timer, int]], repeat: int) -> dict[str, float]:
    """The best of ``repeat`` rounds for each timer, in ns per call.

    Rounds run every timer in turn, so a slow spell on a shared machine hits all of them
    alike instead of one figure.
    """
    best = dict.fromkeys(timings, float("inf"))
    for _ in range(repeat):
        for key, (timer, number) in timings.items():
            best[key] = min(best[key], timer.timeit(number) / number * 1e9)
    return best


def _nothing(*_: Any) -> None:
    return None


async def get_channel_cost(quick: bool) -> Section:
    sizes = (1, 10) if quick else (1, 10, 100, 1000)
    number, repeat = (20_000, 3) if quick else (200_000, 15)
    section = Section(
        "get_channel cost",
        [
            "pool size",
            "floor: inline index (ns)",
            "floor: function (ns)",
            "Pool.get_channel(name) (ns)",
            "DemoPool.get_channel() (ns)",
            "with a handler (ns)",
            "x floor",
        ],
    )
    connector = FakeConnector()
    channel = {"address": "fake:1", "connector": connector}
    declared = {
        size: type(Pool)(f"Declared{size}", (Pool,), {}, pool_size=size, channel=channel)
        for size in sizes
    }
    specs = [
        Pool.child_spec(name=f"bench-{size}", pool_size=size, channel=channel) for size in sizes
    ]
    async with Supervisor([*specs, *declared.values()]):
        for size in sizes:
            await Pool.wait_connected(f"bench-{size}", timeout=30)
            await declared[size].wait_connected(timeout=30)
        timings: dict[str, tuple[timeit.Timer, int]] = {}
        for size in sizes:
            items = list(range(size))
            counter = itertools.count()

            def floor(items: list[int] = items, counter: Any = counter) -> int:
                return items[next(counter) % len(items)]

            namespace = {
                "items": items,
                "counter": counter,
                "floor": floor,
                "Pool": Pool,
                "Declared": declared[size],
                "name": f"bench-{size}",
            }
            for key, stmt in (
                ("inline", "items[next(counter) % len(items)]"),
                ("floor", "floor()"),
                ("by_name", "Pool.get_channel(name)"),
                ("declared", "Declared.get_channel()"),
            ):
                timings[f"{key}-{size}"] = (timeit.Timer(stmt, globals=namespace), number)
        best = _best_ns(timings, repeat)
        telemetry.attach("bench-get-channel", GET_CHANNEL, _nothing)
        try:
            observed = _best_ns(
                {
                    key: (timer, number // 4)
                    for key, (timer, _) in timings.items()
                    if key.startswith("by_name-")
                },
                repeat,
            )
        finally:
            telemetry.detach("bench-get-channel")
    for size in sizes:
        floor_ns, by_name = best[f"floor-{size}"], best[f"by_name-{size}"]
        section.add(
            size,
            best[f"inline-{size}"],
            floor_ns,
            by_name,
            best[f"declared-{size}"],
            observed[f"by_name-{size}"],
            by_name / floor_ns,
        )
        section.target(
            f"get_channel, pool of {size} (ns)",
            by_name,
            "<=",
            3.0,
            "the floor, a function",
            floor_ns,
        )
    largest = max(sizes)
    section.target(
        f"get_channel, pool of {largest} (ns)",
        best[f"by_name-{largest}"],
        "<=",
        1.2,
        "get_channel, pool of 1",
        best["by_name-1"],
    )
    section.notes.append(
        f"Best of {repeat} rounds of {number:,} calls per figure, every figure timed in turn "
        "in each round. The floor is a function returning `items[next(counter) % "
        "len(items)]`, since get_channel is a call too; the inline expression is shown for "
        "reference. 'With a handler': one no-op handler attached to "
        "`(conngrpc, pool, get_channel)`, which turns on timing the call."
    )
    return section


async def real_channel_cost(quick: bool) -> Section:
    """The hand-out over real grpc channels: it asks grpc whether the channel is READY."""
    number, repeat = (20_000, 3) if quick else (200_000, 15)
    section = Section(
        "get_channel cost, real channels",
        [
            "pool size",
            "floor: function (ns)",
            "channel.get_state() (ns)",
            "Pool.get_channel(name) (ns)",
        ],
    )
    server, port = await start_server()
    try:
        name = "bench-real-channels"
        spec = Pool.child_spec(name=name, pool_size=6, channel={"address": f"127.0.0.1:{port}"})
        async with Supervisor([spec]):
            await Pool.wait_connected(name, timeout=30)
            items = list(range(6))
            counter = itertools.count()

            def floor() -> int:
                return items[next(counter) % len(items)]

            channel = Pool.get_channel(name)
            namespace = {"floor": floor, "Pool": Pool, "name": name, "channel": channel}
            timings = {
                key: (timeit.Timer(stmt, globals=namespace), number)
                for key, stmt in (
                    ("floor", "floor()"),
                    ("state", "channel.get_state()"),
                    ("by_name", "Pool.get_channel(name)"),
                )
            }
            best = _best_ns(timings, repeat)
    finally:
        await server.stop(None)
    section.add(6, best["floor"], best["state"], best["by_name"])
    section.notes.append(
        "A pool of 6 real connections to a local server. get_channel asks grpc whether the "
        "channel it picks is READY (`channel.get_state()`), so that a channel whose "
        "connection broke is not handed out in the moments before its worker hears of it; "
        "that question is most of the difference from the fake channels above."
    )
    return section


def telemetry_cost(quick: bool) -> Section:
    number, repeat = (50_000, 3) if quick else (500_000, 9)
    section = Section("telemetry.execute cost", ["handlers attached", "ns per execute"])
    event = ("bench", "telemetry", "execute")
    namespace = {
        "execute": telemetry.execute,
        "event": event,
        "measurements": {"duration": 1},
        "metadata": {"pool_name": "bench"},
    }
    timer = timeit.Timer("execute(event, measurements, metadata)", globals=namespace)
    section.add(0, _best_ns({"none": (timer, number)}, repeat)["none"])
    telemetry.attach("bench-execute", event, _nothing)
    try:
        section.add(1, _best_ns({"one": (timer, number)}, repeat)["one"])
    finally:
        telemetry.detach("bench-execute")
    section.notes.append("The handler is a no-op function; the figure is the bus's own cost.")
    return section
