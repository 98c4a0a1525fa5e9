"""The telemetry bus, modelled on Erlang's ``:telemetry``.

Code emits events with :func:`execute`; operators attach handlers to the events
they care about. An event is a tuple of strings such as
``("conngrpc", "pool", "get_channel")``; a handler is called as
``handler(event, measurements, metadata, config)``. Durations are integer
nanoseconds.

With no handler attached to an event, :func:`execute` costs one dict lookup,
so it may sit on hot paths. A handler that raises is detached, logged once and
reported as ``("conngrpc", "telemetry", "handler_failure")``; it never disturbs
the code that emitted the event.

Example::

    from conngrpc import telemetry

    def log_connects(event, measurements, metadata, config):
        print(metadata["pool_name"], measurements["duration"] / 1e6, "ms")

    telemetry.attach("log-connects", ("conngrpc", "channel", "connected"), log_connects)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ._log import get_logger

__all__ = [
    "HANDLER_FAILURE",
    "Event",
    "Handler",
    "HandlerInfo",
    "Switch",
    "TelemetryBus",
    "attach",
    "attach_many",
    "default_bus",
    "detach",
    "execute",
    "list_handlers",
    "span",
]

#: An event's name: a non-empty tuple of non-empty strings, ``("conngrpc", "pool", "status")``.
Event = tuple[str, ...]

#: Emitted when a handler raised and was detached: measurements ``monotonic_time``,
#: metadata ``handler_id``, ``event`` (the one it failed on) and ``error``.
HANDLER_FAILURE: Event = ("conngrpc", "telemetry", "handler_failure")

_EMPTY: Mapping[str, Any] = {}
_log = get_logger("conngrpc.telemetry")


class Handler(Protocol):
    """A telemetry handler: any callable taking ``(event, measurements, metadata, config)``
    by position; ``config`` is what was given to :meth:`TelemetryBus.attach`."""

    def __call__(
        self,
        event: Event,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
        /,
    ) -> object:
        """Handle one event; the return value is ignored."""


class Switch:
    """Whether anyone listens to one event, as :meth:`TelemetryBus.switch` gives it; kept
    up to date by its bus."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        #: true while at least one handler is attached to the event
        self.on: bool = on

    def __repr__(self) -> str:
        return f"<Switch {'on' if self.on else 'off'}>"


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One attachment of a handler to one event, as :meth:`TelemetryBus.list_handlers` shows it."""

    #: the handler id it was attached under
    id: Hashable
    #: the event it is attached to
    event: Event
    #: the handler
    function: Handler
    #: the ``config`` given when it was attached, passed to each call of the handler
    config: Any


def _check_event(event: object) -> Event:
    if (
        not isinstance(event, tuple)
        or not event
        or not all(isinstance(part, str) and part for part in event)
    ):
        raise TypeError(
            f"expected an event as a non-empty tuple of non-empty strings, got {event!r}"
        )
    return event


class TelemetryBus:
    """A table of handlers keyed by event; one process-wide instance is :data:`default_bus`.

    :meth:`execute` on an event nobody listens to costs one dict lookup. Every method
    may be called from any thread; handlers attached or detached while an event is
    being executed take effect from the next one.
    """

    __slots__ = ("_by_event", "_by_id", "_lock", "_switches")

    def __init__(self) -> None:
        self._by_event: dict[Event, tuple[HandlerInfo, ...]] = {}
        self._by_id: dict[Hashable, tuple[HandlerInfo, ...]] = {}
        self._lock = threading.Lock()
        self._switches: dict[Event, Switch] = {}

    def __repr__(self) -> str:
        return f"<TelemetryBus handlers={len(self._by_id)} events={len(self._by_event)}>"

    def attach(
        self, handler_id: Hashable, event: Event, handler: Handler, config: Any = None
    ) -> None:
        """Attach ``handler`` to one event under ``handler_id``.

        :raises ValueError: ``handler_id`` is attached already.
        :raises TypeError: the event is not a tuple of strings or the handler is not callable.
        """
        self._attach(handler_id, (_check_event(event),), handler, config)

    def attach_many(
        self,
        handler_id: Hashable,
        events: Iterable[Event],
        handler: Handler,
        config: Any = None,
    ) -> None:
        """Attach ``handler`` to several events under one ``handler_id``.

        :raises ValueError: ``handler_id`` is attached already, or ``events`` is empty.
        :raises TypeError: an event is not a tuple of strings or the handler is not callable.
        """
        if isinstance(events, tuple) and events and isinstance(events[0], str):
            raise TypeError(
                f"expected a collection of events, got the single event {events!r}; "
                "use attach() or wrap it in a list"
            )
        self._attach(handler_id, tuple(_check_event(event) for event in events), handler, config)

    def _attach(
        self, handler_id: Hashable, events: tuple[Event, ...], handler: Handler, config: Any
    ) -> None:
        checked = tuple(dict.fromkeys(events))
        if not checked:
            raise ValueError(f"handler {handler_id!r}: expected at least one event, got none")
        if not callable(handler):
            raise TypeError(f"handler {handler_id!r}: expected a callable, got {handler!r}")
        infos = tuple(HandlerInfo(handler_id, event, handler, config) for event in checked)
        with self._lock:
            if handler_id in self._by_id:
                raise ValueError(
                    f"expected a free handler id, got {handler_id!r}, which is attached "
                    "already; detach it first"
                )
            self._by_id[handler_id] = infos
            for info in infos:
                self._by_event[info.event] = (*self._by_event.get(info.event, ()), info)
                self._flip(info.event)

    def detach(self, handler_id: Hashable) -> bool:
        """Detach every attachment of ``handler_id``; False when it was not attached."""
        with self._lock:
            infos = self._by_id.pop(handler_id, None)
            if infos is None:
                return False
            for info in infos:
                remaining = tuple(h for h in self._by_event[info.event] if h.id != handler_id)
                if remaining:
                    self._by_event[info.event] = remaining
                else:
                    del self._by_event[info.event]
                self._flip(info.event)
            return True

    def switch(self, event: Event) -> Switch:
        """A live flag that is on while any handler is attached to ``event``.

        For hot paths: reading ``switch.on`` is one attribute load, cheaper than hashing
        the event's tuple, so code can skip even measuring what nobody listens to.
        """
        with self._lock:
            found = self._switches.get(_check_event(event))
            if found is None:
                found = self._switches[event] = Switch(event in self._by_event)
            return found

    def _flip(self, event: Event) -> None:
        found = self._switches.get(event)
        if found is not None:
            found.on = event in self._by_event

    def execute(
        self,
        event: Event,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Call every handler attached to ``event``, in the order they were attached.

        ``metadata`` None passes an empty mapping. Nothing is raised: a handler that
        raises is detached, logged and reported as :data:`HANDLER_FAILURE`, and the next
        handler runs.
        """
        handlers = self._by_event.get(event)
        if handlers is None:
            return
        if metadata is None:
            metadata = _EMPTY
        for info in handlers:
            try:
                info.function(event, measurements, metadata, info.config)
            except Exception as exc:  # a handler must never break the code that emits
                self._handler_failed(info, event, exc)

    def _handler_failed(self, info: HandlerInfo, event: Event, exc: Exception) -> None:
        if not self.detach(info.id):
            return  # another thread saw it fail first and has reported it
        _log.error(
            "telemetry handler raised and was detached",
            handler_id=info.id,
            telemetry_event=event,
            exc_info=exc,
        )
        self.execute(
            HANDLER_FAILURE,
            {"monotonic_time": time.monotonic_ns()},
            {"handler_id": info.id, "event": event, "error": exc},
        )

    @contextmanager
    def span(
        self, event_prefix: Event, metadata: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """A context manager that times its block, emitting ``event_prefix + ("start",)``,
        then ``+ ("stop",)`` or ``+ ("exception",)``.

        ``start`` carries ``monotonic_time`` and ``system_time``; ``stop`` and
        ``exception`` carry ``duration`` (integer nanoseconds) and ``monotonic_time``.
        The block gets a dict of stop metadata (a copy of ``metadata``) it may add to.
        ``exception`` metadata adds ``kind`` (the exception's class name) and ``reason``
        (the exception), and the exception is re-raised.

        Example::

            with telemetry.span(("myapp", "fetch"), {"url": url}) as stop_metadata:
                stop_metadata["status"] = await fetch(url)
        """
        prefix = _check_event(event_prefix)
        start_metadata = dict(metadata) if metadata else {}
        start = time.monotonic_ns()
        self.execute(
            (*prefix, "start"),
            {"monotonic_time": start, "system_time": time.time_ns()},
            start_metadata,
        )
        stop_metadata = dict(start_metadata)
        try:
            yield stop_metadata
        except BaseException as exc:
            end = time.monotonic_ns()
            self.execute(
                (*prefix, "exception"),
                {"duration": end - start, "monotonic_time": end},
                {**stop_metadata, "kind": type(exc).__name__, "reason": exc},
            )
            raise
        end = time.monotonic_ns()
        self.execute(
            (*prefix, "stop"), {"duration": end - start, "monotonic_time": end}, stop_metadata
        )

    def list_handlers(self, prefix: tuple[str, ...] = ()) -> list[HandlerInfo]:
        """Every attachment whose event starts with ``prefix`` (all of them for ``()``)."""
        n = len(prefix)
        with self._lock:
            return [
                info for infos in self._by_id.values() for info in infos if info.event[:n] == prefix
            ]


#: The process-wide bus that conngrpc emits on; the module functions use it.
default_bus = TelemetryBus()

#: :meth:`TelemetryBus.attach` on :data:`default_bus`.
attach = default_bus.attach
#: :meth:`TelemetryBus.attach_many` on :data:`default_bus`.
attach_many = default_bus.attach_many
#: :meth:`TelemetryBus.detach` on :data:`default_bus`.
detach = default_bus.detach
#: :meth:`TelemetryBus.execute` on :data:`default_bus`.
execute = default_bus.execute
#: :meth:`TelemetryBus.span` on :data:`default_bus`.
span = default_bus.span
#: :meth:`TelemetryBus.list_handlers` on :data:`default_bus`.
list_handlers = default_bus.list_handlers
