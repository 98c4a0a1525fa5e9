"""Loggers for conngrpc's modules (private): a library's logs go where the application's go.

Every event goes to the standard library's ``logging``, to the loggers
``conngrpc.channel``, ``conngrpc.pool``, ``conngrpc.supervisor``, ``conngrpc.telemetry``
and ``conngrpc.otel``, as one record whose message reads ``event key=value ...``; the
fields are also in the record's ``conngrpc`` attribute. With no logging configured at
all, Python prints warnings and errors on stderr; nothing ever goes to stdout.

structlog is used the way a library should use it: each logger is its own
``structlog.wrap_logger`` around the ``logging`` logger, with conngrpc's own processor
chain, so the application's global structlog configuration (``structlog.configure``,
``structlog.testing.capture_logs``) never changes where conngrpc's events go. The chain
ends as ``structlog.stdlib.ProcessorFormatter.wrap_for_formatter`` does, so an
application that formats ``logging`` through a ``ProcessorFormatter`` receives each event
as a structlog event dict: ``event``, the fields (``pool_name``, ``channel_name``,
``backend``, ...), ``level``, ``logger`` and ``timestamp``, ready for its processors.

A level the ``logging`` logger does not let through costs one ``isEnabledFor`` call:
nothing is copied or formatted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["Logger", "get_logger"]

#: Keys of the event dict that are not the event's own fields.
_META = frozenset({"event", "level", "logger", "timestamp", "exc_info"})


class _Event(dict[str, Any]):
    """An event dict whose text is the one line ``event key=value ...``.

    ``ProcessorFormatter`` copies it into a plain dict for the application's processors;
    every other formatter reads the record's message (``LogRecord.getMessage`` calls
    ``str``) and gets the line.
    """

    __slots__ = ("line",)

    def __init__(self, event_dict: Mapping[str, Any], line: str) -> None:
        super().__init__(event_dict)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _to_logging(
    logger: logging.Logger, method: str, event_dict: structlog.typing.EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: the arguments of the ``logging`` call, as
    ``ProcessorFormatter.wrap_for_formatter`` makes them, with a readable message."""
    fields = {key: value for key, value in event_dict.items() if key not in _META}
    line = " ".join([event_dict["event"], *(f"{k}={_text(v)}" for k, v in fields.items())])
    extra = {"_logger": logger, "_name": method, "conngrpc": fields}
    return (_Event(event_dict, line),), {"exc_info": event_dict.get("exc_info"), "extra": extra}


_PROCESSORS = (
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso"),
    _to_logging,
)


class Logger:
    """One conngrpc module's logger, with fields bound to every event it logs."""

    __slots__ = ("_bound", "_logging", "name")

    def __init__(self, name: str, bound: structlog.stdlib.BoundLogger | None = None) -> None:
        self.name = name
        self._logging = logging.getLogger(name)
        if bound is None:
            # Every setting given, and bound at once: the result reads nothing of
            # structlog's global configuration, now or later.
            bound = structlog.wrap_logger(
                self._logging,
                processors=_PROCESSORS,
                wrapper_class=structlog.stdlib.BoundLogger,
                context_class=dict,
                cache_logger_on_first_use=False,
            ).bind()
        self._bound: structlog.stdlib.BoundLogger = bound

    def __repr__(self) -> str:
        return f"<Logger {self.name} {structlog.get_context(self._bound)}>"

    def bind(self, **fields: Any) -> Logger:
        """This logger with ``fields`` added to every event."""
        return Logger(self.name, self._bound.bind(**fields))

    def debug(self, event: str, **fields: Any) -> None:
        if self._logging.isEnabledFor(logging.DEBUG):
            self._bound.debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._logging.isEnabledFor(logging.INFO):
            self._bound.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._logging.isEnabledFor(logging.WARNING):
            self._bound.warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        if self._logging.isEnabledFor(logging.ERROR):
            self._bound.error(event, **fields)


def _text(value: object) -> str:
    """A field's value for a one-line record: as is when it reads unambiguously, else repr."""
    text = str(value)
    if isinstance(value, str) and (not text or any(c.isspace() or c in "='\"" for c in text)):
        return repr(text)
    return text


def get_logger(name: str) -> Logger:
    """The logger of one conngrpc module."""
    return Logger(name)
