"""conngrpc's log records, captured from ``logging`` for tests to look at.

conngrpc logs through the standard library's ``logging`` and never through structlog's
global configuration, so ``structlog.testing.capture_logs`` does not see its events:
``capture_logs`` here does, in the same shape (each event a dict with ``event``, its
fields and ``log_level``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

__all__ = ["capture_logs", "capture_records"]

T = TypeVar("T")


@contextmanager
def _capturing(convert: Callable[[logging.LogRecord], T]) -> Iterator[list[T]]:
    """Every record of the ``conngrpc`` loggers, of every level, while the block runs,
    as ``convert`` makes it, appended as it comes."""
    captured: list[T] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(convert(record))

    library = logging.getLogger("conngrpc")
    handler = Capture(logging.DEBUG)
    level = library.level
    library.setLevel(logging.DEBUG)
    library.addHandler(handler)
    try:
        yield captured
    finally:
        library.removeHandler(handler)
        library.setLevel(level)


def capture_records() -> AbstractContextManager[list[logging.LogRecord]]:
    """The records themselves."""
    return _capturing(lambda record: record)


def _event(record: logging.LogRecord) -> dict[str, Any]:
    assert isinstance(record.msg, dict), f"not a conngrpc event: {record.msg!r}"
    return {**record.msg, "log_level": record.levelname.lower()}


def capture_logs() -> AbstractContextManager[list[dict[str, Any]]]:
    """Each event as structlog's ``capture_logs`` gives it: ``event``, the fields and
    ``log_level``."""
    return _capturing(_event)
