"""Task groups and tasks for conngrpc's own work (private)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

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


#: The detached tasks running on asyncio: the loop keeps only weak references to tasks.
_detached: set[asyncio.Task[None]] = set()


def spawn_detached(run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
    """Run ``run()`` in a new task that no task group owns, on asyncio or trio.

    For what must outlive the task that starts it: a :class:`~conngrpc.Supervisor`
    entered in one task and left in another (pytest-asyncio sets a fixture up and tears
    it down in two tasks) holds its task group in a task of its own. ``run`` must not
    raise, and whoever spawned it must wait for its end; it runs in a copy of the
    caller's context variables, as a task group's tasks do.
    """
    if anyio.get_cancelled_exc_class() is asyncio.CancelledError:  # anyio's backend check
        # No task group can own a task that must live across its starter's end, so this
        # is a plain asyncio task (see above). It copies the caller's context itself.
        task = asyncio.get_running_loop().create_task(run(), name=name)
        _detached.add(task)
        task.add_done_callback(_detached.discard)
    else:
        import trio  # the only other anyio backend; imported only when it runs

        # A system task: trio's task that no nursery of the program owns.
        trio.lowlevel.spawn_system_task(run, name=name, context=contextvars.copy_context())
