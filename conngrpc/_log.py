"""Loggers for conngrpc's modules (private): structlog, never configured by the library."""

from __future__ import annotations

from typing import Any

import structlog


class _Logger:
    """A structlog logger whose events carry ``logger=<name>``, so they can be filtered.

    It is resolved at each use, so structlog may be configured after conngrpc is
    imported. With structlog's stdlib integration the name is also the ``logging``
    logger's name, so ``logging.getLogger("conngrpc").setLevel(...)`` applies.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, method: str) -> Any:
        return getattr(structlog.get_logger(self.name).bind(logger=self.name), method)


def get_logger(name: str) -> Any:
    """The logger of one conngrpc module."""
    return _Logger(name)
