"""Loggers for conngrpc's modules (private): a library's logs go where the application's go.

- The application configured structlog (``structlog.configure``): conngrpc's events go
  through its processors, as structlog events carrying ``logger=<name>`` and the bound
  fields (pool, channel, backend), rendered once by whatever renderer it chose.
- It did not: the events go to the standard library's ``logging``, to the loggers
  ``conngrpc.channel``, ``conngrpc.pool``, ``conngrpc.supervisor`` and
  ``conngrpc.telemetry``, as one line ``event key=value ...`` (the fields are also in
  the record's ``conngrpc`` attribute). With no logging configured at all, Python prints
  warnings and errors on stderr; nothing ever goes to stdout.

Which of the two applies is decided at each event, so either may be set up after
conngrpc is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["Logger", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Logger:
    """One conngrpc module's logger, with fields bound to every event it logs."""

    __slots__ = ("_fields", "name")

    def __init__(self, name: str, fields: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self._fields: dict[str, Any] = dict(fields or {})

    def __repr__(self) -> str:
        return f"<Logger {self.name} {self._fields}>"

    def bind(self, **fields: Any) -> Logger:
        """This logger with ``fields`` added to every event."""
        return Logger(self.name, {**self._fields, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            logger = structlog.get_logger(self.name).bind(logger=self.name, **self._fields)
            getattr(logger, method)(event, **fields)
            return
        stdlib = logging.getLogger(self.name)
        level = _LEVELS[method]
        if not stdlib.isEnabledFor(level):
            return
        exc_info = fields.pop("exc_info", None)
        everything = {**self._fields, **fields}
        line = " ".join([event, *(f"{key}={_text(value)}" for key, value in everything.items())])
        stdlib.log(level, "%s", line, exc_info=exc_info, extra={"conngrpc": everything})


def _text(value: object) -> str:
    """A field's value for a one-line record: as is when it reads unambiguously, else repr."""
    text = str(value)
    if isinstance(value, str) and (not text or any(c.isspace() or c in "='\"" for c in text)):
        return repr(text)
    return text


def get_logger(name: str) -> Logger:
    """The logger of one conngrpc module."""
    return Logger(name)
