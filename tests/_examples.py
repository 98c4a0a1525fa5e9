"""What the tests of examples/ share: the demo backend, and a service in a child process.

Each example's test runs the example's HTTP server (uvicorn, gunicorn) in a child
process on 127.0.0.1, its output in a log file, against the demo gRPC backend in
another; the test is an HTTP client with a timeout on every request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conngrpc._server import ServerProcess
from tests._net import closed_port

ROOT = Path(__file__).resolve().parents[1]

S = TypeVar("S", bound="ServiceProcess")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, its JSON body, and how long the request took."""

    status: int
    body: dict[str, Any]
    seconds: float


@contextmanager
def demo_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """The examples' gRPC backend (examples/fastapi_service/backend.py, as the examples'
    READMEs run it), not started yet, on a port chosen now and kept when it starts again;
    killed at the end."""
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), pythonpath])))
    server = ServerProcess(port=closed_port(), module="examples.fastapi_service.backend")
    try:
        yield server
    finally:
        server.kill()


class ServiceProcess:
    """An example's HTTP server in a child process, run from the repository's root, its
    output (stdout and stderr) in ``log``; killed on leaving the ``with`` block if it still
    runs."""

    def __init__(self, command: Sequence[str], environment: Mapping[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as output:  # a file, not a pipe that could fill and block it
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
            )

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float) -> float:
        """SIGTERM, as an orchestrator does; return how long the process took to exit."""
        begin = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - begin
