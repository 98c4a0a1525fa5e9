"""Outliers: one replica of three goes bad; how many calls it still gets, and what that costs.

Three replicas (``bench._fleet_server``, each in its own process): two answer ``Sleep`` in
20 ms, the third is bad in the way the scenario says. 30 callers call in a closed loop,
each call with a 1 s deadline, through each client in turn (one at a time, all in one
run). Each client is made afresh when its run begins, after its connections are up, so
the time it takes to notice the bad replica counts; and each meets a bad replica started
afresh, whose faults come in the same order for all:

- conngrpc's PooledChannel over a pool of 6 with no configuration (its default ejection);
- the same pool given ``CONFIG`` as its ``service_config`` setting (a JSON string);
- one grpc channel with ``round_robin`` over the three addresses (``ipv4:a,b,c``);
- one grpc channel given the same ``CONFIG`` as ``grpc.service_config``: grpc's outlier
  detection (gRFC A50) over ``round_robin``.

Scenarios: (1a) the bad replica fails every call at once with INTERNAL, (1b) with
UNAVAILABLE; (2) it fails 30% of its calls with INTERNAL after 20 ms (evenly spread,
never two in a row: the rules that count failures in a row never see one); (3) it never
answers, so each call it gets waits for its deadline; (4) no bad replica: three healthy
ones, the two pools only.

The share of calls each replica got is counted by the replicas themselves (their
``Stats``: calls received), so a call that hit its deadline counts where it was sent.
What a pool ejected: its ``backend_ejected`` and ``backend_returned`` telemetry events
(their times, to tell which calls that hit their deadline began after the bad replica was
first ejected, and which of those began while it was out of the pick, where none may)
and the backends ``Pool.status(name).ejected`` listed, read every 100 ms.

The healthy baseline (4) sets the default pool against the pool given ``CONFIG``: once
ejection is the default there is no pool without it, and with ``CONFIG`` the pool ejects
a backend only past 25% failed calls out of 20 or more in a second, which three healthy
replicas never come near. Both count every call's outcome; they differ in the default's
rules (the streak, the sweep against the rest of the pool) and in the pick (the least
loaded of all against ``round_robin``). Neither may eject a backend, and the default may
cost no more than 5% of calls/s. What counting the outcomes costs a call is in "The pick
and its counting" and "Overhead when nothing is capped".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

from conngrpc import Pool, telemetry
from conngrpc._server import ServerProcess
from conngrpc.pool.runtime import BACKEND_EJECTED, BACKEND_RETURNED

from ._common import LEVEL, Section, ms, percentile
from .fleet import _stats, no_more_than
from .pooled import FLEET_SLEEP, Call, Run, _errors, _grpc, _load, _pooled, _round_robin_config

#: The service config both the pool and grpc are given: A50's outlier detection,
#: ejecting a backend past 25% failed calls (20 calls or more in an interval), at most
#: half of them, over round_robin.
CONFIG = {
    "loadBalancingConfig": [
        {
            "outlier_detection_experimental": {
                "interval": "1s",
                "baseEjectionTime": "5s",
                "maxEjectionPercent": 50,
                "failurePercentageEjection": {
                    "threshold": 25,
                    "requestVolume": 20,
                    "minimumHosts": 3,
                },
                "childPolicy": [{"round_robin": {}}],
            }
        }
    ]
}
CALLERS = 30
CALL_MS = b"20"
DEADLINE = 1.0
POOL_SIZE = 6
#: How often Pool.status(name).ejected is read during a run, in seconds.
POLL = 0.1

DEFAULT = f"conngrpc PooledChannel, pool of {POOL_SIZE}, no configuration"
CONFIGURED = f"conngrpc PooledChannel, pool of {POOL_SIZE}, service_config"
RR = "grpc round_robin"
OD = "grpc outlier_detection + round_robin"
POOLS = (DEFAULT, CONFIGURED)
HANG_COLUMNS = ["deadline calls started after the first ejection", "of them, while ejected"]
ALL = (DEFAULT, CONFIGURED, RR, OD)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    #: the bad replica's arguments (bench._fleet_server's fault modes); none: it is healthy
    fault: tuple[str, ...]
    clients: tuple[str, ...] = ALL


SCENARIOS = (
    Scenario(
        "1a",
        "one replica fails every call at once with INTERNAL",
        ("--fail", "INTERNAL"),
    ),
    Scenario(
        "1b",
        "one replica fails every call at once with UNAVAILABLE",
        ("--fail", "UNAVAILABLE"),
    ),
    Scenario(
        "2",
        "one replica fails 30% of its calls with INTERNAL after 20 ms",
        ("--fail", "INTERNAL", "--fail-percent", "30", "--fail-after-ms", "20"),
    ),
    Scenario("3", "one replica never answers", ("--hang",)),
    Scenario("4", "the healthy baseline, three healthy replicas", (), POOLS),
)


@dataclass
class Ejections:
    """What a pool said about ejections during a run."""

    #: (time.perf_counter(), backend, True when ejected or False when it returned) of
    #: each backend_ejected and backend_returned event, in order
    events: list[tuple[float, str, bool]] = field(default_factory=list)
    #: every backend Pool.status(name).ejected listed at one of its readings
    listed: set[str] = field(default_factory=set)

    @property
    def ejections(self) -> int:
        return sum(ejected for *_, ejected in self.events)

    def backends(self) -> set[str]:
        return {backend for _, backend, ejected in self.events if ejected} | self.listed

    def first(self, port: int) -> float | None:
        """When the backend on ``port`` was first ejected, if it was."""
        times = (at for at, backend, ejected in self.events if ejected and _on(backend, port))
        return min(times, default=None)

    def returns(self, port: int) -> int:
        """How many times the backend on ``port`` came back (on probation, by default)."""
        return sum(not ejected and _on(backend, port) for _, backend, ejected in self.events)

    def ejected(self, port: int, when: float) -> bool:
        """Whether the backend on ``port`` was out of the pick at ``when``."""
        out = False
        for at, backend, ejected in self.events:
            if at > when:
                break
            if _on(backend, port):
                out = ejected
        return out


@dataclass
class Outcome:
    """One client's run: what its callers saw, what each replica received, its ejections."""

    run: Run = field(default_factory=Run)
    bad: int = 0  # the bad replica's port
    #: calls each replica received during the run, by port (the bad one last), from
    #: the replicas' Stats
    received: dict[int, int] = field(default_factory=dict)
    ejections: Ejections | None = None  # a pool's only
    error: str = ""  # why the client could not run

    @property
    def attempts(self) -> int:
        return len(self.run.latencies) + sum(self.run.errors.values())

    def failed(self, code: str | None = None) -> float:
        """The share of calls that failed (with ``code``, if given), in %."""
        errors = self.run.errors[code] if code else sum(self.run.errors.values())
        return 100 * errors / self.attempts if self.attempts else float("nan")

    def share(self, port: int) -> float:
        """The share of the calls the replica on ``port`` received, in %."""
        total = sum(self.received.values())
        return 100 * self.received.get(port, 0) / total if total else float("nan")

    def late(self) -> float:
        """Calls that hit their deadline, started after the bad replica's first
        ejection; not a number when it was never ejected."""
        ejected = self.ejections.first(self.bad) if self.ejections else None
        if ejected is None:
            return float("nan")
        return sum(began >= ejected for began in self.run.deadline_starts)

    def while_ejected(self) -> float:
        """Calls that hit their deadline, started while the bad replica was out of the
        pick (which must send it none); not a number for a grpc client."""
        if self.ejections is None:
            return float("nan")
        ejections = self.ejections
        return sum(ejections.ejected(self.bad, began) for began in self.run.deadline_starts)


def _on(backend: str, port: int) -> bool:
    return backend.rsplit(":", 1)[-1] == str(port)


@asynccontextmanager
async def _watching(name: str) -> AsyncIterator[Ejections]:
    """The pool ``name``'s ejections while the block runs: its events, its status read
    every ``POLL`` seconds."""
    seen = Ejections()

    def on_event(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if metadata["pool_name"] == name:
            ejected = event == BACKEND_EJECTED
            seen.events.append((time.perf_counter(), metadata["backend"], ejected))

    async def poll() -> None:
        while True:
            seen.listed.update(Pool.status(name).ejected)
            await asyncio.sleep(POLL)

    handler = f"bench-outliers-{name}"
    telemetry.attach_many(handler, [BACKEND_EJECTED, BACKEND_RETURNED], on_event)
    poller = asyncio.ensure_future(poll())
    try:
        yield seen
    finally:
        poller.cancel()
        with suppress(asyncio.CancelledError):
            await poller
        telemetry.detach(handler)


def _client(label: str, target: str, name: str) -> AbstractAsyncContextManager[Call]:
    """The client ``label`` over ``target``; a pool is named ``name``."""
    config = json.dumps(CONFIG)
    if label == DEFAULT:
        return _pooled(target, POOL_SIZE, FLEET_SLEEP, name)
    if label == CONFIGURED:
        return _pooled(target, POOL_SIZE, FLEET_SLEEP, name, service_config=config)
    if label == RR:
        return _grpc(target, FLEET_SLEEP, _round_robin_config())
    return _grpc(target, FLEET_SLEEP, [("grpc.service_config", config)])


async def _received(servers: list[ServerProcess]) -> dict[int, int]:
    return {server.port: (await _stats(server))["calls"] for server in servers}


async def _measure(
    scenario: Scenario, label: str, healthy: list[ServerProcess], name: str, seconds: float
) -> Outcome:
    """One client's run of ``seconds`` over the healthy replicas and a bad one of its own,
    started afresh, so that every client meets the same faults in the same order; a pool
    setting conngrpc does not know is an error row, not a crash."""
    bad = ServerProcess(module="bench._fleet_server", args=list(scenario.fault))
    await asyncio.to_thread(bad.start)
    servers = [*healthy, bad]
    outcome = Outcome(bad=bad.port)
    try:
        client = _client(label, "ipv4:" + ",".join(s.address for s in servers), name)
        before = await _received(servers)
        try:
            watch = _watching(name) if label in POOLS else nullcontext(None)
            async with client as call, watch as outcome.ejections:
                run, timeout = outcome.run, DEADLINE
                await _load(call, CALLERS, seconds, lambda: CALL_MS, run, timeout=timeout)
        except (TypeError, ValueError) as error:  # a conngrpc without the setting, or a bad one
            outcome.error = f"{type(error).__name__}: {str(error).split('; ')[0]}"
        after = await _received(servers)
    finally:
        bad.kill()
    outcome.received = {port: after[port] - before[port] for port in after}
    return outcome


async def outliers(quick: bool) -> list[Section]:
    """Every scenario, each client in turn; one table per scenario."""
    seconds = 0.3 if quick else 12.0
    healthy = [ServerProcess(module="bench._fleet_server") for _ in range(2)]
    for server in healthy:
        await asyncio.to_thread(server.start)
    sections = []
    try:
        for scenario in SCENARIOS:
            outcomes = {
                label: await _measure(
                    scenario, label, healthy, f"bench-outliers-{scenario.key}-{i}", seconds
                )
                for i, label in enumerate(scenario.clients)
            }
            sections.append(scenario_table(scenario, outcomes, seconds))
    finally:
        for server in healthy:
            server.kill()
    return sections


def scenario_table(scenario: Scenario, outcomes: dict[str, Outcome], seconds: float) -> Section:
    hang = scenario.key == "3"
    section = Section(
        f"Outliers ({scenario.key}): {scenario.title}, {CALLERS} callers",
        [
            "client",
            "calls/s (successful)",
            "failed %",
            "share per replica (the bad one last)",
            "p50 ms",
            "p99 ms",
            "errors",
            "backends ejected",
            *(HANG_COLUMNS if hang else []),
        ],
    )
    for label, outcome in outcomes.items():
        run = outcome.run
        if outcome.error:
            section.add(label, *["-"] * 5, f"not run: {outcome.error}", *["-"] * (1 + 2 * hang))
            continue
        shares = " / ".join(f"{outcome.share(port):.1f}%" for port in outcome.received)
        section.add(
            label,
            run.rate,
            outcome.failed(),
            shares,
            ms(percentile(run.latencies, 50)),
            ms(percentile(run.latencies, 99)),
            _errors(run),
            _ejected(outcome.ejections),
            *([outcome.late(), outcome.while_ejected()] if hang else []),
        )
    _targets(scenario, section, outcomes)
    section.notes.append(
        f"{seconds:g} s per client, each call with a {DEADLINE:g} s deadline, the clients one "
        "at a time; the pools' and grpc's outlier detection given the same service config: "
        f"`{json.dumps(CONFIG)}`."
    )
    return section


def _ejected(ejections: Ejections | None) -> str:
    """The backends a pool ejected, as its events and its status said; '-' for grpc."""
    if ejections is None:
        return "-"
    backends = ", ".join(sorted(ejections.backends())) or "none"
    return f"{ejections.ejections} time(s): {backends}"


def _targets(scenario: Scenario, section: Section, outcomes: dict[str, Outcome]) -> None:
    """The issue's targets for ``scenario``, each set against a client of the same run."""
    if scenario.key == "4":
        for label in POOLS:
            ejections = outcomes[label].ejections
            ever = float("nan") if ejections is None else len(ejections.backends())
            section.target(f"backends ever ejected, {label}", ever, "=", 0)
        section.target(
            f"successful calls/s, {DEFAULT}",
            outcomes[DEFAULT].run.rate,
            ">=",
            1 - LEVEL,
            CONFIGURED,
            outcomes[CONFIGURED].run.rate,
        )
        return
    od = outcomes[OD]
    if scenario.key == "3":
        code = "DEADLINE_EXCEEDED"
        default = outcomes[DEFAULT]
        section.target(
            f"calls that hit their deadline %, {DEFAULT}", default.failed(code), "<=", 1.2
        )
        # The default's probation sends a returning backend one call (the probe) and no
        # other until it answers: a replica that still hangs costs one call per return.
        # Given the config, the pool returns a backend in full, as grpc does.
        returns = default.ejections.returns(default.bad) if default.ejections else 0
        late = (
            f"deadline calls started after the first ejection, {DEFAULT} "
            f"(one probe per return on probation: {returns})"
        )
        section.target(late, default.late(), "<=", returns)
        for label in POOLS:
            name = f"calls that hit their deadline %, {label}"
            no_more_than(section, name, outcomes[label].failed(code), od.failed(code), OD)
            section.target(
                f"deadline calls started while the replica was ejected, {label}",
                outcomes[label].while_ejected(),
                "=",
                0,
            )
        return
    configured = outcomes[CONFIGURED]
    no_more_than(section, f"failed %, {CONFIGURED}", configured.failed(), od.failed(), OD)
    if scenario.key == "2":
        return
    section.target(
        f"successful calls/s, {CONFIGURED}", configured.run.rate, ">=", 1 - LEVEL, OD, od.run.rate
    )
    default = outcomes[DEFAULT]
    section.target(f"failed %, {DEFAULT}", default.failed(), "<", 1, OD, od.failed())
    section.target(
        f"the bad replica's share %, {DEFAULT}",
        default.share(default.bad),
        "<",
        1,
        RR,
        outcomes[RR].share(outcomes[RR].bad),
    )
