"""A supervised child: its one named state, one run of it, and how it is reported."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

import anyio

from ..errors import StrayCancellationError
from .spec import ChildSpec, ChildType, RestartType

__all__ = ["ChildCounts", "ChildInfo", "ChildState"]

#: Where a child is in its life, as :attr:`ChildInfo.state` gives it.
#:
#: ``terminated`` (not running: not started yet, ended or
#: stopped) -> ``starting`` (its start function runs; the supervisor waits for ``started``)
#: -> ``running`` -> ``stopping`` (cancelled by the supervisor, waited for) ->
#: ``terminated``. A start that fails or is called off goes from ``starting`` straight to
#: ``terminated``.
ChildState = Literal["starting", "running", "stopping", "terminated"]


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One child as :meth:`Supervisor.which_children` reports it: a snapshot, taken then."""

    #: the child's id, as its spec gives it
    id: Hashable
    #: ``"worker"`` or ``"supervisor"``, as its spec gives it
    type: ChildType
    #: ``"permanent"``, ``"transient"`` or ``"temporary"``, as its spec gives it
    restart: RestartType
    #: true in every ``state`` but ``"terminated"``
    running: bool
    #: what the child passed to ``task_status.started`` (None before that, and once it
    #: is terminated)
    value: object
    #: where the child is in its life (see :data:`ChildState`)
    state: ChildState


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """OTP's ``count_children``: specs held, children running, and specs by type."""

    #: the specs the supervisor holds, running or terminated
    specs: int
    #: the children not terminated (starting, running or stopping)
    active: int
    #: the specs of type ``"supervisor"``, running or not
    supervisors: int
    #: the specs of type ``"worker"``, running or not
    workers: int


class Run:
    """One incarnation of a child: its task's cancel scope, its value and how it ended.

    It is also the ``task_status`` the child's start function receives. A run records
    facts; the child's state is its supervisor's to change.
    """

    __slots__ = ("done", "error", "ready", "scope", "started_", "task", "value")

    def __init__(self) -> None:
        # Shielded, so that only the supervisor stops a child: an outer cancellation
        # reaches the supervisor, which then stops its children right to left.
        self.scope = anyio.CancelScope(shield=True)
        self.ready = anyio.Event()  # set on started() or at the end, whichever comes first
        self.done = anyio.Event()  # set when the task has ended
        self.started_ = False
        self.value: object = None
        self.error: Exception | None = None  # what ended it, if it raised
        self.task: int | None = None  # the id of the anyio task that runs it

    def started(self, value: object = None) -> None:
        if self.started_:
            raise RuntimeError("task_status.started() was called twice")
        self.started_ = True
        self.value = value
        self.ready.set()

    async def execute(self, spec: ChildSpec, supervisor: str) -> None:
        """Run ``spec``'s start function in this task; record how it ended."""
        self.task = anyio.get_current_task().id
        try:
            with self.scope:
                try:
                    await spec.start(task_status=self)
                except Exception as exc:
                    self.error = exc
                except anyio.get_cancelled_exc_class() as exc:
                    if self.scope.cancel_called:
                        raise
                    # The scope is shielded, so no cancel scope asked for this one:
                    # grpc.aio raises a bare CancelledError from a call whose channel was
                    # closed. Left alone it would cancel the whole supervisor; it is a crash.
                    self.error = StrayCancellationError(supervisor, spec.id)
                    self.error.__cause__ = exc
        finally:
            self.done.set()
            self.ready.set()


class Child:
    """A spec a supervisor holds, its child's state, and its current run.

    ``run`` is None exactly when ``state`` is ``"terminated"``.
    """

    __slots__ = ("run", "spec", "state")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state: ChildState = "terminated"
        self.run: Run | None = None

    def info(self) -> ChildInfo:
        """How :meth:`Supervisor.which_children` reports this child."""
        return ChildInfo(
            id=self.spec.id,
            type=self.spec.type,
            restart=self.spec.restart,
            running=self.state != "terminated",
            value=self.run.value if self.run is not None else None,
            state=self.state,
        )
