"""The supervisor: runs children in an anyio task group and restarts them as OTP does."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import telemetry
from .._log import get_logger
from .._tasks import spawn_detached
from ..errors import (
    ChildStartError,
    ChildStateError,
    DuplicateChildError,
    SupervisorGaveUpError,
    SupervisorNotRunningError,
    UnknownChildError,
)
from .child import Child, ChildCounts, ChildInfo, Run
from .intensity import Clock, RestartIntensity
from .spec import ChildSource, ChildSpec, RestartType, to_child_spec

__all__ = ["StopOrder", "Strategy", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
StopOrder = Literal["right_to_left", "all_at_once"]
STOP_ORDERS: tuple[str, ...] = get_args(StopOrder)

CHILD_STARTED = ("conngrpc", "supervisor", "child_started")
CHILD_RESTARTED = ("conngrpc", "supervisor", "child_restarted")
CHILD_TERMINATED = ("conngrpc", "supervisor", "child_terminated")
GAVE_UP = ("conngrpc", "supervisor", "gave_up")

_log = get_logger("conngrpc.supervisor")
_names = itertools.count(1)


_Exit = tuple[Child, Run]  # a run whose task has ended, and its child


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

    ``stop_order`` says how a group of children is stopped (on leaving, on giving up, and
    the siblings a ``one_for_all`` or ``rest_for_one`` restart stops): ``"right_to_left"``
    (OTP's order) waits for each child to end before it cancels the next;
    ``"all_at_once"`` cancels them all, right to left, then waits for each, as OTP's
    ``simple_one_for_one`` and Elixir's ``DynamicSupervisor`` do. Each child still gets
    its own ``shutdown`` seconds, counted from its cancellation. All at once suits many
    independent children (a pool's channels): the group stops in the time of its slowest
    child, not in the sum of all their times.

    The children run in a task of the supervisor's own, so the block may be left in
    another task than the one that entered it, as a pytest-asyncio fixture does (the body
    is then cancelled only where it was entered); :meth:`start` and :meth:`aclose` are
    the block's two halves, for a lifetime that no block spans.

    The runtime calls and the handling of each child's exit take turns, one at a time
    and in the order they came, as messages in an OTP supervisor's mailbox do.

    Example::

        async with Supervisor([ChildSpec("ticker", run_ticker)], name="app") as sup:
            await sup.start_child(ChildSpec("other", run_other))
            await anyio.sleep_forever()

    ``children`` may hold :class:`ChildSpec` objects or anything with a ``child_spec()``
    method. ``clock`` (seconds, monotonic) is injectable for deterministic tests.

    :raises ValueError: a bad strategy, stop order, intensity or name.
    :raises DuplicateChildError: a child id repeats in ``children``.
    """

    # Made by start(), on the event loop that they belong to.
    _ready: anyio.Event  # the supervisor's task runs its task group (or has ended)
    _stop_asked: anyio.Event  # leaving, or giving up: the supervisor's task stops every child
    _stopped: anyio.Event  # the supervisor's task has ended
    _body: anyio.CancelScope  # around the block's body

    def __init__(
        self,
        children: Iterable[ChildSpec | ChildSource] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        clock: Clock = time.monotonic,
        stop_order: StopOrder = "right_to_left",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"Supervisor.strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        if stop_order not in STOP_ORDERS:
            raise ValueError(
                f"Supervisor.stop_order: expected one of {', '.join(STOP_ORDERS)}, "
                f"got {stop_order!r}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Supervisor.name: expected a non-empty str or None, got {name!r}")
        #: the name given, else ``"supervisor-N"``; errors, logs and telemetry use it
        self.name: str = name if name is not None else f"supervisor-{next(_names)}"
        #: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``, as given
        self.strategy: Strategy = strategy
        #: ``"right_to_left"`` or ``"all_at_once"``, as given
        self.stop_order: StopOrder = stop_order
        self._intensity = RestartIntensity(max_restarts, max_seconds, clock)
        specs = [to_child_spec(child) for child in children]
        for child_id, times in Counter(spec.id for spec in specs).items():
            if times > 1:
                raise DuplicateChildError(self.name, child_id, "repeated", times)
        self._initial = specs
        self._children: list[Child] = []
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._failure: SupervisorGaveUpError | None = None
        self._tg: TaskGroup | None = None
        # Every change to the children happens while this is held: by a runtime call,
        # by the manager for one exit, by entering and by leaving. anyio's locks are
        # fair, so turns are taken in the order they were asked for.
        self._lock: anyio.Lock | None = None
        self._exits: MemoryObjectSendStream[_Exit] | None = None
        self._manager_scope: anyio.CancelScope | None = None
        self._leaving = False  # aclose, __aexit__ or a failed start asked it to stop
        self._crash: BaseException | None = None  # what broke the task group, if anything
        self._entered_by: object = None  # the coroutine of the task that entered

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
        stop_order: StopOrder = "right_to_left",
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
            "stop_order": stop_order,
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
    #
    # The task group that runs the children and the manager lives in a task of the
    # supervisor's own (``_run``), from start to close, so that it may be started in one
    # task and closed in another: pytest-asyncio sets a fixture up and tears it down in two
    # tasks. ``async with`` adds the cancel scope ``_body`` around the block's body, which
    # a give-up cancels.

    async def start(self) -> Supervisor:
        """Start the children left to right, each awaited until it is ready; return self.

        ``async with`` calls it, and :meth:`aclose` on the way out. Called directly, the
        pair may run in different tasks (a fixture set up in one task and torn down in
        another): the children run in a task of the supervisor's own until
        :meth:`aclose`, which must be called. Without a block, a give-up has no body to
        cancel: the supervisor stops its children and :meth:`aclose` raises.

        Example::

            sup = await Supervisor([DemoPool]).start()
            try:
                ...
            finally:
                await sup.aclose()

        :raises RuntimeError: it was started (or closed) before: a supervisor runs once.
        :raises ChildStartError: a child raised or returned before calling ``started``
            (the cause is chained); the children started before it are stopped again.
        """
        if self._state != "new":
            raise RuntimeError(f"supervisor {self.name!r} can be started only once")
        self._lock = anyio.Lock()
        send, receive = anyio.create_memory_object_stream[_Exit](math.inf)
        self._exits = send
        self._ready, self._stop_asked, self._stopped = anyio.Event(), anyio.Event(), anyio.Event()
        self._body = anyio.CancelScope()
        self._state = "running"
        spawn_detached(functools.partial(self._run, receive), name=f"supervisor {self.name}")
        try:
            await self._ready.wait()
            async with self._lock:
                for spec in self._initial:
                    child = Child(spec)
                    self._children.append(child)
                    await self._start(child)
        except BaseException:
            await self._stop_and_wait()
            raise
        return self

    async def aclose(self) -> None:
        """Stop every child, right to left, and wait until all have ended.

        What leaving the ``async with`` block does; see :meth:`start`. The wait is
        shielded from cancellation, so that no child outlives it. Closed again, it has
        nothing more to stop (and raises the same give-up); a supervisor never started is
        closed for good.

        :raises SupervisorGaveUpError: it had given up: a child was restarted more than
            ``max_restarts`` times within ``max_seconds`` (the last crash is chained).
        """
        if self._state == "new":
            self._state = "stopped"
            return
        await self._stop_and_wait()
        self._raise_failure()

    async def __aenter__(self) -> Supervisor:
        await self.start()
        self._entered_by = anyio.get_current_task().coro
        self._body.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._stop_and_wait()
        suppress: bool | None = None
        # Left in the task that entered, the block's cancel scope is left too. (A task's
        # id is reused once the task has gone; its coroutine, held here, is not.) Left in
        # another, the scope stays behind in the task that entered, which must not be
        # inside a cancel scope it leaves first: a pytest-asyncio fixture's set-up task
        # is not; start() and aclose() have no such rule.
        if anyio.get_current_task().coro is self._entered_by:
            suppress = self._body.__exit__(exc_type, exc, tb)
        self._raise_failure()
        return suppress

    async def _stop_and_wait(self) -> None:
        """Have the supervisor's task stop every child, and wait until it has ended."""
        self._leaving = True
        if self._state == "running":
            self._state = "stopping"  # turns asked for from now on are refused
        self._stop_asked.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    def _raise_failure(self) -> None:
        """Raise what ended the supervisor's task, if something other than closing did."""
        if self._failure is not None:
            raise self._failure
        if self._crash is not None:
            raise self._crash

    async def _run(self, exits: MemoryObjectReceiveStream[_Exit]) -> None:
        """The supervisor's own task: its task group, from start to close.

        It never raises (nothing would hear of it): what ended it is kept for ``aclose``
        and ``__aexit__``. Ended other than by closing (a give-up, a child's
        ``BaseException``), it cancels the block's body.
        """
        assert self._exits is not None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self._manage, exits)
                self._ready.set()
                try:
                    await self._stop_asked.wait()
                finally:
                    await self._stop_everything()
        except BaseException as crash:
            self._crash = crash
        finally:
            self._exits.close()
            self._state = "stopped"
            self._ready.set()
            self._stopped.set()
            if not self._leaving:
                self._body.cancel()

    async def _stop_everything(self) -> None:
        """Stop the manager, then every child (right to left)."""
        assert self._lock is not None
        self._state = "stopping"
        with anyio.CancelScope(shield=True):
            if self._manager_scope is not None:
                self._manager_scope.cancel()  # it lets go of the lock as it unwinds
            # A runtime call's turn may be waiting for a child to start: call it off.
            for child in self._children:
                if child.state == "starting" and child.run is not None:
                    child.run.scope.cancel()
            async with self._lock:
                await self._stop_all()

    async def _manage(
        self, exits: MemoryObjectReceiveStream[_Exit], *, task_status: TaskStatus[None]
    ) -> None:
        """The manager: handles each child's exit in a turn of its own."""
        assert self._lock is not None
        with anyio.CancelScope() as self._manager_scope, exits:
            task_status.started()
            async for child, run in exits:
                async with self._lock:
                    await self._handle_exit(child, run)

    # --- one child's life: terminated -> starting -> running -> stopping -> terminated

    async def _start(self, child: Child) -> object:
        """Start ``child`` and wait until it calls ``started``; return its value.

        :raises ChildStartError: it raised or returned before calling ``started``; the
            child is terminated again.
        """
        assert self._tg is not None
        assert child.state == "terminated"
        run = Run()
        child.state, child.run = "starting", run
        begin = time.monotonic_ns()
        self._tg.start_soon(self._run_child, child, run, name=f"{self.name}/{child.spec.id!r}")
        try:
            await run.ready.wait()
        except BaseException:  # the turn's owner was cancelled: the start is called off
            await self._stop(child)
            raise
        if not run.started_:
            self._terminated(child, shutdown=False)
            if run.error is not None:
                reason = f"{type(run.error).__name__}: {run.error}"
            elif self._state != "running":
                reason = "the supervisor stopped while the child was starting"
            else:
                reason = "it returned without calling task_status.started()"
            raise ChildStartError(self.name, child.spec.id, reason) from run.error
        child.state = "running"
        telemetry.execute(
            CHILD_STARTED,
            {"duration": time.monotonic_ns() - begin},
            {"supervisor": self.name, "child_id": child.spec.id},
        )
        return run.value

    async def _run_child(self, child: Child, run: Run) -> None:
        """The child's task: one run, then its end posted to the manager."""
        await run.execute(child.spec, self.name)
        assert self._exits is not None
        # When the supervisor is stopping, nobody restarts anything any more.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._exits.send_nowait((child, run))

    async def _stop(self, *children: Child) -> None:
        """Cancel the children's runs, in the order given, then wait for each to end.

        A child not ended ``shutdown`` seconds after it was cancelled is warned about.
        A running child is ``stopping`` meanwhile; a start called off stays ``starting``.
        """
        stopping: list[tuple[Child, bool, float]] = []
        for child in children:
            run = child.run
            assert run is not None
            ended_by_itself = run.done.is_set()
            if child.state == "running":
                child.state = "stopping"
            run.scope.cancel()
            stopping.append((child, ended_by_itself, anyio.current_time() + child.spec.shutdown))
        with anyio.CancelScope(shield=True):
            for child, ended_by_itself, deadline in stopping:
                run = child.run
                assert run is not None
                if not run.done.is_set():
                    await self._wait_stopped(child, run, deadline)
                self._terminated(child, shutdown=not ended_by_itself)

    async def _wait_stopped(self, child: Child, run: Run, deadline: float) -> None:
        """Wait for a cancelled run to end, warning if it has not by ``deadline``."""
        with anyio.CancelScope(deadline=deadline) as waited:
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

    async def _stop_children(self, children: Sequence[Child]) -> None:
        """Stop ``children`` (given in start order) right to left, by ``stop_order``."""
        if self.stop_order == "all_at_once":
            await self._stop(*reversed(children))
        else:
            for child in reversed(children):
                await self._stop(child)

    def _terminated(self, child: Child, *, shutdown: bool) -> None:
        """Record the end of the child's run: the one place that reports a child's end.

        A child that never got to ``running`` was never reported started (its caller
        hears of a :class:`ChildStartError` or of its own cancellation), so its end is
        not reported either: ``child_started`` and ``child_terminated`` pair up.
        """
        run = child.run
        assert run is not None
        assert run.done.is_set()
        was_starting = child.state == "starting"
        child.state, child.run = "terminated", None
        if was_starting:
            return
        metadata: dict[str, object] = {"supervisor": self.name, "child_id": child.spec.id}
        if shutdown:
            metadata["reason"] = "shutdown"
        elif run.error is None:
            metadata.update(reason="normal", error=None)
        else:
            metadata.update(reason="crash", error=run.error)
            _log.error(
                "child crashed", supervisor=self.name, child_id=child.spec.id, exc_info=run.error
            )
        telemetry.execute(CHILD_TERMINATED, {}, metadata)

    async def _stop_all(self) -> None:
        """Stop every running child, right to left."""
        await self._stop_children([child for child in self._children if child.state == "running"])

    # --- restart policy ----------------------------------------------------------

    async def _handle_exit(self, child: Child, run: Run) -> None:
        """React to a run that ended by itself, by the child's restart type and the strategy."""
        if child.run is not run:
            return  # a stop or a failed start has accounted for this end already
        self._terminated(child, shutdown=False)
        # As in OTP, a supervisor that gave up exits with reason shutdown: no abnormal
        # exit, so a transient one is not restarted.
        abnormal = run.error is not None and not isinstance(run.error, SupervisorGaveUpError)
        if child.spec.restart == "temporary":
            self._children.remove(child)
        elif child.spec.restart == "permanent" or abnormal:
            await self._restart(child, run.error)

    async def _restart(self, crashed: Child, error: Exception | None) -> None:
        """Restart ``crashed`` (and its siblings, by strategy) within the intensity."""
        if self.strategy == "one_for_one":
            siblings: list[Child] = []
        elif self.strategy == "one_for_all":
            siblings = [c for c in self._children if c.state == "running"]
        else:
            after = self._children[self._children.index(crashed) + 1 :]
            siblings = [c for c in after if c.state == "running"]
        await self._stop_children(siblings)
        dropped = {sibling for sibling in siblings if sibling.spec.restart == "temporary"}
        if dropped:
            self._children = [c for c in self._children if c not in dropped]
        chosen = {crashed, *siblings}
        group = [c for c in self._children if c in chosen]  # start order
        last_error = error
        while self._intensity.add_restart():
            try:
                for child in group:
                    await self._start(child)
                    telemetry.execute(
                        CHILD_RESTARTED,
                        {},
                        {"supervisor": self.name, "child_id": child.spec.id, "error": last_error},
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
                await self._stop_children([child for child in group if child.state == "running"])
        await self._give_up(crashed, last_error)

    async def _give_up(self, child: Child, error: Exception | None) -> None:
        """Stop every child and fail out of the ``async with`` block."""
        self._state = "stopping"  # turns asked for from now on are refused
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
        self._stop_asked.set()  # the supervisor's task ends, and cancels the block's body

    # --- runtime API ---------------------------------------------------------------

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Wait for this call's turn on a running supervisor; nothing else runs in it.

        :raises SupervisorNotRunningError: it is not running, or it stopped while we waited.
        """
        if self._state != "running" or self._lock is None:
            raise SupervisorNotRunningError(self.name)
        async with self._lock:
            if self._state != "running":
                raise SupervisorNotRunningError(self.name)
            yield

    def _held(self, child_id: Hashable) -> Child | None:
        return next((child for child in self._children if child.spec.id == child_id), None)

    def _find(self, child_id: Hashable) -> Child:
        child = self._held(child_id)
        if child is None:
            raise UnknownChildError(self.name, child_id, [c.spec.id for c in self._children])
        return child

    def _find_terminated(self, child_id: Hashable, call: str) -> Child:
        """The child with that id, which ``call`` needs terminated."""
        child = self._find(child_id)
        if child.state == "running":
            raise ChildStateError(
                self.name, child_id, f"is running; terminate_child() it before {call}()"
            )
        return child

    async def start_child(self, child: ChildSpec | ChildSource) -> object:
        """Add a child at the right end and start it; return the value it passed to ``started``.

        :raises DuplicateChildError: a child with that id is held already.
        :raises ChildStartError: it raised or returned before ``started`` (the cause is
            chained); the supervisor goes on, without that child.
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        spec = to_child_spec(child)
        async with self._turn():
            held = self._held(spec.id)
            if held is not None:
                running = held.state == "running"
                raise DuplicateChildError(
                    self.name, spec.id, "running" if running else "terminated"
                )
            new = Child(spec)
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
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        async with self._turn():
            child = self._find(child_id)
            if child.state == "running":
                assert child.run is not None
                if child.run.task == anyio.get_current_task().id:
                    raise ChildStateError(
                        self.name, child_id, "cannot terminate itself; let it return instead"
                    )
                await self._stop(child)
            if child.spec.restart == "temporary":
                self._children.remove(child)

    async def restart_child(self, child_id: Hashable) -> object:
        """Start a terminated child again; return the value it passed to ``started``.

        :raises UnknownChildError: no child has that id.
        :raises ChildStateError: the child is running (terminate it first).
        :raises ChildStartError: it failed before ``started``; its spec stays, terminated.
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        async with self._turn():
            return await self._start(self._find_terminated(child_id, "restart_child"))

    async def delete_child(self, child_id: Hashable) -> None:
        """Forget the spec of a terminated child.

        :raises UnknownChildError: no child has that id.
        :raises ChildStateError: the child is running (terminate it first).
        :raises SupervisorNotRunningError: the supervisor is not running.
        """
        async with self._turn():
            self._children.remove(self._find_terminated(child_id, "delete_child"))

    def which_children(self) -> list[ChildInfo]:
        """Every child held, in start order, with its state and value."""
        return [child.info() for child in self._children]

    def count_children(self) -> ChildCounts:
        """How many specs are held, how many run, and how many of each type."""
        supervisors = sum(1 for c in self._children if c.spec.type == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=sum(1 for c in self._children if c.state != "terminated"),
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )
