"""The exception hierarchy: errors of a running pool or supervisor are ConnGRPCErrors.

Configuration mistakes are ``TypeError`` / ``ValueError`` (some of which are also
ConnGRPCErrors), raised where the configuration is written.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal


class ConnGRPCError(Exception):
    """Base class of every error conngrpc raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses' __init__ take their fields, not the message: rebuild from both,
        # so errors survive pickle (multiprocessing, task queues) and copy.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ConnGRPCError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


# --- supervision -------------------------------------------------------------


class SupervisorError(ConnGRPCError):
    """An error of the supervision tree."""


class ChildStartError(SupervisorError):
    """A child failed before it reported ``started``.

    The child's own exception, when there is one, is the ``__cause__``.
    """

    def __init__(self, supervisor: str, child_id: Hashable, reason: str) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        #: what went wrong: the child's exception (its class and text), that it returned
        #: without calling ``started``, or that the supervisor stopped meanwhile
        self.reason: str = reason
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} failed to start: {reason}")


class SupervisorGaveUpError(SupervisorError):
    """A supervisor exceeded its restart intensity and stopped all its children.

    The last crash of ``child_id`` is the ``__cause__``.
    """

    def __init__(
        self, supervisor: str, child_id: Hashable, max_restarts: int, max_seconds: float
    ) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        #: the supervisor's restart intensity that was exceeded: more than
        #: ``max_restarts`` restarts within ``max_seconds`` seconds
        self.max_restarts: int = max_restarts
        #: the window, in seconds, in which the restarts were counted
        self.max_seconds: float = max_seconds
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} needed more than "
            f"{max_restarts} restart(s) within {max_seconds:g} s; all children were stopped"
        )


class StrayCancellationError(SupervisorError):
    """A child raised a cancellation that no cancel scope asked for; a crash.

    grpc.aio raises a bare ``asyncio.CancelledError`` from a call whose channel was
    closed; the original exception is the ``__cause__``.
    """

    def __init__(self, supervisor: str, child_id: Hashable) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        super().__init__(
            f"supervisor {supervisor!r}: child {child_id!r} raised a cancellation that no "
            "cancel scope asked for (grpc.aio does so for a call whose channel was closed)"
        )


class DuplicateChildError(SupervisorError, ValueError):
    """A child id was given twice: it is held already, or it repeats in the children given.

    ``state`` says which; the message says how often a repeated id appears.
    """

    def __init__(
        self,
        supervisor: str,
        child_id: Hashable,
        state: Literal["running", "terminated", "repeated"],
        times: int = 2,
    ) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        #: ``"running"`` or ``"terminated"``: a child with that id is held, in that
        #: state; ``"repeated"``: the id appears more than once in the children given
        self.state: Literal["running", "terminated", "repeated"] = state
        if state == "repeated":
            count = "twice" if times == 2 else f"{times} times"
            problem = f"expected unique child ids, got {child_id!r} {count} in the children given"
        elif state == "running":
            problem = f"expected a new child id, got {child_id!r}, which is already running"
        else:
            problem = (
                f"expected a new child id, got {child_id!r}, which is already present "
                "(terminated; delete_child() it first)"
            )
        super().__init__(f"supervisor {supervisor!r}: {problem}")


class UnknownChildError(SupervisorError, LookupError):
    """No child with that id is known to the supervisor."""

    def __init__(self, supervisor: str, child_id: Hashable, known: list[Hashable]) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        super().__init__(
            f"supervisor {supervisor!r} has no child {child_id!r}; its children are {known!r}"
        )


class ChildStateError(SupervisorError):
    """A runtime call that needs a running (or a terminated) child got the other kind."""

    def __init__(self, supervisor: str, child_id: Hashable, message: str) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        #: the id of the child it is about
        self.child_id: Hashable = child_id
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} {message}")


class SupervisorNotRunningError(SupervisorError):
    """A runtime call was made on a supervisor that is not running."""

    def __init__(
        self, supervisor: str, hint: str = "use it as 'async with Supervisor(...)'"
    ) -> None:
        #: the name of the supervisor that raised it
        self.supervisor: str = supervisor
        super().__init__(f"supervisor {supervisor!r} is not running; {hint}")


class NameTakenError(ConnGRPCError, ValueError):
    """A pool or :class:`Channel` was started under a name that a running one holds.

    Pools and channels register their name while they run; the name is free again once
    its holder has stopped.
    """

    def __init__(self, name: str, registry: str) -> None:
        #: the name that is taken
        self.name: str = name
        super().__init__(
            f"registry {registry!r}: expected a free name, got {name!r}, which is already "
            "registered by a running owner"
        )


# --- channels ----------------------------------------------------------------


class ChannelUnavailableError(ConnGRPCError):
    """No channel can be handed out; ``pool_name`` and ``reason`` say why."""

    def __init__(self, pool_name: str, reason: str) -> None:
        #: the name of the pool (or channel) asked for
        self.pool_name: str = pool_name
        #: why none can be handed out, as the message says it (for a pool that runs, what
        #: its channels are doing and their latest failure)
        self.reason: str = reason
        super().__init__(f"{pool_name!r}: {reason}")


class NotConnectedError(ChannelUnavailableError):
    """The pool (or channel) is running but none of its channels is connected now."""


class PoolNotStartedError(ChannelUnavailableError):
    """No pool (or channel) of that name is running."""


class ConnectFailedError(ConnGRPCError, ConnectionError):
    """One attempt to connect a channel failed; ``reason`` is grpc's account of why."""

    def __init__(self, address: str, reason: str) -> None:
        #: the address (or grpc target) the attempt connected to
        self.address: str = address
        #: grpc's account of why it failed (refused, unresolvable host, TLS failure, ...)
        self.reason: str = reason
        super().__init__(f"expected a READY channel to {address!r}, but it failed: {reason}")
