"""``watch ADDRESS``: a pool kept open, its events printed live, until a signal.

The command runs as a child process; its stdout is read line by line, each wait
bounded, while the test kills and restarts the server or changes what its health
service says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]

from conngrpc._server import ServerProcess
from tests._certs import make_tls_material
from tests._cli import COMMAND, Lines, TLSFiles, health_server, is_event, start_cli, watch_event

pytestmark = pytest.mark.anyio


@contextmanager
def watching(*args: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """``watch ARGS`` running, with its stdout lines; killed if the test did not stop it."""
    process = start_cli("watch", *args)
    assert process.stdout is not None
    try:
        yield process, Lines(process.stdout)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    """Send ``signum``; the exit status and stderr, once it has ended (within 20 s)."""
    process.send_signal(signum)
    assert process.stderr is not None
    code = process.wait(20)
    return code, process.stderr.read()


def test_watch_prints_a_backend_going_away_and_coming_back_then_stops_on_ctrl_c(
    server_process: ServerProcess,
) -> None:
    address = server_process.address
    with watching(address, "--pool-size", "2", "--interval", "0.5") as (process, lines):
        assert "1 backend(s): " + address in lines.expect(is_event("resolved"), what="resolved")
        first = {watch_event(lines.expect(is_event("connected")))[0] for _ in range(2)}
        assert first == {"channel 0", "channel 1"}
        status = lines.expect(is_event("status", details=["2 of 2 up"]), what="a full status")
        assert f"({address} 2)" in status

        server_process.kill()
        lost = lines.expect(is_event("disconnected"), what="a disconnect")
        assert "connection_lost" in lost
        assert watch_event(lost)[1] == address
        refused = lines.expect(is_event("connection_failed"), what="a refused attempt")
        # An attempt made while the killed process's sockets are still being torn down
        # can meet a reset instead of a refusal (seen on a busy machine).
        assert "Connection refused" in refused or "Connection reset" in refused, refused
        lines.expect(is_event("status", details=["0 of 2 up"]), what="an empty status")

        server_process.start()  # the same port again
        lines.expect(is_event("connected"), what="a reconnect")

        code, stderr = stop(process, signal.SIGINT)
        rest = lines.rest()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "SIGINT: closing the pool" in stderr
    # Leaving closes every channel that was connected, each said so.
    assert any(is_event("disconnected", details=["shutdown"])(line) for line in rest), rest
    assert all(watch_event(line) for line in lines.seen)  # every stdout line is an event


async def test_watch_json_follows_a_named_services_health_over_tls(tmp_path: Path) -> None:
    """--service (implying --health), --ca-file and --json together; SIGTERM ends it."""
    tls = make_tls_material()
    files = TLSFiles.write(tls, tmp_path)
    credentials = grpc.ssl_server_credentials([(tls.server.key, tls.server.cert)])
    async with health_server(credentials) as (servicer, address):
        await servicer.set("shop.Orders", health_pb2.HealthCheckResponse.SERVING)
        args = [address, "--pool-size", "1", "--service", "shop.Orders", "--json"]
        with watching(*args, "--ca-file", files.ca) as (process, lines):

            def event(name: str, **fields: object) -> dict[str, object]:
                def matches(line: str) -> bool:
                    parsed = json.loads(line)
                    return parsed["event"] == name and fields.items() <= parsed.items()

                return dict(json.loads(lines.expect(matches, what=f"{name} {fields}")))

            async def expect(name: str, **fields: object) -> dict[str, object]:
                return await anyio.to_thread.run_sync(lambda: event(name, **fields))

            connected = await expect("connected", channel=0, backend=address)
            assert isinstance(connected["duration_ms"], float)
            await expect("health_changed", status="SERVING", previous=None, serving=True)

            await servicer.set("shop.Orders", health_pb2.HealthCheckResponse.NOT_SERVING)
            await expect("health_changed", status="NOT_SERVING", previous="SERVING", serving=False)
            await servicer.set("shop.Orders", health_pb2.HealthCheckResponse.SERVING)
            await expect("health_changed", status="SERVING", previous="NOT_SERVING", serving=True)

            code, stderr = await anyio.to_thread.run_sync(stop, process, signal.SIGTERM)
            rest = await anyio.to_thread.run_sync(lines.rest)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "health of service 'shop.Orders'" in stderr
    ends = [json.loads(line) for line in rest]
    assert {"event": "disconnected", "reason": "shutdown"}.items() <= ends[-1].items()
    for line in lines.seen:  # every line is one JSON object with a time and an event
        parsed = json.loads(line)
        assert {"time", "event", "channel", "backend"} <= parsed.keys()


def test_watch_stops_quietly_when_whoever_reads_it_goes_away(
    server_process: ServerProcess,
) -> None:
    """``watch ... | head -n 3``: the pipe closes, watch closes its pool and exits 0."""
    script = '"$@" | head -n 3; exit "${PIPESTATUS[0]}"'
    watch = [*COMMAND, "watch", server_process.address, "--pool-size", "1", "--interval", "0.2"]
    with subprocess.Popen(
        ["bash", "-c", script, "bash", *watch],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a watch that hangs is killed with its shell, below
    ) as shell:
        try:
            stdout, stderr = shell.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
