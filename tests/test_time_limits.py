"""A test that hangs fails within its time limit, with a traceback that shows where.

Each case runs pytest on a small test file of its own, with this project's settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HANGS_IN_AN_AWAIT = """
import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.timeout(6)
async def test_that_hangs():
    await anyio.Event().wait()  # the hang


async def test_after_it():
    await anyio.sleep(0)
"""

HANGS_IN_A_BLOCKING_CALL = """
import time

import pytest


@pytest.mark.timeout(1)
def test_that_blocks():
    time.sleep(30)  # the hang
"""


def run_pytest(tmp_path: Path, tests: str) -> subprocess.CompletedProcess[str]:
    """pytest on ``tests``, with this project's settings and time limits."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests._time_limits"]\n')
    (tmp_path / "test_hang.py").write_text(tests)
    settings = ["-c", str(ROOT / "pyproject.toml"), "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *settings, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_async_test_that_hangs_fails_where_it_waits_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    result = run_pytest(tmp_path, HANGS_IN_AN_AWAIT)
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "await anyio.Event().wait()  # the hang" in result.stdout
    assert "TimeoutError: the test was cancelled after 3 s of its 6 s time limit" in result.stdout


def test_a_test_blocked_in_a_call_ends_the_run_with_the_stack_where_it_blocks(
    tmp_path: Path,
) -> None:
    result = run_pytest(tmp_path, HANGS_IN_A_BLOCKING_CALL)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Timeout" in output
    assert "time.sleep(30)  # the hang" in output
