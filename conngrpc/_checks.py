"""Checks of numbers where a setting is written (private): one place for every bound.

Each check names the setting (``where``) and says what was expected and what came,
raising ``TypeError`` for a value of the wrong type and ``ValueError`` for one out of
range. It imports nothing of conngrpc, so every layer (the supervisor included) uses it.
"""

from __future__ import annotations

import math

__all__ = ["MAX_SECONDS", "check_count", "check_seconds"]

#: The longest duration conngrpc accepts: grpc takes milliseconds as a C int, and
#: 2**31 - 1 ms is a little under 24.9 days. Longer values would overflow in grpc
#: (``OverflowError``) on every attempt, so they fail where they are written.
MAX_SECONDS = (2**31 - 1) / 1000


def check_seconds(
    where: str, value: object, *, zero: bool = False, infinite: bool = False
) -> float:
    """``value`` as seconds: a real number > 0 (>= 0 with ``zero``) and <= MAX_SECONDS.

    ``infinite`` also admits ``math.inf`` (wait for ever).

    :raises TypeError: ``value`` is not an int or a float (a bool is not a number here).
    :raises ValueError: it is NaN, negative, zero when that is not allowed, or too long.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: expected seconds (an int or a float), got {value!r}")
    lowest = ">= 0" if zero else "> 0"
    highest = f"<= {MAX_SECONDS:g}" + (" or math.inf" if infinite else "")
    in_range = (value >= 0 if zero else value > 0) and (
        value <= MAX_SECONDS or (infinite and value == math.inf)
    )
    if not in_range:  # NaN fails every comparison, so it lands here too
        raise ValueError(f"{where}: expected seconds {lowest} and {highest}, got {value!r}")
    return float(value)


def check_count(where: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (a bool is not a count).

    :raises TypeError: ``value`` is not an int.
    :raises ValueError: it is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: expected an int >= {minimum}, got {value!r}")
    return value
