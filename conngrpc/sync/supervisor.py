"""conngrpc.sync.Supervisor: the supervision tree of conngrpc, run on a thread of its own.

It is :class:`conngrpc.Supervisor`, with the same children, strategies and restart
intensity, run by an asyncio event loop on a background thread that it starts and stops;
its methods block the calling thread until the loop has done what they ask. Use it as a
``with`` block, or :meth:`Supervisor.start` and :meth:`Supervisor.stop` from a
framework's start-up and shut-down hooks::

    with sync.Supervisor([DemoPool]):
        DemoPool.wait_connected()
        ...

The thread runs the pools' workers and one task that reads the state of their channels
(see :mod:`conngrpc.sync.channel`): whatever the pools' sizes, a sync supervisor adds
one thread of its own to grpc's, plus a worker thread now and then for the
``on_connect`` / ``on_disconnect`` callbacks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Literal, TypeVar

import anyio

from ..errors import SupervisorNotRunningError
from ..supervisor import ChildCounts, ChildInfo, ChildSpec
from ..supervisor import Supervisor as AsyncSupervisor
from ..supervisor.spec import ChildSource
from ..supervisor.supervisor import StopOrder, Strategy
from . import fork
from .channel import Watcher

__all__ = ["Supervisor", "forget_after_fork"]

T = TypeVar("T")

_running: weakref.WeakSet[Supervisor] = weakref.WeakSet()


class Supervisor:
    """A :class:`conngrpc.Supervisor` on a background thread, for threaded programs.

    Takes the same arguments but ``clock``; the children (``conngrpc.sync.Pool``
    classes, their ``child_spec()``, any :class:`~conngrpc.ChildSpec`) run on the
    supervisor's own event loop. What differs from the asyncio one: a ``with`` block
    instead of ``async with``, :meth:`start` and :meth:`stop` instead of ``start()``
    and ``aclose()``, and methods that block the calling thread until the supervisor
    has done the work (from any thread but its own: from a pool's callback they raise
    ``RuntimeError``); a give-up stops the children at once but is raised only by
    :meth:`stop` (leaving the block), as there is no block body to cancel; it has no
    ``child_spec()``, so it is not nested.

    It runs once: :meth:`start` (or entering the block) starts the thread and the
    children, left to right, and returns once all have started; :meth:`stop` (or leaving
    the block) stops them, right to left, each pool letting its calls in flight finish
    within its channels' ``shutdown_grace``, and ends the thread. A supervisor
    still running when the interpreter exits is stopped then.

    :raises ValueError: a bad strategy, stop order, intensity or name.
    :raises DuplicateChildError: a child id repeats in ``children``.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec | ChildSource] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        stop_order: StopOrder = "right_to_left",
    ) -> None:
        self._supervisor = AsyncSupervisor(
            children,
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            name=name,
            stop_order=stop_order,
        )
        #: the name given, else ``"supervisor-N"``; errors, logs and telemetry use it
        self.name: str = self._supervisor.name
        self._state: Literal["new", "running", "stopped"] = "new"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<conngrpc.sync.Supervisor {self.name!r} {self._state}>"

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> Supervisor:
        """Start the thread and the children, left to right; return once all started.

        :raises RuntimeError: it was started (or stopped) before: it runs once; or this
            process is a child forked while its parent's pools ran, where grpc cannot
            be used (the message says why).
        :raises ChildStartError: a child failed to start (the cause is chained); the
            children started before it were stopped again, and the thread ended.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(
                    f"conngrpc.sync supervisor {self.name!r} can be started only once"
                )
            fork.check_usable()
            self._state = "running"
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._main, args=(started,), name=f"conngrpc.sync {self.name}", daemon=True
        )
        self._thread = thread
        thread.start()
        try:
            started.result()
        except BaseException:
            thread.join()
            self._state = "stopped"
            raise
        _running.add(self)
        return self

    def stop(self) -> None:
        """Stop the children, right to left, and end the thread; return once it ended.

        Stopped again, or never started, it does nothing more.

        :raises SupervisorGaveUpError: it had given up (a child restarted more than
            ``max_restarts`` times within ``max_seconds``; the last crash is chained).
        :raises RuntimeError: called from the supervisor's own thread (a callback of a
            pool it runs), where it would wait for itself.
        """
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        _running.discard(self)
        thread, loop, stop_asked = self._thread, self._loop, self._stop_asked
        assert thread is not None
        assert loop is not None
        assert stop_asked is not None
        if threading.current_thread() is thread:
            raise RuntimeError(
                f"conngrpc.sync supervisor {self.name!r}: stop() was called from its own "
                "thread (a pool's callback), where it would wait for itself"
            )
        if os.getpid() == self._pid:
            loop.call_soon_threadsafe(stop_asked.set)
            thread.join()
        if self._failure is not None:
            raise self._failure

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        """The thread: the event loop that runs the supervisor and the state watcher."""
        anyio.run(self._serve, started, backend="asyncio")

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_asked = asyncio.Event()
        async with anyio.create_task_group() as group:
            await group.start(Watcher().run)
            try:
                await self._supervisor.start()
            except BaseException as error:
                started.set_exception(error)
                group.cancel_scope.cancel()
                return
            started.set_result(None)
            await self._stop_asked.wait()
            try:
                await self._supervisor.aclose()
            except Exception as error:
                self._failure = error
            group.cancel_scope.cancel()

    # --- the children ----------------------------------------------------------------

    def _call(self, call: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run()`` on the supervisor's loop; what it returns or raises."""
        thread, loop = self._thread, self._loop
        if self._state != "running" or thread is None or loop is None:
            raise SupervisorNotRunningError(
                self.name,
                f"{call} needs it running: 'with conngrpc.sync.Supervisor(...)', or start()",
            )
        if threading.current_thread() is thread:
            raise RuntimeError(
                f"conngrpc.sync supervisor {self.name!r}: {call} was called from its own "
                "thread (a pool's callback), where it would wait for itself"
            )

        async def run_it() -> T:
            return await run()

        return asyncio.run_coroutine_threadsafe(run_it(), loop).result()

    def start_child(self, child: ChildSpec | ChildSource) -> object:
        """Add a child at the right end and start it; return the value it passed to
        ``started``.

        :raises DuplicateChildError: a child with that id is held already.
        :raises ChildStartError: it failed before ``started`` (the cause is chained).
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        return self._call("start_child", lambda: self._supervisor.start_child(child))

    def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child without restarting it; its spec stays (a temporary one is dropped).

        As :meth:`conngrpc.Supervisor.terminate_child`, whose errors it raises.
        """
        self._call("terminate_child", lambda: self._supervisor.terminate_child(child_id))

    def restart_child(self, child_id: Hashable) -> object:
        """Start a terminated child again; return the value it passed to ``started``.

        As :meth:`conngrpc.Supervisor.restart_child`, whose errors it raises.
        """
        return self._call("restart_child", lambda: self._supervisor.restart_child(child_id))

    def delete_child(self, child_id: Hashable) -> None:
        """Forget the spec of a terminated child.

        As :meth:`conngrpc.Supervisor.delete_child`, whose errors it raises.
        """
        self._call("delete_child", lambda: self._supervisor.delete_child(child_id))

    def which_children(self) -> list[ChildInfo]:
        """Every child held, in start order, with its state and value."""
        return self._call("which_children", _now(self._supervisor.which_children))

    def count_children(self) -> ChildCounts:
        """How many specs are held, how many run, and how many of each type."""
        return self._call("count_children", _now(self._supervisor.count_children))


def _now(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def run() -> T:
        return read()

    return run


def forget_after_fork() -> None:
    """A forked child's: the parent's running supervisors stayed there (their threads
    did); here they count as stopped."""
    for running in list(_running):
        running._state = "stopped"
        running._failure = None
    _running.clear()


@atexit.register
def _stop_running() -> None:
    """At exit, stop the sync supervisors still running: their pools drain and close."""
    for supervisor in list(_running):
        with contextlib.suppress(Exception):  # the program ends; its own errors came first
            supervisor.stop()
