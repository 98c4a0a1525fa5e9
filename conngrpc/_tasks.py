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
