"""A Flask service that calls a gRPC backend through a ``conngrpc.sync`` pool, under gunicorn.

Run it with the gunicorn configuration beside it (the backend address and the rest come
from the environment, see ``Settings``)::

    BACKEND_ADDRESS=127.0.0.1:50051 gunicorn -c examples/flask_service/gunicorn.conf.py

The stub is built once, at import, on the pool's ``PooledChannel``
(``BackendPool.channel()``): building it starts nothing (no channel, no thread), so
gunicorn's master may import this module (``--preload``) and fork its workers from it.
Each worker then starts its own pool in gunicorn's ``post_fork`` hook (``start_pools``)
and stops it in ``worker_exit``; until a worker's pool has a connected channel, its calls
fail at once as UNAVAILABLE (503) and ``/ready`` says 503.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import grpc
from flask import Flask, Response, jsonify, request

from conngrpc import ExponentialBackoff, PoolNotStartedError, sync

T = TypeVar("T")


# --- configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The service's settings: environment variables, read once at import (in gunicorn's
    master with ``--preload``; the workers inherit them)."""

    #: ``BACKEND_ADDRESS``: ``host:port`` or any grpc target (``dns:///backend:50051``).
    backend_address: str = "127.0.0.1:50051"
    #: ``BACKEND_POOL_SIZE``: connections to the backend from each gunicorn worker.
    pool_size: int = 2
    #: ``BACKEND_CALL_TIMEOUT``: every backend call's deadline, in seconds. Keep it below
    #: the channel's ``shutdown_grace`` (5 s), so calls end before a channel is closed,
    #: and below gunicorn's worker ``timeout`` (30 s), so a call ends before its worker is
    #: killed.
    call_timeout: float = 1.0

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment, with the defaults above.

        :raises ValueError: a variable is set to something that is not a number.
        """
        return cls(
            backend_address=os.environ.get("BACKEND_ADDRESS", cls.backend_address),
            pool_size=_env("BACKEND_POOL_SIZE", int, cls.pool_size),
            call_timeout=_env("BACKEND_CALL_TIMEOUT", float, cls.call_timeout),
        )


def _env(name: str, parse: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a {parse.__name__}, got {raw!r}") from None


settings = Settings.from_env()


class BackendPool(
    sync.Pool,
    channel={
        "connect_timeout": 2.0,
        # Back soon after the backend is: retry after ~0.5 s, 1 s, 2 s, ... at most 5 s
        # (conngrpc's default goes up to 30 s).
        "backoff": ExponentialBackoff(min=0.5, max=5.0),
    },
):
    """The channels to the backend, one pool per gunicorn worker; calls go through
    ``BackendPool.channel()``. Its size and address come from ``settings``
    (``start_pools``)."""


# --- the backend's stub ----------------------------------------------------------


def _as_is(data: bytes) -> bytes:
    return data


class DemoStub:
    """The stub of the demo backend's ``conngrpc.demo.v1.Demo`` service, written out by hand.

    It is what grpcio-tools generates, minus the protobuf messages: the demo backend
    (``python -m examples.fastapi_service.backend``) takes and returns plain bytes.
    Against your own backend, use your generated stub instead, built once on the pool's
    channel: ``InventoryStub(BackendPool.channel())``.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.Peer = channel.unary_unary(
            "/conngrpc.demo.v1.Demo/Peer", request_serializer=_as_is, response_deserializer=_as_is
        )
        self.Sleep = channel.unary_unary(
            "/conngrpc.demo.v1.Demo/Sleep", request_serializer=_as_is, response_deserializer=_as_is
        )


#: Built once, at import, before any pool runs (in gunicorn's master, with --preload):
#: the PooledChannel is a facade that holds no connection. In each worker, every call
#: goes to the least-loaded connection of that worker's own pool, and fails at once as
#: UNAVAILABLE while none is connected (it never waits for one).
stub = DemoStub(BackendPool.channel())


# --- the pools' life: started in each worker, after the fork ----------------------


def start_pools() -> sync.Supervisor:
    """Start this process's pool on a supervisor thread of its own; return the supervisor.

    Call it in each process that serves (gunicorn's ``post_fork`` hook), never in a
    process that forks afterwards: grpc's channels and threads do not survive a fork.
    It does not wait for the backend: the pool connects in the background.

    :raises ChildStartError: the pool could not start (its settings are refused).
    """
    pool = BackendPool.child_spec(
        pool_size=settings.pool_size, channel={"address": settings.backend_address}
    )
    return sync.Supervisor([pool], name=f"flask_service worker {os.getpid()}").start()


app = Flask(__name__)


# --- errors: no backend is 503, a call past its deadline 504, another failure 502 ----


#: HTTP statuses for the gRPC status codes of failed calls; every other code is 502.
#: A real service maps its own as well (NOT_FOUND -> 404, INVALID_ARGUMENT -> 400, ...).
HTTP_STATUS = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


@app.errorhandler(grpc.RpcError)
def backend_call_failed(error: grpc.RpcError) -> tuple[Response, int, dict[str, str]]:
    """A call that failed, ran out of time, or found no backend.

    UNAVAILABLE is 503 with ``Retry-After``: the worker's pool had no connected channel
    (the details name the pool and why: refused, backing off, ...), or the backend died
    under the call. Either way another try soon may succeed.
    """
    assert isinstance(error, grpc.Call)  # grpc's failed calls are both
    code = error.code()
    body = {"error": f"backend call failed: {code.name}", "reason": error.details(), "pid": pid()}
    headers = {"Retry-After": "1"} if code is grpc.StatusCode.UNAVAILABLE else {}
    return jsonify(body), HTTP_STATUS.get(code, 502), headers


# --- endpoints ---------------------------------------------------------------------


def pid() -> int:
    """The process serving the request: which gunicorn worker answered."""
    return os.getpid()


@app.get("/call")
def call() -> Response:
    """Ask the backend whom it sees calling: which worker, and which connection of its
    pool, served the call."""
    answer: bytes = stub.Peer(b"", timeout=settings.call_timeout)
    return jsonify({"pid": pid(), "backend_saw": answer.decode()})


@app.get("/sleep")
def sleep() -> Response | tuple[Response, int]:
    """Ask the backend to take ``ms`` milliseconds (0 to 60000); past the deadline, 504."""
    ms = request.args.get("ms", "0")
    if not ms.isdigit() or int(ms) > 60_000:
        return jsonify({"error": f"ms: expected 0 to 60000, got {ms!r}"}), 400
    stub.Sleep(ms.encode(), timeout=settings.call_timeout)
    return jsonify({"pid": pid(), "slept_ms": int(ms)})


@app.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 200 while this worker's pool has a connected channel, 503 otherwise."""
    try:
        status = BackendPool.status()
    except PoolNotStartedError as error:
        return jsonify({"ready": False, "pid": pid(), "reason": error.reason}), 503
    body = {"pid": pid(), "connected": status.current_size, "expected": status.expected_size}
    if status.current_size == 0:
        reason = "no channel to the backend is connected"
        return jsonify({"ready": False, "reason": reason, **body}), 503
    return jsonify({"ready": True, **body}), 200


@app.get("/status")
def status() -> tuple[Response, int]:
    """This worker's pool, as ``Pool.status()`` says it (503 if it does not run)."""
    try:
        current = BackendPool.status()
    except PoolNotStartedError as error:
        return jsonify({"pid": pid(), "running": False, "reason": error.reason}), 503
    return jsonify({"pid": pid(), "running": True, "pool": asdict(current)}), 200
