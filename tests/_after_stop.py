"""A process after its pools stopped, in a fresh interpreter that tests/live/test_fork.py runs.

``python -m tests._after_stop fork ADDRESS`` does what a pre-forking server's master does
(gunicorn with a start-up check, multiprocessing with fork): it builds a stub on
``Pool.channel`` (as an application module does at import), runs a pool and calls
through the stub, stops the pool, then forks children; each runs its own pool of the
same name under ``asyncio.run`` and calls through the stub built before the fork. It
prints ``child N ok PEER...`` per child that succeeded and exits 0 when all did.

``python -m tests._after_stop runs ADDRESS`` runs ``asyncio.run(main())`` again and
again, each running a pool and calling through it, and prints ``ran N``.

The server at ADDRESS lives in another process: this one must hold nothing of grpc's
but what its pools leave.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from conngrpc import Pool, Supervisor
from conngrpc._server import PEER_METHOD

NAME = "after_stop"
POOL_SIZE = 2
#: How long a child may take before it dumps its stack and exits, and how long the
#: parent waits for all of them: generous, a hung child is what these bounds catch
#: (a healthy one takes well under a second).
CHILD_SECONDS = 10.0
PARENT_WAITS = CHILD_SECONDS + 5.0


async def use_pool(address: str, stub: Any, calls: int) -> list[str]:
    """Run the pool until its channels are connected, call through it, stop it."""
    spec = Pool.child_spec(name=NAME, pool_size=POOL_SIZE, channel={"address": address})
    async with Supervisor([spec]):
        await Pool.wait_connected(NAME, timeout=5)
        peers = [(await stub(b"", timeout=5)).decode() for _ in range(calls)]
        channel = Pool.get_channel(NAME)
        peers.append((await channel.unary_unary(PEER_METHOD)(b"", timeout=5)).decode())
    return peers


def fork(address: str, children: int, calls: int) -> int:
    stub = Pool.channel(NAME).unary_unary(PEER_METHOD)
    _say("parent ok", *asyncio.run(use_pool(address, stub, calls)))
    started: dict[int, int] = {}
    for index in range(children):
        pid = os.fork()
        if pid == 0:
            _child(index, address, stub, calls)
        started[pid] = index
    return _wait(started)


def _child(index: int, address: str, stub: Any, calls: int) -> None:
    """A forked child's whole life: it never returns into the parent's code."""
    code = 1
    try:
        faulthandler.dump_traceback_later(CHILD_SECONDS, exit=True)
        peers = asyncio.run(use_pool(address, stub, calls))
        gc.collect()  # what the parent left for the collector is finalized here, if any
        _say(f"child {index} ok", *peers)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(started: dict[int, int]) -> int:
    """Wait for every child, within PARENT_WAITS seconds; kill those still running."""
    deadline = time.monotonic() + PARENT_WAITS
    failed = 0
    for pid, index in started.items():
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = None
                break
            time.sleep(0.02)  # polling a child's exit, within the deadline above
        if code != 0:
            failed += 1
            how = "hung: killed" if code is None else f"exit code {code}"
            _say(f"child {index} failed ({how})")
    return 1 if failed else 0


def runs(address: str, count: int) -> int:
    stub = Pool.channel(NAME).unary_unary(PEER_METHOD)
    for _ in range(count):
        asyncio.run(use_pool(address, stub, 1))
    _say(f"ran {count}")
    return 0


def _say(*words: str) -> None:
    """One line on stdout in one write, so that the children's lines never interleave."""
    os.write(sys.stdout.fileno(), (" ".join(words) + "\n").encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests._after_stop")
    commands = parser.add_subparsers(dest="command", required=True)
    forking = commands.add_parser("fork")
    forking.add_argument("address")
    forking.add_argument("--children", type=int, default=3)
    forking.add_argument("--calls", type=int, default=3)
    running = commands.add_parser("runs")
    running.add_argument("address")
    running.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "fork":
        return fork(args.address, args.children, args.calls)
    return runs(args.address, args.runs)


if __name__ == "__main__":
    sys.exit(main())
