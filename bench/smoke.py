"""The benchmarks still run: ``make bench-quick`` (and ``make test-all``, so CI).

A quick run of the whole suite (tiny durations), its report written to a temporary
file and read back: every benchmark must have reported, and every target must have
come out PASS or MISS in the targets table. The numbers are not checked: a quick run on a busy
machine proves nothing about speed. This is not part of ``make test``, where no
benchmark runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Every section a run reports, by the start of its title.
TITLES = [
    "get_channel cost",
    "telemetry.execute cost",
    "Ceiling: the same 20 ms calls",
    "Stream-capped throughput, overload protection on",
    "Stream-capped throughput, overload protection off",
    "Overhead when nothing is capped",
    "Cold burst: 200 concurrent calls the moment the client is ready, loopback",
    "Cold burst: 200 concurrent calls the moment the client is ready, over a link",
    "Start-up",
    "Stop: leaving the supervisor",
    "Failure detection and recovery",
    "Memory",
    "get_channel cost, real channels",
    "Fleet (a): steady state",
    "Fleet (b): one replica turns NOT_SERVING",
    "Fleet (c): rolling restarts",
    "Fleet (d): scale-out from 2 replicas to 3",
    "Slow replica",
    "Stream cap: one server capped",
    "Mixed call lengths",
    "Overhead of the PooledChannel",
    "Reading a response stream",
    "The pick and its counting",
    "Outliers (1a): one replica fails every call at once with INTERNAL",
    "Outliers (1b): one replica fails every call at once with UNAVAILABLE",
    "Outliers (2): one replica fails 30% of its calls",
    "Outliers (3): one replica never answers",
    "Outliers (4): the healthy baseline",
    "Rolling restart with retries",
    "Hedging: one replica of three stalls",
    "Cost of a retry policy, nothing failing",
    "conngrpc.sync, stream cap: one server capped",
    "conngrpc.sync, slow replica",
    "conngrpc.sync, overhead: pool of 1 vs one plain channel",
    "conngrpc.sync, threads at 100 channels",
]

#: A row of the targets table: benchmark, target, measured, reference, ratio, required,
#: result.
TARGET_ROW = re.compile(r"^\|(?: [^|]+ \|){6} (PASS|MISS) \|$", re.MULTILINE)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "benchmarks.md"
        command = [sys.executable, "-m", "bench.run", "--quick", "--output", str(report)]
        run = subprocess.run(command, cwd=ROOT, timeout=300, check=False)
        if run.returncode != 0:
            print(f"bench smoke: python -m bench.run --quick exited {run.returncode}")
            return 1
        text = report.read_text()
    missing = [title for title in TITLES if f"## {title}" not in text]
    summary = text.split("\n## Targets\n", 1)[-1].split("\n## ", 1)[0]
    if not TARGET_ROW.search(summary):
        missing.append("a PASS or MISS in the targets table")
    if missing:
        print(f"bench smoke: the report lacks {', '.join(missing)}")
        return 1
    targets = len(TARGET_ROW.findall(summary))
    print(f"bench smoke: all {len(TITLES)} sections reported, {targets} targets judged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
