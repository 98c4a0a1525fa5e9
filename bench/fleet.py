"""Calls over a fleet of three replicas: where they land, and what a replica's trouble costs.

Three servers (``bench._fleet_server``, each in its own process) answer ``Sleep`` after
5 ms and say who they are. The same load runs through three clients:

- a conngrpc pool of 6, health-checked (``health_check=""``), ``get_channel`` per call;
- one grpc channel with ``round_robin`` and ``healthCheckConfig`` (grpc's own answer);
- one grpc channel with the default ``pick_first``.

Scenarios: (a) steady state; (b) one replica turns NOT_SERVING (the calls it received
while not serving, counted by the server: no more than round_robin + health sent it;
and how long after the flip it last answered one, as the client saw); (c) a rolling
restart, each replica killed and restarted in turn (failed calls: no more than
round_robin's, and no NotConnectedError); (d) scale-out from two replicas to three
(how long until the new one takes its share).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import grpc.aio

from conngrpc import NotConnectedError, Pool, Supervisor
from conngrpc._server import ServerProcess
from conngrpc.channel.connector import raw_unary

from ._common import LEVEL, GetChannel, Section, ms, percentile
from ._fleet_server import SERVICE, STATS_METHOD

SLEEP = f"/{SERVICE}/Sleep"
CALL_MS = b"5"
DEADLINE = 1.0
ROUND_ROBIN = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
}
POOL_SIZE = 6
POOL = "conngrpc pool of 6"
RR = "grpc round_robin + health"

_names = itertools.count(1)


@dataclass
class Tally:
    """What the callers saw: calls per backend port, errors by kind, latencies."""

    by_port: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    #: (time, port) of every answered call, for shares over time
    answered: list[tuple[float, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def share(self, port: int) -> float:
        return self.by_port[port] / self.calls if self.calls else 0.0


async def _load(get: GetChannel, callers: int, stop: asyncio.Event) -> Tally:
    tally = Tally()

    async def caller() -> None:
        while not stop.is_set():
            try:
                channel = get()
            except NotConnectedError:
                tally.errors["NotConnectedError"] += 1
                await asyncio.sleep(0.005)
                continue
            began = time.perf_counter()
            try:
                answer = await raw_unary(channel, SLEEP)(CALL_MS, timeout=DEADLINE)
            except grpc.aio.AioRpcError as error:
                tally.errors[error.code().name] += 1
                continue
            tally.latencies.append(time.perf_counter() - began)
            port = int(answer)
            tally.by_port[port] += 1
            tally.answered.append((time.monotonic(), port))

    began = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    tally.seconds = time.monotonic() - began
    return tally


@asynccontextmanager
async def _running(
    get: GetChannel, callers: int
) -> AsyncIterator[tuple[asyncio.Event, list[Tally]]]:
    stop = asyncio.Event()
    result: list[Tally] = []
    task = asyncio.ensure_future(_load(get, callers, stop))
    try:
        yield stop, result
    finally:
        stop.set()
        result.append(await task)


# --- the clients ----------------------------------------------------------------------------


@asynccontextmanager
async def _pool(addresses: Callable[[], list[str]]) -> AsyncIterator[GetChannel]:
    name = f"bench-fleet-{next(_names)}"
    spec = Pool.child_spec(
        name=name,
        pool_size=POOL_SIZE,
        channel={"address": addresses()[0], "health_check": ""},
        resolver=addresses,
        resolve_interval=0.5,
    )
    async with Supervisor([spec]):
        await Pool.wait_connected(name, timeout=30)
        yield lambda: Pool.get_channel(name)


@asynccontextmanager
async def _grpc(
    addresses: Callable[[], list[str]], config: dict | None
) -> AsyncIterator[GetChannel]:
    options = [("grpc.service_config", json.dumps(config))] if config else []
    channel = grpc.aio.insecure_channel("ipv4:" + ",".join(addresses()), options)
    await channel.channel_ready()
    try:
        yield lambda: channel
    finally:
        await channel.close()


CLIENTS: list[tuple[str, Callable[[Callable[[], list[str]]], object]]] = [
    (POOL, _pool),
    (RR, lambda a: _grpc(a, ROUND_ROBIN)),
    ("grpc pick_first", lambda a: _grpc(a, None)),
]


async def _stats(server: ServerProcess) -> dict[str, int]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        answer = await raw_unary(channel, STATS_METHOD)(b"", timeout=5)
    return json.loads(answer)


def _row(
    section: Section, name: str, tally: Tally, servers: list[ServerProcess], *extra: object
) -> None:
    shares = " / ".join(f"{tally.share(s.port) * 100:.0f}%" for s in servers)
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(tally.errors.items())) or "0"
    section.add(
        name,
        tally.calls / tally.seconds,
        ms(percentile(tally.latencies, 50)),
        ms(percentile(tally.latencies, 99)),
        shares,
        errors,
        *extra,
    )


# --- the scenarios ----------------------------------------------------------------------------


async def fleet(quick: bool) -> list[Section]:
    """The four scenarios against the same three replicas, the clients in turn.

    Each scenario runs ``rounds`` times, the clients' order reversed every other round,
    so a slow spell of a shared machine does not fall on one client; the tallies of a
    client's rounds are added up.
    """
    seconds, rounds, restarts = (0.3, 1, 1) if quick else (3.0, 2, 2)
    pause = 0.3 if quick else 1.0  # between kills in the rolling restarts
    callers = 30
    servers = [ServerProcess(module="bench._fleet_server") for _ in range(3)]
    for server in servers:
        await asyncio.to_thread(server.start)
    columns = ["client", "calls/s", "p50 ms", "p99 ms", "share per replica", "errors"]
    steady = Section(f"Fleet (a): steady state, 3 replicas, {callers} callers", columns)
    sick = Section(
        f"Fleet (b): one replica turns NOT_SERVING for {seconds:g} s, {rounds} time(s) per client",
        [*columns, "calls it received while NOT_SERVING", "its last answer after a flip"],
    )
    rolling = Section(
        f"Fleet (c): rolling restarts, each replica SIGKILLed and restarted in turn, "
        f"{pause:g} s apart, {restarts * rounds * len(servers)} kills per client, 200 callers",
        columns,
    )
    scale = Section(
        "Fleet (d): scale-out from 2 replicas to 3",
        [*columns, "new replica's share reached 30% after"],
    )
    listed = [s.address for s in servers]
    tallies: dict[tuple[str, str], list[Tally]] = {}
    received: Counter[str] = Counter()
    last_answer: dict[str, float] = {}  # the latest over a client's rounds
    reached: dict[str, list[str]] = {}

    def keep(scenario: str, name: str, tally: Tally) -> None:
        tallies.setdefault((scenario, name), []).append(tally)

    try:
        for round_ in range(rounds):
            order = CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]
            for name, client in order:
                current = list(listed)
                async with client(lambda current=current: current) as get:  # type: ignore[attr-defined]
                    async with _running(get, callers):  # warm-up, not counted
                        await asyncio.sleep(seconds / 6)
                    # (a) steady state
                    async with _running(get, callers) as (_, result):
                        await asyncio.sleep(seconds)
                    keep("a", name, result[0])

                    # (b) one replica NOT_SERVING, as an operator draining it would
                    async with _running(get, callers) as (_, result):
                        await asyncio.sleep(seconds / 3)
                        before = await _stats(servers[0])
                        servers[0].signal(signal.SIGUSR1)
                        flipped = time.monotonic()
                        await asyncio.sleep(seconds)
                        after = await _stats(servers[0])
                        unflipped = time.monotonic()
                        servers[0].signal(signal.SIGUSR2)
                    received[name] += after["not_serving_calls"] - before["not_serving_calls"]
                    keep("b", name, result[0])
                    last = _last_answer(result[0], servers[0].port, flipped, unflipped)
                    if last is not None:
                        last_answer[name] = max(last, last_answer.get(name, 0.0))
                    await asyncio.sleep(pause / 2)  # serving again before the next scenario

                    # (c) rolling restarts: every replica killed and restarted, in turn
                    async with _running(get, 200) as (_, result):
                        for server in servers * restarts:
                            await asyncio.sleep(pause)
                            await asyncio.to_thread(server.kill)
                            await asyncio.to_thread(server.start)
                        await asyncio.sleep(pause)
                    keep("c", name, result[0])

                # (d) scale-out: the client starts with two replicas listed
                current = list(listed[:2])
                async with client(lambda current=current: current) as get:  # type: ignore[attr-defined]
                    async with _running(get, callers) as (_, result):
                        await asyncio.sleep(seconds / 3)
                        added = time.monotonic()
                        current.append(listed[2])
                        await asyncio.sleep(seconds * 2)
                    keep("d", name, result[0])
                    reached.setdefault(name, []).append(
                        _time_to_share(result[0], servers[2].port, added, 0.30)
                    )
    finally:
        for server in servers:
            server.kill()
    for name, _ in CLIENTS:
        _row(steady, name, _merged(tallies[("a", name)]), servers)
        last = last_answer.get(name)
        _row(
            sick,
            name,
            _merged(tallies[("b", name)]),
            servers,
            received[name],
            "none" if last is None else f"{ms(last):.0f} ms",
        )
        _row(rolling, name, _merged(tallies[("c", name)]), servers)
        _row(scale, name, _merged(tallies[("d", name)]), servers, " / ".join(reached[name]))
    failed = {n: sum(_merged(tallies[("c", n)]).errors.values()) for n in (POOL, RR)}
    no_more_than(sick, "calls it received while NOT_SERVING, pool", received[POOL], received[RR])
    no_more_than(rolling, "failed calls, pool", failed[POOL], failed[RR])
    not_connected = _merged(tallies[("c", POOL)]).errors["NotConnectedError"]
    rolling.target("NotConnectedError in the pool", not_connected, "=", 0)
    return [steady, sick, rolling, scale]


def no_more_than(
    section: Section, name: str, ours: float, theirs: float, reference: str = RR
) -> None:
    """The pool's count of something bad against grpc's (``reference``, by default
    round_robin + health), the yardstick: level within 5%, or none at all when grpc had
    none."""
    if theirs:
        section.target(name, ours, "<=", 1 + LEVEL, reference, theirs)
    else:
        section.target(f"{name} ({reference}: 0)", ours, "=", 0)


def _merged(tallies: list[Tally]) -> Tally:
    merged = Tally()
    for tally in tallies:
        merged.by_port.update(tally.by_port)
        merged.errors.update(tally.errors)
        merged.latencies.extend(tally.latencies)
        merged.seconds += tally.seconds
    return merged


def _last_answer(tally: Tally, port: int, flipped: float, unflipped: float) -> float | None:
    """How long after ``flipped`` the replica on ``port`` last answered a call, before it
    was turned SERVING again; None if it answered none in that time."""
    times = [at - flipped for at, by in tally.answered if by == port and flipped <= at < unflipped]
    return max(times, default=None)


def _time_to_share(tally: Tally, port: int, since: float, share: float) -> str:
    """How long after ``since`` the share of calls answered by ``port``, over a sliding
    window of 100 calls, first reached ``share``; "never" if it did not."""
    window: list[int] = []
    for at, answered_by in tally.answered:
        if at < since:
            continue
        window.append(answered_by)
        if len(window) > 100:
            window.pop(0)
        if len(window) == 100 and window.count(port) / 100 >= share:
            return f"{at - since:.2f} s"
    return "never"


async def _main() -> None:
    import logging

    logging.getLogger("conngrpc").setLevel(logging.ERROR)  # the figures, not the faults
    for section in await fleet(quick="--quick" in sys.argv):
        print(section.text())


if __name__ == "__main__":
    asyncio.run(_main())
