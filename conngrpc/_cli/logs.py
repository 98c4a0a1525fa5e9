"""The command line's logging: it is an application, so it may set structlog up."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging"]


def configure_logging(stream: TextIO) -> None:
    """Render log lines to ``stream``, keeping only the library's errors.

    The demo tells its story in log lines on stdout; probe and watch print their data
    on stdout, so their logs go to stderr.
    """

    def quieter(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        # The commands tell their story through telemetry: keep only the library's
        # errors, without their tracebacks.
        if str(event.get("logger", "")).startswith("conngrpc.") and event["level"] != "error":
            raise structlog.DropEvent
        event.pop("exc_info", None)
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
            quieter,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
    )
