"""Restart intensity: how many restarts a supervisor allows within a period."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .._checks import check_count, check_seconds

__all__ = ["Clock", "RestartIntensity"]

Clock = Callable[[], float]


class RestartIntensity:
    """Counts the restarts of a whole supervisor within a sliding window, as OTP does.

    A restart at time ``t`` counts while ``now - t <= max_seconds``. More than
    ``max_restarts`` counted restarts means the supervisor must give up.

    :raises TypeError: ``max_restarts`` is not an int or ``max_seconds`` not a number.
    :raises ValueError: ``max_restarts`` is below 0, or ``max_seconds`` not > 0 (and at
        most about 24.9 days).
    """

    __slots__ = ("_clock", "_restarts", "max_restarts", "max_seconds")

    def __init__(
        self, max_restarts: int, max_seconds: float, clock: Clock = time.monotonic
    ) -> None:
        max_restarts = check_count("Supervisor.max_restarts", max_restarts)
        max_seconds = check_seconds("Supervisor.max_seconds", max_seconds)
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
