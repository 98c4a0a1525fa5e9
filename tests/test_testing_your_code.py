"""The fixtures of "Testing your code" (docs/guide/testing.md), run as a user runs them.

pytest-asyncio sets an async fixture up in one task and tears it down in another;
anyio's pytest plugin does both in one. A pool in a fixture must serve the test and
stop cleanly at teardown under both: an error at teardown fails the run. The fixtures
here run in this session, against a grpc.aio server on 127.0.0.1; the docs' own test
files, and a give-up during a test, run in a pytest of their own, whose report is
what a user would see.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import pytest_asyncio
from anyio.abc import TaskStatus

from conngrpc import (
    ChildSpec,
    Pool,
    PoolNotStartedError,
    Supervisor,
    SupervisorGaveUpError,
)
from conngrpc._server import ServerProcess, peer_of, start_server
from tests._probe import wait_until
from tests._snippets import page_snippets, run_elsewhere

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "guide" / "testing.md"
PLACEHOLDER = "inventory.internal:50051"


async def _serve() -> AsyncIterator[str]:
    server, port = await start_server()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _a_call_is_served(name: str) -> None:
    await Pool.wait_connected(name, timeout=10)
    peer = await peer_of(Pool.get_channel(name))
    assert peer.startswith("ipv4:127.0.0.1:")


def _stopped(sup: Supervisor, name: str) -> None:
    """What teardown must have done: the pool is gone, every child ended."""
    assert "stopped" in repr(sup)
    assert not any(info.running for info in sup.which_children())
    with pytest.raises(PoolNotStartedError):
        Pool.get_channel(name)


# --- pytest-asyncio: set-up and teardown in two tasks -----------------------------------


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    async for address in _serve():
        yield address


@pytest_asyncio.fixture
async def after_teardown(pool_name: str) -> AsyncIterator[list[Supervisor]]:
    """Torn down after the pool fixture that requests it: checks that it stopped."""
    seen: list[Supervisor] = []
    yield seen
    (sup,) = seen
    _stopped(sup, pool_name)


@pytest_asyncio.fixture
async def pool(
    server: str, pool_name: str, after_teardown: list[Supervisor]
) -> AsyncIterator[Supervisor]:
    async with Supervisor(
        [Pool.child_spec(name=pool_name, pool_size=2, channel={"address": server})]
    ) as sup:
        after_teardown.append(sup)
        yield sup


@pytest_asyncio.fixture
async def started_pool(
    server: str, pool_name: str, after_teardown: list[Supervisor]
) -> AsyncIterator[Supervisor]:
    sup = Supervisor([Pool.child_spec(name=pool_name, pool_size=2, channel={"address": server})])
    await sup.start()
    after_teardown.append(sup)
    try:
        yield sup
    finally:
        await sup.aclose()


@pytest.mark.asyncio
async def test_a_pool_in_a_pytest_asyncio_fixture_serves_and_stops(
    pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)


@pytest.mark.asyncio
async def test_a_pool_started_and_closed_in_a_pytest_asyncio_fixture_serves_and_stops(
    started_pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)


async def _crash(*, task_status: TaskStatus[None]) -> None:
    task_status.started()
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("crashes at once")


@pytest.mark.asyncio
async def test_a_give_up_is_raised_where_the_block_is_left_in_another_task() -> None:
    """As pytest-asyncio does: entered in one task, left in another, each then gone."""
    sup = Supervisor([ChildSpec("fragile", _crash)], max_restarts=0, name="fragile")
    await asyncio.create_task(sup.__aenter__())
    await wait_until(lambda: "stopped" in repr(sup))
    with pytest.raises(SupervisorGaveUpError, match="'fragile' gave up"):
        await asyncio.create_task(sup.__aexit__(None, None, None))


# --- anyio's plugin: set-up and teardown in one task --------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio is asyncio-only


@pytest.fixture
async def anyio_server() -> AsyncIterator[str]:
    async for address in _serve():
        yield address


@pytest.fixture
async def anyio_pool(anyio_server: str, pool_name: str) -> AsyncIterator[Supervisor]:
    async with Supervisor(
        [Pool.child_spec(name=pool_name, pool_size=2, channel={"address": anyio_server})]
    ) as sup:
        yield sup
    _stopped(sup, pool_name)


@pytest.mark.anyio
async def test_a_pool_in_an_anyio_fixture_serves_and_stops(
    anyio_pool: Supervisor, pool_name: str
) -> None:
    await _a_call_is_served(pool_name)


# --- the docs' test files, and a give-up, in a pytest of their own ------------------------


def _run_pytest(tmp_path: Path, files: dict[str, str]) -> str:
    """pytest on ``files`` (with this project's settings, unless a pyproject.toml is one
    of them); its report."""
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    config = tmp_path / "pyproject.toml" if "pyproject.toml" in files else ROOT / "pyproject.toml"
    settings = ["-c", str(config), "-p", "no:cacheprovider", "-rA"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *settings, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"},  # whole summary lines
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_the_test_files_of_docs_testing_md_pass_as_written(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    text = DOCS.read_text()
    # The page's test files: the blocks tests._snippets.RUN_ELSEWHERE leaves to this test.
    blocks = [snippet.code for snippet in page_snippets(DOCS) if run_elsewhere(snippet)]
    assert len(blocks) == 4
    assert all(PLACEHOLDER in code for code in blocks)
    files = {
        f"test_docs_{index}.py": code.replace(PLACEHOLDER, server_process.address)
        for index, code in enumerate(blocks)
    }
    (configuration,) = re.findall(r"^```toml\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    files["pyproject.toml"] = configuration
    report = _run_pytest(tmp_path, files)
    assert "4 passed in" in report, report
    assert "error" not in report.lower(), report  # at teardown, or logged by grpc


GIVES_UP = """
import anyio
import pytest
import pytest_asyncio

from conngrpc import ChildSpec, Supervisor


async def crash(*, task_status):
    task_status.started()
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("crashes at once")


def fragile():
    return Supervisor([ChildSpec("fragile", crash)], max_restarts=0)


async def until_given_up(supervisor):
    with anyio.fail_after(10):
        while "stopped" not in repr(supervisor):
            await anyio.sleep(0.001)


@pytest_asyncio.fixture
async def entered():
    async with fragile() as supervisor:
        yield supervisor


@pytest_asyncio.fixture
async def started():
    supervisor = await fragile().start()
    try:
        yield supervisor
    finally:
        await supervisor.aclose()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def anyio_started():
    supervisor = await fragile().start()
    try:
        yield supervisor
    finally:
        await supervisor.aclose()


@pytest.mark.asyncio
async def test_entered(entered):
    await until_given_up(entered)


@pytest.mark.asyncio
async def test_started(started):
    await until_given_up(started)


@pytest.mark.anyio
async def test_anyio_started(anyio_started):
    await until_given_up(anyio_started)
"""


@pytest.mark.timeout(120)
def test_a_give_up_during_a_test_is_reported_at_its_teardown(tmp_path: Path) -> None:
    report = _run_pytest(tmp_path, {"test_gives_up.py": GIVES_UP})
    assert "3 passed, 3 errors in" in report, report
    for test in ("test_entered", "test_started", "test_anyio_started"):
        assert f"test_gives_up.py::{test} - conngrpc.errors.SupervisorGaveUpError" in report
