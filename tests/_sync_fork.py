"""conngrpc.sync across fork, in a fresh interpreter that tests/live/test_sync_fork.py runs.

``python -m tests._sync_fork SCENARIO ADDRESS`` builds a stub on ``sync.Pool.channel``
(as an application module does at import), then, by scenario:

- ``preload``: forks children at once (gunicorn ``--preload``): each starts its own pool
  and calls through the stub built before the fork;
- ``running``: runs a pool and calls through it, then forks children while it runs:
  each finds the parent's pool gone (its stub's call and ``get_channel`` say why), then
  starts its own, or is refused with grpc's reason (fork support off);
- ``health``: the same with a health-checked pool (grpc.aio, which no fork survives):
  each child is refused a health-checked pool, and (fork support on) runs a plain one;
- ``multiprocessing``: a ``multiprocessing`` pool of the ``fork`` start method whose
  initializer starts each worker's pool.

Each child prints ``child N ...`` lines as it goes; the parent waits for every child
within a bound (tests/_after_stop.py's) and exits 0 when all exited 0.
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import grpc

from conngrpc import PoolNotStartedError, sync
from conngrpc._server import PEER_METHOD
from tests._after_stop import CHILD_SECONDS, PARENT_WAITS, _say, _wait

NAME = "sync_fork"


def spec(address: str, **channel: Any) -> Any:
    return sync.Pool.child_spec(
        name=NAME, pool_size=2, channel={"address": address, "connect_timeout": 2, **channel}
    )


def use_pool(address: str, stub: Any, **channel: Any) -> str:
    """Start a pool in this process, call through the stub built before, stop it."""
    with sync.Supervisor([spec(address, **channel)]):
        sync.Pool.wait_connected(NAME, timeout=5)
        peer: bytes = stub(b"", timeout=5)
    return peer.decode()


def preload(address: str, stub: Any) -> None:
    _say("child ok", use_pool(address, stub))


def inherited(address: str, stub: Any, health: bool) -> None:
    """A child forked while its parent's pool ran."""
    try:
        stub(b"", timeout=5)
    except grpc.RpcError as error:
        _say("child call", error.code().name, str(error.details()))
    try:
        sync.Pool.get_channel(NAME)
    except PoolNotStartedError as error:
        _say("child get_channel", type(error).__name__, str(error))
    if health:
        try:
            use_pool(address, stub, health_check="")
        except Exception as error:  # the pool's start failed: ChildStartError, the cause
            cause = error.__cause__ or error
            _say("child health refused", type(cause).__name__, str(cause))
    try:
        _say("child ok", use_pool(address, stub))
    except RuntimeError as error:
        _say("child refused", str(error))


def fork(scenario: str, address: str, children: int) -> int:
    stub = sync.Pool.channel(NAME).unary_unary(PEER_METHOD)
    if scenario == "preload":
        return _fork_children(children, lambda: preload(address, stub))
    health = scenario == "health"
    channel = {"health_check": ""} if health else {}
    with sync.Supervisor([spec(address, **channel)]):
        sync.Pool.wait_connected(NAME, timeout=5)
        _say("parent ok", stub(b"", timeout=5).decode())
        code = _fork_children(children, lambda: inherited(address, stub, health))
        _say("parent after", stub(b"", timeout=5).decode())
    return code


def _fork_children(children: int, run: Any) -> int:
    started: dict[int, int] = {}
    for index in range(children):
        pid = os.fork()
        if pid == 0:
            _child(run)
        started[pid] = index
    return _wait(started)


def _child(run: Any) -> None:
    """A forked child's whole life: it never returns into the parent's code."""
    code = 1
    try:
        faulthandler.dump_traceback_later(CHILD_SECONDS, exit=True)
        run()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# --- multiprocessing, fork start method ------------------------------------------------------

_worker: dict[str, Any] = {}


def _start_worker_pool(address: str) -> None:
    """The multiprocessing initializer: each worker process starts its own pool."""
    _worker["supervisor"] = sync.Supervisor([spec(address)]).start()
    sync.Pool.wait_connected(NAME, timeout=5)
    _worker["stub"] = sync.Pool.channel(NAME).unary_unary(PEER_METHOD)


def _call(_: int) -> tuple[int, str]:
    return os.getpid(), _worker["stub"](b"", timeout=5).decode()


def with_multiprocessing(address: str, children: int) -> int:
    context = multiprocessing.get_context("fork")
    with context.Pool(children, initializer=_start_worker_pool, initargs=(address,)) as pool:
        answers = pool.map_async(_call, range(children * 4)).get(PARENT_WAITS)
    for pid, peer in answers:
        _say(f"worker {pid} ok", peer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests._sync_fork")
    parser.add_argument("scenario", choices=["preload", "running", "health", "multiprocessing"])
    parser.add_argument("address")
    parser.add_argument("--children", type=int, default=2)
    args = parser.parse_args(argv)
    if args.scenario == "multiprocessing":
        return with_multiprocessing(args.address, args.children)
    return fork(args.scenario, args.address, args.children)


if __name__ == "__main__":
    sys.exit(main())
