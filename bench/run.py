"""Run every benchmark in one process, print the tables, write docs/benchmarks.md.

    python -m bench.run            # the full suite (make bench), a few minutes
    python -m bench.run --quick    # a smoke run (make bench-quick), well under 30 s
    python -m bench.run --only outliers   # one group of benchmarks, no report written

Targets are set against figures of the same run (one channel, A105, the no-cap
ceiling); absolute figures vary by machine. The report is tables only: what a run's
misses mean is written by hand, once, in docs/benchmarks-reading.md, which this
script never writes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import anyio
import grpc

from ._common import LEVEL, Section, summary
from .connection_cap import connection_cap
from .fleet import fleet
from .hot_path import get_channel_cost, real_channel_cost, telemetry_cost
from .lifecycle import failure_and_recovery, memory, shutdown, startup
from .outliers import outliers
from .pooled import overhead as pooled_overhead
from .pooled import slow_replica, stream_cap
from .retries import retries
from .sync import sync_pools
from .throughput import ceiling, cold_burst, overhead, stream_capped

ROOT = Path(__file__).resolve().parent.parent
#: The simulated network for the cold-burst variant: ms each way.
LINK_MS = 10
#: The groups of benchmarks, by module, in the order a run makes them.
GROUPS = (
    "hot_path",
    "throughput",
    "lifecycle",
    "fleet",
    "pooled",
    "outliers",
    "retries",
    "sync",
)


def _machine() -> list[str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"- date: {datetime.date.today().isoformat()}",
        f"- cores: {os.cpu_count()} ({model})",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}",
        f"- grpcio {grpc.__version__}, anyio {metadata.version('anyio')}, "
        f"protobuf {metadata.version('protobuf')}",
    ]


def _document(
    sections: list[Section], seconds: float, quick: bool, load: tuple[float, float]
) -> str:
    missed = sum(not t.passed for s in sections for t in s.targets)
    total = sum(len(s.targets) for s in sections)
    lines = [
        "# Benchmarks",
        "",
        "Made by `make bench` (`python -m bench.run`); every figure below comes from one run"
        " on one machine. Absolute figures vary from machine to machine, so each target is"
        " set against a figure of the same run where one applies: one plain channel, grpc's"
        " own connection scaling (A105), round_robin, or the ceiling (what this machine did"
        " with no stream cap). The ratio is the measured figure over that one; a target to"
        f" match grpc or the ceiling allows {LEVEL:.0%}. What this run's misses mean is"
        " written by hand in [benchmarks-reading.md](benchmarks-reading.md), which names the"
        " run it reads; `make bench` does not write it.",
        "",
        "## Machine",
        "",
        *_machine(),
        f"- whole suite: {seconds:.0f} s" + (" (quick smoke run)" if quick else ""),
        f"- 1-minute load average, read as the run began and after each benchmark:"
        f" {load[0]:.1f} to {load[1]:.1f}, on {os.cpu_count()} cores",
        "",
        "## Targets",
        "",
        f"{total - missed} of {total} met.",
        "",
        summary(sections),
    ]
    return "\n".join(lines) + "\n" + "\n".join(s.markdown() for s in sections)


async def main(quick: bool, output: Path | None, only: frozenset[str] = frozenset(GROUPS)) -> int:
    began = time.monotonic()
    loads = [os.getloadavg()[0]]
    sections: list[Section] = []

    def done(section: Section) -> None:
        sections.append(section)
        loads.append(os.getloadavg()[0])
        print(section.text(), flush=True)

    if "hot_path" in only:
        done(await get_channel_cost(quick))
        done(await real_channel_cost(quick))
        done(telemetry_cost(quick))
    if "throughput" in only:
        section, top = await ceiling(quick)
        done(section)
        for section in await stream_capped(quick, top):
            done(section)
        done(await connection_cap(quick))
        done(await overhead(quick))
        done(await cold_burst(quick))
        done(await cold_burst(quick, latency_ms=LINK_MS))
    if "lifecycle" in only:
        done(await startup(quick))
        done(await shutdown(quick))
        done(await failure_and_recovery(quick))
        done(await memory(quick))
    if "fleet" in only:
        for section in await fleet(quick):
            done(section)
    if "pooled" in only:
        done(await slow_replica(quick))
        for section in await stream_cap(quick):
            done(section)
        for section in await pooled_overhead(quick):
            done(section)
    if "outliers" in only:
        for section in await outliers(quick):
            done(section)
    if "retries" in only:
        for section in await retries(quick):
            done(section)
    if "sync" in only:
        for section in await sync_pools(quick):
            done(section)
    seconds = time.monotonic() - began
    if output is not None:
        load = (min(loads), max(loads))
        document = _document(sections, seconds, quick, load)
        await anyio.Path(output).write_text(document)
        print(f"wrote {output}")
    missed = [
        f"{s.title}: {t.name}" + (f" against {t.reference}" if t.reference else "")
        for s in sections
        for t in s.targets
        if not t.passed
    ]
    print(f"{len(sections)} benchmarks in {seconds:.0f} s; targets missed: {missed or 'none'}")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny durations")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the report (default: docs/benchmarks.md, none with --quick or --only)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only this group of benchmarks (named for its module); may be repeated",
    )
    args = parser.parse_args()
    output = args.output
    if output is None and not args.quick and not args.only:
        output = ROOT / "docs" / "benchmarks.md"  # the whole suite's report, never a part's
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # The benchmark is an application: keep the library's warnings (lost connections
    # while the server is killed on purpose) out of the tables.
    logging.getLogger("conngrpc").setLevel(logging.ERROR)  # the figures, not the faults
    return asyncio.run(main(args.quick, output, frozenset(args.only or GROUPS)))


if __name__ == "__main__":
    sys.exit(cli())
