"""What the garbage collector would free: for tests that a stopped pool leaves nothing
to it (grpc objects kept only by reference cycles are freed at the collector's whim)."""

from __future__ import annotations

import contextlib
import gc
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The collector runs neither in the block nor during it: the cycles made there wait
    for :func:`grpc_garbage`. What earlier tests left is collected first."""
    was_enabled = gc.isenabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # an earlier test's to report
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def grpc_garbage() -> list[str]:
    """grpc's objects that a collection now frees (objects only cycles kept), each with
    what held it; then frees them."""
    flags, earlier = gc.get_debug(), gc.garbage[:]
    del gc.garbage[:]
    gc.set_debug(flags | gc.DEBUG_SAVEALL)  # what the collection finds is kept for us
    try:
        gc.collect()
        garbage = gc.garbage[:]
    finally:
        gc.set_debug(flags)
        gc.garbage[:] = earlier
    found = [
        f"{_describe(thing)} held by {_holders(thing, garbage)}"
        for thing in garbage
        if type(thing).__module__.partition(".")[0] == "grpc"
    ]
    del garbage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()  # unreachable again, they go now
    return found


def _holders(thing: object, garbage: list[Any], depth: int = 3) -> str:
    """What in ``garbage`` refers to ``thing``, and (for what is not a frame) to those."""
    inside = {id(other) for other in garbage}
    holders = [
        holder
        for holder in gc.get_referrers(thing)
        if id(holder) in inside and holder is not garbage
    ][:4]
    parts = []
    for holder in holders:
        text = _describe(holder)
        if depth > 1 and not isinstance(holder, types.FrameType):
            text += f" <- ({_holders(holder, garbage, depth - 1)})"
        parts.append(text)
    return ", ".join(parts) or "nothing in the garbage"


def _describe(thing: object) -> str:
    if isinstance(thing, types.FrameType):
        code = thing.f_code
        return f"frame {code.co_name} ({Path(code.co_filename).name}:{thing.f_lineno})"
    kind = type(thing)
    return f"{kind.__module__}.{kind.__qualname__}"
