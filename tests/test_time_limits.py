"""A test that hangs fails within its time limit, with a traceback that shows where.

Each case runs pytest on a small test file of its own, with this project's settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HANGS_IN_AN_AWAIT = """
import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.timeout(10)
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


#: How long the pytest run on a small file may take: 6 s on a quiet machine, up to 24 s
#: with four busy loops and others' tests beside it. This test's own time limit is longer,
#: for pytest-timeout would end the whole run at that limit.
RUN_LIMIT = 100


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
        timeout=RUN_LIMIT,
        check=False,
    )


@pytest.mark.timeout(RUN_LIMIT + 20)
def test_an_async_test_that_hangs_fails_where_it_waits_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    """The hang's 10 s limit keeps 5 s, after the cancellation, for the test's cleanup and
    its failure report before pytest-timeout would end the run. With a 6 s limit (3 s
    kept) this test failed in a full run beside four busy loops, where a process gets a
    fraction of a core: this run needs about 1 s of CPU besides the hang."""
    result = run_pytest(tmp_path, HANGS_IN_AN_AWAIT)
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "await anyio.Event().wait()  # the hang" in result.stdout
    assert "TimeoutError: the test was cancelled after 5 s of its 10 s time limit" in result.stdout


@pytest.mark.timeout(RUN_LIMIT + 20)
def test_a_test_blocked_in_a_call_ends_the_run_with_the_stack_where_it_blocks(
    tmp_path: Path,
) -> None:
    result = run_pytest(tmp_path, HANGS_IN_A_BLOCKING_CALL)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Timeout" in output
    assert "time.sleep(30)  # the hang" in output
