"""Every Python snippet of the README and of every page under docs/ runs, as written,
against a real server.

Only the addresses change: each placeholder address points at a gRPC server on
127.0.0.1, and a server a snippet opens for others to reach (Prometheus' scrape
endpoint) listens on 127.0.0.1, on a port the system picks. Each snippet runs in its own
interpreter, as a reader would paste it. The few blocks that another test runs are
listed, with that test and why, in one place: ``tests._snippets.RUN_ELSEWHERE``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from tests._snippets import (
    PYTHON,
    ROOT,
    RUN_ELSEWHERE,
    Snippet,
    addresses,
    all_blocks,
    all_snippets,
    run_elsewhere,
    snippets,
)

pytestmark = pytest.mark.anyio

#: The pages' placeholder addresses, each pointed at the test server; the fake
#: connector's and the mock's addresses are never dialled.
PLACEHOLDERS = {"inventory.internal:50051", "billing:443", "backend:50051"}
NEVER_DIALLED = {"fake:1", "unused:1"}

#: What changes in a snippet besides its addresses: a server it opens for others to reach
#: listens on loopback, on a free port.
REWRITES = {"start_http_server(9464)": 'start_http_server(0, addr="127.0.0.1")'}

#: A snippet that only defines the hooks a server calls is followed by the calls that
#: server makes, so that the hooks run too. gunicorn's: in a worker, after the fork, then
#: at its exit. uvicorn's: the lifespan around a request to the endpoint.
HOOK_CALLS = {
    "def post_fork(server, worker):": (
        "post_fork(None, None)\nInventoryPool.wait_connected(timeout=10)\nworker_exit(None, None)\n"
    ),
    "async def lifespan(app: FastAPI):": (
        "async with lifespan(app):\n"
        "    await InventoryPool.wait_connected(timeout=10)\n"
        "    print(await get_item('42'))\n"
    ),
}

#: The Python blocks of each page: a page that loses one (or gains one) fails here, so a
#: snippet cannot drop out of the test unseen.
SNIPPETS_PER_PAGE = {
    "README.md": 1,
    "docs/index.md": 1,
    "docs/getting-started.md": 2,
    "docs/guide/deploying.md": 3,
    "docs/guide/failures.md": 2,
    "docs/guide/pools.md": 2,
    "docs/guide/replicas.md": 1,
    "docs/guide/settings.md": 1,
    "docs/guide/supervision.md": 1,
    "docs/guide/testing.md": 6,
    "docs/guide/threads.md": 2,
    "docs/reliability.md": 2,
    "docs/telemetry.md": 6,
}

SNIPPETS = all_snippets()
RUN_HERE = [snippet for snippet in SNIPPETS if run_elsewhere(snippet) is None]
RUN_BY_ANOTHER_TEST = [snippet for snippet in SNIPPETS if run_elsewhere(snippet) is not None]


def test_every_page_has_its_snippets() -> None:
    assert dict(Counter(snippet.page for snippet in SNIPPETS)) == SNIPPETS_PER_PAGE


#: The languages of the pages' blocks that are not Python, so not run. A block in any
#: other language, or in none, fails: a Python block must say so to be run.
NOT_PYTHON = {"sh", "text", "yaml", "toml"}


def test_every_block_names_a_language_the_test_knows() -> None:
    unknown = [
        f"{block.id} ({block.language or 'no language'})"
        for block in all_blocks()
        if block.language not in PYTHON | NOT_PYTHON
    ]
    assert not unknown, f"label these python (they run) or one of {sorted(NOT_PYTHON)}: {unknown}"


def test_every_python_fence_is_found() -> None:
    page = (
        "# A page\n"
        "```py\na = 1\n```\n"
        "- an item:\n\n    ```python\n    b = 2\n\n    c = 3\n    ```\n"
        "!!! note\n    ~~~~{.python .annotate}\n    d = 4\n    ```\n    ~~~~\n"
        '```python title="e.py"\ne = 5\n```\n'
        "````text\n```python\nnot = code\n```\n````\n"
    )
    assert [(s.line, s.code) for s in snippets(page)] == [
        (3, "a = 1\n"),
        (8, "b = 2\n\nc = 3\n"),
        (14, "d = 4\n```\n"),
        (18, "e = 5\n"),
    ]


def test_every_rewrite_and_hook_call_applies_to_a_snippet() -> None:
    for marker in [*REWRITES, *HOOK_CALLS]:
        assert any(marker in snippet.code for snippet in RUN_HERE), marker


@pytest.mark.parametrize("snippet", RUN_BY_ANOTHER_TEST, ids=lambda s: s.id)
def test_a_snippet_not_run_here_is_run_by_the_test_named_for_it(snippet: Snippet) -> None:
    entry = run_elsewhere(snippet)
    assert entry is not None
    assert entry.reason
    path, name = entry.test.split("::")
    source = (ROOT / path).read_text()
    assert f"def {name}(" in source, f"{snippet.id}: {entry.test} does not exist"
    assert entry.page in source, f"{entry.test} does not read {entry.page}"


def test_every_entry_of_run_elsewhere_covers_a_snippet() -> None:
    for entry in RUN_ELSEWHERE:
        assert any(entry.covers(snippet) for snippet in SNIPPETS), entry


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
def test_every_address_in_a_snippet_is_a_known_placeholder(snippet: Snippet) -> None:
    assert addresses(snippet.code) <= PLACEHOLDERS | NEVER_DIALLED


def as_run(snippet: Snippet, address: str) -> str:
    """The snippet's code as the test runs it: addresses pointed at ``address``, the
    rewrites made, the hooks it defines called."""
    code = snippet.code
    for placeholder in PLACEHOLDERS:
        code = code.replace(f'"{placeholder}"', f'"{address}"')
    for before, after in REWRITES.items():
        code = code.replace(before, after)
    for marker, calls in HOOK_CALLS.items():
        if marker in code:
            code += "\n" + calls
    return code


@pytest.mark.parametrize("snippet", RUN_HERE, ids=lambda s: s.id)
async def test_the_snippet_runs_against_a_real_server(
    snippet: Snippet, grpc_server: tuple[object, str], tmp_path: Path
) -> None:
    _, address = grpc_server
    code = as_run(snippet, address)
    path = tmp_path / f"snippet_{snippet.line}.py"
    path.write_text(code)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests._snippets", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )

    result = await anyio.to_thread.run_sync(run)
    assert result.returncode == 0, f"{snippet.id}\n{code}\n{result.stdout}\n{result.stderr}"
    assert "snippet ran to the end" in result.stdout
    if "Stub(" in snippet.code and "GetItem" in snippet.code:
        assert "stub call answered by the server" in result.stdout
