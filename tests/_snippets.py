"""The Python snippets of the README and of every page under docs/, and a runner that
runs one as a new user would.

``python -m tests._snippets FILE`` runs FILE (one snippet, its addresses already
pointed at a test server) with the stand-ins a snippet leaves to its reader ("your
generated stub", the modules grpc's code generator writes) defined, and top-level
``await`` allowed, as in ``python -m asyncio``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from conngrpc._server import PEER_METHOD
from conngrpc.channel.connector import raw_unary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


#: The languages of a fenced block that is Python, which runs as a test.
PYTHON = frozenset({"python", "py", "python3", "py3"})


@dataclass(frozen=True)
class Snippet:
    page: str  # the page's path from the top of the tree: "docs/guide/pools.md"
    line: int  # where its code starts on the page
    code: str
    language: str = "python"  # the first word of the fence's info string

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


_FENCE = re.compile(r"(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)")


def fenced_blocks(text: str, page: str = "README.md") -> list[Snippet]:
    """Every fenced code block of ``text``, whatever its fence (backticks or tildes, three
    or more), its indentation (in a list or an admonition, which superfences renders) or
    its info string (``py``, ``{.python}``, ``python title="x"``), with the line its code
    starts on; the code is dedented by the fence's indentation."""
    lines = text.splitlines(keepends=True)
    found = []
    i = 0
    while i < len(lines):
        opening = _FENCE.fullmatch(lines[i].rstrip("\r\n"))
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*")
        info = opening["info"].strip().lstrip("{").split()
        language = info[0].lstrip(".").lower() if info else ""
        end = i + 1
        while end < len(lines) and not closing.fullmatch(lines[end].rstrip("\r\n")):
            end += 1
        code = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        found.append(Snippet(page, i + 2, "".join(code), language))
        i = end + 1
    return found


def snippets(text: str, page: str = "README.md") -> list[Snippet]:
    """Every fenced Python block of ``text``, with the line its code starts on."""
    return [block for block in fenced_blocks(text, page) if block.language in PYTHON]


def pages() -> list[Path]:
    """The README and every page of the site (docs/**/*.md)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def page_snippets(path: Path) -> list[Snippet]:
    return snippets(path.read_text(), path.relative_to(ROOT).as_posix())


def all_blocks() -> list[Snippet]:
    """Every fenced block of every page, Python or not."""
    return [
        block
        for path in pages()
        for block in fenced_blocks(path.read_text(), path.relative_to(ROOT).as_posix())
    ]


def all_snippets() -> list[Snippet]:
    return [snippet for path in pages() for snippet in page_snippets(path)]


@dataclass(frozen=True)
class RunElsewhere:
    """Blocks of ``page`` that contain ``marker`` run in ``test``, not here, for ``reason``."""

    page: str
    marker: str
    test: str  # "tests/file.py::test_name"
    reason: str

    def covers(self, snippet: Snippet) -> bool:
        return snippet.page == self.page and self.marker in snippet.code


#: The one list of blocks that the snippet runner does not run itself, each with the test
#: that runs it instead and why. Every other block of every page runs as written.
RUN_ELSEWHERE = [
    RunElsewhere(
        page="docs/guide/testing.md",
        marker="def test_",
        test="tests/test_testing_your_code.py::test_the_test_files_of_docs_testing_md_pass_as_written",
        reason="each is a whole pytest file, run by pytest with its plugins (pytest-asyncio, "
        "anyio's), not as a script",
    ),
]


def run_elsewhere(snippet: Snippet) -> RunElsewhere | None:
    """The entry of :data:`RUN_ELSEWHERE` that covers ``snippet``, if one does."""
    return next((entry for entry in RUN_ELSEWHERE if entry.covers(snippet)), None)


def addresses(code: str) -> set[str]:
    """The ``host:port`` string literals of a snippet."""
    strings = (
        [
            n.value
            for n in ast.walk(ast.parse(code, mode="exec", type_comments=False))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        if _parses(code)
        else []
    )
    return {s for s in strings if re.fullmatch(r"[\w.-]+:\d+", s)}


def _parses(code: str) -> bool:
    try:
        compile(code, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return True


# --- what a snippet leaves to its reader ------------------------------------------------------


class InventoryStub:
    """Stands in for "your generated stub": each method makes a real call on the channel
    (a grpc sync channel's stub, conngrpc.sync's, blocks: :class:`SyncInventoryStub`)."""

    def __new__(cls, channel: grpc.aio.Channel | grpc.Channel) -> Any:
        if isinstance(channel, grpc.aio.Channel):
            return super().__new__(cls)
        return SyncInventoryStub(channel)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._peer = raw_unary(channel, PEER_METHOD)

    async def GetItem(self, request: bytes, timeout: float = 5, **options: Any) -> bytes:
        # a generated stub's method takes grpc's call options: the deadline and the rest
        peer = await self._peer(request, timeout=timeout, **options)
        print(f"stub call answered by the server, which saw {peer.decode()}")
        return peer


class SyncInventoryStub:
    """:class:`InventoryStub` on a grpc sync channel: its calls block."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._peer = channel.unary_unary(PEER_METHOD)

    def GetItem(self, request: bytes, timeout: float = 5, **options: Any) -> bytes:
        peer: bytes = self._peer(request, timeout=timeout, **options)
        print(f"stub call answered by the server, which saw {peer.decode()}")
        return peer


def GetItemRequest(id: str) -> bytes:
    return id.encode()


STAND_INS: dict[str, Any] = {
    "InventoryStub": InventoryStub,
    "BillingStub": InventoryStub,
    "GetItemRequest": GetItemRequest,
    "my_fake_channel": object(),
}

#: The modules grpc's code generator writes for ``inventory.proto``, which a snippet
#: imports as a reader's program would.
STAND_IN_MODULES: dict[str, dict[str, Any]] = {
    "inventory_pb2": {"GetItemRequest": GetItemRequest},
    "inventory_pb2_grpc": {"InventoryStub": InventoryStub},
}


def _install_stand_in_modules() -> None:
    for name, attributes in STAND_IN_MODULES.items():
        module = types.ModuleType(name, "stands in for grpc_tools.protoc's output")
        module.__dict__.update(attributes)
        sys.modules[name] = module


def run(path: str) -> None:
    code = Path(path).read_text()
    compiled = compile(code, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    _install_stand_in_modules()
    namespace: dict[str, Any] = {"__name__": "__main__", **STAND_INS}
    result = eval(compiled, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    print("snippet ran to the end")


if __name__ == "__main__":
    run(sys.argv[1])
