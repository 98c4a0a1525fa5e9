"""Task groups for conngrpc's own tasks (private)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group that lets its body's own exception out as it is.

    anyio wraps an exception of the body in an exception group; a supervisor should
    see the crash itself. The tasks conngrpc starts in these groups never raise, so a
    group of one is the body's exception.
    """
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as wrapped:
        if len(wrapped.exceptions) != 1:
            raise
        crash = wrapped.exceptions[0]
        raise crash from crash.__cause__


async def reraise_if_cancelled() -> None:
    """Call where a ``CancelledError`` was caught from a grpc.aio call.

    grpc.aio raises a bare ``asyncio.CancelledError`` from a call it cancelled itself
    (its channel closed under it, say), which is no cancellation of ours. A real one
    comes from an anyio cancel scope, and anyio delivers it again at the next
    checkpoint: this checkpoint raises it, and returns when the error was grpc's alone.
    """
    await anyio.lowlevel.checkpoint()
