"""The command line: ``python -m conngrpc demo`` and ``python -m conngrpc probe``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from tests._net import closed_port

pytestmark = pytest.mark.anyio


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conngrpc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[health.aio.HealthServicer, str]]:
    """A server running grpcio-health-checking's own Health service (not ours)."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_the_demo_tells_the_whole_story_and_ends_by_itself() -> None:
    result = await anyio.to_thread.run_sync(lambda: run_cli("demo"))
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "pool connected" in out
    assert "connected=5 expected=5" in out
    first_round = re.findall(r"get_channel\s+call=\d channel=(\d) server_saw=(\S+)", out)[:5]
    assert [channel for channel, _ in first_round] == ["0", "1", "2", "3", "4"]
    assert len({peer for _, peer in first_round}) == 5  # five distinct connections
    assert "killing the server (SIGKILL)" in out
    assert out.count("reason=connection_lost") == 5
    assert "get_channel raised NotConnectedError" in out
    assert "telemetry child_restarted" in out
    assert re.search(r"pool back\s+connected=5", out)
    assert "demo done" in out


async def test_probe_reports_every_channel_serving_on_its_own_connection(
    health_server: tuple[health.aio.HealthServicer, str],
) -> None:
    _, address = health_server
    result = await anyio.to_thread.run_sync(lambda: run_cli("probe", address, "--pool-size", "3"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\s+(\d)\s+(\S+)\s+([\d.]+ ms)\s+(\S+)$", result.stdout, re.MULTILINE)
    assert [(index, status) for index, _, _, status in rows] == [
        ("0", "SERVING"),
        ("1", "SERVING"),
        ("2", "SERVING"),
    ]
    local_addresses = {local for _, local, _, _ in rows}
    assert len(local_addresses) == 3
    assert all(local.startswith("127.0.0.1:") for local in local_addresses)
    assert "3 of 3 SERVING" in result.stdout


async def test_probe_exits_non_zero_when_the_server_is_not_serving(
    health_server: tuple[health.aio.HealthServicer, str],
) -> None:
    servicer, address = health_server
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = await anyio.to_thread.run_sync(lambda: run_cli("probe", address, "--pool-size", "2"))
    assert result.returncode == 1
    assert result.stdout.count("NOT_SERVING") == 2
    assert "0 of 2 SERVING" in result.stdout


def test_probe_of_an_address_where_nothing_listens_says_why() -> None:
    result = run_cli("probe", f"127.0.0.1:{closed_port()}", "--pool-size", "2", "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout.count("NOT CONNECTED") == 2
    assert "Connection refused" in result.stdout


def test_probe_reports_each_failure_as_it_comes_not_only_at_the_end() -> None:
    """Every attempt is refused within milliseconds: say so then, not after the timeout."""
    command = [sys.executable, "-m", "conngrpc", "probe", f"127.0.0.1:{closed_port()}"]
    with subprocess.Popen(
        [*command, "--pool-size", "2", "--timeout", "30"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as probe:
        try:
            assert probe.stderr is not None
            began = time.monotonic()
            line = probe.stderr.readline()  # blocks until the first report
            reported_after = time.monotonic() - began
        finally:
            probe.kill()
    assert "Connection refused" in line
    assert re.match(r"\s*[\d.]+ s  channel [01]: ", line)
    assert reported_after < 10  # long before the 30 s timeout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool-size", "0"], "--pool-size: expected at least 1, got 0"),
        (["--timeout", "0"], "--timeout: expected seconds > 0"),
        (["--timeout", "inf"], "--timeout: expected seconds > 0 and <= 2.14748e+06, got inf"),
        (["--timeout", "nan"], "--timeout: expected seconds > 0"),
        (["--timeout", "soon"], "--timeout: expected seconds"),
    ],
)
def test_probe_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = run_cli("probe", "127.0.0.1:1", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://127.0.0.1:50051", "grpc knows no scheme 'http'"),
        ("127.0.0.1:99999", "expected a port from 1 to 65535"),
    ],
)
def test_probe_rejects_an_address_grpc_could_never_reach(address: str, message: str) -> None:
    result = run_cli("probe", address)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
