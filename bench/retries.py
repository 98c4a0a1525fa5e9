"""Retries and hedging: grpc's ``retryPolicy`` and ``hedgingPolicy``, given to the pool and to grpc.

Three replicas (``bench._fleet_server``, each in its own process), three scenarios, the
clients one at a time in one run, each client made afresh for each of its turns (its
connections up, then a short warm-up that is not counted), every other round in the
reverse order:

1. Rolling restart with retries: replicas answering ``Sleep`` in 5 ms, 100 callers in a
   closed loop, each call with a 1 s deadline; while they call, the replicas are
   SIGKILLed and restarted on their ports in turn, 6 kills spread evenly over 10 s. The
   same ``RETRY_CONFIG`` (a ``retryPolicy`` of 4 attempts on UNAVAILABLE) goes, as JSON,
   to grpc ``round_robin`` over ``ipv4:a,b,c`` (with ``round_robin`` added to it) and to a
   PooledChannel over a pool of 6 as its ``service_config`` setting; each also runs
   without it. grpc re-picks each attempt through its load balancer, so another replica
   takes it; a pool that hands the policy to its channels retries on the connection that
   just died.
2. Hedging: replicas answering in 20 ms, one of which stalls 250 ms on 10% of its calls
   (``--stall``), 20 callers, 1 s deadline. ``HEDGE_CONFIG``: a ``hedgingPolicy`` of 2
   attempts, the second after 50 ms. The pool with it and without, and grpc
   ``round_robin`` with it (grpc's Python client ignores hedging). The calls the
   replicas received (their ``Stats``) against those the callers made: the hedges' cost.
3. Cost: three healthy replicas (5 ms), 100 callers, the pool with ``RETRY_CONFIG``
   against the same pool with no service config; calls/s is the median round.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from conngrpc._server import ServerProcess

from ._common import LEVEL, Section, median, ms, percentile
from ._fleet_server import SERVICE
from .fleet import _stats
from .outliers import Outcome
from .pooled import FLEET_SLEEP, Call, Run, _errors, _grpc, _load, _pooled

#: The retry policy both the pool and grpc are given (gRFC A6): up to 4 attempts of a
#: call that fails UNAVAILABLE, 10 ms apart at first, then twice as long, at most 100 ms.
RETRY_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
#: The hedging policy both are given: a second copy of a call still unanswered after
#: 50 ms (or at once when the first fails UNAVAILABLE); the first answer wins.
HEDGE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE}],
            "hedgingPolicy": {
                "maxAttempts": 2,
                "hedgingDelay": "0.05s",
                "nonFatalStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

POOL_SIZE = 6
DEADLINE = 1.0
#: Each client's warm-up before a measured run, in s: its connections all carry calls.
WARM_UP = 0.3
#: The rolling restart: replicas' Sleep, callers, kills.
RESTART_MS, RESTART_CALLERS, KILLS = b"5", 100, 6
#: Hedging: replicas' Sleep, callers; the stalling replica's flags.
HEDGE_MS, HEDGE_CALLERS = b"20", 20
STALL_MS, STALL_PERCENT = 250, 10
STALL = ("--stall", "--fail-after-ms", str(STALL_MS), "--fail-percent", str(STALL_PERCENT))
#: The hedges may add at most this share of calls on the servers' side.
HEDGE_EXTRA = 0.15

POOL = f"conngrpc PooledChannel, pool of {POOL_SIZE}"
POOL_RETRY = f"{POOL}, retryPolicy"
POOL_HEDGE = f"{POOL}, hedgingPolicy"
POOL_PLAIN = f"{POOL}, no service config"
RR = "grpc round_robin"
RR_RETRY = f"{RR}, retryPolicy"
RR_HEDGE = f"{RR}, hedgingPolicy"
RR_PLAIN = f"{RR}, no retry policy"

#: A client, made afresh for each turn.
Client = Callable[[], AbstractAsyncContextManager[Call]]


def _pool(target: str, config: dict[str, Any] | None) -> Client:
    """A PooledChannel over a pool of ``POOL_SIZE``, given ``config`` as its service config."""
    if config is None:
        return lambda: _pooled(target, POOL_SIZE, FLEET_SLEEP)
    settings = {"service_config": json.dumps(config)}
    return lambda: _pooled(target, POOL_SIZE, FLEET_SLEEP, **settings)


def _round_robin(target: str, config: dict[str, Any] | None) -> Client:
    """grpc round_robin over ``target``, with ``config``'s fields beside it."""
    document = {**(config or {}), "loadBalancingConfig": [{"round_robin": {}}]}
    options = [("grpc.service_config", json.dumps(document))]
    return lambda: _grpc(target, FLEET_SLEEP, options)


@asynccontextmanager
async def _replicas(*args: Sequence[str]) -> AsyncIterator[list[ServerProcess]]:
    """One replica per ``args`` (its flags), each in its own process; killed on exit."""
    servers = [ServerProcess(module="bench._fleet_server", args=list(a)) for a in args]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        yield servers
    finally:
        for server in servers:
            server.kill()


def _target(servers: list[ServerProcess]) -> str:
    return "ipv4:" + ",".join(s.address for s in servers)


def _turns(labels: Sequence[str], rounds: int) -> Iterator[str]:
    """Each label in turn, ``rounds`` times, every other round in reverse."""
    for round_ in range(rounds):
        yield from labels if round_ % 2 == 0 else labels[::-1]


async def _warm(call: Call, callers: int, request: bytes) -> None:
    await _load(call, callers, WARM_UP, lambda: request, Run(), timeout=DEADLINE)


async def _turn(
    client: Client, callers: int, seconds: float, request: bytes, *beside: Awaitable[None]
) -> Run:
    """One measured run of ``client``, made afresh and warmed up first, each call with a
    ``DEADLINE``; ``beside`` (the replicas' restarts) runs meanwhile."""
    run = Run()
    async with client() as call:
        await _warm(call, callers, request)
        load = _load(call, callers, seconds, lambda: request, run, timeout=DEADLINE)
        await asyncio.gather(load, *beside)
    return run


async def retries(quick: bool) -> list[Section]:
    """The three scenarios; the rolling restart and the cost share their replicas."""
    async with _replicas((), (), ()) as servers:
        rolling = await rolling_restart(quick, servers)
        cost = await retry_cost(quick, servers)
    return [rolling, await hedging(quick), cost]


# --- 1. a rolling restart with retries ----------------------------------------------------


async def _restarts(servers: list[ServerProcess], kills: int, seconds: float) -> None:
    """Kill each replica and restart it on its port, in turn, ``kills`` times spread
    evenly over ``seconds``."""
    began = time.monotonic()
    for kill, server in enumerate(itertools.islice(itertools.cycle(servers), kills), 1):
        await asyncio.sleep(max(0.0, began + kill * seconds / (kills + 1) - time.monotonic()))
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)


async def rolling_restart(quick: bool, servers: list[ServerProcess]) -> Section:
    seconds, kills, rounds = (1.0, 2, 1) if quick else (10.0, KILLS, 2)
    target = _target(servers)
    clients = {
        RR_RETRY: _round_robin(target, RETRY_CONFIG),
        RR_PLAIN: _round_robin(target, None),
        POOL_RETRY: _pool(target, RETRY_CONFIG),
        POOL_PLAIN: _pool(target, None),
    }
    runs: dict[str, list[Run]] = {label: [] for label in clients}
    for label in _turns(list(clients), rounds):
        restarts = _restarts(servers, kills, seconds)
        runs[label].append(
            await _turn(clients[label], RESTART_CALLERS, seconds, RESTART_MS, restarts)
        )
    return rolling_table(runs, kills, seconds)


def _merged(runs: Sequence[Run]) -> Run:
    """The runs (of one client) as one: their calls, errors and seconds added up."""
    return Run(
        latencies=[took for run in runs for took in run.latencies],
        errors=sum((run.errors for run in runs), Counter()),
        seconds=sum(run.seconds for run in runs),
    )


def _failed(run: Run) -> int:
    return sum(run.errors.values())


def rolling_table(runs: dict[str, list[Run]], kills: int, seconds: float) -> Section:
    """The rolling restart's table from each client's rounds."""
    rounds = max(len(of_one) for of_one in runs.values())
    section = Section(
        f"Rolling restart with retries: 3 replicas SIGKILLed and restarted in turn, {kills} "
        f"kills in {seconds:g} s, {rounds} round(s) per client, {RESTART_CALLERS} callers",
        ["client", "failed calls", "by code", "failed calls per round", "successful calls/s"],
    )
    merged = {label: _merged(of_one) for label, of_one in runs.items()}
    for label, run in merged.items():
        per_round = " / ".join(f"{_failed(one):,}" for one in runs[label])
        section.add(label, _failed(run), _errors(run), per_round, run.rate)
    pool, rr = merged[POOL_RETRY], merged[RR_RETRY]
    section.target(f"failed calls, {POOL_RETRY}", _failed(pool), "=", 0)
    section.target(
        f"successful calls/s, {POOL_RETRY}", pool.rate, ">=", 1 - LEVEL, RR_RETRY, rr.rate
    )
    section.notes.append(
        f"{rounds} round(s) per client of {seconds:g} s each, the clients taking turns, each "
        f"made afresh and warmed up first; in each round, the replicas ({RESTART_MS.decode()} ms "
        "Sleep) are killed "
        f"in turn, {kills} kills spread evenly, each restarted on its port at once. Every call "
        f"has a {DEADLINE:g} s deadline. The retry policy, given as the pool's service_config "
        f"and as grpc's (with round_robin added): `{json.dumps(RETRY_CONFIG)}`."
    )
    return section


# --- 2. hedging against a replica that stalls ---------------------------------------------


async def hedging(quick: bool) -> Section:
    seconds, rounds = (0.5, 1) if quick else (6.0, 2)
    async with _replicas((), (), STALL) as servers:
        target = _target(servers)
        clients = {
            POOL_HEDGE: _pool(target, HEDGE_CONFIG),
            POOL_PLAIN: _pool(target, None),
            RR_HEDGE: _round_robin(target, HEDGE_CONFIG),
        }
        outcomes = {label: Outcome() for label in clients}
        for label in _turns(list(clients), rounds):
            outcome = outcomes[label]
            async with clients[label]() as call:
                await _warm(call, HEDGE_CALLERS, HEDGE_MS)
                before = [(await _stats(s))["calls"] for s in servers]
                run = outcome.run
                await _load(call, HEDGE_CALLERS, seconds, lambda: HEDGE_MS, run, timeout=DEADLINE)
                after = [(await _stats(s))["calls"] for s in servers]
            for server, first, last in zip(servers, before, after, strict=True):
                outcome.received[server.port] = outcome.received.get(server.port, 0) + last - first
    return hedging_table(outcomes, rounds, seconds)


def hedging_table(outcomes: dict[str, Outcome], rounds: int, seconds: float) -> Section:
    """The hedging table from each client's runs and the calls the replicas received."""
    section = Section(
        f"Hedging: one replica of three stalls {STALL_MS} ms on {STALL_PERCENT}% of its calls, "
        f"{HEDGE_CALLERS} callers",
        [
            "client",
            "p50 ms",
            "p99 ms",
            "max ms",
            "failed calls",
            "calls made",
            "calls received",
            "extra %",
        ],
    )
    for label, outcome in outcomes.items():
        run, received = outcome.run, sum(outcome.received.values())
        section.add(
            label,
            ms(percentile(run.latencies, 50)),
            ms(percentile(run.latencies, 99)),
            ms(max(run.latencies, default=float("nan"))),
            _failed(run),
            outcome.attempts,
            received,
            100 * (received / outcome.attempts - 1) if outcome.attempts else float("nan"),
        )
    p99 = {label: ms(percentile(o.run.latencies, 99)) for label, o in outcomes.items()}
    for reference in (POOL_PLAIN, RR_HEDGE):
        section.target(
            f"p99 ms, {POOL_HEDGE}", p99[POOL_HEDGE], "<=", 0.5, reference, p99[reference]
        )
    hedged = outcomes[POOL_HEDGE]
    section.target(f"failed calls, {POOL_HEDGE}", _failed(hedged.run), "=", 0)
    section.target(
        f"calls received, {POOL_HEDGE}",
        sum(hedged.received.values()),
        "<=",
        1 + HEDGE_EXTRA,
        "calls its callers made",
        hedged.attempts,
    )
    section.notes.append(
        f"{rounds} round(s) per client of {seconds:g} s each, the clients taking turns, each "
        f"made afresh and warmed up first. Replicas answer Sleep in {HEDGE_MS.decode()} ms; the "
        f"third stalls {STALL_MS} ms more on {STALL_PERCENT}% of the calls it receives, evenly "
        f"spread (`{' '.join(STALL)}`). Every call has a "
        f"{DEADLINE:g} s deadline. Calls received: Sleep calls the replicas counted (their "
        "Stats) during the measured runs; extra: their share above the calls made. The "
        "hedging policy, given as the pool's service_config and as grpc's (with "
        f"round_robin added): `{json.dumps(HEDGE_CONFIG)}`."
    )
    return section


# --- 3. the cost of a retry policy, nothing failing ---------------------------------------


async def retry_cost(quick: bool, servers: list[ServerProcess]) -> Section:
    seconds, rounds = (0.3, 2) if quick else (3.0, 6)
    target = _target(servers)
    clients = {POOL_RETRY: _pool(target, RETRY_CONFIG), POOL_PLAIN: _pool(target, None)}
    runs: dict[str, list[Run]] = {label: [] for label in clients}
    for label in _turns(list(clients), rounds):
        runs[label].append(await _turn(clients[label], RESTART_CALLERS, seconds, RESTART_MS))
    return cost_table(runs, seconds)


def cost_table(runs: dict[str, list[Run]], seconds: float) -> Section:
    """The cost table from each round's runs of the two pools."""
    section = Section(
        f"Cost of a retry policy, nothing failing: 3 healthy replicas, {RESTART_CALLERS} callers",
        ["client", "calls/s (median round)", "p50 ms (median round)", "p99 ms (all)", "errors"],
    )
    rates = {label: median([run.rate for run in of_one]) for label, of_one in runs.items()}
    for label, of_one in runs.items():
        merged = _merged(of_one)
        section.add(
            label,
            rates[label],
            ms(median([percentile(run.latencies, 50) for run in of_one])),
            ms(percentile(merged.latencies, 99)),
            _errors(merged),
        )
    section.target(
        f"calls/s, {POOL_RETRY}", rates[POOL_RETRY], ">=", 1 - LEVEL, POOL_PLAIN, rates[POOL_PLAIN]
    )
    section.notes.append(
        f"{len(runs[POOL_RETRY])} rounds of {seconds:g} s per pool, the two taking turns "
        "(every other round reversed), each made afresh and warmed up first; replicas answer "
        f"Sleep in {RESTART_MS.decode()} ms. "
        "The pool given the rolling restart's retry policy as its service_config against "
        "the same pool given no service config."
    )
    return section
