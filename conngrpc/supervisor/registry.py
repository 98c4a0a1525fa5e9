"""The registry: names mapped to the live handles of running children."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from ..errors import NameTakenError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to live handles; a name is held only while its owner runs.

    Registering is scoped: :meth:`register` is a context manager, and the name is
    released however the block is left (return, cancellation or crash). Lookups are
    synchronous dict reads. Example::

        with registry.register("demo_pool", pool) :
            task_status.started(pool)
            await anyio.sleep_forever()
    """

    __slots__ = ("_entries", "get", "name")

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._entries: dict[str, T] = {}
        #: The handle registered under a name, or None: the dict's own ``get``, so a
        #: lookup on a hot path costs one C call.
        self.get: Callable[[str], T | None] = self._entries.get

    def __repr__(self) -> str:
        return f"<Registry {self.name!r} names={len(self._entries)}>"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def register(self, name: str, handle: T) -> Iterator[T]:
        """Hold ``name`` for ``handle`` until the block is left.

        :raises NameTakenError: a live owner holds ``name``.
        :raises TypeError: ``name`` is not a non-empty string.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"registry {self.name!r}: expected a non-empty str name, got {name!r}")
        if name in self._entries:
            raise NameTakenError(name, self.name)
        self._entries[name] = handle
        try:
            yield handle
        finally:
            if self._entries.get(name) is handle:
                del self._entries[name]

    def forget_all(self) -> dict[str, T]:
        """Let go of every name (a forked child's: their owners ran in the parent);
        what was held."""
        held = dict(self._entries)
        self._entries.clear()
        return held

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)
