"""The exception hierarchy: every error conngrpc raises is a :class:`ConnGRPCError`."""

from __future__ import annotations

from collections.abc import Hashable


class ConnGRPCError(Exception):
    """Base class of every error conngrpc raises."""


# --- supervision -------------------------------------------------------------


class SupervisorError(ConnGRPCError):
    """An error of the supervision tree."""


class ChildStartError(SupervisorError):
    """A child failed before it reported ``started``.

    The child's own exception, when there is one, is the ``__cause__``.
    """

    def __init__(self, supervisor: str, child_id: Hashable, reason: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} failed to start: {reason}")


class SupervisorGaveUpError(SupervisorError):
    """A supervisor exceeded its restart intensity and stopped all its children.

    The last crash of ``child_id`` is the ``__cause__``.
    """

    def __init__(
        self, supervisor: str, child_id: Hashable, max_restarts: int, max_seconds: float
    ) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} needed more than "
            f"{max_restarts} restart(s) within {max_seconds:g} s; all children were stopped"
        )


class DuplicateChildError(SupervisorError, ValueError):
    """A child id that the supervisor already holds was given again."""

    def __init__(self, supervisor: str, child_id: Hashable, running: bool) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        state = "running" if running else "present (terminated; delete_child it first)"
        super().__init__(
            f"supervisor {supervisor!r}: expected a new child id, got {child_id!r}, "
            f"which is already {state}"
        )


class UnknownChildError(SupervisorError, LookupError):
    """No child with that id is known to the supervisor."""

    def __init__(self, supervisor: str, child_id: Hashable, known: list[Hashable]) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(
            f"supervisor {supervisor!r} has no child {child_id!r}; its children are {known!r}"
        )


class ChildStateError(SupervisorError):
    """A runtime call that needs a running (or a terminated) child got the other kind."""

    def __init__(self, supervisor: str, child_id: Hashable, message: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} {message}")


class SupervisorNotRunningError(SupervisorError):
    """A runtime call was made on a supervisor that is not running."""

    def __init__(self, supervisor: str) -> None:
        self.supervisor = supervisor
        super().__init__(
            f"supervisor {supervisor!r} is not running; use it as 'async with Supervisor(...)'"
        )


class NameTakenError(ConnGRPCError, ValueError):
    """A registry name is already held by a live owner."""

    def __init__(self, name: str, registry: str) -> None:
        self.name = name
        super().__init__(
            f"registry {registry!r}: expected a free name, got {name!r}, which is already "
            "registered by a running owner"
        )


# --- channels ----------------------------------------------------------------


class ChannelUnavailableError(ConnGRPCError):
    """No channel can be handed out; ``pool_name`` and ``reason`` say why."""

    def __init__(self, pool_name: str, reason: str) -> None:
        self.pool_name = pool_name
        self.reason = reason
        super().__init__(f"{pool_name!r}: {reason}")


class NotConnectedError(ChannelUnavailableError):
    """The pool (or channel) is running but none of its channels is connected now."""


class PoolNotStartedError(ChannelUnavailableError):
    """No pool (or channel) of that name is running."""


class ConnectFailedError(ConnGRPCError, ConnectionError):
    """One attempt to connect a channel failed; ``reason`` is grpc's account of why."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"expected a READY channel to {address!r}, but it failed: {reason}")
