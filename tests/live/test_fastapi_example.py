"""examples/fastapi_service under uvicorn, against a real gRPC backend, driven over HTTP.

The service and the backend each run in a child process on 127.0.0.1, as in
production; the test is an HTTP client (the standard library's) with a timeout on
every request, and it measures what a load balancer would see: when readiness flips,
whether any request hangs, how soon the service serves again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conngrpc._server import ServerProcess
from tests._examples import Answer, ServiceProcess, demo_backend

POOL_SIZE = 3  # not the example's default (4): proves the environment is read
CALL_TIMEOUT = 1.5  # the service's deadline for every backend call, in seconds
CLIENT_TIMEOUT = 5.0  # the test's timeout for every HTTP request
AT_ONCE = 1.0  # what "at once" means for a request while the backend is down

# urllib would send 127.0.0.1 through a proxy named in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Service(ServiceProcess):
    """The example's uvicorn process, and an HTTP client for it that times every request."""

    def __init__(self, backend_address: str, log: Path) -> None:
        self.port = 0  # uvicorn picks it, and says which in its log
        self.answers: list[tuple[str, Answer]] = []
        environment = {
            **os.environ,
            "BACKEND_ADDRESS": backend_address,
            "BACKEND_POOL_SIZE": str(POOL_SIZE),
            "BACKEND_CALL_TIMEOUT": str(CALL_TIMEOUT),
        }
        command = [sys.executable, "-m", "uvicorn", "examples.fastapi_service.app:app"]
        command += ["--host", "127.0.0.1", "--port", "0"]
        super().__init__(command, environment, log)

    def wait_listening(self, within: float) -> float:
        """Wait until uvicorn says where it listens; return the time taken."""
        begin = time.monotonic()
        while (found := re.search(r"running on http://127\.0\.0\.1:(\d+)", self.output())) is None:
            assert self.process.poll() is None, f"uvicorn exited:\n{self.output()}"
            assert time.monotonic() - begin < within, f"uvicorn did not listen:\n{self.output()}"
            time.sleep(0.01)
        self.port = int(found[1])
        return time.monotonic() - begin

    def get(self, path: str) -> Answer:
        begin = time.monotonic()
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with _opener.open(url, timeout=CLIENT_TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        answer = Answer(status, json.loads(raw), time.monotonic() - begin)
        self.answers.append((path, answer))
        return answer

    def wait_for(self, path: str, status: int, within: float) -> tuple[Answer, float]:
        """Poll ``path`` until it answers ``status``; return that answer and the time taken."""
        begin = time.monotonic()
        while True:
            answer = self.get(path)
            elapsed = time.monotonic() - begin
            if answer.status == status:
                return answer, elapsed
            assert self.process.poll() is None, f"uvicorn exited:\n{self.output()}"
            assert elapsed < within, (
                f"GET {path}: expected {status} within {within:g} s, last got {answer}\n"
                + self.output()
            )
            time.sleep(0.01)


def wait_until_true(predicate: Callable[[], bool], within: float) -> None:
    """Poll ``predicate`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {within:g} s"
        time.sleep(0.01)


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """The example's own backend (``backend.py``, as its README runs it), on a port chosen
    now; the test starts the server when it wants it."""
    with demo_backend(monkeypatch) as server:
        yield server


@pytest.fixture
def service(backend: ServerProcess, tmp_path: Path) -> Iterator[Service]:
    with Service(backend.address, tmp_path / "uvicorn.log") as service:
        yield service


def test_the_service_is_ready_only_while_its_backend_is_and_never_hangs(
    backend: ServerProcess, service: Service
) -> None:
    figures: dict[str, str] = {}

    # 1. Started before its backend: it listens at once, but is not ready, and says why.
    seconds = service.wait_listening(within=30)
    figures["listening after launch"] = f"{seconds:.2f} s"
    assert service.get("/healthz").status == 200
    not_ready = service.get("/readyz")
    assert not_ready.status == 503
    assert not_ready.body["reason"].startswith("warming up")
    no_backend = service.get("/peer")
    assert no_backend.status == 503
    assert "connection refused" in no_backend.body["reason"].lower()

    # 2. The backend comes: ready once all its channels connected; calls spread over them.
    backend.start()
    ready, seconds = service.wait_for("/readyz", 200, within=15)
    figures["ready after the backend listened"] = f"{seconds:.2f} s"
    assert ready.body == {
        "ready": True,
        "connected": POOL_SIZE,
        "expected": POOL_SIZE,
        "in_flight": 0,
    }
    answers = [service.get("/peer") for _ in range(2 * POOL_SIZE)]
    assert {a.status for a in answers} == {200}
    peers = {a.body["backend_saw"] for a in answers}
    assert len(peers) == POOL_SIZE  # idle connections take turns, each its own
    figures["distinct connections serving /peer"] = str(len(peers))

    # 3. A call past its deadline is 504, at the deadline.
    late = service.get("/sleep?ms=3000")
    assert late.status == 504
    assert late.body["error"] == "backend call failed: DEADLINE_EXCEEDED"
    assert CALL_TIMEOUT - 0.05 < late.seconds < CALL_TIMEOUT + AT_ONCE
    figures["504 for a call past its deadline after"] = f"{late.seconds:.2f} s"

    # 4. The backend is killed with a call in flight: that call fails at once (503:
    #    UNAVAILABLE, not a wait for its deadline); readiness says 503 within a second;
    #    calls are 503 at once (no channel: the PooledChannel never waits).
    in_flight: list[Answer] = []
    caller = threading.Thread(target=lambda: in_flight.append(service.get("/sleep?ms=5000")))
    caller.start()
    # Until the call is on its way to the backend (had it not started, it would be a 503
    # for want of a channel, not for the kill).
    wait_until_true(lambda: service.get("/readyz").body["in_flight"] == 1, within=5)
    killed = time.monotonic()
    backend.kill()
    unready, _ = service.wait_for("/readyz", 503, within=5)
    time_to_503 = time.monotonic() - killed
    figures["/readyz 503 after the kill"] = f"{time_to_503 * 1000:.0f} ms"
    assert time_to_503 < 1.0
    assert unready.body["reason"] == "no channel to the backend is connected"
    caller.join(CLIENT_TIMEOUT)
    [cut] = in_flight
    assert cut.status == 503, cut
    figures["the call in flight at the kill"] = f"{cut.status} after {cut.seconds:.2f} s"
    outage = [service.get("/peer") for _ in range(20)]
    assert {a.status for a in outage} == {503}
    assert "is connected now" in outage[0].body["reason"]
    slowest = max(a.seconds for a in outage)
    assert slowest < AT_ONCE
    figures["slowest of 20 /peer during the outage"] = f"{slowest * 1000:.1f} ms (503)"

    # 5. The backend comes back on its port: ready and serving again, without a restart.
    backend.start()
    _, seconds = service.wait_for("/readyz", 200, within=15)
    figures["ready again after the backend listened again"] = f"{seconds:.2f} s"
    assert service.get("/peer").status == 200

    # 6. SIGTERM: uvicorn runs the lifespan's shutdown, which stops the supervisor, then
    #    ends by the signal it caught (uvicorn re-raises it: the exit status is -SIGTERM).
    seconds = service.stop(timeout=15)
    figures["exit after SIGTERM"] = f"{seconds:.2f} s"
    output = service.output()
    assert service.process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output

    hung = [(path, a.seconds) for path, a in service.answers if a.seconds > CALL_TIMEOUT + AT_ONCE]
    assert not hung
    figures["HTTP requests made (none hung)"] = str(len(service.answers))
    print("\nexamples/fastapi_service, measured:")
    for what, figure in figures.items():
        print(f"  {what:46} {figure}")
