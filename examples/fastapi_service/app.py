"""A FastAPI service that calls a gRPC backend through a conngrpc pool.

Run it (the backend address and the rest come from the environment, see ``Settings``)::

    BACKEND_ADDRESS=127.0.0.1:50051 uvicorn examples.fastapi_service.app:app

The lifespan runs a Supervisor with the pool; the stub is built once, on the pool's
``PooledChannel``, so each call goes to the pool's least-loaded connection; the error
handlers map "no backend" (grpc UNAVAILABLE) to 503, a deadline to 504 and other failed
calls to 502; ``/readyz`` answers 503 until the pool has connected and whenever it holds
no connected channel, so a load balancer sends no traffic to a replica that could not
serve it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, TypeVar

import anyio
import grpc
import grpc.aio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from conngrpc import ExponentialBackoff, NotConnectedError, Pool, PoolNotStartedError, Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")


# --- configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The service's settings: environment variables, read once when the service starts."""

    #: ``BACKEND_ADDRESS``: ``host:port`` or any grpc target (``dns:///backend:50051``).
    backend_address: str = "127.0.0.1:50051"
    #: ``BACKEND_POOL_SIZE``: connections to the backend, each its own HTTP/2 connection.
    pool_size: int = 4
    #: ``BACKEND_CALL_TIMEOUT``: every backend call's deadline, in seconds. Keep it below
    #: the channel's ``shutdown_grace`` (5 s), so calls end before a channel is closed.
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


class BackendPool(
    Pool,
    channel={
        "connect_timeout": 2.0,
        # Back soon after the backend is: retry after ~0.5 s, 1 s, 2 s, ... at most 5 s
        # (conngrpc's default goes up to 30 s).
        "backoff": ExponentialBackoff(min=0.5, max=5.0),
    },
):
    """The channels to the backend; calls go through ``BackendPool.channel()``.

    Its size and address come from the settings when the service starts (``lifespan``).
    """


# --- the backend's stub ----------------------------------------------------------


def _as_is(data: bytes) -> bytes:
    return data


class DemoStub:
    """The stub of the backend's ``conngrpc.demo.v1.Demo`` service, written out by hand.

    It is what grpcio-tools generates, minus the protobuf messages: the example's backend
    (``python -m examples.fastapi_service.backend``) takes and returns plain bytes. Against
    your own
    backend, use your generated stub instead, built once on the pool's channel:
    ``InventoryStub(BackendPool.channel())``.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Peer = channel.unary_unary(
            "/conngrpc.demo.v1.Demo/Peer", request_serializer=_as_is, response_deserializer=_as_is
        )
        self.Sleep = channel.unary_unary(
            "/conngrpc.demo.v1.Demo/Sleep", request_serializer=_as_is, response_deserializer=_as_is
        )


#: Built once, before the pool runs: every call goes to the pool's least-loaded connection,
#: and fails at once as UNAVAILABLE while no connection is up (it never waits for one).
stub = DemoStub(BackendPool.channel())


# --- the application: the pool runs as long as the service does -------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the pool under a Supervisor while the service runs; stop it when it stops.

    Startup does not wait for the backend: the service listens at once (``/healthz``
    answers), and ``/readyz`` says 503 until the pool has connected.
    """
    settings = Settings.from_env()
    app.state.settings = settings
    app.state.warmed_up = False
    pool = BackendPool.child_spec(
        pool_size=settings.pool_size, channel={"address": settings.backend_address}
    )
    async with Supervisor([pool], name="fastapi_service"), anyio.create_task_group() as tasks:
        tasks.start_soon(_warm_up, app)
        yield
        tasks.cancel_scope.cancel()  # the warm-up, if the backend never came


async def _warm_up(app: FastAPI) -> None:
    """Mark the service warmed up once every channel of the pool has connected."""
    while True:
        try:
            status = await BackendPool.wait_connected(timeout=10)
        except NotConnectedError as error:  # the message says what each channel is doing
            log.warning("still waiting for the backend: %s", error)
        except PoolNotStartedError as error:  # the supervisor is restarting the pool
            log.warning("the backend pool is not running: %s", error)
            await anyio.sleep(1)
        else:
            log.info("backend pool connected: %d channel(s)", status.current_size)
            app.state.warmed_up = True
            return


app = FastAPI(title="conngrpc FastAPI example", lifespan=lifespan)


# --- errors: no backend is 503, a call past its deadline 504, another failure 502 ----


#: HTTP statuses for the gRPC status codes of failed calls; every other code is 502.
#: A real service maps its own as well (NOT_FOUND -> 404, INVALID_ARGUMENT -> 400, ...).
HTTP_STATUS = {grpc.StatusCode.DEADLINE_EXCEEDED: 504}


@app.exception_handler(grpc.aio.AioRpcError)
async def backend_call_failed(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
    """A call that failed, ran out of time, or found no backend.

    UNAVAILABLE is 503 with ``Retry-After``: the pool had no connected channel (the
    details name the pool and why: refused, backing off, ...), or the backend died under
    the call. Either way another try soon may succeed.
    """
    if error.code() is grpc.StatusCode.UNAVAILABLE:
        return JSONResponse(
            {"error": "backend unavailable", "reason": error.details()},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse(
        {"error": f"backend call failed: {error.code().name}", "details": error.details()},
        status_code=HTTP_STATUS.get(error.code(), 502),
    )


# --- endpoints ---------------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    """The settings the service started with (a FastAPI dependency)."""
    current: Settings = request.app.state.settings
    return current


SettingsDep = Annotated[Settings, Depends(get_settings)]


@app.get("/peer")
async def peer(settings: SettingsDep) -> dict[str, str]:
    """Ask the backend whom it sees calling: which connection of the pool served the call."""
    answer: bytes = await stub.Peer(b"", timeout=settings.call_timeout)
    return {"backend_saw": answer.decode()}


@app.get("/sleep")
async def sleep(
    settings: SettingsDep, ms: Annotated[int, Query(ge=0, le=60_000)] = 0
) -> dict[str, int]:
    """Ask the backend to take ``ms`` milliseconds; past the call's deadline, 504."""
    await stub.Sleep(str(ms).encode(), timeout=settings.call_timeout)
    return {"slept_ms": ms}


@app.get("/healthz")
async def healthz() -> JSONResponse:
    """Liveness: 200 while the pool runs, whether or not the backend is reachable.

    A backend outage must not get this process restarted (that is ``/readyz``'s job);
    a supervision tree that gave up should, since uvicorn goes on serving after a
    lifespan fails.
    """
    try:
        BackendPool.status()
    except PoolNotStartedError as error:
        return JSONResponse({"alive": False, "reason": error.reason}, status_code=503)
    return JSONResponse({"alive": True})


@app.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 503 until every channel has connected once, and while none is connected."""
    try:
        status = BackendPool.status()
    except PoolNotStartedError as error:
        return JSONResponse({"ready": False, "reason": error.reason}, status_code=503)
    body: dict[str, object] = {
        "connected": status.current_size,
        "expected": status.expected_size,
        "in_flight": status.in_flight,  # backend calls running now, through the pool
    }
    if not request.app.state.warmed_up:
        reason = "warming up: waiting for every channel of the pool to connect"
    elif status.current_size == 0:
        reason = "no channel to the backend is connected"
    else:
        return JSONResponse({"ready": True, **body})
    return JSONResponse({"ready": False, "reason": reason, **body}, status_code=503)
