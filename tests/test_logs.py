"""conngrpc's logs go where the application's go, and never to stdout.

Each case runs in a fresh interpreter (structlog's configuration is process-wide): a
pool whose one backend refuses, so conngrpc logs a warning (the first failed attempt).
The README's two recipes are run as they are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests._net import closed_port
from tests._snippets import README, snippets

POOL = textwrap.dedent(
    """
    import anyio
    from conngrpc import ExponentialBackoff, Pool, Supervisor, telemetry

    async def main() -> None:
        refused = anyio.Event()
        telemetry.attach("t", ("conngrpc", "channel", "connection_failed"),
                         lambda *_: refused.set())
        spec = Pool.child_spec(name="logged", pool_size=1, channel={
            "address": "127.0.0.1:PORT",
            "backoff": ExponentialBackoff(min=5, max=5),
        })
        async with Supervisor([spec]):
            with anyio.fail_after(30):
                await refused.wait()

    anyio.run(main)
    """
)


def run(prelude: str) -> subprocess.CompletedProcess[str]:
    code = prelude + "\n" + POOL.replace("PORT", str(closed_port()))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )


def recipe(marker: str) -> str:
    (code,) = [s.code for s in snippets(README.read_text()) if marker in s.code]
    return code


def test_with_nothing_configured_warnings_go_to_stderr_and_nothing_to_stdout() -> None:
    result = run("")
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if "connection failed" in line]
    assert line.startswith("channel connection failed ")
    assert "pool_name=logged" in line
    assert "channel_name=logged[0]" in line
    assert "backend=127.0.0.1:" in line
    assert "Connection refused" in line


def test_the_readme_stdlib_recipe_renders_each_event_once_through_logging() -> None:
    result = run(recipe("logging.basicConfig"))
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if "connection failed" in line]
    # "<date> <time> WARNING conngrpc.channel channel connection failed pool_name=..."
    date, _, level, logger, *message = line.split(" ")
    assert (level, logger) == ("WARNING", "conngrpc.channel")
    assert " ".join(message).startswith("channel connection failed pool_name=logged ")
    assert line.count("WARNING") == 1  # rendered once: no second timestamp or level
    assert line.count(date) == 1


def test_the_readme_structlog_recipe_puts_conngrpc_events_through_its_processors() -> None:
    result = run(recipe("structlog.configure("))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    (failed,) = [e for e in events if e["event"] == "channel connection failed"]
    assert failed["logger"] == "conngrpc.channel"
    assert failed["level"] == "warning"
    assert failed["pool_name"] == "logged"
    assert failed["channel_name"] == "logged[0]"
    assert failed["backend"].startswith("127.0.0.1:")
    assert "timestamp" in failed
    assert "connection failed" not in result.stderr  # once, through the app's renderer
