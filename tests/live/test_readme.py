"""Every Python snippet of the README runs, as written, against a real server.

Only the addresses change: each placeholder address points at a gRPC server on
127.0.0.1. Each snippet runs in its own interpreter, as a reader would paste it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests._snippets import README, Snippet, addresses, snippets

pytestmark = pytest.mark.anyio

#: The README's placeholder addresses, each pointed at the test server; the fake
#: connector's and the mock's addresses are never dialled.
PLACEHOLDERS = {"inventory.internal:50051", "billing:443", "backend:50051"}
NEVER_DIALLED = {"fake:1", "unused:1"}

SNIPPETS = snippets(README.read_text())


def test_the_readme_has_its_snippets() -> None:
    assert len(SNIPPETS) >= 10


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
def test_every_address_in_a_snippet_is_a_known_placeholder(snippet: Snippet) -> None:
    assert addresses(snippet.code) <= PLACEHOLDERS | NEVER_DIALLED


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
async def test_the_snippet_runs_against_a_real_server(
    snippet: Snippet, grpc_server: tuple[object, str], tmp_path: Path
) -> None:
    _, address = grpc_server
    code = snippet.code
    for placeholder in PLACEHOLDERS:
        code = code.replace(f'"{placeholder}"', f'"{address}"')
    path = tmp_path / f"snippet_{snippet.line}.py"
    path.write_text(code)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests._snippets", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=README.parent,
        )

    result = await anyio.to_thread.run_sync(run)
    assert result.returncode == 0, f"{snippet.id}\n{code}\n{result.stdout}\n{result.stderr}"
    assert "snippet ran to the end" in result.stdout
    if "Stub(" in snippet.code and "GetItem" in snippet.code:
        assert "stub call answered by the server" in result.stdout
