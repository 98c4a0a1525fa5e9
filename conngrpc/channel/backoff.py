"""Backoff: how long a channel waits before it tries to connect again."""

from __future__ import annotations

import builtins
import math
import random
from typing import Protocol, runtime_checkable

from .._checks import check_seconds

__all__ = ["Backoff", "ExponentialBackoff"]


@runtime_checkable
class Backoff(Protocol):
    """The waits between a channel's failed attempts: any object with ``next()`` and
    ``reset()`` will do (see :class:`ExponentialBackoff`, the default).

    Each channel works on its own ``copy.copy()`` of the configured backoff, made when
    its worker starts, so state kept in plain attributes is per channel.
    """

    def next(self) -> float:
        """Seconds to wait before the next attempt; advances the backoff."""

    def reset(self) -> None:
        """Start again from the shortest wait (called after a successful connect)."""


class ExponentialBackoff:
    """Exponential backoff with jitter, bounded by ``min`` and ``max`` seconds.

    The n-th wait (from 0) grows from ``min * multiplier**n``, stretched by a random
    factor in ``[1, 1 + jitter]``, so a pool's channels do not retry in lock step; the
    growth stops where the stretched wait reaches ``max``, so waits at the cap are spread
    over ``[max / (1 + jitter), max]`` (never below ``min``). The defaults are
    1 s to 30 s, as in ConnGRPC (the Elixir library conngrpc follows), doubling, with
    up to 20% jitter.

    ``rng`` is the ``random.Random`` the jitter is drawn from (a seeded one makes the
    waits repeatable in tests); by default, a fresh one.

    Example::

        ExponentialBackoff(min=0.1, max=5.0)

    :raises TypeError: a setting is not a number.
    :raises ValueError: ``min`` is not > 0, ``max`` is below ``min`` or longer than grpc
        can wait (about 24.9 days), ``multiplier`` is below 1 or infinite, or ``jitter`` is outside
        ``[0, 1]``.
    """

    __slots__ = ("_base", "_ceiling", "_random", "jitter", "maximum", "minimum", "multiplier")

    def __init__(
        self,
        min: float = 1.0,
        max: float = 30.0,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        check_seconds("ExponentialBackoff.min", min)
        check_seconds("ExponentialBackoff.max", max)
        for field, value in (("multiplier", multiplier), ("jitter", jitter)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"ExponentialBackoff.{field}: expected a number, got {value!r}")
        if not min <= max:
            raise ValueError(
                f"ExponentialBackoff.max: expected seconds >= min ({min!r}), got {max!r}"
            )
        if not multiplier >= 1 or multiplier == math.inf:
            raise ValueError(
                f"ExponentialBackoff.multiplier: expected a finite number >= 1, got {multiplier!r}"
            )
        if not 0 <= jitter <= 1:
            raise ValueError(f"ExponentialBackoff.jitter: expected 0 to 1, got {jitter!r}")
        #: ``min``: the shortest wait, in seconds
        self.minimum: float = float(min)
        #: ``max``: the longest wait, in seconds
        self.maximum: float = float(max)
        #: how much each wait grows over the one before (>= 1)
        self.multiplier: float = float(multiplier)
        #: the most a wait is stretched by at random, as a fraction (0 to 1)
        self.jitter: float = float(jitter)
        self._random = rng if rng is not None else random.Random()
        self._base = self.minimum
        # The base stops growing where its stretched wait reaches max, so that waits at
        # the cap stay spread over [max / (1 + jitter), max] instead of all being max.
        self._ceiling = builtins.max(self.minimum, self.maximum / (1.0 + self.jitter))

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(min={self.minimum:g}, max={self.maximum:g}, "
            f"multiplier={self.multiplier:g}, jitter={self.jitter:g})"
        )

    def next(self) -> float:
        """The next wait in seconds, between ``min`` and ``max``."""
        base = self._base
        self._base = min(self._ceiling, base * self.multiplier)
        return min(self.maximum, base * (1.0 + self.jitter * self._random.random()))

    def reset(self) -> None:
        """Go back to the shortest wait."""
        self._base = self.minimum
