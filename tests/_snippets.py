"""The README's Python snippets, and a runner that runs one as a new user would.

``python -m tests._snippets FILE`` runs FILE (one snippet, its addresses already
pointed at a test server) with the stand-ins a snippet leaves to its reader ("your
generated stub") defined, and top-level ``await`` allowed, as in ``python -m asyncio``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from conngrpc._server import PEER_METHOD
from conngrpc.channel.connector import raw_unary

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Snippet:
    line: int  # where its code starts in the README
    code: str

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def snippets(text: str) -> list[Snippet]:
    """Every fenced ``python`` block of ``text``, with the line its code starts on."""
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start(1)) + 1
        found.append(Snippet(line, match.group(1)))
    return found


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

    async def GetItem(self, request: bytes) -> bytes:
        peer = await self._peer(request, timeout=5)
        print(f"stub call answered by the server, which saw {peer.decode()}")
        return peer


class SyncInventoryStub:
    """:class:`InventoryStub` on a grpc sync channel: its calls block."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._peer = channel.unary_unary(PEER_METHOD)

    def GetItem(self, request: bytes) -> bytes:
        peer: bytes = self._peer(request, timeout=5)
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


def run(path: str) -> None:
    code = Path(path).read_text()
    compiled = compile(code, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__main__", **STAND_INS}
    result = eval(compiled, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    print("snippet ran to the end")


if __name__ == "__main__":
    run(sys.argv[1])
