"""docs/telemetry.md and the code agree: every event listed is emitted, and vice versa,
with the measurements and metadata it lists."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import anyio
import grpc.aio
import pytest

from conngrpc import Channel, ExponentialBackoff, Pool, Supervisor, SupervisorGaveUpError, telemetry
from conngrpc._server import DEMO_SERVICE, PEER_METHOD, SLEEP_METHOD, Fault, start_server
from conngrpc.channel.connector import raw_unary
from conngrpc.testing import FakeConnector
from tests._probe import recording, wait_until

ROOT = Path(__file__).resolve().parent.parent
Event = tuple[str, ...]


def documented_events() -> set[Event]:
    text = (ROOT / "docs" / "telemetry.md").read_text()
    headings = re.findall(r"^### `(\(.*\))`$", text, re.MULTILINE)
    return {ast.literal_eval(heading) for heading in headings}


#: Lower-case names in backticks in a measurements or metadata bullet that are not keys.
NOT_KEYS = {"connected", "max_connection_age", "started", "terminate_child"}


def documented_fields() -> dict[Event, dict[str, set[str]]]:
    """Per event, the lower-case names in backticks of its ``measurements`` and ``metadata``
    bullets (keys are; class names such as ``TimeoutError`` are not)."""
    text = (ROOT / "docs" / "telemetry.md").read_text()
    fields: dict[Event, dict[str, set[str]]] = {}
    sections = re.split(r"^### `(\(.*\))`$", text, flags=re.MULTILINE)
    for heading, body in zip(sections[1::2], sections[2::2], strict=True):
        found = fields[ast.literal_eval(heading)] = {"measurements": set(), "metadata": set()}
        # A bullet runs on over its indented lines (and sub-bullets).
        for kind, bullet in re.findall(r"^- (measurements|metadata):(.*(?:\n  .*)*)", body, re.M):
            found[kind] = set(re.findall(r"`([a-z_][a-z0-9_]*)`", bullet))
    return fields


#: grpc's rules, quick: every failed call counts, a sweep every 50 ms ejects a backend
#: that failed any, for 100 ms; at most half of the two backends.
EJECT_FAST = {
    "loadBalancingConfig": [
        {
            "outlier_detection_experimental": {
                "interval": "0.05s",
                "baseEjectionTime": "0.1s",
                "maxEjectionPercent": 50,
                "failurePercentageEjection": {
                    "threshold": 0,
                    "requestVolume": 1,
                    "minimumHosts": 1,
                },
                "childPolicy": [{"round_robin": {}}],
            }
        }
    ]
}


async def _eject_and_return(log: Any) -> None:
    """Calls that fail (UNIMPLEMENTED: a method two real servers lack) through a pool's
    PooledChannel, until one backend has been ejected and has returned."""
    servers = [await start_server() for _ in range(2)]
    try:
        addresses = [f"127.0.0.1:{port}" for _, port in servers]
        spec = Pool.child_spec(
            name="docs-ejecting",
            pool_size=2,
            channel={"address": addresses[0]},
            resolver=lambda: addresses,
            service_config=EJECT_FAST,
        )
        async with Supervisor([spec]):
            await Pool.wait_connected("docs-ejecting", timeout=5)
            missing = raw_unary(Pool.channel("docs-ejecting"), "/no.Such/Method")
            with anyio.fail_after(10):
                while not log.of("backend_returned"):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await missing(b"", timeout=5)
    finally:
        for server, _ in servers:
            await server.stop(None)


async def _retry_and_hedge(log: Any) -> None:
    """A call retried (its first attempt fails UNAVAILABLE on a server that fails every
    Sleep) and a call hedged (two copies at once), through a pool's PooledChannel."""
    servers = [
        await start_server(fault=Fault(code=grpc.StatusCode.UNAVAILABLE)),
        await start_server(),
    ]
    retry = {
        "maxAttempts": 2,
        "initialBackoff": "0.001s",
        "maxBackoff": "0.001s",
        "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    hedging = {"maxAttempts": 2, "hedgingDelay": "0s"}
    config = {
        "methodConfig": [
            {"name": [{"service": DEMO_SERVICE, "method": "Sleep"}], "retryPolicy": retry},
            {"name": [{"service": DEMO_SERVICE, "method": "Peer"}], "hedgingPolicy": hedging},
        ]
    }
    try:
        addresses = [f"127.0.0.1:{port}" for _, port in servers]
        spec = Pool.child_spec(
            name="docs-retrying",
            pool_size=2,
            channel={"address": "ipv4:" + ",".join(addresses)},
            service_config=config,
        )
        async with Supervisor([spec]):
            await Pool.wait_connected("docs-retrying", timeout=5)
            await wait_until(lambda: Pool.status("docs-retrying").current_size == 2)
            facade = Pool.channel("docs-retrying")
            with anyio.fail_after(10):
                while not log.of("retry"):
                    await raw_unary(facade, SLEEP_METHOD)(b"0", timeout=5)
            await raw_unary(facade, PEER_METHOD)(b"", timeout=5)
    finally:
        for server, _ in servers:
            await server.stop(None)


def events_in_the_code() -> set[Event]:
    found = set()
    for path in (ROOT / "conngrpc").rglob("*.py"):
        for match in re.finditer(r'\("conngrpc", "\w+", "\w+"\)', path.read_text()):
            found.add(ast.literal_eval(match.group(0)))
    return found


def test_every_event_in_the_code_is_documented_and_every_documented_one_is_in_the_code() -> None:
    documented = documented_events()
    assert len(documented) >= 11
    assert events_in_the_code() == documented


@pytest.mark.anyio
async def test_every_documented_event_is_emitted() -> None:
    fast = ExponentialBackoff(min=0.001, max=0.002, jitter=0)
    connector = FakeConnector()
    connector.fail_next(1)
    crash_once = [True]

    def on_connect() -> None:
        if crash_once[0]:
            crash_once[0] = False
            raise RuntimeError("crash once")

    def always_raise() -> None:
        raise RuntimeError("always")

    def broken_handler(*_: Any) -> None:
        raise ValueError("a broken handler")

    channel = {"address": "fake:1", "connector": connector, "backoff": fast}
    failing_once = [True]

    def resolver() -> list[str]:
        if failing_once[0]:
            failing_once[0] = False
            raise OSError("the service registry is down")
        return ["fake:1"]

    specs = [
        Pool.child_spec(
            name="docs-pool",
            pool_size=1,
            channel={**channel, "on_connect": on_connect, "health_check": ""},
            telemetry_interval=0.01,
            resolver=resolver,
            resolve_interval=0.01,
        ),
        Channel.child_spec(name="docs-channel", channel=channel),
    ]
    doomed = Pool.child_spec(
        name="docs-doomed",
        pool_size=1,
        channel={**channel, "on_connect": always_raise},
        max_restarts=0,
    )
    telemetry.attach("docs-broken-handler", ("conngrpc", "pool", "status"), broken_handler)
    try:
        with recording(sorted(documented_events() | events_in_the_code())) as log:
            async with Supervisor(specs) as sup:
                await Pool.wait_connected("docs-pool", timeout=5)
                Pool.get_channel("docs-pool")
                await Channel.wait_connected("docs-channel", timeout=5)
                Channel.get("docs-channel")
                connector.drop(connector.connected[0])
                await wait_until(lambda: len(log.of("status")) >= 1)
                with anyio.fail_after(5), pytest.raises(SupervisorGaveUpError):
                    async with Supervisor([doomed], max_restarts=0):
                        await anyio.sleep_forever()
                assert sup.count_children().active == 2
            await _eject_and_return(log)
            await _retry_and_hedge(log)
    finally:
        telemetry.detach("docs-broken-handler")
    assert set(log.names()) == documented_events()
    emitted: dict[Event, dict[str, set[str]]] = {}
    for event, measurements, metadata in log.events:
        keys = emitted.setdefault(event, {"measurements": set(), "metadata": set()})
        keys["measurements"] |= set(measurements)
        keys["metadata"] |= set(metadata)
    documented = documented_fields()
    for event, keys in emitted.items():
        for kind in ("measurements", "metadata"):
            listed = documented[event][kind]
            assert keys[kind] <= listed, f"{event} {kind}: not in docs/telemetry.md"
            assert listed - keys[kind] <= NOT_KEYS, f"{event} {kind}: documented, never emitted"
