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
from conngrpc.pool import GET_CHANNEL
from conngrpc.testing import FakeConnector

from ._common import Section


def _ns_per_call(stmt: str, namespace: dict[str, Any], number: int, repeat: int) -> float:
    """The best of ``repeat`` timings of ``number`` calls, in ns per call."""
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def _nothing(*_: Any) -> None:
    return None


async def get_channel_cost(quick: bool) -> Section:
    sizes = (1, 10) if quick else (1, 10, 100, 1000)
    number, repeat = (20_000, 3) if quick else (300_000, 9)
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
    cost_by_size: dict[int, float] = {}
    for size in sizes:
        connector = FakeConnector()
        name = f"bench-{size}"
        spec = Pool.child_spec(
            name=name, pool_size=size, channel={"address": "fake:1", "connector": connector}
        )

        class Declared(
            Pool,
            name=f"declared-{size}",
            pool_size=size,
            channel={"address": "fake:1", "connector": connector},
        ):
            pass

        async with Supervisor([spec, Declared]):
            await Pool.wait_connected(name, timeout=30)
            await Declared.wait_connected(timeout=30)
            items = list(range(size))
            counter = itertools.count()

            def floor(items: list[int] = items, counter: Any = counter) -> int:
                return items[next(counter) % len(items)]

            namespace = {
                "items": items,
                "counter": counter,
                "floor": floor,
                "Pool": Pool,
                "Declared": Declared,
                "name": name,
            }
            inline = _ns_per_call("items[next(counter) % len(items)]", namespace, number, repeat)
            floor_ns = _ns_per_call("floor()", namespace, number, repeat)
            by_name = _ns_per_call("Pool.get_channel(name)", namespace, number, repeat)
            declared = _ns_per_call("Declared.get_channel()", namespace, number, repeat)
            telemetry.attach("bench-get-channel", GET_CHANNEL, _nothing)
            try:
                observed = _ns_per_call("Pool.get_channel(name)", namespace, number // 4, repeat)
            finally:
                telemetry.detach("bench-get-channel")
        cost_by_size[size] = by_name
        section.add(size, inline, floor_ns, by_name, declared, observed, by_name / floor_ns)
        section.check(
            f"get_channel / floor, pool of {size}",
            by_name / floor_ns,
            "<= 3.0",
            by_name / floor_ns <= 3.0,
        )
    largest = max(sizes)
    section.check(
        f"get_channel pool of {largest} / pool of 1",
        cost_by_size[largest] / cost_by_size[1],
        "<= 1.2",
        cost_by_size[largest] / cost_by_size[1] <= 1.2,
    )
    section.notes.append(
        "Best of several timeit runs per figure. The floor is a function returning "
        "`items[next(counter) % len(items)]`, since get_channel is a call too; the inline "
        "expression is shown for reference. 'With a handler': one no-op handler attached to "
        "`(conngrpc, pool, get_channel)`, which turns on timing the call."
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
    stmt = "execute(event, measurements, metadata)"
    section.add(0, _ns_per_call(stmt, namespace, number, repeat))
    telemetry.attach("bench-execute", event, _nothing)
    try:
        section.add(1, _ns_per_call(stmt, namespace, number, repeat))
    finally:
        telemetry.detach("bench-execute")
    section.notes.append("The handler is a no-op function; the figure is the bus's own cost.")
    return section
