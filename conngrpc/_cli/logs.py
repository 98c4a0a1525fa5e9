"""The command line's logging: it is an application, so it sets structlog and logging up."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging"]


def configure_logging(stream: TextIO) -> None:
    """Render log lines to ``stream``: the command's own, and the library's errors.

    The demo tells its story in log lines on stdout; probe and watch print their data
    on stdout, so their logs go to stderr. The commands tell their story through
    telemetry, so of the library's own logs (``logging``'s ``conngrpc`` loggers) only the
    errors are shown, without their tracebacks, rendered as the command's lines are.
    """
    stamp = structlog.processors.TimeStamper(fmt="%H:%M:%S.%f")
    render = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, stamp, render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _without_traceback,
                stamp,
                render,
            ]
        )
    )
    library = logging.getLogger("conngrpc")
    library.setLevel(logging.ERROR)
    library.addHandler(handler)
    library.propagate = False  # rendered once, here


def _without_traceback(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.pop("exc_info", None)
    return event
