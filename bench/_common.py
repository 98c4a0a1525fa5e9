"""What every benchmark shares: load generation, statistics, results and the report."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from conngrpc._server import SLEEP_METHOD
from conngrpc.channel.connector import raw_unary

GetChannel = Callable[[], grpc.aio.Channel]


def sleep_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return raw_unary(channel, SLEEP_METHOD)


def a105_options(connections: int) -> list[tuple[str, str]]:
    """grpc's own connection scaling (gRFC A105), switched on through the service config."""
    config = {"connectionScaling": {"maxConnectionsPerSubchannel": connections}}
    return [("grpc.service_config", json.dumps(config))]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Load:
    """What a run of concurrent callers achieved."""

    calls: int
    seconds: float
    errors: Counter[str]
    latencies: list[float]
    client_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def refused(self) -> int:
        return self.errors.get("UNAVAILABLE", 0)


async def run_load(
    get: GetChannel,
    *,
    callers: int,
    seconds: float,
    request: bytes = b"20",
    server_pid: int | None = None,
    timeout: float = 10.0,
) -> Load:
    """``callers`` tasks call Sleep(request) back to back for ``seconds``; count and time them."""
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < stop:
            begin = time.perf_counter()
            try:
                await sleep_call(get())(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
            except Exception as error:
                errors[type(error).__name__] += 1
                await asyncio.sleep(0)  # get_channel fails without awaiting: let others run
            else:
                latencies.append(time.perf_counter() - begin)

    cpu_before = cpu_seconds()
    server_before = cpu_seconds(server_pid) if server_pid else 0.0
    began = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.monotonic() - began
    return Load(
        calls=len(latencies),
        seconds=elapsed,
        errors=errors,
        latencies=latencies,
        client_cpu=cpu_seconds() - cpu_before,
        server_cpu=(cpu_seconds(server_pid) - server_before) if server_pid else 0.0,
    )


@dataclass
class Ratio:
    """One target: a measured ratio, what it must be, and whether it is."""

    name: str
    value: float
    target: str
    passed: bool
    note: str = ""


@dataclass
class Section:
    """One benchmark's results: a table, the ratios it checks, and remarks."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(cell) for cell in cells])

    def check(self, name: str, value: float, target: str, passed: bool, note: str = "") -> None:
        self.ratios.append(Ratio(name, value, target, passed, note))

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.ratios:
            lines += ["", "| ratio | measured | target | result |", "|---|---|---|---|"]
            for ratio in self.ratios:
                result = "PASS" if ratio.passed else "MISS"
                note = f" ({ratio.note})" if ratio.note else ""
                lines.append(
                    f"| {ratio.name} | {ratio.value:.2f} | {ratio.target} | {result}{note} |"
                )
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        widths = [
            max(len(str(c)) for c in column)
            for column in zip(self.columns, *self.rows, strict=False)
        ]
        out = [self.title, "=" * len(self.title)]
        out.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=False)))
        for row in self.rows:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
        for ratio in self.ratios:
            result = "PASS" if ratio.passed else "MISS"
            out.append(f"  {ratio.name}: {ratio.value:.2f} (target {ratio.target}) {result}")
        out.extend(f"  {note}" for note in self.notes)
        return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
