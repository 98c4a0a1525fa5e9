"""The command line: help, version, ``demo`` and ``probe`` (TLS and watch: their own files)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import grpc
import pytest
from grpc_health.v1 import health, health_pb2  # type: ignore[import-untyped]

import conngrpc
from conngrpc._cli import parser
from tests._cli import COMMAND, Lines, run_cli
from tests._cli import health_server as serving_health
from tests._net import closed_port

pytestmark = pytest.mark.anyio

#: A probe table row: channel, backend, local address, latency, status.
ROW = re.compile(r"^\s*(\d+)  (\S+)\s+(\S+)\s+([\d.]+ ms)  (.+)$", re.MULTILINE)


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[health.aio.HealthServicer, str]]:
    """A server running grpcio-health-checking's own Health service (not ours)."""
    async with serving_health() as served:
        yield served


def options_of(command: str) -> list[str]:
    """Every option of ``command`` as its parser knows it (not as its help says)."""
    _, commands = parser()
    return [
        option
        for action in commands[command]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


@pytest.mark.parametrize("command", ["probe", "watch"])
def test_help_describes_every_option_with_its_default_and_the_exit_codes(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    text = result.stdout
    options = options_of(command)
    assert {"--pool-size", "--timeout", "--service", "--json", "--tls", "--ca-file"} <= set(options)
    assert {"--cert-file", "--key-file", "--server-name"} <= set(options)
    # Each option's entry: from its name at the start of a line to the next option's.
    entries = [" ".join(e.split("\n\n")[0].split()) for e in re.split(r"\n  (?=-)", text)]
    for option in options:
        entry = next((e for e in entries if e.startswith(f"{option} ")), None)
        assert entry is not None, f"{option} is not described in {command} --help"
        assert "(default: " in entry, f"{option}'s help gives no default: {entry!r}"
    codes = text[text.index("exit codes:") :]
    assert re.search(r"^  0  ", codes, re.MULTILINE)
    assert re.search(r"^  1  ", codes, re.MULTILINE)
    assert re.search(r"^  2  usage error", codes, re.MULTILINE)


def test_watch_help_names_its_stop_signals_and_the_probe_help_its_verdict() -> None:
    watch, probe = run_cli("watch", "--help").stdout, run_cli("probe", "--help").stdout
    assert "0  stopped by Ctrl-C (SIGINT) or SIGTERM" in watch
    assert "0  every channel connected and its server answered SERVING" in probe
    assert "overrides the name the certificate is checked against" in probe


@pytest.mark.parametrize("command", [[], ["demo"], ["probe"], ["watch"]])
def test_help_is_plain_text_without_rest_markup(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m conngrpc")
    for markup in ("``", ":class:", ":func:", ":meth:", ":raises"):
        assert markup not in result.stdout


def test_version_names_conngrpc_grpcio_and_python() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    python = ".".join(str(part) for part in sys.version_info[:3])
    expected = f"conngrpc {conngrpc.__version__} (grpcio {grpc.__version__}, Python {python})"
    assert result.stdout.strip() == expected


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
    # The library's own error (logging's conngrpc.supervisor), rendered as the demo's
    # lines are, once, without its traceback.
    (crash,) = [line for line in out.splitlines() if "child crashed" in line]
    assert re.search(r"\[error\s*\] child crashed\s+\[conngrpc\.supervisor\] ", crash)
    assert "Traceback" not in out + result.stderr


@pytest.mark.parametrize(
    ("stage", "group"),
    [
        # The server just started: SIGINT to the whole process group, the server
        # included, as Ctrl-C in a terminal does.
        ("server started", True),
        # The server killed, the pool failing: SIGINT to the demo alone (`kill -INT`).
        ("get_channel raised NotConnectedError", False),
    ],
)
def test_ctrl_c_stops_the_demo_cleanly_at_any_stage(stage: str, group: bool) -> None:
    """As watch does: a line on stderr, exit 0, no traceback, the server gone.

    The signal follows the stage's line within milliseconds; after either line the demo
    still has to start its server again (a Python process: about 0.3 s) and reconnect
    (a 0.5 s backoff) before it could end by itself.
    """
    with subprocess.Popen(
        [*COMMAND, "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives it
    ) as demo:
        try:
            assert demo.stdout is not None
            assert demo.stderr is not None
            lines = Lines(demo.stdout)
            started = lines.expect(lambda line: "server started" in line, what="the server")
            server_pid = int(re.findall(r"pid=(\d+)", started)[0])
            if stage not in started:
                lines.expect(lambda line: stage in line, what=stage)
            if group:
                os.killpg(demo.pid, signal.SIGINT)
            else:
                demo.send_signal(signal.SIGINT)
            code = demo.wait(30)
            stderr = demo.stderr.read()
            lines.rest()
        finally:
            if demo.poll() is None:
                demo.kill()
    assert code == 0, stderr
    assert stderr == "SIGINT: stopping the demo\n"
    assert not any("demo done" in line for line in lines.seen)  # it was stopped early
    with pytest.raises(ProcessLookupError):  # it killed its server (and waited for it)
        os.kill(server_pid, 0)


async def test_probe_reports_every_channel_serving_on_its_own_connection(
    health_server: tuple[health.aio.HealthServicer, str],
) -> None:
    _, address = health_server
    result = await anyio.to_thread.run_sync(lambda: run_cli("probe", address, "--pool-size", "3"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = ROW.findall(result.stdout)
    assert [(index, backend, status) for index, backend, _, _, status in rows] == [
        ("0", address, "SERVING"),
        ("1", address, "SERVING"),
        ("2", address, "SERVING"),
    ]
    local_addresses = {local for _, _, local, _, _ in rows}
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
    assert [status for *_, status in ROW.findall(result.stdout)] == ["NOT_SERVING"] * 2
    assert "0 of 2 SERVING" in result.stdout


async def test_probe_counts_a_server_without_the_health_service_as_serving_and_says_so() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # no service at all
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        table, document = [
            await anyio.to_thread.run_sync(run_cli, "probe", address, "--pool-size", "2", *extra)
            for extra in ([], ["--json"])
        ]
    finally:
        await server.stop(None)
    assert (table.returncode, document.returncode) == (0, 0), table.stdout + table.stderr
    statuses = [status for *_, status in ROW.findall(table.stdout)]
    assert statuses == ["UNIMPLEMENTED: no grpc.health.v1 service: counts as serving"] * 2
    assert "2 of 2 SERVING (2 of them: no grpc.health.v1 service)" in table.stdout
    assert "Method not found" not in table.stdout
    channels = json.loads(document.stdout)["channels"]
    assert [(c["status"], c["serving"]) for c in channels] == [("UNIMPLEMENTED", True)] * 2
    assert {c["reason"] for c in channels} == {"no grpc.health.v1 service: counts as serving"}
    assert json.loads(document.stdout)["all_serving"] is True


async def test_probe_json_is_one_document_that_says_what_the_table_says(
    health_server: tuple[health.aio.HealthServicer, str],
) -> None:
    _, address = health_server
    result = await anyio.to_thread.run_sync(
        lambda: run_cli("probe", address, "--pool-size", "3", "--json")
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # stdout holds the document and nothing else
    assert {key: document[key] for key in ("address", "service", "tls", "pool_size")} == {
        "address": address,
        "service": "",
        "tls": None,
        "pool_size": 3,
    }
    channels = document["channels"]
    assert [channel["index"] for channel in channels] == [0, 1, 2]
    assert {channel["backend"] for channel in channels} == {address}
    assert {channel["status"] for channel in channels} == {"SERVING"}
    assert {channel["serving"] for channel in channels} == {True}
    assert {channel["reason"] for channel in channels} == {None}
    assert len({channel["local_address"] for channel in channels}) == 3
    assert all(0 < channel["latency_ms"] < 5000 for channel in channels)
    assert (document["serving"], document["all_serving"]) == (3, True)


def test_probe_json_of_an_address_where_nothing_listens_says_why_per_channel() -> None:
    address = f"127.0.0.1:{closed_port()}"
    result = run_cli("probe", address, "--pool-size", "2", "--timeout", "1", "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert [channel["status"] for channel in document["channels"]] == ["NOT_CONNECTED"] * 2
    assert all("Connection refused" in channel["reason"] for channel in document["channels"])
    assert all(channel["latency_ms"] is None for channel in document["channels"])
    assert (document["serving"], document["all_serving"]) == (0, False)
    assert "Connection refused" in result.stderr  # the progress report, where it was


async def test_probe_service_asks_about_that_service(
    health_server: tuple[health.aio.HealthServicer, str],
) -> None:
    servicer, address = health_server
    await servicer.set("shop.Orders", health_pb2.HealthCheckResponse.NOT_SERVING)
    await servicer.set("shop.Stock", health_pb2.HealthCheckResponse.SERVING)

    def probe(service: str) -> subprocess.CompletedProcess[str]:
        return run_cli("probe", address, "--pool-size", "1", "--service", service, "--json")

    orders, stock, unknown = [
        await anyio.to_thread.run_sync(probe, name)
        for name in ("shop.Orders", "shop.Stock", "shop.Nothing")
    ]
    assert orders.returncode == 1
    assert json.loads(orders.stdout)["service"] == "shop.Orders"
    assert json.loads(orders.stdout)["channels"][0]["status"] == "NOT_SERVING"
    assert stock.returncode == 0
    assert json.loads(stock.stdout)["channels"][0]["status"] == "SERVING"
    # grpcio-health-checking answers a service it does not know with NOT_FOUND.
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["channels"][0]["status"] == "NOT_FOUND"


def test_probe_of_an_address_where_nothing_listens_says_why() -> None:
    result = run_cli("probe", f"127.0.0.1:{closed_port()}", "--pool-size", "2", "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout.count("NOT CONNECTED: ") == 2
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


#: The options that take seconds, and those that take a number of channels, by command.
SECONDS_OPTIONS = [("probe", "--timeout"), ("watch", "--timeout"), ("watch", "--interval")]
COUNT_OPTIONS = [("probe", "--pool-size"), ("watch", "--pool-size")]
BAD_SECONDS = [
    ("-1", "expected seconds > 0 and <= 2.14748e+06, got -1.0"),
    ("0", "expected seconds > 0 and <= 2.14748e+06, got 0.0"),
    ("inf", "expected seconds > 0 and <= 2.14748e+06, got inf"),
    ("nan", "expected seconds > 0 and <= 2.14748e+06, got nan"),
    ("3000000", "expected seconds > 0 and <= 2.14748e+06, got 3000000.0"),
    ("soon", "expected seconds, got 'soon'"),
]
BAD_COUNTS = [
    ("0", "expected an int >= 1, got 0"),
    ("-1", "expected an int >= 1, got -1"),
    ("1.5", "expected an int >= 1, got '1.5'"),
    ("many", "expected an int >= 1, got 'many'"),
]


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [(*where, *bad) for where in SECONDS_OPTIONS for bad in BAD_SECONDS]
    + [(*where, *bad) for where in COUNT_OPTIONS for bad in BAD_COUNTS],
)
def test_a_bad_option_value_is_a_usage_error_naming_the_option_once(
    command: str, option: str, value: str, message: str
) -> None:
    result = run_cli(command, "127.0.0.1:1", option, value)
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert error == f"python -m conngrpc {command}: error: argument {option}: {message}"
    assert f"usage: python -m conngrpc {command}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["probe", "watch"])
@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://127.0.0.1:50051", "grpc knows no scheme 'http'"),
        ("127.0.0.1:99999", "expected a port from 1 to 65535"),
    ],
)
def test_an_address_grpc_could_never_reach_is_a_usage_error(
    command: str, address: str, message: str
) -> None:
    result = run_cli(command, address)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
