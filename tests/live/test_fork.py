"""A stopped pool leaves no grpc object for the garbage collector, so a process can fork
after its pools ran, or run ``asyncio.run`` again and again.

grpc.aio keeps one completion queue and its poller thread for as long as any channel
lives. A channel kept in a reference cycle outlives its pool until the collector runs:
in a forked child (the parent's queue, without its thread: the child's channels never
connect, and freeing the parent's channels there crashes or hangs), or after its event
loop closed (``Event loop is closed`` tracebacks). These tests fork and loop in a fresh
interpreter (tests/_after_stop.py), so that the test runner itself never forks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest

from conngrpc import Pool, telemetry
from conngrpc._server import PEER_METHOD, SLEEP_METHOD, ServerProcess, peer_of
from tests._after_stop import CHILD_SECONDS
from tests._garbage import collector_paused, grpc_garbage
from tests._probe import wait_until
from tests.live.test_pool_servers import pool

ROOT = Path(__file__).resolve().parents[2]
#: What a process that forked or looped must never print: grpc core's failed checks,
#: faulthandler's dumps, asyncio's callbacks on a closed loop, and any traceback.
BAD_SIGNS = ("Traceback", "Fatal Python error", "Check failed", "Event loop is closed")
RUNS = 20
#: Beyond the script's own bounds (a hung child is killed after CHILD_SECONDS + 5 s).
SCRIPT_TIMEOUT = CHILD_SECONDS + 30

Scenario = Callable[[str, str], Awaitable[None]]
DISCONNECTED = ("conngrpc", "channel", "disconnected")


# --- pools that stop after doing one thing each ---------------------------------------------


async def calls(name: str, address: str) -> None:
    """Calls through the pooled channel and through channels handed out."""
    stub = Pool.channel(name).unary_unary(PEER_METHOD)
    async with pool(name, address, 2):
        await Pool.wait_connected(name, timeout=5)
        for _ in range(3):
            assert (await stub(b"", timeout=5)).startswith(b"ipv4:127.0.0.1:")
            assert (await peer_of(Pool.get_channel(name))).startswith("ipv4:127.0.0.1:")


async def health_checked(name: str, address: str) -> None:
    """Channels gated by Health/Watch (which this server does not implement)."""
    async with pool(name, address, 2, health_check=""):
        status = await Pool.wait_connected(name, timeout=5)
        assert status.current_size == 2


async def calls_in_flight_at_stop(name: str, address: str) -> None:
    """Calls still running when the pool stops, cancelled after its grace."""
    stub = Pool.channel(name).unary_unary(SLEEP_METHOD)
    async with pool(name, address, 2, shutdown_grace=0.1):
        await Pool.wait_connected(name, timeout=5)
        running = [stub(b"30000", timeout=60) for _ in range(2)]
        await wait_until(lambda: Pool.status(name).in_flight == 2)
    assert [await call.code() for call in running] == [grpc.StatusCode.CANCELLED] * 2


async def crashed_worker(name: str, address: str) -> None:
    """A worker that crashed once (its on_connect raised) and was restarted."""
    connects = 0

    def on_connect() -> None:
        nonlocal connects
        connects += 1
        if connects == 1:
            raise RuntimeError("on_connect fails once, on purpose")

    async with pool(name, address, 2, on_connect=on_connect):
        await Pool.wait_connected(name, timeout=5)
    assert connects == 3


async def refreshed(name: str, address: str) -> None:
    """Channels replaced for their age (make before break) while the pool runs."""
    replaced = anyio.Event()

    def handle(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if metadata.get("pool_name") == name and metadata.get("reason") == "max_age":
            replaced.set()

    telemetry.attach(("test-fork-refresh", name), DISCONNECTED, handle)
    try:
        async with pool(name, address, 2, max_connection_age=0.2, shutdown_grace=0.1):
            await Pool.wait_connected(name, timeout=5)
            with anyio.fail_after(5):
                await replaced.wait()
    finally:
        telemetry.detach(("test-fork-refresh", name))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "scenario",
    [calls, health_checked, calls_in_flight_at_stop, crashed_worker, refreshed],
    ids=lambda scenario: scenario.__name__,
)
async def test_a_stopped_pool_leaves_no_grpc_object_for_the_collector(
    scenario: Scenario, pool_name: str, server_process: ServerProcess
) -> None:
    with collector_paused():
        await scenario(pool_name, server_process.address)
        found = grpc_garbage()
    assert not found, "only reference cycles kept these:\n" + "\n".join(found)


# --- forking and looping, in a fresh interpreter ---------------------------------------------


def after_stop(*args: str, fork_support: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tests._after_stop ARGS``, with GRPC_ENABLE_FORK_SUPPORT as given."""
    environment = {**os.environ}
    environment.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    if fork_support is not None:
        environment["GRPC_ENABLE_FORK_SUPPORT"] = fork_support
    return subprocess.run(
        [sys.executable, "-m", "tests._after_stop", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def peers_of(line: str) -> list[str]:
    return line.split(" ok ", 1)[1].split()


@pytest.mark.parametrize("fork_support", [None, "1"], ids=["fork_support_unset", "fork_support_on"])
def test_children_forked_after_a_pool_stopped_run_their_own_pools(
    fork_support: str | None, server_process: ServerProcess
) -> None:
    """As a pre-forking server's master does: a stub built at start-up, a pool run and
    stopped, then children, each running the same pool and calling through that stub.
    No setting of grpc's is needed (GRPC_ENABLE_FORK_SUPPORT is for channels that cross
    the fork, which grpc.aio does not support); with it on, nothing changes."""
    children = 3
    result = after_stop(
        "fork", server_process.address, "--children", str(children), fork_support=fork_support
    )
    assert result.returncode == 0, report(result)
    lines = result.stdout.splitlines()
    oks = sorted(line for line in lines if line.startswith("child "))
    assert [line.split(" ok ")[0] for line in oks] == [f"child {i}" for i in range(children)], (
        report(result)
    )
    for line in [*oks, *(line for line in lines if line.startswith("parent ok "))]:
        peers = peers_of(line)
        assert len(peers) == 4, report(result)
        assert all(peer.startswith("ipv4:127.0.0.1:") for peer in peers), report(result)
    assert not [sign for sign in BAD_SIGNS if sign in result.stderr], report(result)


def test_twenty_asyncio_runs_in_a_row_print_no_traceback(server_process: ServerProcess) -> None:
    """Each run's pool lets its channels go before its loop closes: none is finalized in
    a later run, on a closed loop."""
    result = after_stop("runs", server_process.address, "--runs", str(RUNS))
    assert result.returncode == 0, report(result)
    assert result.stdout.splitlines() == [f"ran {RUNS}"], report(result)
    assert not [sign for sign in BAD_SIGNS if sign in result.stderr], report(result)
