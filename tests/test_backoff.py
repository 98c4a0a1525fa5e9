"""ExponentialBackoff: waits grow from min by the multiplier, capped at max, with jitter."""

from __future__ import annotations

import copy
import random

from hypothesis import given
from hypothesis import strategies as st

import conngrpc
from conngrpc import ChannelConfig, ExponentialBackoff
from conngrpc._checks import MAX_SECONDS


def _waits(backoff: conngrpc.Backoff, count: int) -> list[float]:
    return [backoff.next() for _ in range(count)]


def test_without_jitter_the_waits_double_from_min() -> None:
    backoff = ExponentialBackoff(min=0.5, max=100.0, jitter=0)
    assert _waits(backoff, 5) == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_without_jitter_the_waits_are_capped_at_max_and_stay_there() -> None:
    backoff = ExponentialBackoff(min=1.0, max=5.0, jitter=0)
    assert _waits(backoff, 7) == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_the_multiplier_sets_the_growth() -> None:
    backoff = ExponentialBackoff(min=1.0, max=100.0, multiplier=3, jitter=0)
    assert _waits(backoff, 4) == [1.0, 3.0, 9.0, 27.0]


def test_the_defaults_are_upstreams_one_to_thirty_seconds() -> None:
    backoff = ExponentialBackoff(jitter=0)
    assert _waits(backoff, 7) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def _bases(minimum: float, maximum: float, multiplier: float, jitter: float, n: int) -> list[float]:
    """The unstretched waits: growing from min, stopping where a stretched wait hits max."""
    ceiling = max(minimum, maximum / (1 + jitter))
    bases, base = [], minimum
    for _ in range(n):
        bases.append(base)
        base = min(ceiling, base * multiplier)
    return bases


def test_with_jitter_each_wait_lies_between_its_base_and_the_stretched_base() -> None:
    jitter = 0.5
    backoff = ExponentialBackoff(min=1.0, max=20.0, jitter=jitter, rng=random.Random(1))
    bases = _bases(1.0, 20.0, 2.0, jitter, 7)
    assert bases == [1.0, 2.0, 4.0, 8.0, 20 / 1.5, 20 / 1.5, 20 / 1.5]
    for base, wait in zip(bases, _waits(backoff, len(bases)), strict=True):
        assert base <= wait <= min(20.0, base * (1 + jitter))


def test_waits_at_the_cap_stay_spread_below_max() -> None:
    backoff = ExponentialBackoff(min=1.0, max=30.0, jitter=0.2, rng=random.Random(3))
    at_cap = _waits(backoff, 40)[-20:]
    assert all(30.0 / 1.2 <= wait <= 30.0 for wait in at_cap)
    assert len(set(at_cap)) > 10  # channels that failed together do not retry together


def test_with_jitter_the_waits_are_not_all_the_base() -> None:
    backoff = ExponentialBackoff(min=1.0, max=1000.0, jitter=1.0, rng=random.Random(7))
    bases = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert _waits(backoff, len(bases)) != bases


def test_the_same_seed_gives_the_same_waits() -> None:
    first = ExponentialBackoff(min=0.1, max=10.0, rng=random.Random(42))
    second = ExponentialBackoff(min=0.1, max=10.0, rng=random.Random(42))
    assert _waits(first, 8) == _waits(second, 8)


@given(
    minimum=st.floats(min_value=1e-3, max_value=100.0),
    spread=st.floats(min_value=1.0, max_value=1000.0),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_wait_lies_within_min_and_max_above_a_non_decreasing_base(
    minimum: float, spread: float, multiplier: float, jitter: float, seed: int
) -> None:
    maximum = minimum * spread
    backoff = ExponentialBackoff(
        minimum, maximum, multiplier=multiplier, jitter=jitter, rng=random.Random(seed)
    )
    bases = _bases(minimum, maximum, multiplier, jitter, 40)
    assert bases == sorted(bases)
    for base, wait in zip(bases, _waits(backoff, len(bases)), strict=True):
        assert minimum <= base <= wait <= min(maximum, base * (1 + jitter)) * (1 + 1e-12)


def test_reset_goes_back_to_min() -> None:
    backoff = ExponentialBackoff(min=1.0, max=30.0, jitter=0)
    _waits(backoff, 4)
    backoff.reset()
    assert _waits(backoff, 3) == [1.0, 2.0, 4.0]


def test_a_copy_advances_independently_of_the_original() -> None:
    original = ExponentialBackoff(min=1.0, max=30.0, jitter=0)
    _waits(original, 2)
    duplicate = copy.copy(original)
    assert _waits(duplicate, 3) == [4.0, 8.0, 16.0]
    assert _waits(original, 1) == [4.0]


def test_a_fresh_copy_starts_at_min_while_the_original_advances() -> None:
    original = ExponentialBackoff(min=1.0, max=30.0, jitter=0)
    duplicate = copy.copy(original)
    _waits(original, 3)
    assert _waits(duplicate, 2) == [1.0, 2.0]


def test_a_huge_multiplier_caps_at_max_instead_of_overflowing() -> None:
    backoff = ExponentialBackoff(min=1e-300, max=MAX_SECONDS, multiplier=1e300, jitter=0)
    assert _waits(backoff, 4) == [1e-300, 1.0, MAX_SECONDS, MAX_SECONDS]


class _ConstantBackoff:
    """A backoff with nothing but the protocol's two methods."""

    def __init__(self) -> None:
        self.resets = 0

    def next(self) -> float:
        return 0.25

    def reset(self) -> None:
        self.resets += 1


def test_an_object_with_next_and_reset_is_a_backoff() -> None:
    assert isinstance(_ConstantBackoff(), conngrpc.Backoff)


def test_an_object_without_reset_is_not_a_backoff() -> None:
    class OnlyNext:
        def next(self) -> float:
            return 1.0

    assert not isinstance(OnlyNext(), conngrpc.Backoff)


def test_exponential_backoff_is_a_backoff() -> None:
    assert isinstance(ExponentialBackoff(), conngrpc.Backoff)


def test_a_custom_backoff_passes_channel_config_validation() -> None:
    backoff = _ConstantBackoff()
    config = ChannelConfig("localhost:50051", backoff=backoff)
    assert config.backoff is backoff
