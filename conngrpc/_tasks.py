"""Task groups and tasks for conngrpc's own work (private)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from exceptiongroup import BaseExceptionGroup
    from typing_extensions import TypeVarTuple, Unpack

PosArgs = TypeVarTuple("PosArgs")


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


async def clearing_frames(
    func: Callable[[Unpack[PosArgs]], Awaitable[object]], *args: Unpack[PosArgs]
) -> None:
    """Run ``func(*args)``; should it raise, clear the frames it raised through first.

    For a task that holds a grpc channel: ``tasks.start_soon(clearing_frames, func,
    channel)``. A frame keeps its local variables (the channel, and grpc.aio's own
    ``wait_for_state_change(self)`` the channel too) for as long as a traceback holds
    it, and anyio's asyncio task group keeps a cancelled task's ``CancelledError`` in a
    reference cycle (its ``task_done`` callback's frame holds the error, whose traceback
    holds that frame). The channel would then be freed by the garbage collector, at any
    later time: after its event loop closed, or in a forked child. With the frames
    cleared (a traceback still shows every line) it goes when its owner lets it go.

    Pass what the task holds as arguments, not through a closure: a cleared frame still
    refers to its function, and so to the function's closure.
    """
    running = func(*args)
    del func, args  # this frame is in the traceback too, and cannot be cleared running
    try:
        await running
    except BaseException as error:
        clear_frames(error)
        raise


def clear_frames(error: BaseException) -> None:
    """Clear the local variables of the frames ``error`` and the exceptions chained to it
    (causes, contexts, members of a group) were raised through; a frame still running
    keeps its own."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


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
