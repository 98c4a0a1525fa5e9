"""Helpers for the command line's tests: run it, serve grpc.health.v1, read its lines."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2_grpc  # type: ignore[import-untyped]

from tests._certs import TLSMaterial

COMMAND = [sys.executable, "-m", "conngrpc"]

#: A watch line: time, channel or pool, backend, event, details.
WATCH_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  (channel \d+|pool)\s+(\S+)\s+(\S+)\s+(.*)$")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m conngrpc ARGS`` to its end."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``python -m conngrpc ARGS`` in the background, its stdout and stderr piped."""
    return subprocess.Popen(
        [*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@asynccontextmanager
async def health_server(
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[tuple[health.aio.HealthServicer, str]]:
    """A server on 127.0.0.1 running grpcio-health-checking's Health service (not ours),
    over TLS when given ``credentials``; yields the servicer and the address."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The TLS material as the files a user would pass: ca.pem, client.pem, client.key."""

    ca: str
    other_ca: str
    client_cert: str
    client_key: str

    @classmethod
    def write(cls, material: TLSMaterial, folder: Path) -> TLSFiles:
        files = {
            "ca": material.ca,
            "other_ca": material.other_ca,
            "client_cert": material.client.cert,
            "client_key": material.client.key,
        }
        for name, pem in files.items():
            (folder / f"{name}.pem").write_bytes(pem)
        return cls(**{name: str(folder / f"{name}.pem") for name in files})


class Lines:
    """A child process's output, line by line, read by a thread and awaited with a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, matches: Callable[[str], bool], timeout: float = 20, what: str = "") -> str:
        """The next line that ``matches``, read within ``timeout`` seconds.

        :raises AssertionError: none came in time, or the output ended first.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the output ended before {what or 'the line'}: {self.seen}")
            self.seen.append(line)
            if matches(line):
                return line
        raise AssertionError(f"no {what or 'such line'} within {timeout:g} s: {self.seen}")

    def rest(self, timeout: float = 20) -> list[str]:
        """Every line still to come, once the output has ended (within ``timeout`` s)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"the output did not end within {timeout:g} s"
        rest = []
        while (line := self._queue.get_nowait()) is not None:
            rest.append(line)
        self.seen.extend(rest)
        return rest


def watch_event(line: str) -> tuple[str, str, str, str]:
    """A watch line's (who, backend, event, details); AssertionError if it is none."""
    match = WATCH_LINE.match(line)
    assert match is not None, f"not a watch line: {line!r}"
    who, backend, event, details = match.groups()
    return who, backend, event, details


def is_event(*events: str, details: Sequence[str] = ()) -> Callable[[str], bool]:
    """A test for ``Lines.expect``: a watch line of one of ``events`` whose details hold
    every string in ``details``."""

    def matches(line: str) -> bool:
        _, _, event, said = watch_event(line)
        return event in events and all(text in said for text in details)

    return matches
