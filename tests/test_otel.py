"""The OpenTelemetry instrumentor's own contract, driven by the fake connector.

What each figure says about a pool against real servers (connect, kill, restart) is
checked in tests/live/test_otel.py; here: instrumenting once, uninstrumenting fully,
never breaking a pool, and the attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import Counter, NoOpCounter, NoOpMeter, NoOpMeterProvider

from conngrpc import Channel, Pool, Supervisor, telemetry
from conngrpc.otel import _EVENTS, HANDLER_ID, ConnGRPCInstrumentor, _server
from conngrpc.pool.retry import HEDGE, RETRY
from conngrpc.pool.runtime import pools
from conngrpc.testing import FakeConnector
from tests._logs import capture_logs
from tests._otel import Metrics, instrumented
from tests._pools import fake_channel, running_pool
from tests._probe import wait_until
from tests.test_ejection import Finished

pytestmark = pytest.mark.anyio

CONNECTS = "conngrpc.channel.connects"
CONNECTED = "conngrpc.pool.channels.connected"
EXPECTED = "conngrpc.pool.channels.expected"
EJECTIONS = "conngrpc.pool.backend.ejections"
EJECTED = "conngrpc.pool.backends.ejected"
RETRIES = "conngrpc.pool.call.retries"
HEDGES = "conngrpc.pool.call.hedges"


@pytest.fixture
def otel() -> Iterator[Metrics]:
    with instrumented() as metrics:
        yield metrics


def reconnected(connector: FakeConnector, pool_name: str) -> bool:
    """One of the pool's two channels was dropped and its worker connected a third."""
    return len(connector.channels) == 3 and Pool.status(pool_name).current_size == 2


def test_the_instrumentor_is_one_per_process() -> None:
    assert ConnGRPCInstrumentor() is ConnGRPCInstrumentor()
    assert ConnGRPCInstrumentor().instrumentation_dependencies() == ("conngrpc == 0.1.0",)


async def test_instrumenting_twice_counts_each_connect_once(pool_name: str, otel: Metrics) -> None:
    with capture_logs() as logs:
        ConnGRPCInstrumentor().instrument(meter_provider=otel.provider)
    assert [log["event"] for log in logs] == [
        "conngrpc is instrumented already; instrument() ignored"
    ]
    assert [h.id for h in telemetry.list_handlers()].count(HANDLER_ID) == len(_EVENTS)
    async with running_pool(pool_name, 3, fake_channel(FakeConnector())):
        assert otel.value(CONNECTS, pool_name=pool_name) == 3
        assert otel.value(EXPECTED, pool_name=pool_name) == 3


async def test_uninstrument_detaches_every_handler_and_silences_the_gauges(
    pool_name: str, otel: Metrics
) -> None:
    connector = FakeConnector()
    async with running_pool(pool_name, 2, fake_channel(connector)):
        assert otel.value(CONNECTED, pool_name=pool_name) == 2
        ConnGRPCInstrumentor().uninstrument()
        assert not ConnGRPCInstrumentor().is_instrumented_by_opentelemetry
        assert [h for h in telemetry.list_handlers() if h.id == HANDLER_ID] == []
        assert otel.points(CONNECTED) == []
        assert otel.points(EXPECTED) == []
        connector.drop(0)  # a disconnect and a connect nobody counts any more
        await wait_until(lambda: reconnected(connector, pool_name))
    assert otel.value(CONNECTS, pool_name=pool_name) == 2
    assert otel.points("conngrpc.channel.disconnects") == []


async def test_instrumenting_again_on_the_same_provider_carries_on(
    pool_name: str, otel: Metrics
) -> None:
    """The SDK keeps the first gauge of a name (and its callback): it must report again."""
    ConnGRPCInstrumentor().uninstrument()
    ConnGRPCInstrumentor().instrument(meter_provider=otel.provider)
    async with running_pool(pool_name, 2, fake_channel(FakeConnector())):
        assert otel.value(CONNECTED, pool_name=pool_name) == 2
        assert otel.value(EXPECTED, pool_name=pool_name) == 2
        assert otel.value(CONNECTS, pool_name=pool_name) == 2


async def test_a_provider_set_after_instrument_gets_the_metrics(pool_name: str) -> None:
    """Without meter_provider the global one is used, even when it is set later.

    The global provider can be set once per process: this is the one test that does it.
    """
    instrumentor = ConnGRPCInstrumentor()
    instrumentor.instrument()
    metrics = Metrics()
    try:
        otel_metrics.set_meter_provider(metrics.provider)
        async with running_pool(pool_name, 2, fake_channel(FakeConnector())):
            assert metrics.value(CONNECTED, pool_name=pool_name) == 2
            assert metrics.value(CONNECTS, pool_name=pool_name) == 2
        instrumentor.uninstrument()
        assert metrics.points(CONNECTED) == []
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        metrics.provider.shutdown()


class _RaisingCounter(NoOpCounter):
    def add(self, amount: int | float, attributes: Any = None, context: Any = None) -> None:
        raise RuntimeError("the exporter's counter is broken")


class _RaisingMeter(NoOpMeter):
    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        return _RaisingCounter(name)


class _RaisingProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> NoOpMeter:
        return _RaisingMeter(name)


async def test_a_failing_instrument_never_reaches_the_pool_nor_gets_detached(
    pool_name: str,
) -> None:
    instrumentor = ConnGRPCInstrumentor()
    instrumentor.instrument(meter_provider=_RaisingProvider())
    connector = FakeConnector()
    try:
        with capture_logs() as logs:
            async with running_pool(pool_name, 2, fake_channel(connector)):
                connector.drop(0)
                await wait_until(lambda: reconnected(connector, pool_name))
        assert len([h for h in telemetry.list_handlers() if h.id == HANDLER_ID]) == len(_EVENTS)
    finally:
        instrumentor.uninstrument()
    failures = [log for log in logs if log["event"] == "conngrpc.otel could not record a metric"]
    assert [log["log_level"] for log in failures][:2] == ["warning", "debug"]
    assert not [log for log in logs if "detached" in log["event"]]


async def test_a_standalone_channel_is_reported_as_a_pool_of_one(otel: Metrics) -> None:
    channel = fake_channel(FakeConnector(), address="fake:7")
    async with Supervisor([Channel.child_spec(name="otel-billing", channel=channel)]):
        await Channel.wait_connected("otel-billing", timeout=5)
        assert otel.value(EXPECTED, pool_name="otel-billing") == 1
        assert otel.attribute_sets(CONNECTED) == [
            {"pool.name": "otel-billing", "server.address": "fake", "server.port": 7}
        ]


async def test_a_mocked_pool_is_connected_on_no_backend(pool_name: str, otel: Metrics) -> None:
    channel = {"address": "unused:1", "mock": lambda: "a stand-in"}
    async with running_pool(pool_name, 2, channel):
        assert otel.value(CONNECTED, pool_name=pool_name) == 2
        assert otel.value(EXPECTED, pool_name=pool_name) == 2


@pytest.mark.parametrize(
    ("backend", "attributes"),
    [
        ("127.0.0.1:50051", {"server.address": "127.0.0.1", "server.port": 50051}),
        ("[::1]:50051", {"server.address": "::1", "server.port": 50051}),
        ("inventory.internal:443", {"server.address": "inventory.internal", "server.port": 443}),
        ("dns:///inventory.internal", {"server.address": "inventory.internal", "server.port": 443}),
        ("ipv4:127.0.1.1:9000", {"server.address": "127.0.1.1", "server.port": 9000}),
        ("unix:/run/app.sock", {"server.address": "/run/app.sock"}),
        ("unix:///run/app.sock", {"server.address": "/run/app.sock"}),
        ("unix-abstract:app", {"server.address": "unix-abstract:app"}),
        ("not a target:x", {"server.address": "not a target:x"}),
    ],
)
def test_a_backend_becomes_server_address_and_port(
    backend: str, attributes: dict[str, Any]
) -> None:
    assert dict(_server(backend)) == attributes


async def test_an_ejection_is_counted_by_reason_and_the_ejected_backends_are_a_gauge(
    pool_name: str, otel: Metrics
) -> None:
    connector = FakeConnector()
    channel = fake_channel(connector)
    async with running_pool(pool_name, 2, channel, resolver=lambda: ["fake:1", "fake:2"]):
        await wait_until(lambda: set(Pool.status(pool_name).backends.values()) == {1})
        runtime = pools.get(pool_name)
        assert runtime is not None
        outcomes = runtime.table.ejector.by_backend["fake:2"]
        for _ in range(5):  # five calls end UNAVAILABLE, as a slot's done callback counts them
            outcomes.record(Finished(grpc.StatusCode.UNAVAILABLE))
        assert list(Pool.status(pool_name).ejected) == ["fake:2"]
        assert otel.value(EJECTED, pool_name=pool_name) == 1
        assert otel.attribute_sets(EJECTIONS) == [
            {
                "pool.name": pool_name,
                "server.address": "fake",
                "server.port": 2,
                "reason": "consecutive_failures",
            }
        ]
        assert otel.value(EJECTIONS) == 1


def test_retries_and_hedges_are_counted_by_method_code_and_backend(otel: Metrics) -> None:
    # The events as a call's attempts report them (tests/live/test_retries.py checks that
    # they do); one of each, and a hedge sent on its delay carries no code.
    method = "/conngrpc.demo.v1.Demo/Sleep"
    retried = {"pool_name": "p", "method": method, "code": grpc.StatusCode.UNAVAILABLE}
    telemetry.execute(RETRY, {"attempt": 2}, {**retried, "backend": "127.0.0.1:5001"})
    hedged = {"pool_name": "p", "method": method, "code": None, "backend": "127.0.0.1:5002"}
    telemetry.execute(HEDGE, {"attempt": 2}, hedged)
    where = {
        "pool.name": "p",
        "server.address": "127.0.0.1",
        "rpc.service": "conngrpc.demo.v1.Demo",
    }
    assert otel.attribute_sets(RETRIES) == [
        {**where, "server.port": 5001, "rpc.method": "Sleep", "rpc.grpc.status_code": 14}
    ]
    assert otel.attribute_sets(HEDGES) == [{**where, "server.port": 5002, "rpc.method": "Sleep"}]
    assert otel.value(RETRIES) == 1
    assert otel.value(HEDGES) == 1
