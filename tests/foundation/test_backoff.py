"""The shared backoff formula: doubling, the cap, and the jitter band."""

import pytest

from gatewayd.backoff import backoff_delay


def test_doubles_from_base_until_the_cap() -> None:
    delays = [backoff_delay(n, base=1.0, cap=10.0, low=1.0, high=1.0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_attempt_zero_or_negative_counts_as_the_first() -> None:
    assert backoff_delay(0, base=3.0, cap=100.0, low=1.0, high=1.0) == 3.0
    assert backoff_delay(-5, base=3.0, cap=100.0, low=1.0, high=1.0) == 3.0


def test_huge_attempt_stays_at_the_cap() -> None:
    assert backoff_delay(10_000, base=1.0, cap=60.0, low=1.0, high=1.0) == 60.0


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (0.5, 1.0), (0.75, 1.25), (0.8, 1.2)])
def test_jitter_stays_in_its_band(low: float, high: float) -> None:
    assert backoff_delay(3, base=2.0, cap=100.0, low=low, high=high, rng=lambda: 0.0) == 8.0 * low
    assert backoff_delay(3, base=2.0, cap=100.0, low=low, high=high, rng=lambda: 1.0) == 8.0 * high


def test_nonsense_bands_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay(1, base=1.0, cap=1.0, low=0.9, high=0.1)
