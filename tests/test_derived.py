"""Derived statistics from noisy measurements: kappa against a textbook reference,
delta-method variances against numerical gradients, interval coverage under OpenDP
noise, and the invariants of every interval (Hypothesis)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.release import noise
from gateway.release.derived import (
    ALL_FIXES,
    FIX_TEXT,
    Z95,
    Derived,
    Fix,
    Noisy,
    conversion,
    exact_agreement,
    gap,
    rate,
    share,
    total,
    uncertain_note,
    weighted_kappa,
)

Table = list[list[float]]
Named = Literal["quadratic", "linear", "unweighted"]
NAMED: tuple[Named, ...] = ("quadratic", "linear", "unweighted")


def noise_free(table: Table) -> list[list[Noisy]]:
    return [[Noisy.exact(v) for v in row] for row in table]


def with_variance(table: Table, variance: float) -> list[list[Noisy]]:
    return [[Noisy(v, variance) for v in row] for row in table]


def cohen_1968(table: Table, weights: Named) -> float:
    """Weighted kappa as Cohen (1968) defines it, with *disagreement* weights v_ij:
    kappa_w = 1 - sum(v_ij * po_ij) / sum(v_ij * pc_ij), where po are the observed
    proportions and pc = row share * column share the proportions expected by chance.
    Quadratic v = (i - j)^2, linear v = |i - j|, unweighted v = 0 on the diagonal, else 1.
    """
    k = len(table)
    n = sum(sum(row) for row in table)
    rows = [sum(table[i][j] for j in range(k)) / n for i in range(k)]
    cols = [sum(table[i][j] for i in range(k)) / n for j in range(k)]

    def v(i: int, j: int) -> float:
        if weights == "quadratic":
            return float((i - j) ** 2)
        if weights == "linear":
            return float(abs(i - j))
        return 0.0 if i == j else 1.0

    observed = sum(v(i, j) * table[i][j] / n for i in range(k) for j in range(k))
    chance = sum(v(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k))
    return 1.0 - observed / chance


MODERATE: Table = [
    [40.0, 12.0, 3.0, 1.0],
    [10.0, 55.0, 14.0, 2.0],
    [2.0, 12.0, 48.0, 9.0],
    [0.0, 3.0, 10.0, 30.0],
]


# --- kappa and exact agreement -------------------------------------------------------------


def test_perfect_agreement_gives_kappa_1_and_exact_agreement_1() -> None:
    table = [[25.0, 0, 0], [0, 40.0, 0], [0, 0, 15.0]]
    for weights in NAMED:
        result = weighted_kappa(noise_free(table), weights=weights)
        assert result.value == pytest.approx(1.0)
        assert result.ci95 == pytest.approx((1.0, 1.0))
        assert result.usable and result.note is None
    assert exact_agreement(noise_free(table)).value == pytest.approx(1.0)


def test_independent_raters_give_kappa_0() -> None:
    rows, cols = [0.2, 0.5, 0.3], [0.1, 0.6, 0.3]
    table = [[1000 * r * c for c in cols] for r in rows]
    for weights in NAMED:
        result = weighted_kappa(noise_free(table), weights=weights)
        assert result.value == pytest.approx(0.0, abs=1e-12)
    expected_agreement = sum(r * c for r, c in zip(rows, cols, strict=True))
    assert exact_agreement(noise_free(table)).value == pytest.approx(expected_agreement)


@pytest.mark.parametrize("weights", NAMED)
def test_kappa_matches_cohen_1968_on_noise_free_tables(weights: Named) -> None:
    rng = random.Random(20240611)
    for _ in range(50):
        k = rng.randint(2, 6)
        table = [[float(rng.randint(0, 40)) for _ in range(k)] for _ in range(k)]
        table[0][0] += 1  # never an all-zero table
        table[k - 1][k - 1] += 1  # two scores used: chance disagreement is never 0
        got = weighted_kappa(noise_free(table), weights=weights)
        assert got.value == pytest.approx(cohen_1968(table, weights), abs=1e-12)


def test_custom_weights_equal_the_named_ones() -> None:
    k = 4
    quadratic = [[1 - (i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)]
    named = weighted_kappa(with_variance(MODERATE, 2.0), weights="quadratic")
    custom = weighted_kappa(with_variance(MODERATE, 2.0), weights=quadratic)
    assert custom == named


def test_kappa_is_computed_when_cells_are_small_zero_or_negative() -> None:
    # What reports.weighted_kappa refuses ("not computed: a cell is suppressed"):
    # small cells, zeros and negative noisy counts all keep their place in the table.
    table = [[4.0, 0.0, 1.0], [-1.0, 2.0, 1.0], [0.0, 2.0, 3.0]]
    result = weighted_kappa(with_variance(table, 8.0))
    assert result.value is not None and result.ci95 is not None
    assert "not computed" not in (result.note or "")
    assert result.value == pytest.approx(cohen_1968(table, "quadratic"))
    # a handful of teachers: too uncertain to use, and the note says what would help
    assert not result.usable
    assert result.note is not None and "too uncertain to use" in result.note
    assert "pool more years" in result.note
    agreement = exact_agreement(with_variance(table, 8.0))
    assert agreement.value == pytest.approx(9 / 12)
    assert agreement.ci95 is not None and not agreement.usable


def test_negative_row_totals_are_clipped_and_said() -> None:
    # Row 2 totals -2: its negative cells become 0. The -1 of row 1 stays: its row
    # and column totals are positive, and the raw count keeps the totals unbiased.
    table = [[20.0, 5.0, -1.0], [-3.0, -1.0, 2.0], [2.0, 4.0, 18.0]]
    result = weighted_kappa(with_variance(table, 2.0))
    clipped = [[20.0, 5.0, -1.0], [0.0, 0.0, 2.0], [2.0, 4.0, 18.0]]
    assert result.value == pytest.approx(cohen_1968(clipped, "quadratic"))
    assert result.note is not None and "2 negative noisy count(s) set to 0" in result.note


def test_a_kappa_without_meaning_says_why() -> None:
    empty = weighted_kappa(with_variance([[0.0, -1.0], [-2.0, 0.0]], 2.0))
    assert empty.value is None and empty.ci95 is None and not empty.usable
    assert empty.note is not None and "0 or less" in empty.note
    assert "pool more years" in empty.note
    one_score = weighted_kappa(with_variance([[9.0, 0.0], [0.0, 0.0]], 2.0))
    assert one_score.value is None and one_score.note is not None
    assert "by chance" in one_score.note


def test_table_shape_and_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="square"):
        weighted_kappa([[Noisy.exact(1), Noisy.exact(2)]])
    with pytest.raises(ValueError, match="diagonal"):
        weighted_kappa(noise_free([[1.0, 2.0], [3.0, 4.0]]), weights=[[0.5, 0], [0, 1]])
    with pytest.raises(ValueError, match="unknown weights"):
        weighted_kappa(noise_free([[1.0, 2.0], [3.0, 4.0]]), weights="cubic")  # type: ignore[arg-type]


# --- delta method against numerical gradients --------------------------------------------


def numerical_variance(
    f: Callable[[Sequence[float]], float], values: Sequence[float], variances: Sequence[float]
) -> float:
    """sum_i (df/dx_i)^2 Var_i with central differences (independent inputs)."""
    out = 0.0
    for i, (x, v) in enumerate(zip(values, variances, strict=True)):
        h = 1e-4 * max(1.0, abs(x))
        up, down = list(values), list(values)
        up[i], down[i] = x + h, x - h
        out += ((f(up) - f(down)) / (2 * h)) ** 2 * v
    return out


@pytest.mark.parametrize("weights", NAMED)
def test_kappa_variance_matches_a_numerical_gradient(weights: Named) -> None:
    rng = random.Random(7)
    k = len(MODERATE)
    flat = [v for row in MODERATE for v in row]
    variances = [rng.uniform(0.5, 20.0) for _ in flat]

    def kappa(values: Sequence[float]) -> float:
        rows = [list(values[i * k : (i + 1) * k]) for i in range(k)]
        return cohen_1968(rows, weights)

    table = [[Noisy(flat[i * k + j], variances[i * k + j]) for j in range(k)] for i in range(k)]
    result = weighted_kappa(table, weights=weights)
    assert result.standard_error is not None
    assert result.standard_error**2 == pytest.approx(
        numerical_variance(kappa, flat, variances), rel=1e-6
    )


def test_share_and_rate_variances_match_a_numerical_gradient() -> None:
    part, rest = Noisy(30.0, 8.0), Noisy(70.0, 3.0)
    got = share(part=part, rest=rest).standard_error
    assert got is not None
    expected = numerical_variance(lambda x: x[0] / (x[0] + x[1]), [30.0, 70.0], [8.0, 3.0])
    assert got**2 == pytest.approx(expected, rel=1e-6)

    numerator, denominator = Noisy(40.0, 8.0), Noisy(90.0, 5.0)
    got = rate(numerator=numerator, denominator=denominator).standard_error
    assert got is not None
    expected = numerical_variance(lambda x: x[0] / x[1], [40.0, 90.0], [8.0, 5.0])
    assert got**2 == pytest.approx(expected, rel=1e-6)


def test_share_counts_the_parts_noise_in_the_whole() -> None:
    # part / (part + rest) is not part / whole with an independent whole: the
    # whole's noise holds the part's, and the variance is smaller for it.
    part, rest = Noisy(30.0, 8.0), Noisy(70.0, 8.0)
    nested = share(part=part, rest=rest)
    separate = rate(numerator=part, denominator=total([part, rest]))
    assert nested.value == pytest.approx(separate.value)
    assert nested.standard_error is not None and separate.standard_error is not None
    assert nested.standard_error < separate.standard_error


# --- shares, rates, conversions, gaps ------------------------------------------------------


def test_exact_inputs_give_zero_width_intervals() -> None:
    result = share(part=Noisy.exact(25), rest=Noisy.exact(75))
    assert result == Derived(
        value=0.25, ci95=(0.25, 0.25), note=None, usable=True, standard_error=0.0
    )


def test_a_denominator_of_zero_or_less_gives_no_value_and_says_why() -> None:
    for result in (
        rate(numerator=Noisy(3, 2.0), denominator=Noisy(0, 2.0)),
        share(part=Noisy(-4, 2.0), rest=Noisy(1, 2.0)),
        conversion(from_stage=Noisy(-2, 2.0), to_stage=Noisy(5, 2.0)),
    ):
        assert result.value is None and result.ci95 is None and not result.usable
        assert result.note is not None
        assert "0 or less" in result.note and "nothing to divide by" in result.note
        assert "not computed" not in result.note
        assert "pool more years" in result.note


def test_a_conversion_above_1_is_clipped_and_said() -> None:
    result = conversion(from_stage=Noisy(40, 8.0), to_stage=Noisy(43, 8.0))
    assert result.value == 1.0
    assert result.ci95 is not None and result.ci95[1] == 1.0 and result.ci95[0] < 1.0
    assert result.note is not None and "later stage exceeds the noisy earlier stage" in result.note
    below = rate(numerator=Noisy(-2, 8.0), denominator=Noisy(50, 8.0))
    assert below.value == 0.0 and below.note is not None and "below 0" in below.note


def test_gap_is_a_difference_with_summed_variances() -> None:
    result = gap(minuend=Noisy.exact(30), subtrahend=Noisy(12, 9.0))
    assert result.value == 18
    assert result.ci95 == pytest.approx((18 - Z95 * 3, 18 + Z95 * 3))
    assert result.usable and result.note is None
    unsure = gap(minuend=Noisy(5, 9.0), subtrahend=Noisy(3, 9.0))
    assert unsure.usable and unsure.note is not None and "includes 0" in unsure.note


def test_count_variance_is_the_discrete_laplace_variance() -> None:
    scale = noise.integer_noise(1, Decimal("0.5")).scale
    a = math.exp(-1 / scale)
    # P(Z = z) = (1 - a) / (1 + a) * a^|z|: the variance summed over the support
    direct = sum(z * z * (1 - a) / (1 + a) * a ** abs(z) for z in range(-2000, 2001))
    assert Noisy.count(7, scale=scale).variance == pytest.approx(direct, rel=1e-9)
    assert Noisy.laplace(1.5, scale=3.0).variance == 18.0
    assert Noisy.exact(4).variance == 0.0


def test_the_note_names_only_the_fixes_that_apply() -> None:
    wide = share(part=Noisy(3, 8.0), rest=Noisy(4, 8.0), fixes=("more_budget",))
    assert not wide.usable and wide.note is not None
    assert "spend more budget" in wide.note
    assert "pool more years" not in wide.note and "coarser level" not in wide.note
    assert uncertain_note((0.1, 0.55), range_width=1.0) is None
    assert uncertain_note((0.1, 0.61), range_width=1.0) is not None
    assert uncertain_note((-0.2, 0.7), range_width=2.0) is None
    with pytest.raises(ValueError, match="at least one fix"):
        share(part=Noisy(3, 8.0), rest=Noisy(40, 8.0), fixes=())


def test_to_json_rounds_and_keeps_the_shape() -> None:
    result = share(part=Noisy(1, 0.0), rest=Noisy(2, 0.0))
    assert result.to_json() == {
        "value": 0.3333,
        "ci95": [0.3333, 0.3333],
        "note": None,
        "usable": True,
    }


# --- coverage under OpenDP noise ----------------------------------------------------------


def _coverage(repetitions: int, epsilon: str) -> tuple[float, float, float]:
    """Empirical coverage of the 95% intervals of a share, a rate and a kappa, each
    from counts drawn with OpenDP's discrete Laplace (noise.py), as a release draws them."""
    mechanism = noise.integer_noise(1, Decimal(epsilon))
    scale = mechanism.scale

    def noisy(counts: list[int]) -> list[Noisy]:
        return [Noisy.count(v, scale=scale) for v in mechanism.release(counts)]

    true_share = 30 / (30 + 90)
    true_rate = 45 / 60
    k = len(MODERATE)
    flat = [int(v) for row in MODERATE for v in row]
    true_kappa = cohen_1968(MODERATE, "quadratic")

    hits = {"share": 0, "rate": 0, "kappa": 0}
    # One OpenDP call per statistic draws every repetition's cells at once.
    shares = noisy([30, 90] * repetitions)
    rates = noisy([45, 60] * repetitions)
    tables = noisy(flat * repetitions)
    for r in range(repetitions):
        s = share(part=shares[2 * r], rest=shares[2 * r + 1])
        q = rate(numerator=rates[2 * r], denominator=rates[2 * r + 1])
        cells = tables[r * k * k : (r + 1) * k * k]
        kappa = weighted_kappa([cells[i * k : (i + 1) * k] for i in range(k)])
        for name, result, truth in (
            ("share", s, true_share),
            ("rate", q, true_rate),
            ("kappa", kappa, true_kappa),
        ):
            assert result.ci95 is not None
            hits[name] += result.ci95[0] <= truth <= result.ci95[1]
    return (
        hits["share"] / repetitions,
        hits["rate"] / repetitions,
        hits["kappa"] / repetitions,
    )


def test_95_percent_intervals_cover_at_least_90_percent() -> None:
    # 400 draws: the binomial standard error at 95% is about 1.1 points, so 0.9 is
    # more than four standard errors below the target.
    share_cov, rate_cov, kappa_cov = _coverage(400, "0.5")
    assert share_cov >= 0.9
    assert rate_cov >= 0.9
    assert kappa_cov >= 0.9


@pytest.mark.slow
def test_95_percent_intervals_cover_about_95_percent() -> None:
    # 5000 draws at a smaller epsilon (wider noise): standard error about 0.3 points.
    for epsilon in ("0.5", "0.2"):
        share_cov, rate_cov, kappa_cov = _coverage(5000, epsilon)
        assert 0.935 <= share_cov <= 0.99
        assert 0.935 <= rate_cov <= 0.99
        assert 0.935 <= kappa_cov <= 0.99


# --- invariants (Hypothesis) --------------------------------------------------------------

noisy_counts = st.builds(
    Noisy,
    st.floats(min_value=-50, max_value=500, allow_nan=False),
    st.floats(min_value=0, max_value=400, allow_nan=False),
)
growth = st.floats(min_value=1.0, max_value=50.0)
fix_lists = st.lists(st.sampled_from(ALL_FIXES), min_size=1, max_size=3, unique=True)


def inflated(m: Noisy, factor: float) -> Noisy:
    return Noisy(m.value, m.variance * factor)


def check_interval(result: Derived, low: float, high: float) -> None:
    if result.value is None:
        assert result.ci95 is None and not result.usable and result.note
        return
    assert result.ci95 is not None
    lo, hi = result.ci95
    assert low <= lo <= result.value <= hi <= high


def check_rule(result: Derived, range_width: float, fixes: Sequence[Fix]) -> None:
    if result.ci95 is None:
        return
    if result.ci95[1] - result.ci95[0] > range_width / 2:
        assert not result.usable
        assert result.note is not None and "too uncertain to use" in result.note
        assert any(FIX_TEXT[f] in result.note for f in fixes)
    else:
        assert result.usable


def contains(wider: Derived, narrower: Derived) -> bool:
    assert wider.ci95 is not None and narrower.ci95 is not None
    return wider.ci95[0] <= narrower.ci95[0] + 1e-12 and wider.ci95[1] >= narrower.ci95[1] - 1e-12


@settings(max_examples=300, deadline=None)
@given(a=noisy_counts, b=noisy_counts, factor=growth, fixes=fix_lists)
def test_share_rate_conversion_intervals(
    a: Noisy, b: Noisy, factor: float, fixes: list[Fix]
) -> None:
    makers: list[Callable[[Noisy, Noisy], Derived]] = [
        lambda x, y: share(part=x, rest=y, fixes=fixes),
        lambda x, y: rate(numerator=x, denominator=y, fixes=fixes),
        lambda x, y: conversion(from_stage=y, to_stage=x, fixes=fixes),
    ]
    for make in makers:
        result = make(a, b)
        check_interval(result, 0.0, 1.0)
        check_rule(result, 1.0, fixes)
        wider = make(inflated(a, factor), inflated(b, factor))
        check_interval(wider, 0.0, 1.0)
        check_rule(wider, 1.0, fixes)
        if result.value is not None:
            assert wider.value == result.value
            assert contains(wider, result)


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(min_value=2, max_value=4),
    cells=st.lists(noisy_counts, min_size=16, max_size=16),
    factor=growth,
    weights=st.sampled_from(NAMED),
)
def test_kappa_and_agreement_intervals(
    k: int, cells: list[Noisy], factor: float, weights: Named
) -> None:
    table = [cells[i * k : (i + 1) * k] for i in range(k)]
    bigger = [[inflated(c, factor) for c in row] for row in table]
    kappa = weighted_kappa(table, weights=weights)
    check_interval(kappa, -1.0, 1.0)
    check_rule(kappa, 2.0, ALL_FIXES)
    wider = weighted_kappa(bigger, weights=weights)
    check_interval(wider, -1.0, 1.0)
    if kappa.value is not None:
        assert contains(wider, kappa)
    agreement = exact_agreement(table)
    check_interval(agreement, 0.0, 1.0)
    check_rule(agreement, 1.0, ALL_FIXES)
    if agreement.value is not None:
        assert contains(exact_agreement(bigger), agreement)


@settings(max_examples=200, deadline=None)
@given(a=noisy_counts, b=noisy_counts, factor=growth)
def test_gap_intervals(a: Noisy, b: Noisy, factor: float) -> None:
    result = gap(minuend=a, subtrahend=b)
    wider = gap(minuend=inflated(a, factor), subtrahend=inflated(b, factor))
    assert result.ci95 is not None and result.value is not None
    assert result.ci95[0] <= result.value <= result.ci95[1]
    assert contains(wider, result)
