"""conngrpc.sync across real forks, with grpc's fork support on and off.

A pool is never inherited: in a forked child the parent's pools are gone, and the stubs
built before the fork and the hand-outs say so (naming the parent) until a pool is
started there; a child never hangs. Each scenario runs in a fresh interpreter
(tests/_sync_fork.py), so that the test runner itself never forks, with
``GRPC_ENABLE_FORK_SUPPORT`` set as grpc reads it: before grpc is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conngrpc._server import ServerProcess
from tests._after_stop import PARENT_WAITS
from tests.live.test_fork import BAD_SIGNS

ROOT = Path(__file__).resolve().parents[2]
CHILDREN = 2
INHERITED = "ran in the parent process (pid "
REFUSED_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT=0"
REFUSED_AIO = "used grpc.aio (pid "


def run(scenario: str, address: str, fork_support: str) -> list[str]:
    """The scenario's lines of output, once it exited 0 without a bad sign."""
    environment = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": fork_support}
    result = subprocess.run(
        [sys.executable, "-m", "tests._sync_fork", scenario, address, "--children", str(CHILDREN)],
        capture_output=True,
        text=True,
        timeout=PARENT_WAITS + 30,
        check=False,
        cwd=ROOT,
        env=environment,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [sign for sign in BAD_SIGNS if sign in output], output
    return result.stdout.splitlines()


def lines(output: list[str], start: str, *containing: str) -> list[str]:
    return [
        line for line in output if line.startswith(start) and all(c in line for c in containing)
    ]


@pytest.mark.parametrize("fork_support", ["1", "0"])
def test_children_forked_before_any_pool_start_their_own(
    server_process: ServerProcess, fork_support: str
) -> None:
    output = run("preload", server_process.address, fork_support)
    assert len(lines(output, "child ok", "ipv4:127.0.0.1:")) == CHILDREN


@pytest.mark.parametrize("fork_support", ["1", "0"])
def test_a_child_forked_while_a_pool_runs_inherits_none(
    server_process: ServerProcess, fork_support: str
) -> None:
    output = run("running", server_process.address, fork_support)
    assert len(lines(output, "child call UNAVAILABLE", INHERITED)) == CHILDREN
    assert len(lines(output, "child get_channel PoolNotStartedError", INHERITED)) == CHILDREN
    if fork_support == "1":  # grpc's fork handlers let the child use grpc
        assert len(lines(output, "child ok", "ipv4:127.0.0.1:")) == CHILDREN
    else:  # grpc's calls would never complete there: refused at start, at once
        assert len(lines(output, "child refused", REFUSED_FORK_SUPPORT)) == CHILDREN
    assert lines(output, "parent after", "ipv4:127.0.0.1:")  # the parent's pool goes on


@pytest.mark.parametrize("fork_support", ["1", "0"])
def test_a_child_of_a_health_checked_pool_is_refused_grpc_aio(
    server_process: ServerProcess, fork_support: str
) -> None:
    output = run("health", server_process.address, fork_support)
    if fork_support == "1":
        assert len(lines(output, "child health refused RuntimeError", REFUSED_AIO)) == CHILDREN
        assert len(lines(output, "child ok", "ipv4:127.0.0.1:")) == CHILDREN
    else:
        refused = lines(output, "child health refused RuntimeError", REFUSED_FORK_SUPPORT)
        assert len(refused) == CHILDREN
        assert len(lines(output, "child refused", REFUSED_FORK_SUPPORT)) == CHILDREN


@pytest.mark.parametrize("fork_support", ["1", "0"])
def test_multiprocessing_workers_start_their_pools_in_an_initializer(
    server_process: ServerProcess, fork_support: str
) -> None:
    output = run("multiprocessing", server_process.address, fork_support)
    answered = lines(output, "worker ", "ok ipv4:127.0.0.1:")
    assert len(answered) == CHILDREN * 4
