"""The supervisor: runs children in an anyio task group and restarts them as OTP does."""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import telemetry
from .._log import get_logger
from ..errors import (
    ChildStartError,
    ChildStateError,
    DuplicateChildError,
    StrayCancellationError,
    SupervisorGaveUpError,
    SupervisorNotRunningError,
    UnknownChildError,
)
from .intensity import Clock, RestartIntensity
from .spec import ChildSource, ChildSpec, ChildType, RestartType, to_child_spec

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["ChildCounts", "ChildInfo", "Strategy", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

CHILD_STARTED = ("conngrpc", "supervisor", "child_started")
CHILD_RESTARTED = ("conngrpc", "supervisor", "child_restarted")
CHILD_TERMINATED = ("conngrpc", "supervisor", "child_terminated")
GAVE_UP = ("conngrpc", "supervisor", "gave_up")

_log = get_logger("conngrpc.supervisor")
_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child as :meth:`Supervisor.which_children` reports it.

    ``value`` is what the running child passed to ``task_status.started`` (None when
    it is not running).
    """

    id: Hashable
    type: ChildType
    restart: RestartType
    running: bool
    value: object


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """OTP's ``count_children``: specs held, children running, and specs by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


class _Run:
    """One incarnation of a child: its task's cancel scope, readiness and end.

    It is also the ``task_status`` the child's start function receives.
    """

    __slots__ = ("done", "error", "scope", "settled", "started_", "stopping", "task", "value")

    def __init__(self) -> None:
        # Shielded, so that only the supervisor stops a child: an outer cancellation
        # reaches the supervisor, which then stops its children right to left.
        self.scope = anyio.CancelScope(shield=True)
        self.settled = anyio.Event()  # set on started() or on exit, whichever comes first
        self.done = anyio.Event()  # set when the child's task has ended
        self.started_ = False
        self.stopping = False  # the supervisor cancelled it: its end is no crash
        self.value: object = None
        self.error: Exception | None = None
        self.task: int | None = None  # the id of the anyio task that runs it

    def started(self, value: object = None) -> None:
        if self.started_:
            raise RuntimeError("task_status.started() was called twice")
        self.started_ = True
        self.value = value
        self.settled.set()


class _Child:
    """A spec the supervisor holds, and its current run (None when not running)."""

    __slots__ = ("run", "spec")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.run: _Run | None = None


_Exit = tuple[_Child, _Run, "Exception | None"]


class Supervisor:
    """An OTP-style supervisor on an anyio task group.

    ``async with Supervisor(children) as sup`` starts the children left to right, each
    awaited until it calls ``task_status.started``, and leaving the block stops them right
    to left, each cancelled and given at most its ``shutdown`` seconds.

    A child that exits is restarted according to its ``restart`` type and the
    ``strategy``: ``one_for_one`` restarts just that child; ``one_for_all`` stops all the
    others (right to left) and restarts them all (left to right); ``rest_for_one`` does the
    same for the child and those started after it. More than ``max_restarts`` restarts
    within ``max_seconds`` (counted for the whole supervisor) make it stop every child and
    raise :class:`SupervisorGaveUpError` out of the ``async with`` block, cancelling the
    block's body; run as another supervisor's child, that is a crash the parent handles.

    Example::

        async with Supervisor([ChildSpec("ticker", run_ticker)], name="app") as sup:
            await sup.start_child(ChildSpec("other", run_other))
            await anyio.sleep_forever()

    ``children`` may hold :class:`ChildSpec` objects or anything with a ``child_spec()``
    method. ``clock`` (seconds, monotonic) is injectable for deterministic tests.

    :raises ValueError: a bad strategy, intensity or name, or duplicate child ids.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec | ChildSource] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"Supervisor.strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Supervisor.name: expected a non-empty str or None, got {name!r}")
        self.name: str = name if name is not None else f"supervisor-{next(_names)}"
        self.strategy: Strategy = strategy
        self._intensity = RestartIntensity(max_restarts, max_seconds, clock)
        specs = [to_child_spec(child) for child in children]
        seen: set[Hashable] = set()
        for spec in specs:
            if spec.id in seen:
                raise DuplicateChildError(self.name, spec.id, running=False)
            seen.add(spec.id)
        self._initial = specs
        self._children: list[_Child] = []
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._failure: SupervisorGaveUpError | None = None
        self._tg: TaskGroup | None = None
        self._lock: anyio.Lock | None = None
        self._exits: MemoryObjectSendStream[_Exit] | None = None
        self._manager_scope: anyio.CancelScope | None = None
        self._manager_done: anyio.Event | None = None
        self._starting: set[_Run] = set()  # runs not yet started: stopping cancels them

    @classmethod
    def child_spec(
        cls,
        *,
        id: Hashable,
        children: Sequence[ChildSpec | ChildSource] = (),
        restart: RestartType = "permanent",
        shutdown: float = math.inf,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        clock: Clock = time.monotonic,
    ) -> ChildSpec:
        """A spec that runs a nested supervisor (``type="supervisor"``) as a child.

        Each start builds a fresh supervisor with a fresh restart count; the running
        :class:`Supervisor` is the child's value. The arguments are checked now.
        """
        specs = tuple(to_child_spec(child) for child in children)
        options: dict[str, Any] = {
            "strategy": strategy,
            "max_restarts": max_restarts,
            "max_seconds": max_seconds,
            "name": name if name is not None else str(id),
            "clock": clock,
        }
        cls(specs, **options)  # validate now, where the mistake was written

        async def run_supervisor(*, task_status: TaskStatus[Supervisor]) -> None:
            async with cls(specs, **options) as supervisor:
                task_status.started(supervisor)
                await anyio.sleep_forever()

        return ChildSpec(id, run_supervisor, restart, shutdown, "supervisor")

    def __repr__(self) -> str:
        counts = self.count_children()
        return (
            f"<Supervisor {self.name!r} {self._state} strategy={self.strategy} "
            f"specs={counts.specs} active={counts.active}>"
        )

    # --- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        if self._state != "new":
            raise RuntimeError(f"supervisor {self.name!r} can be entered only once")
        self._lock = anyio.Lock()
        send, receive = anyio.create_memory_object_stream[_Exit](math.inf)
        self._exits = send
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        try:
            await tg.start(self._manage, receive)
            async with self._lock:
                for spec in self._initial:
                    child = _Child(spec)
                    self._children.append(child)
                    await self._start(child)
        except BaseException as exc:
            await self._leave(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        suppress = await self._leave(exc_type, exc, tb)
        if self._failure is not None:
            raise self._failure
        return suppress

    async def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop the manager and every child (right to left), then leave the task group."""
        assert self._tg is not None
        assert self._lock is not None
        assert self._exits is not None
        self._state = "stopping"
        try:
            with anyio.CancelScope(shield=True):
                if self._manager_scope is not None:
                    self._manager_scope.cancel()
                    assert self._manager_done is not None
                    await self._manager_done.wait()
                for starting in list(self._starting):  # a start_child still waiting holds
                    starting.scope.cancel()  # the lock: its child will not be started now
                async with self._lock:
                    await self._stop_all()
        finally:
            self._exits.close()
            self._state = "stopped"
            try:
                suppress = await self._tg.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                # Children catch their own exceptions, so a group holding only the
                # block's own exception is anyio wrapping it: let it pass unwrapped.
                if exc is not None and group.exceptions == (exc,):
                    return False
                raise
        return suppress

    async def _manage(
        self, exits: MemoryObjectReceiveStream[_Exit], *, task_status: TaskStatus[None]
    ) -> None:
        """The supervisor's own task: handles child exits one at a time."""
        assert self._lock is not None
        self._manager_done = anyio.Event()
        try:
            with anyio.CancelScope() as self._manager_scope, exits:
                task_status.started()
                async for child, run, error in exits:
                    async with self._lock:
                        await self._handle_exit(child, run, error)
        finally:
            self._manager_done.set()

    # --- running one child -------------------------------------------------------

    async def _start(self, child: _Child) -> object:
        """Start ``child`` and wait until it calls ``started``; return its value.

        :raises ChildStartError: it raised or returned before calling ``started``.
        """
        assert self._tg is not None
        run = _Run()
        child.run = run
        begin = time.monotonic_ns()
        self._tg.start_soon(self._run_child, child, run, name=f"{self.name}/{child.spec.id!r}")
        self._starting.add(run)
        try:
            await run.settled.wait()
        except BaseException:
            await self._stop(child, run, reason="shutdown")
            raise
        finally:
            self._starting.discard(run)
        if not run.started_:
            child.run = None
            if run.error is not None:
                reason = f"{type(run.error).__name__}: {run.error}"
            elif run.scope.cancel_called:
                reason = "the supervisor stopped while the child was starting"
            else:
                reason = "it returned without calling task_status.started()"
            raise ChildStartError(self.name, child.spec.id, reason) from run.error
        telemetry.execute(
            CHILD_STARTED,
            {"duration": time.monotonic_ns() - begin},
            {"supervisor": self.name, "child_id": child.spec.id},
        )
        return run.value

    async def _run_child(self, child: _Child, run: _Run) -> None:
        """The child's task: runs its start function and reports how it ended."""
        error: Exception | None = None
        run.task = anyio.get_current_task().id
        try:
            with run.scope:
                try:
                    await child.spec.start(task_status=run)
                except Exception as exc:
                    error = exc
                except anyio.get_cancelled_exc_class() as exc:
                    if run.scope.cancel_called:
                        raise
                    # The run's scope is shielded, so no cancel scope asked for this one:
                    # grpc.aio raises a bare CancelledError from a call whose channel was
                    # closed. Left alone it would cancel the whole supervisor; it is a crash.
                    error = StrayCancellationError(self.name, child.spec.id)
                    error.__cause__ = exc
        finally:
            run.error = error
            run.done.set()
            run.settled.set()
        if run.stopping or not run.started_:
            return  # stopped by us, or a failed start that _start reports
        if error is not None:
            _log.error(
                "child crashed",
                supervisor=self.name,
                child_id=child.spec.id,
                exc_info=error,
            )
        assert self._exits is not None
        # When the supervisor is stopping, nobody restarts anything any more.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._exits.send_nowait((child, run, error))

    async def _stop(self, child: _Child, run: _Run, *, reason: str) -> None:
        """Cancel one run and wait at most its ``shutdown`` seconds for it to end."""
        run.stopping = True
        run.scope.cancel()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(child.spec.shutdown) as waited:
                await run.done.wait()
            if waited.cancelled_caught:
                # anyio cannot kill a task that ignores cancellation (OTP would kill it):
                # say so, and keep waiting, so that a child id never runs twice at once.
                _log.warning(
                    "child did not stop within its shutdown time; waiting for it",
                    supervisor=self.name,
                    child_id=child.spec.id,
                    shutdown=child.spec.shutdown,
                )
                await run.done.wait()
        if child.run is run:
            child.run = None
        telemetry.execute(
            CHILD_TERMINATED,
            {},
            {"supervisor": self.name, "child_id": child.spec.id, "reason": reason},
        )

    async def _stop_all(self) -> None:
        """Stop every running child, right to left."""
        for child in reversed(self._children):
            if child.run is not None:
                await self._stop(child, child.run, reason="shutdown")

    # --- restart policy ----------------------------------------------------------

    async def _handle_exit(self, child: _Child, run: _Run, error: Exception | None) -> None:
        if child.run is not run:
            return  # that run was stopped or replaced while its exit was queued
        child.run = None
        spec = child.spec
        telemetry.execute(
            CHILD_TERMINATED,
            {},
            {
                "supervisor": self.name,
                "child_id": spec.id,
                "reason": "normal" if error is None else "crash",
                "error": error,
            },
        )
        # As in OTP, a supervisor that gave up exits with reason shutdown: no abnormal
        # exit, so a transient one is not restarted.
        abnormal = error is not None and not isinstance(error, SupervisorGaveUpError)
        if spec.restart == "temporary" or (spec.restart == "transient" and not abnormal):
            if spec.restart == "temporary":
                self._children.remove(child)
            return
        await self._restart(child, error)

    async def _restart(self, crashed: _Child, error: Exception | None) -> None:
        """Restart ``crashed`` (and its siblings, by strategy) within the intensity."""
        index = self._children.index(crashed)
        if self.strategy == "one_for_one":
            siblings: list[_Child] = []
        elif self.strategy == "one_for_all":
            siblings = [c for c in self._children if c is not crashed and c.run is not None]
        else:
            siblings = [c for c in self._children[index + 1 :] if c.run is not None]
        for sibling in reversed(siblings):
            assert sibling.run is not None
            await self._stop(sibling, sibling.run, reason="shutdown")
            if sibling.spec.restart == "temporary":
                self._children.remove(sibling)
        group = [crashed, *(s for s in siblings if s.spec.restart != "temporary")]
        # delete_child may have removed a stopped sibling while this task awaited.
        group = [c for c in self._children if c in group]
        last_error: Exception | None = error
        while True:
            if not self._intensity.add_restart():
                await self._give_up(crashed, last_error)
                return
            try:
                for child in group:
                    if child.run is None and child in self._children:
                        await self._start(child)
                        telemetry.execute(
                            CHILD_RESTARTED,
                            {},
                            {
                                "supervisor": self.name,
                                "child_id": child.spec.id,
                                "error": last_error,
                            },
                        )
                return
            except ChildStartError as exc:
                _log.error(
                    "child failed to restart",
                    supervisor=self.name,
                    child_id=exc.child_id,
                    reason=exc.reason,
                )
                last_error = exc
                for child in reversed(group):
                    if child.run is not None:
                        await self._stop(child, child.run, reason="shutdown")

    async def _give_up(self, child: _Child, error: Exception | None) -> None:
        assert self._tg is not None
        failure = SupervisorGaveUpError(
            self.name, child.spec.id, self._intensity.max_restarts, self._intensity.max_seconds
        )
        failure.__cause__ = error
        _log.error(
            "supervisor gave up",
            supervisor=self.name,
            child_id=child.spec.id,
            max_restarts=self._intensity.max_restarts,
            max_seconds=self._intensity.max_seconds,
        )
        await self._stop_all()
        telemetry.execute(
            GAVE_UP,
            {"max_restarts": self._intensity.max_restarts},
            {"supervisor": self.name, "child_id": child.spec.id, "error": error},
        )
        self._failure = failure
        self._state = "stopping"
        self._tg.cancel_scope.cancel()

    # --- runtime API ---------------------------------------------------------------

    def _check_running(self) -> anyio.Lock:
        if self._state != "running" or self._lock is None:
            raise SupervisorNotRunningError(self.name)
        return self._lock

    @asynccontextmanager
    async def _running_lock(self) -> AsyncIterator[None]:
        """Hold the lock of a running supervisor (it may have stopped while we waited)."""
        async with self._check_running():
            self._check_running()
            yield

    def _find(self, child_id: Hashable) -> _Child:
        for child in self._children:
            if child.spec.id == child_id:
                return child
        raise UnknownChildError(self.name, child_id, [c.spec.id for c in self._children])

    async def start_child(self, child: ChildSpec | ChildSource) -> object:
        """Add a child at the right end and start it; return the value it passed to ``started``.

        :raises DuplicateChildError: a child with that id is held already.
        :raises ChildStartError: it raised or returned before ``started`` (the cause is
            chained); the supervisor goes on, without that child.
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        spec = to_child_spec(child)
        async with self._running_lock():
            for held in self._children:
                if held.spec.id == spec.id:
                    raise DuplicateChildError(self.name, spec.id, running=held.run is not None)
            new = _Child(spec)
            self._children.append(new)
            try:
                return await self._start(new)
            except BaseException:
                self._children.remove(new)
                raise

    async def terminate_child(self, child_id: Hashable) -> None:
        """Stop a child without restarting it; its spec stays (a temporary one is dropped).

        Terminating a child that is not running does nothing.

        :raises UnknownChildError: no child has that id.
        :raises ChildStateError: a child asked to terminate itself.
        """
        async with self._running_lock():
            child = self._find(child_id)
            if child.run is not None:
                if child.run.task == anyio.get_current_task().id:
                    raise ChildStateError(
                        self.name, child_id, "cannot terminate itself; let it return instead"
                    )
                await self._stop(child, child.run, reason="shutdown")
            if child.spec.restart == "temporary":
                self._children.remove(child)

    async def restart_child(self, child_id: Hashable) -> object:
        """Start a terminated child again; return the value it passed to ``started``.

        :raises UnknownChildError: no child has that id.
        :raises ChildStateError: the child is running (terminate it first).
        :raises ChildStartError: it failed before ``started``; its spec stays, terminated.
        """
        async with self._running_lock():
            child = self._find(child_id)
            if child.run is not None:
                raise ChildStateError(
                    self.name, child_id, "is running; terminate_child() it before restart_child()"
                )
            return await self._start(child)

    def delete_child(self, child_id: Hashable) -> None:
        """Forget the spec of a terminated child.

        :raises UnknownChildError: no child has that id.
        :raises ChildStateError: the child is running (terminate it first).
        """
        self._check_running()
        child = self._find(child_id)
        if child.run is not None:
            raise ChildStateError(
                self.name, child_id, "is running; terminate_child() it before delete_child()"
            )
        self._children.remove(child)

    def which_children(self) -> list[ChildInfo]:
        """Every child held, in start order, with whether it runs and its value."""
        return [
            ChildInfo(
                id=child.spec.id,
                type=child.spec.type,
                restart=child.spec.restart,
                running=child.run is not None,
                value=child.run.value if child.run is not None else None,
            )
            for child in self._children
        ]

    def count_children(self) -> ChildCounts:
        """How many specs are held, how many run, and how many of each type."""
        supervisors = sum(1 for c in self._children if c.spec.type == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=sum(1 for c in self._children if c.run is not None),
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )
