"""The benchmarks still run (``make bench-quick``); their numbers are not checked here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)  # beyond the 60 s the benchmark process itself is given
def test_the_quick_benchmark_suite_runs_and_reports_every_benchmark(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    for title in [
        "get_channel cost",
        "telemetry.execute cost",
        "Stream-capped throughput, overload protection on",
        "Stream-capped throughput, overload protection off",
        "Overhead when nothing is capped",
        "Cold burst: 200 concurrent calls the moment the client is ready, loopback",
        "Cold burst: 200 concurrent calls the moment the client is ready, over a link",
        "Start-up",
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
        "The pick and its counting",
        "When to use what",
    ]:
        assert f"## {title}" in text, title
    assert re.search(r"\| (PASS|MISS) \|", text)
