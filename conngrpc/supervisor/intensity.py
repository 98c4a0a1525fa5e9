"""Restart intensity: how many restarts a supervisor allows within a period."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Clock", "RestartIntensity"]

Clock = Callable[[], float]


class RestartIntensity:
    """Counts the restarts of a whole supervisor within a sliding window, as OTP does.

    A restart at time ``t`` counts while ``now - t <= max_seconds``. More than
    ``max_restarts`` counted restarts means the supervisor must give up.

    :raises ValueError: ``max_restarts`` is not an int >= 0 or ``max_seconds`` not > 0.
    """

    __slots__ = ("_clock", "_restarts", "max_restarts", "max_seconds")

    def __init__(
        self, max_restarts: int, max_seconds: float, clock: Clock = time.monotonic
    ) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts: expected an int >= 0, got {max_restarts!r}")
        if (
            isinstance(max_seconds, bool)
            or not isinstance(max_seconds, (int, float))
            or not max_seconds > 0
            or math.isinf(max_seconds)
        ):
            raise ValueError(f"max_seconds: expected a finite number > 0, got {max_seconds!r}")
        if not callable(clock):
            raise TypeError(f"clock: expected a callable returning seconds, got {clock!r}")
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._clock = clock
        self._restarts: deque[float] = deque()

    def __repr__(self) -> str:
        return (
            f"<RestartIntensity {len(self._restarts)} of {self.max_restarts} "
            f"within {self.max_seconds:g} s>"
        )

    def add_restart(self) -> bool:
        """Record a restart now; False when it takes the count past ``max_restarts``."""
        now = self._clock()
        self._restarts.append(now)
        while now - self._restarts[0] > self.max_seconds:
            self._restarts.popleft()
        return len(self._restarts) <= self.max_restarts
