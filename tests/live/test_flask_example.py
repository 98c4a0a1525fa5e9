"""examples/flask_service under gunicorn (sync workers, ``--preload``), against a real
gRPC backend, driven over HTTP.

gunicorn and the backend each run in a child process on 127.0.0.1, as in production;
the test is an HTTP client (the standard library's) with a timeout on every request.
gunicorn's master imports the app and forks its workers; each worker runs its own
``conngrpc.sync`` pool, started after the fork. The test checks that every worker
serves through its own pool, that nothing of grpc runs in the master, that a dead
backend makes calls fail at once and readiness flip in every worker, that the service
serves again once the backend is back, and that SIGTERM stops it all cleanly, with no
traceback and none of grpc's fork warnings in gunicorn's log.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conngrpc._server import ServerProcess
from tests._examples import Answer, ServiceProcess, demo_backend

WORKERS = 3  # gunicorn's sync workers: one request at a time each
POOL_SIZE = 3  # not the example's default (2): proves the environment is read
CALL_TIMEOUT = 1.0  # the service's deadline for every backend call, in seconds
CLIENT_TIMEOUT = 5.0  # the test's timeout for every HTTP request
AT_ONCE = 1.0  # what "at once" means for a request while the backend is down
#: What gunicorn's log must never say: a traceback, grpc core's failed checks, and what
#: grpc says when a process that uses it forks (its fork handlers, its poller).
BAD_SIGNS = (
    "Traceback",
    "Fatal Python error",
    "Check failed",
    "Fork support is only compatible with the epoll1 and poll polling strategies",
    "Other threads are currently calling into gRPC, skipping fork() handlers",
    "Fork support not enabled",
    "Closed on fork",
    "FD from fork parent",
)


class Service(ServiceProcess):
    """The example under gunicorn, and an HTTP client for it that times every request."""

    def __init__(self, backend_address: str, log: Path) -> None:
        self.port = 0  # gunicorn binds port 0 in the master, and says which in its log
        self.master = 0
        self.workers: set[int] = set()
        self.requests = 0
        self.slowest = 0.0
        environment = {
            **os.environ,
            "BACKEND_ADDRESS": backend_address,
            "BACKEND_POOL_SIZE": str(POOL_SIZE),
            "BACKEND_CALL_TIMEOUT": str(CALL_TIMEOUT),
        }
        # The example's README says to set neither: the test runs without them.
        for name in ("GRPC_ENABLE_FORK_SUPPORT", "GRPC_POLL_STRATEGY"):
            environment.pop(name, None)
        command = [sys.executable, "-m", "gunicorn"]
        command += ["--config", "examples/flask_service/gunicorn.conf.py"]
        command += ["--bind", "127.0.0.1:0", "--workers", str(WORKERS)]
        super().__init__(command, environment, log)

    def wait_booted(self, within: float) -> float:
        """Wait until gunicorn says where it listens and has booted every worker; return
        the time taken."""
        begin = time.monotonic()
        while True:
            output = self.output()
            listening = re.search(r"Listening at: http://127\.0\.0\.1:(\d+) \((\d+)\)", output)
            booted = {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", output)}
            if listening is not None and len(booted) == WORKERS:
                self.port, self.master = int(listening[1]), int(listening[2])
                self.workers = booted
                return time.monotonic() - begin
            assert self.process.poll() is None, f"gunicorn exited:\n{output}"
            assert time.monotonic() - begin < within, f"gunicorn did not boot:\n{output}"
            time.sleep(0.01)

    def connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
        connection.connect()
        return connection

    def answer(self, connection: http.client.HTTPConnection, path: str) -> Answer:
        """GET ``path`` on ``connection`` (one request: a sync worker closes it after)."""
        begin = time.monotonic()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise AssertionError(f"GET {path}: {error!r}\n{self.output()}") from error
        finally:
            connection.close()
        seconds = time.monotonic() - begin
        self.requests += 1
        self.slowest = max(self.slowest, seconds)
        return Answer(status, json.loads(raw), seconds)

    def get(self, path: str) -> Answer:
        """GET ``path`` on a new connection: whichever worker accepts it answers."""
        return self.answer(self.connect(), path)

    def one_round(self, path: str) -> list[Answer]:
        """GET ``path`` on ``WORKERS`` connections opened before any request is sent.

        A sync worker that accepted a connection waits for its request and takes no
        other; so when every worker has accepted one before the first request goes,
        each answers one. (One that has not yet may be beaten to a connection by a
        worker done with its request: :meth:`every_worker` goes round again.)
        """
        connections = [self.connect() for _ in range(WORKERS)]
        return [self.answer(connection, path) for connection in connections]

    def every_worker(
        self, path: str, wanted: Callable[[Answer], bool], within: float, times: int = 1
    ) -> tuple[dict[int, list[Answer]], float]:
        """Go round until every worker has given ``times`` wanted answers to ``path``;
        return them by worker pid, and the time taken."""
        begin = time.monotonic()
        answers: dict[int, list[Answer]] = {pid: [] for pid in self.workers}
        while True:
            for answer in self.one_round(path):
                assert answer.body["pid"] in self.workers, answer
                if wanted(answer):
                    answers[answer.body["pid"]].append(answer)
            elapsed = time.monotonic() - begin
            if all(len(given) >= times for given in answers.values()):
                return answers, elapsed
            assert self.process.poll() is None, f"gunicorn exited:\n{self.output()}"
            assert elapsed < within, (
                f"GET {path}: not every worker answered as wanted within {within:g} s: "
                f"{answers}\n{self.output()}"
            )
            time.sleep(0.01)

    def threads(self, pid: int) -> list[str]:
        """The names of the threads of process ``pid`` (grpc core names its own)."""
        tasks = Path(f"/proc/{pid}/task")
        return [(task / "comm").read_text().strip() for task in tasks.iterdir()]


def status_is(status: int) -> Callable[[Answer], bool]:
    return lambda answer: answer.status == status


def all_connected(answer: Answer) -> bool:
    """/ready: 200, with every channel of the worker's pool connected."""
    return answer.status == 200 and answer.body["connected"] == POOL_SIZE


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """The demo backend, started (the service comes after it)."""
    with demo_backend(monkeypatch) as server:
        server.start()
        yield server


@pytest.fixture
def service(backend: ServerProcess, tmp_path: Path) -> Iterator[Service]:
    with Service(backend.address, tmp_path / "gunicorn.log") as service:
        yield service


def test_each_gunicorn_worker_serves_through_a_pool_of_its_own_started_after_the_fork(
    backend: ServerProcess, service: Service
) -> None:
    figures: dict[str, str] = {}

    # 1. Booted: every worker connects its own pool and serves through it.
    seconds = service.wait_booted(within=30)
    figures["workers booted after launch"] = f"{seconds:.2f} s"
    _, seconds = service.every_worker("/ready", all_connected, within=15)
    figures["every worker ready, all connected, after boot"] = f"{seconds:.2f} s"
    for pid in service.workers:  # in post_fork, before the worker served
        assert f"conngrpc pools started (pid: {pid})" in service.output()
    # Enough calls per worker for each of its idle connections to take a turn.
    calls, _ = service.every_worker("/call", status_is(200), within=15, times=2 * POOL_SIZE)
    peers = {pid: {a.body["backend_saw"] for a in given} for pid, given in calls.items()}
    # Each worker called over its pool's connections, reused (not one per call), and no
    # two workers share a connection: each pool is its worker's own.
    assert all(len(seen) == POOL_SIZE for seen in peers.values()), peers
    assert len(set.union(*peers.values())) == WORKERS * POOL_SIZE, peers
    figures["connections serving /call (workers x pool)"] = (
        f"{len(set.union(*peers.values()))} ({WORKERS} x {POOL_SIZE})"
    )
    statuses, _ = service.every_worker("/status", status_is(200), within=15)
    for pid, [answer, *_] in statuses.items():
        pool = answer.body["pool"]
        assert (pool["expected_size"], pool["current_size"]) == (POOL_SIZE, POOL_SIZE), pid
        assert pool["backends"] == {backend.address: POOL_SIZE}, pid

    # 2. Nothing of grpc's runs in the master: it has its main thread alone, while each
    #    worker has its supervisor's thread and grpc's.
    master_threads = service.threads(service.master)
    assert len(master_threads) == 1, master_threads
    for pid in service.workers:
        assert len(service.threads(pid)) > 1, (pid, service.threads(pid))

    # 3. The backend is killed: calls fail at once (503: UNAVAILABLE, never a wait for
    #    the deadline), and every worker's /ready says 503 soon after.
    killed = time.monotonic()
    backend.kill()
    unready, _ = service.every_worker("/ready", status_is(503), within=5)
    time_to_503 = time.monotonic() - killed
    figures["every worker's /ready 503 after the kill"] = f"{time_to_503 * 1000:.0f} ms"
    # Generous: the pool hears of a reset connection from grpc within milliseconds.
    assert time_to_503 < 2.0
    for pid, [answer, *_] in unready.items():
        assert answer.body["reason"] == "no channel to the backend is connected", pid
    outage, _ = service.every_worker("/call", lambda answer: True, within=5, times=3)
    assert {a.status for given in outage.values() for a in given} == {503}
    assert all("is connected now" in given[0].body["reason"] for given in outage.values())
    slowest = max(a.seconds for given in outage.values() for a in given)
    assert slowest < AT_ONCE
    figures["slowest /call during the outage"] = f"{slowest * 1000:.1f} ms (503)"

    # 4. The backend comes back on its port: every worker is ready and serves again.
    backend.start()
    _, seconds = service.every_worker("/ready", status_is(200), within=15)
    figures["every worker ready after the backend listened again"] = f"{seconds:.2f} s"
    service.every_worker("/call", status_is(200), within=5)

    # 5. SIGTERM: the master stops its workers, each stopping its pool in worker_exit.
    seconds = service.stop(timeout=15)
    figures["gunicorn's exit after SIGTERM"] = f"{seconds:.2f} s"
    output = service.output()
    assert service.process.returncode == 0, output
    assert "Shutting down: Master" in output
    for pid in service.workers:
        assert f"conngrpc pools stopped (pid: {pid})" in output
        assert f"Worker exiting (pid: {pid})" in output
    assert [sign for sign in BAD_SIGNS if sign in output] == [], output

    assert service.slowest < CALL_TIMEOUT + AT_ONCE  # no request hung
    figures["HTTP requests made (slowest)"] = f"{service.requests} ({service.slowest:.2f} s)"
    print("\nexamples/flask_service, measured:")
    for what, figure in figures.items():
        print(f"  {what:52} {figure}")
