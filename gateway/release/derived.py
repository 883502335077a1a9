"""Derived statistics: post-processing of noisy measurements, each with a 95% interval.

Every input is a :class:`Noisy` measurement (a noisy value and the variance of
its noise), never a true aggregate, so everything here is post-processing and
costs no budget. Every output is a :class:`Derived`: a value, its 95% interval
from the noise, a note, and whether it is usable.

Invariants, and why:

- nothing is refused because an intermediate cell is small: a statistic is
  computed from the noisy measurements of the *full* table (a suppressed cell
  still has a noisy measurement) and its interval says how much it is worth;
  a value is missing only when it has no meaning (a noisy denominator of 0 or
  less, a kappa whose chance agreement is 1), and the note says which;
- a share, rate, conversion or kappa whose interval spans more than half its
  range is marked ``usable=False`` with a note saying it is too uncertain to use
  and what would narrow it (pool more years, a coarser level, more budget);
- no random draw: intervals are analytic (the delta method, cells' noise being
  independent), so a derived statistic is deterministic; every noise draw of the
  gateway stays in ``noise.py``, the one module that calls OpenDP.

The intervals are ``estimate +- Z95 * standard error``, clipped to the
statistic's range. ``Z95`` is ln(20)/sqrt(2) ~ 2.118 standard deviations, not the
normal 1.96: the noise is Laplace, heavier-tailed than normal, and 1.96 standard
deviations covers only 93.7% of one Laplace draw; 2.118 covers exactly 95% of one
Laplace draw, and 95.5% to 96.6% of sums of several (the normal limit).
When the estimate falls outside the range (a noisy part above its whole), the
value is clipped to the range and the interval is centred on the clipped value:
a superset of the clipped raw interval, so coverage is no worse, and never a
zero-width interval that would claim certainty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

#: Half-width of a 95% interval in standard deviations: the exact 95% point of a
#: Laplace variable (ln 20 scales of sqrt(2) each); conservative for sums of them.
Z95 = math.log(20.0) / math.sqrt(2.0)

Fix = Literal["pool_years", "coarser_level", "more_budget"]
#: What narrows an interval, in the words a note uses, in the order it names them.
FIX_TEXT: dict[Fix, str] = {
    "pool_years": "pool more years",
    "coarser_level": "use a coarser level",
    "more_budget": "spend more budget",
}
ALL_FIXES: tuple[Fix, ...] = ("pool_years", "coarser_level", "more_budget")

Weights = Literal["quadratic", "linear", "unweighted"] | Sequence[Sequence[float]]

_Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Noisy:
    """A noisy measurement: its released ``value`` and the ``variance`` of its noise.

    Build one with :meth:`count`, :meth:`laplace` or :meth:`exact` when the noise
    scale is known; :func:`total` adds independently noised measurements.
    """

    value: float
    variance: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError("a noisy value must be a finite number")
        if not (math.isfinite(self.variance) and self.variance >= 0):
            raise ValueError("a noise variance must be a finite number, 0 or more")

    @classmethod
    def count(cls, value: float, *, scale: float) -> Noisy:
        """A count with discrete Laplace noise of ``scale`` (``noise.IntegerNoise.scale``):
        P(Z = z) is proportional to a^|z| with a = exp(-1/scale), variance 2a/(1-a)^2."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError("a noise scale must be a finite number above 0")
        a = math.exp(-1.0 / scale)
        return cls(float(value), 2.0 * a / math.expm1(-1.0 / scale) ** 2)

    @classmethod
    def laplace(cls, value: float, *, scale: float) -> Noisy:
        """A sum with continuous Laplace noise of ``scale``: variance 2 scale^2."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError("a noise scale must be a finite number above 0")
        return cls(float(value), 2.0 * scale * scale)

    @classmethod
    def exact(cls, value: float) -> Noisy:
        """A quantity released exactly (posted positions): no noise."""
        return cls(float(value), 0.0)

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.variance)


def total(measurements: Iterable[Noisy]) -> Noisy:
    """The sum of measurements whose noise is independent (distinct cells of one
    release, or separate releases): values add, and so do variances.
    Never add a measurement to itself or to a total that already holds it."""
    value = variance = 0.0
    for m in measurements:
        value += m.value
        variance += m.variance
    return Noisy(value, variance)


@dataclass(frozen=True, slots=True, kw_only=True)
class Derived:
    """A derived statistic as it may be shown.

    ``value`` is None only when the statistic has no meaning for these noisy
    measurements (then ``ci95`` is None and ``note`` says why). ``ci95`` is the
    95% interval from the noise, within the statistic's range, and always holds
    ``value``. ``usable`` is False when there is no value or the interval is too
    wide to use; ``note`` then says why and what would fix it. ``standard_error``
    is the delta-method standard error of the estimate before clipping.
    """

    value: float | None
    ci95: tuple[float, float] | None
    note: str | None
    usable: bool
    standard_error: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The one serialisation: value and interval rounded to 4 decimals."""
        return {
            "value": None if self.value is None else round(self.value, 4),
            "ci95": None if self.ci95 is None else [round(b, 4) for b in self.ci95],
            "note": self.note,
            "usable": self.usable,
        }


# --- the uncertainty rule -----------------------------------------------------------------


def _fix_text(fixes: Sequence[Fix]) -> str:
    if not fixes:
        raise ValueError("name at least one fix (pool_years, coarser_level, more_budget)")
    unknown = [f for f in fixes if f not in FIX_TEXT]
    if unknown:
        raise ValueError(f"unknown fix {unknown[0]!r} (fixes: {', '.join(FIX_TEXT)})")
    words = [FIX_TEXT[f] for f in ALL_FIXES if f in fixes]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])}, or {words[-1]}"


def uncertain_note(
    ci95: tuple[float, float], *, range_width: float, fixes: Sequence[Fix] = ALL_FIXES
) -> str | None:
    """The note for an interval wider than half the statistic's range (``range_width``
    is 1 for a share in [0, 1], 2 for a kappa in [-1, 1]), naming what would narrow
    it; None for an interval narrow enough to use."""
    low, high = ci95
    if high - low <= range_width / 2:
        return None
    return (
        f"too uncertain to use: the 95% interval ({low:.2f} to {high:.2f}) spans more "
        f"than half the possible range; to narrow it, {_fix_text(fixes)}"
    )


def _bounded(
    estimate: float,
    variance: float,
    *,
    low: float,
    high: float,
    fixes: Sequence[Fix],
    notes: Sequence[str] = (),
) -> Derived:
    """A statistic in [low, high] from its raw estimate and delta-method variance."""
    _fix_text(fixes)  # a bad list of fixes fails every time, not only on a wide interval
    value = min(max(estimate, low), high)
    half = Z95 * math.sqrt(max(variance, 0.0))
    ci = (max(value - half, low), min(value + half, high))
    wide = uncertain_note(ci, range_width=high - low, fixes=fixes)
    all_notes = [*notes, *([wide] if wide else [])]
    return Derived(
        value=value,
        ci95=ci,
        note="; ".join(all_notes) or None,
        usable=wide is None,
        standard_error=math.sqrt(max(variance, 0.0)),
    )


def _no_value(reason: str, fixes: Sequence[Fix] | None) -> Derived:
    """No value, and why; with ``fixes``, what would give one."""
    note = reason if fixes is None else f"{reason}; to get one, {_fix_text(fixes)}"
    return Derived(value=None, ci95=None, note=note, usable=False)


# --- shares, rates, conversions, gaps -----------------------------------------------------


def _ratio(
    numerator: float, denominator: float, var_num: float, var_den: float, cov: float
) -> tuple[float, float]:
    """n/d and its delta-method variance: Vn/d^2 + n^2 Vd/d^4 - 2 n Cov/d^3."""
    r = numerator / denominator
    # Divided by d twice, not by d^2, which underflows to 0 for a tiny float sum.
    variance = (var_num + r * r * var_den - 2.0 * r * cov) / denominator / denominator
    if not (math.isfinite(r) and math.isfinite(variance)):
        return r, math.inf  # a denominator too near 0: the interval is the whole range
    return r, max(variance, 0.0)


def _ratio_in_unit(
    numerator: Noisy,
    denominator: Noisy,
    *,
    covariance: float,
    what: str,
    over: str,
    fixes: Sequence[Fix],
) -> Derived:
    if denominator.value <= 0:
        return _no_value(
            f"no value: the noisy {over} is {denominator.value:g}, 0 or less, "
            "so there is nothing to divide by",
            fixes,
        )
    r, variance = _ratio(
        numerator.value, denominator.value, numerator.variance, denominator.variance, covariance
    )
    notes = []
    if r > 1:
        notes.append(f"the noisy {what} exceeds the noisy {over}: shown as 1, its largest value")
    elif r < 0:
        notes.append(f"the noisy {what} is below 0: shown as 0, its smallest value")
    return _bounded(r, variance, low=0.0, high=1.0, fixes=fixes, notes=notes)


def share(*, part: Noisy, rest: Noisy, fixes: Sequence[Fix] = ALL_FIXES) -> Derived:
    """part / (part + rest), in [0, 1]: the part and the rest of the whole measured
    separately, with independent noise (one value of a distribution over the
    :func:`total` of the other values of its group). The whole's noise holds the
    part's, and the interval accounts for it."""
    whole = total((part, rest))
    # Cov(part, whole) = Var(part): the whole is the part plus an independent rest.
    return _ratio_in_unit(
        part, whole, covariance=part.variance, what="part", over="whole", fixes=fixes
    )


def rate(*, numerator: Noisy, denominator: Noisy, fixes: Sequence[Fix] = ALL_FIXES) -> Derived:
    """numerator / denominator, in [0, 1], each measured with its own independent
    noise (retained teachers over the cohort, rated proficient over rated), even
    though the true numerator counts a subset of the denominator's teachers."""
    return _ratio_in_unit(
        numerator, denominator, covariance=0.0, what="numerator", over="denominator", fixes=fixes
    )


def conversion(*, from_stage: Noisy, to_stage: Noisy, fixes: Sequence[Fix] = ALL_FIXES) -> Derived:
    """The share of one stage's people who reach the next (to_stage / from_stage),
    in [0, 1], each stage measured with independent noise. In noisy data the later
    stage can exceed the earlier one: the value is then 1 and the note says so."""
    return _ratio_in_unit(
        to_stage, from_stage, covariance=0.0, what="later stage", over="earlier stage", fixes=fixes
    )


def gap(*, minuend: Noisy, subtrahend: Noisy) -> Derived:
    """minuend - subtrahend (unfilled vacancies minus candidates), independent noise.

    A gap has no bounded range, so no uncertainty rule applies and it is always
    usable; the note says when the interval includes 0 (the sign is not certain).
    """
    value = minuend.value - subtrahend.value
    variance = minuend.variance + subtrahend.variance
    half = Z95 * math.sqrt(variance)
    ci = (value - half, value + half)
    note = None
    if ci[0] < 0 < ci[1]:
        note = "the 95% interval includes 0: whether the gap is positive or negative is uncertain"
    return Derived(value=value, ci95=ci, note=note, usable=True, standard_error=math.sqrt(variance))


# --- agreement of two raters -------------------------------------------------------------


def _counts(table: Sequence[Sequence[Noisy]]) -> tuple[_Matrix, _Matrix]:
    k = len(table)
    if k == 0 or any(len(row) != k for row in table):
        raise ValueError("a table of two raters' scores must be square (k rows of k cells)")
    values = np.array([[c.value for c in row] for row in table], dtype=np.float64)
    variances = np.array([[c.variance for c in row] for row in table], dtype=np.float64)
    return values, variances


def agreement_weights(weights: Weights, k: int) -> _Matrix:
    """Cohen's agreement weights: 1 on the diagonal, down to 0 for the farthest scores."""
    i, j = np.indices((k, k))
    span = max(k - 1, 1)
    if weights == "quadratic":
        return np.asarray(1.0 - (i - j) ** 2 / span**2, dtype=np.float64)
    if weights == "linear":
        return np.asarray(1.0 - np.abs(i - j) / span, dtype=np.float64)
    if weights == "unweighted":
        return np.eye(k, dtype=np.float64)
    if isinstance(weights, str):
        raise ValueError(f"unknown weights {weights!r} (quadratic, linear, unweighted)")
    matrix = np.array(weights, dtype=np.float64)
    if matrix.shape != (k, k):
        raise ValueError(f"the weights must be a {k} x {k} matrix, like the table")
    if not (np.all(np.isfinite(matrix)) and np.all((matrix >= 0) & (matrix <= 1))):
        raise ValueError("agreement weights must be between 0 and 1")
    if not np.all(np.diag(matrix) == 1):
        raise ValueError("agreement weights must be 1 on the diagonal (same score)")
    return matrix


def _kappa_and_gradient(n: _Matrix, w: _Matrix) -> tuple[float, _Matrix] | None:
    """Weighted kappa of a table of counts, and its gradient with respect to each count.

    With N the total, O = sum w_ij n_ij, R and C the row and column totals and
    E = sum w_ij R_i C_j, kappa = (Po - Pe) / (1 - Pe) = (N O - E) / (N^2 - E).
    None when N <= 0 or N^2 - E <= 0 (chance agreement of 1 or more: no kappa).
    """
    big_n = float(n.sum())
    if big_n <= 0:
        return None
    rows, cols = n.sum(axis=1), n.sum(axis=0)
    observed = float((w * n).sum())
    expected = float(rows @ w @ cols)
    numerator = big_n * observed - expected
    denominator = big_n * big_n - expected
    if denominator <= 0:
        return None
    # dE/dn_ab = (W C)_a + (W^T R)_b: the count n_ab is in row total a and column total b.
    d_expected = (w @ cols)[:, None] + (w.T @ rows)[None, :]
    d_numerator = observed + big_n * w - d_expected
    d_denominator = 2.0 * big_n - d_expected
    gradient = (d_numerator * denominator - numerator * d_denominator) / denominator**2
    return numerator / denominator, np.asarray(gradient, dtype=np.float64)


def weighted_kappa(
    table: Sequence[Sequence[Noisy]],
    *,
    weights: Weights = "quadratic",
    fixes: Sequence[Fix] = ALL_FIXES,
) -> Derived:
    """Cohen's weighted kappa of two raters from the full noisy k x k table of counts
    (row: first rater's score, column: second's, both in score order), in [-1, 1].

    Noisy counts are used as they are, negative ones included (that keeps the
    totals unbiased), except where a row or column total is below 0: there the
    scores' distribution means nothing, so the negative cells of such rows and
    columns are set to 0 (one pass is enough) and the note says how many. The
    interval is the delta method: the variance is the sum over cells of the squared
    gradient of kappa times the cell's noise variance (cells' noise is independent;
    a cell set to 0 keeps its variance, which is conservative), then clipped to
    [-1, 1]. No value when the total is 0 or less, or chance agreement is 1.
    """
    n, variances = _counts(table)
    k = n.shape[0]
    w = agreement_weights(weights, k)
    _fix_text(fixes)
    if k < 2:
        return _no_value("no kappa: a table of one score has no disagreement to measure", None)
    notes: list[str] = []
    bad_rows = n.sum(axis=1) < 0
    bad_cols = n.sum(axis=0) < 0
    if bad_rows.any() or bad_cols.any():
        clip = (n < 0) & (bad_rows[:, None] | bad_cols[None, :])
        n = np.where(clip, 0.0, n)
        notes.append(
            f"{int(clip.sum())} negative noisy count(s) set to 0, where a row or column "
            "total was below 0"
        )
    result = _kappa_and_gradient(n, w)
    if result is None:
        if n.sum() <= 0:
            reason = f"no kappa: the noisy total of the table is {n.sum():g}, 0 or less"
        else:
            reason = (
                "no kappa: by the noisy table's totals both raters give one score, "
                "so agreement by chance is complete and kappa has no meaning"
            )
        return _no_value(reason, fixes)
    kappa, gradient = result
    variance = float((gradient**2 * variances).sum())
    if kappa > 1:
        notes.append("the noisy table gives a kappa above 1: shown as 1")
    elif kappa < -1:
        notes.append("the noisy table gives a kappa below -1: shown as -1")
    return _bounded(kappa, variance, low=-1.0, high=1.0, fixes=fixes, notes=notes)


def exact_agreement(
    table: Sequence[Sequence[Noisy]], *, fixes: Sequence[Fix] = ALL_FIXES
) -> Derived:
    """The share of pairs where both raters gave the same score: the diagonal's total
    over the table's total, in [0, 1]; the diagonal and the other cells are disjoint
    sets of independently noised cells (a :func:`share`)."""
    n, _ = _counts(table)
    k = n.shape[0]
    diagonal = total(table[i][i] for i in range(k))
    others = total(table[i][j] for i in range(k) for j in range(k) if i != j)
    return share(part=diagonal, rest=others, fixes=fixes)
