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


#: A target set against a figure of the same run (a ceiling: what grpc, A105 or the
#: machine itself did) is met within this share of it: level within 5% is level.
LEVEL = 0.05

#: How a target compares its value with its bound.
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    ">": lambda value, bound: value > bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
    "=": lambda value, bound: value == bound,
}


@dataclass(frozen=True)
class Target:
    """One target: a measured figure, what it is set against in the same run, the bound.

    With a reference, the value compared is ``measured / against``; without one, the
    measured figure itself. A figure that is not a number (nothing measured) is a MISS.
    """

    name: str
    measured: float
    op: str
    bound: float
    reference: str = ""
    against: float | None = None

    def __post_init__(self) -> None:
        if self.op not in COMPARE:
            raise ValueError(f"op must be one of {', '.join(COMPARE)}, got {self.op!r}")
        if (self.against is None) != (not self.reference):
            raise ValueError(
                f"a reference needs its figure and a figure its reference, got"
                f" reference={self.reference!r}, against={self.against!r}"
            )

    @property
    def value(self) -> float:
        if self.against is None:
            return self.measured
        return self.measured / self.against if self.against else float("nan")

    @property
    def passed(self) -> bool:
        return COMPARE[self.op](self.value, self.bound)

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "MISS"

    def cells(self) -> list[str]:
        """measured, reference, ratio, required, result: as the tables print them."""
        if self.against is None:
            reference, ratio = "-", "-"
        else:
            reference, ratio = f"{self.reference}: {_cell(self.against)}", _ratio(self.value)
        required = f"{self.op} {self.bound:,g}"
        return [_cell(self.measured), reference, ratio, required, self.result]


TARGET_COLUMNS = ["target", "measured", "set against (same run)", "ratio", "required", "result"]


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


@dataclass
class Section:
    """One benchmark's results: a table, the targets it checks, and how it was measured."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(cell) for cell in cells])

    def target(
        self,
        name: str,
        measured: float,
        op: str,
        bound: float,
        reference: str = "",
        against: float | None = None,
    ) -> Target:
        target = Target(name, measured, op, bound, reference, against)
        self.targets.append(target)
        return target

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", *table(self.columns, self.rows)]
        if self.targets:
            rows = [[t.name, *t.cells()] for t in self.targets]
            lines += ["", *table(TARGET_COLUMNS, rows)]
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
        for target in self.targets:
            measured, reference, ratio, required, result = target.cells()
            against = "" if target.against is None else f" / {reference} = {ratio}"
            out.append(f"  {target.name}: {measured}{against} (required {required}) {result}")
        out.extend(f"  {note}" for note in self.notes)
        return "\n".join(out) + "\n"


def summary(sections: Sequence[Section]) -> str:
    """Every target of a run in one table, each row naming its benchmark."""
    rows = [[s.title, t.name, *t.cells()] for s in sections for t in s.targets]
    return "\n".join(table(["benchmark", *TARGET_COLUMNS], rows)) + "\n"


def _ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


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
