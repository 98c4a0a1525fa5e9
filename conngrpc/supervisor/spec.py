"""The child specification: what a supervisor needs to know to run one child."""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from anyio.abc import TaskStatus

from .._checks import check_seconds

__all__ = [
    "ChildSource",
    "ChildSpec",
    "ChildType",
    "RestartType",
    "StartFunction",
    "to_child_spec",
]

RestartType = Literal["permanent", "transient", "temporary"]
ChildType = Literal["worker", "supervisor"]

RESTART_TYPES: tuple[str, ...] = get_args(RestartType)
CHILD_TYPES: tuple[str, ...] = get_args(ChildType)


class StartFunction(Protocol):
    """Runs a child, calling ``task_status.started(value)`` once it is ready.

    Exactly like a function passed to ``anyio.TaskGroup.start``. It runs until the
    child's work is done (a normal exit) or it raises (a crash); the supervisor stops
    it by cancelling it.
    """

    def __call__(self, *, task_status: TaskStatus[Any]) -> Awaitable[object]:
        """Run the child."""


class ChildSource(Protocol):
    """Anything that can describe itself as a child, such as a declared ``Pool`` class."""

    def child_spec(self) -> ChildSpec:
        """Return the spec the supervisor runs."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child: OTP's ``id, start, restart, shutdown, type``.

    Example::

        ChildSpec("ticker", run_ticker, restart="transient", shutdown=1.0)

    :raises ValueError: a field has a value outside the allowed ones (``shutdown``: 0 to
        about 24.9 days, or ``math.inf``).
    :raises TypeError: a field has the wrong type.
    """

    #: unique among the supervisor's children (any hashable but None)
    id: Hashable
    #: an async function called as ``start(task_status=...)`` that calls
    #: ``task_status.started(value)`` once the child is ready, exactly like a function
    #: passed to ``anyio.TaskGroup.start``; it runs until the child's work is done or it
    #: raises, and the supervisor stops it by cancelling it
    start: StartFunction
    #: ``"permanent"`` (always restarted), ``"transient"`` (restarted only after it
    #: raised) or ``"temporary"`` (never restarted, forgotten once it exits)
    restart: RestartType = "permanent"
    #: seconds the child is given to end after it is cancelled (``math.inf``: wait for
    #: it however long it takes)
    shutdown: float = 5.0
    #: ``"worker"`` or ``"supervisor"`` (a nested supervisor, such as a pool); counted
    #: apart by :meth:`Supervisor.count_children`
    type: ChildType = "worker"

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"ChildSpec.id: expected a hashable value, got {self.id!r}") from None
        if self.id is None:
            raise ValueError("ChildSpec.id: expected an id, got None")
        if not callable(self.start):
            raise TypeError(
                f"ChildSpec.start: expected an async callable taking task_status, "
                f"got {self.start!r}"
            )
        if self.restart not in RESTART_TYPES:
            raise ValueError(
                f"ChildSpec.restart: expected one of {', '.join(RESTART_TYPES)}, "
                f"got {self.restart!r}"
            )
        if self.type not in CHILD_TYPES:
            raise ValueError(
                f"ChildSpec.type: expected one of {', '.join(CHILD_TYPES)}, got {self.type!r}"
            )
        # math.inf waits for ever for the child to end.
        check_seconds("ChildSpec.shutdown", self.shutdown, zero=True, infinite=True)


def to_child_spec(child: ChildSpec | ChildSource) -> ChildSpec:
    """Return ``child`` itself if it is a spec, else what its ``child_spec()`` returns.

    :raises TypeError: ``child`` is neither, or its ``child_spec()`` returned something else.
    """
    if isinstance(child, ChildSpec):
        return child
    make = getattr(child, "child_spec", None)
    if not callable(make):
        raise TypeError(
            f"expected a ChildSpec or an object with a child_spec() method, got {child!r}"
        )
    spec = make()
    if not isinstance(spec, ChildSpec):
        raise TypeError(f"{child!r}.child_spec() returned {spec!r}, expected a ChildSpec")
    return spec
