"""OpenDP noise: calibrated to the budget, and 95% intervals that cover 95% of the time."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.release import noise


def test_calibration_never_exceeds_the_budget() -> None:
    for sensitivity in (1, 2, 5):
        for epsilon in ("0.1", "0.3", "1"):
            mechanism = noise.integer_noise(sensitivity, Decimal(epsilon))
            assert mechanism._measurement.map(sensitivity) <= float(epsilon)
            assert mechanism.scale == pytest.approx(sensitivity / float(epsilon))
    sums = noise.float_noise(4.0, Decimal("0.5"))
    assert sums._measurement.map(4.0) <= 0.5


def test_threshold_selection_fits_epsilon_and_delta() -> None:
    selection = noise.threshold_noise(2, Decimal("0.5"), Decimal("1e-7"))
    epsilon, delta = selection._measurement.map((2, 2, 1))
    assert epsilon <= 0.5 and delta <= 1e-7
    smaller = noise.threshold_noise(2, Decimal("0.5"), Decimal("1e-5"))
    assert smaller.threshold < selection.threshold  # more delta, lower threshold
    released = selection.release({"big": 10_000, "tiny": 1})
    assert "big" in released and "tiny" not in released


def test_calibration_is_cached() -> None:
    assert noise.integer_noise(3, Decimal("0.7")) is noise.integer_noise(3, Decimal("0.7"))


@pytest.mark.slow
def test_95_percent_intervals_cover_about_95_percent() -> None:
    counts = noise.integer_noise(1, Decimal("0.5"))
    sums = noise.float_noise(3.0, Decimal("0.5"))
    true_counts = [50] * 4000
    true_sums = [120.0] * 4000
    released = counts.release(true_counts)
    released_sums = sums.release(true_sums)
    half = counts.half_width()
    covered = sum(abs(v - 50) <= half for v in released) / len(released)
    sum_half = sums.half_width()
    covered_sums = sum(abs(v - 120.0) <= sum_half for v in released_sums) / len(released_sums)
    # 4000 draws: the binomial standard error is about 0.35 percentage points.
    assert 0.93 <= covered <= 0.985
    assert 0.93 <= covered_sums <= 0.97


def test_counts_under_a_large_scale_are_never_clamped_to_a_32_bit_sentinel() -> None:
    # At a scale of 10^12 a 32-bit sampler saturates at 2^31 - 1 nearly every time.
    wide = noise.integer_noise(1, Decimal("1e-12"))
    values = wide.release([5] * 50)
    assert all(abs(v) not in (2**31 - 1, 2**31) for v in values)
    assert max(abs(v) for v in values) > 2**31  # 64-bit integers: the noise is what it is
