"""OpenTelemetry metrics of pools against real gRPC servers, figure by figure.

The SDK's in-memory reader collects what an exporter would see; the last test serves
the metrics with the Prometheus exporter on 127.0.0.1 and scrapes them over HTTP.
"""

from __future__ import annotations

import urllib.request

import anyio
import grpc.aio
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from conngrpc import Pool
from conngrpc._server import SLEEP_METHOD, ServerProcess
from conngrpc.otel import ConnGRPCInstrumentor
from tests._otel import instrumented
from tests._pools import LIVE_BACKOFF
from tests._probe import wait_until
from tests.live.test_pool_servers import pool, port_of

pytestmark = pytest.mark.anyio

CONNECTS = "conngrpc.channel.connects"
FAILURES = "conngrpc.channel.connection_failures"
DISCONNECTS = "conngrpc.channel.disconnects"
DURATION = "conngrpc.channel.connect.duration"
RESTARTS = "conngrpc.supervisor.restarts"
CONNECTED = "conngrpc.pool.channels.connected"
EXPECTED = "conngrpc.pool.channels.expected"
IN_FLIGHT = "conngrpc.pool.calls.in_flight"


async def test_a_connected_pool_counts_its_connects_and_reports_its_gauges(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    backend = {
        "pool.name": pool_name,
        "server.address": "127.0.0.1",
        "server.port": port_of(address),
    }
    with instrumented() as otel:
        async with pool(pool_name, address, 3):
            await Pool.wait_connected(pool_name, timeout=5)
            assert otel.attribute_sets(CONNECTS) == [backend]
            assert otel.value(CONNECTS) == 3
            ((attributes, duration),) = otel.points(DURATION)
            assert attributes == backend
            assert duration.count == 3
            assert 0 < duration.sum < 3 * 5.0  # seconds, each within connect_timeout
            assert otel.attribute_sets(CONNECTED) == [backend]
            assert otel.value(CONNECTED) == 3
            assert otel.attribute_sets(EXPECTED) == [{"pool.name": pool_name}]
            assert otel.value(EXPECTED) == 3
            assert otel.points(FAILURES) == otel.points(DISCONNECTS) == []
        assert otel.attribute_sets(DISCONNECTS) == [{**backend, "reason": "shutdown"}]
        assert otel.value(DISCONNECTS) == 3
        assert otel.points(CONNECTED) == otel.points(EXPECTED) == []  # the pool is gone


async def test_a_killed_then_restarted_server_is_counted_figure_by_figure(
    pool_name: str, server_process: ServerProcess
) -> None:
    here = {"pool_name": pool_name, "server_address": "127.0.0.1"}
    with instrumented() as otel:
        async with pool(pool_name, server_process.address, 3, backoff=LIVE_BACKOFF):
            await Pool.wait_connected(pool_name, timeout=5)
            assert otel.value(CONNECTED, **here, server_port=server_process.port) == 3
            assert otel.value(EXPECTED, pool_name=pool_name) == 3

            server_process.kill()
            await wait_until(lambda: otel.value(DISCONNECTS, **here, reason="connection_lost") == 3)
            # A channel leaves the hand-out before its disconnect is announced.
            assert otel.value(CONNECTED, **here) == 0
            assert otel.value(EXPECTED, pool_name=pool_name) == 3
            await wait_until(lambda: otel.value(FAILURES, **here) >= 3)  # refused reconnects
            assert {a["error.type"] for a in otel.attribute_sets(FAILURES)} == {
                "ConnectFailedError"
            }
            assert otel.value(CONNECTS, **here) == 3

            await anyio.to_thread.run_sync(server_process.start)
            await Pool.wait_connected(pool_name, timeout=5)
            assert otel.value(CONNECTS, **here) == 6
            assert otel.value(DURATION, **here) == 6
            assert otel.value(CONNECTED, **here) == 3
            assert otel.value(DISCONNECTS, **here) == 3
            assert otel.points(RESTARTS) == []  # a lost connection is no crash


async def test_a_worker_crash_is_counted_as_one_restart_of_the_pool_supervisor(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    crashes = [RuntimeError("on_connect fails once")]

    def on_connect() -> None:
        if crashes:
            raise crashes.pop()

    with instrumented() as otel:
        async with pool(pool_name, address, 2, on_connect=on_connect):
            await Pool.wait_connected(pool_name, timeout=5)
            assert otel.attribute_sets(RESTARTS) == [
                {"supervisor.name": pool_name, "pool.name": pool_name}
            ]
            assert otel.value(RESTARTS) == 1
            assert otel.value(DISCONNECTS, pool_name=pool_name, reason="crash") == 1
            assert otel.value(CONNECTS, pool_name=pool_name) == 3  # the crashed one's too
            assert otel.value(CONNECTED, pool_name=pool_name) == 2


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_the_prometheus_exporter_serves_the_pool_over_http(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server, thread = start_http_server(0, addr="127.0.0.1")
    instrumentor = ConnGRPCInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        async with pool(pool_name, address, 2):
            await Pool.wait_connected(pool_name, timeout=5)
            # The exporter's HTTP thread runs the gauges' callbacks: the loop must run on.
            text = await anyio.to_thread.run_sync(scrape, server.server_port)
    finally:
        instrumentor.uninstrument()
        server.shutdown()
        server.server_close()
        thread.join()
        provider.shutdown()
    print("\n".join(line for line in text.splitlines() if pool_name in line))
    ours = {"pool_name": pool_name}
    backend = {**ours, "server_address": "127.0.0.1", "server_port": str(port_of(address))}
    assert scraped(text, "conngrpc_pool_channels_connected", backend) == 2
    assert scraped(text, "conngrpc_pool_channels_expected", ours) == 2
    assert scraped(text, "conngrpc_pool_calls_in_flight", ours) == 0
    assert scraped(text, "conngrpc_channel_connects_total", backend) == 2
    assert scraped(text, "conngrpc_channel_connect_duration_seconds_count", backend) == 2
    assert 0 < scraped(text, "conngrpc_channel_connect_duration_seconds_sum", backend) < 10
    line = next(line for line in text.splitlines() if line.startswith("conngrpc_pool_channels_c"))
    assert f'pool_name="{pool_name}"' in line
    assert line.endswith("} 2.0")


def scraped(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return float(value)


async def test_calls_in_flight_through_the_pooled_channel_are_a_gauge(
    pool_name: str, grpc_server: tuple[grpc.aio.Server, str]
) -> None:
    _, address = grpc_server
    with instrumented() as otel:
        async with pool(pool_name, address, 2):
            await Pool.wait_connected(pool_name, timeout=5)
            assert otel.value(IN_FLIGHT) == 0
            sleep = Pool.channel(pool_name).unary_unary(SLEEP_METHOD)
            calls = [sleep(b"5000", timeout=10) for _ in range(3)]
            await wait_until(lambda: Pool.status(pool_name).in_flight == 3)
            assert otel.attribute_sets(IN_FLIGHT) == [{"pool.name": pool_name}]
            assert otel.value(IN_FLIGHT) == 3
            for call in calls:
                call.cancel()
            await wait_until(lambda: Pool.status(pool_name).in_flight == 0)
            assert otel.value(IN_FLIGHT) == 0
