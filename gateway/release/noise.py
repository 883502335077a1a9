"""Differential-privacy noise: the one module that calls OpenDP.

Every noisy number the gateway releases is drawn here, by an OpenDP
measurement (OpenDP 0.16, pinned in pyproject.toml):

- counts get integer (discrete Laplace) noise: ``make_laplace`` on 64-bit integers
  (32-bit ones saturate at 2^31 - 1 under a large scale, which would read as a count);
- clamped sums get Laplace noise on floats through OpenDP's ``make_laplace``,
  which samples exactly and rounds safely, never numpy or ``random`` noise;
- groups whose keys would come from the data are released through
  ``make_laplace_threshold`` (propose-test-release): only groups whose noisy
  count clears a threshold are published, at a small delta.

Calibration is direct, not a search: the Laplace scale for sensitivity ``s``
and budget ``epsilon`` is ``s / epsilon``, and OpenDP's own privacy map then
confirms the measurement costs no more than the budget (the scale is nudged up
if float rounding says otherwise). No ``binary_search`` / ``resolve()``, which
can take over a second; each calibrated measurement is cached.

Avoided on purpose: OpenDP's Polars context API (``make_private_lazyframe``
with ``Margin`` and ``truncate_num_groups``), whose open issues include
truncation keeping one group fewer than asked. Contribution bounding is done
by the gateway before any measurement sees the data (see release.engine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

_FEATURES_ENABLED = False
#: The threshold of data-dependent group selection is searched up to this count.
MAX_SELECTION_THRESHOLD = 1 << 40


class CalibrationFailed(ValueError):
    """No scale or threshold meets the budget (the budget is far too small)."""


def _dp() -> Any:
    """OpenDP's prelude, with the ``contrib`` features this module relies on.

    ``make_laplace_threshold`` is a contrib (not yet vetted) mechanism in 0.16;
    enabling it is an explicit, documented choice made here and nowhere else.
    """
    global _FEATURES_ENABLED
    import opendp.prelude as dp

    if not _FEATURES_ENABLED:
        dp.enable_features("contrib")
        _FEATURES_ENABLED = True
    return dp


def _calibrate(measurement_for: Any, d_in: Any, epsilon: float) -> tuple[Any, float]:
    """The smallest scale near ``d_in / epsilon`` whose privacy map is within ``epsilon``."""
    scale = float(d_in) / epsilon
    for _ in range(64):
        measurement = measurement_for(scale)
        if measurement.map(d_in) <= epsilon:
            return measurement, scale
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    raise CalibrationFailed("no noise scale meets the budget")  # pragma: no cover


def chernoff_tail(log_mgf: Callable[[float], float], limit: float, terms: int, k: float) -> float:
    """The Chernoff bound on P(S >= k) for S a sum of ``terms`` independent copies of a
    symmetric noise with log moment generating function ``log_mgf`` (finite on
    ``[0, limit)``): ``min over s of exp(terms * log_mgf(s) - s k)``.

    Any ``s`` gives a valid bound, so the (convex) minimisation needs no precision to
    stay safe: a golden-section search over the open interval, never above 1.
    """
    if k <= 0:
        return 1.0

    def exponent(s: float) -> float:
        return terms * log_mgf(s) - s * k

    low, high = 0.0, limit * (1.0 - 1e-9)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(200):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if exponent(left) <= exponent(right):
            high = right
        else:
            low = left
    best = min(exponent(low), exponent(high), exponent((low + high) / 2.0))
    return min(1.0, math.exp(best)) if best < 700 else 1.0


def _difference_of_negative_binomials_tail(a: float, terms: int, k: int) -> float | None:
    """P(N1 - N2 >= k) for independent negative binomials (``terms`` successes of
    probability ``1 - a``), with the neglected tail added whole; None if it will not
    converge quickly (the caller then uses the Chernoff bound)."""
    if k <= 0:
        return 1.0
    if terms * a / (1.0 - a) > 100_000:  # too many terms to sum quickly: Chernoff
        return None
    import numpy as np
    from scipy.stats import nbinom

    p = 1.0 - a
    rest = 1.0
    total = 0.0
    j = 0
    chunk = 256
    while j < 1_000_000:
        js = np.arange(j, j + chunk)
        total += float(np.sum(nbinom.pmf(js, terms, p) * nbinom.sf(k + js - 1, terms, p)))
        rest = float(nbinom.sf(j + chunk - 1, terms, p))  # P(N2 >= j + chunk)
        j += chunk
        if rest < 1e-3 * total or rest < 1e-300:
            return min(1.0, total + rest)
    return None  # pragma: no cover


def _smallest(holds: Callable[[float], bool], *, integer: bool) -> float:
    """The smallest t >= 0 (a whole number when ``integer``) for which ``holds(t)``,
    given that it holds for every t above some point (bisection to 1e-6 relative)."""
    high: float = 1.0
    while not holds(high):
        high *= 2.0
        if high > 1e18:  # pragma: no cover
            raise CalibrationFailed("no finite bound on the noise")
    low: float = 0.0
    if integer:
        lo, hi = 0, int(high)
        while lo < hi:
            split = (lo + hi) // 2
            if holds(float(split)):
                hi = split
            else:
                lo = split + 1
        return float(lo)
    while high - low > 1e-6 * high:
        middle = (low + high) / 2.0
        if holds(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class IntegerNoise:
    """Discrete Laplace noise on a vector of counts with a given L1 sensitivity."""

    sensitivity: int
    epsilon: float
    scale: float
    _measurement: Any

    def release(self, counts: Sequence[int]) -> list[int]:
        if not counts:
            return []
        return [int(v) for v in self._measurement([int(c) for c in counts])]

    def half_width(self, alpha: float = 0.05) -> float:
        """Half-width of the (1 - alpha) interval of one cell's noise."""
        return float(_dp().discrete_laplacian_scale_to_accuracy(self.scale, alpha))

    def tail(self, k: int) -> float:
        """P(noise >= k) for k >= 1: discrete Laplace, P(Z = z) proportional to
        a^|z| with a = exp(-1/scale), so P(Z >= k) = a^k / (1 + a)."""
        a = math.exp(-1.0 / self.scale)
        return math.exp(k * math.log(a)) / (1.0 + a) if k >= 1 else 1.0

    @property
    def variance(self) -> float:
        """Var Z = 2a / (1 - a)^2 with a = exp(-1/scale)."""
        a = math.exp(-1.0 / self.scale)
        return 2.0 * a / math.expm1(-1.0 / self.scale) ** 2

    def log_mgf(self, s: float) -> float:
        """log E[e^{sZ}] = log((1 - a)^2 / ((1 - a e^s)(1 - a e^-s))), for 0 <= s < 1/scale."""
        a = math.exp(-1.0 / self.scale)
        return 2.0 * math.log1p(-a) - math.log1p(-a * math.exp(s)) - math.log1p(-a * math.exp(-s))

    def sum_tail(self, terms: int, k: float) -> float:
        """P(Z_1 + ... + Z_terms >= k) for independent draws, from above.

        A discrete Laplace draw is the difference of two geometric ones, so the sum is
        ``N1 - N2`` with ``N1, N2`` negative binomial (``terms`` successes, success
        probability ``1 - a``): ``P(S >= k) = sum_j P(N2 = j) P(N1 >= k + j)``, summed
        until ``P(N2 > J)`` (added whole, as a bound on the rest) is negligible. The
        Chernoff bound (:func:`chernoff_tail`) is the fallback, never smaller.
        """
        if terms <= 1:
            return self.tail(math.ceil(k))
        return _difference_of_negative_binomials_tail(
            math.exp(-1.0 / self.scale), terms, math.ceil(k)
        ) or chernoff_tail(self.log_mgf, 1.0 / self.scale, terms, k)

    def sum_half_width(self, terms: int, alpha: float = 0.05) -> float:
        """A half-width t with P(|Z_1 + ... + Z_terms| >= t) <= alpha (exact for one)."""
        if terms <= 1:
            return self.half_width(alpha)
        return _integer_sum_half_width(self.scale, terms, alpha)


@dataclass(frozen=True)
class FloatNoise:
    """Laplace noise on a vector of clamped sums with a given L1 sensitivity."""

    sensitivity: float
    epsilon: float
    scale: float
    _measurement: Any

    def release(self, sums: Sequence[float]) -> list[float]:
        if not sums:
            return []
        return [float(v) for v in self._measurement([float(s) for s in sums])]

    def half_width(self, alpha: float = 0.05) -> float:
        return float(_dp().laplacian_scale_to_accuracy(self.scale, alpha))

    def tail(self, k: float) -> float:
        """P(noise >= k) for k >= 0: Laplace, exp(-k / scale) / 2."""
        return 0.5 * math.exp(-k / self.scale) if k >= 0 else 1.0

    @property
    def variance(self) -> float:
        """Var Z = 2 scale^2."""
        return 2.0 * self.scale * self.scale

    def log_mgf(self, s: float) -> float:
        """log E[e^{sZ}] = -log(1 - (scale s)^2), for 0 <= s < 1/scale."""
        return -math.log1p(-((self.scale * s) ** 2))

    def sum_tail(self, terms: int, k: float) -> float:
        """An upper bound on P(Z_1 + ... + Z_terms >= k): exact for one term, the
        Chernoff bound for more."""
        if terms <= 1:
            return self.tail(k)
        return chernoff_tail(self.log_mgf, 1.0 / self.scale, terms, k)

    def sum_half_width(self, terms: int, alpha: float = 0.05) -> float:
        """A half-width t with P(|Z_1 + ... + Z_terms| >= t) <= alpha (exact for one)."""
        if terms <= 1:
            return self.half_width(alpha)
        return _smallest(lambda t: 2.0 * self.sum_tail(terms, t) <= alpha, integer=False)


@dataclass(frozen=True)
class ThresholdNoise:
    """Noisy counts of data-dependent groups; groups below the threshold are not released."""

    groups_per_teacher: int
    epsilon: float
    delta: float
    scale: float
    threshold: int
    _measurement: Any

    def release(self, counts: Mapping[str, int]) -> dict[str, int]:
        if not counts:
            return {}
        return {k: int(v) for k, v in self._measurement(dict(counts)).items()}

    def half_width(self, alpha: float = 0.05) -> float:
        return float(_dp().discrete_laplacian_scale_to_accuracy(self.scale, alpha))


@lru_cache(maxsize=4096)
def _integer_sum_half_width(scale: float, terms: int, alpha: float) -> float:
    a = math.exp(-1.0 / scale)

    def tail(t: float) -> float:
        exact = _difference_of_negative_binomials_tail(a, terms, math.ceil(t))
        if exact is not None:
            return exact
        log_mgf = IntegerNoise(1, 1.0, scale, None).log_mgf
        return chernoff_tail(log_mgf, 1.0 / scale, terms, t)

    return float(_smallest(lambda t: 2.0 * tail(t) <= alpha, integer=True))


@lru_cache(maxsize=256)
def integer_noise(sensitivity: int, epsilon: Decimal) -> IntegerNoise:
    dp = _dp()
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    measurement, scale = _calibrate(
        lambda s: dp.m.make_laplace(*space, scale=s), sensitivity, float(epsilon)
    )
    return IntegerNoise(sensitivity, float(epsilon), scale, measurement)


@lru_cache(maxsize=256)
def float_noise(sensitivity: float, epsilon: Decimal) -> FloatNoise:
    dp = _dp()
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    measurement, scale = _calibrate(
        lambda s: dp.m.make_laplace(*space, scale=s), float(sensitivity), float(epsilon)
    )
    return FloatNoise(float(sensitivity), float(epsilon), scale, measurement)


@lru_cache(maxsize=256)
def threshold_noise(groups_per_teacher: int, epsilon: Decimal, delta: Decimal) -> ThresholdNoise:
    """Calibrate the scale from epsilon, then the smallest threshold whose delta fits."""
    if delta <= 0:
        raise CalibrationFailed("selecting data-dependent groups needs a delta greater than 0")
    dp = _dp()
    space = (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l01inf_distance(dp.absolute_distance(T="i64")),
    )
    d_in = (groups_per_teacher, groups_per_teacher, 1)
    target_epsilon, target_delta = float(epsilon), float(delta)
    scale = groups_per_teacher / target_epsilon

    def build(scale: float, threshold: int) -> Any:
        return dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)

    for _ in range(64):
        if build(scale, MAX_SELECTION_THRESHOLD).map(d_in)[0] <= target_epsilon:
            break
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    else:  # pragma: no cover
        raise CalibrationFailed("no noise scale meets the budget")
    high = MAX_SELECTION_THRESHOLD
    if build(scale, high).map(d_in)[1] > target_delta:
        raise CalibrationFailed("no selection threshold meets the delta")
    low = 1  # the smallest threshold whose delta is within the budget
    while low < high:
        middle = (low + high) // 2
        if build(scale, middle).map(d_in)[1] <= target_delta:
            high = middle
        else:
            low = middle + 1
    measurement = build(scale, low)
    spent_epsilon, spent_delta = measurement.map(d_in)
    if spent_epsilon > target_epsilon or spent_delta > target_delta:  # pragma: no cover
        raise CalibrationFailed("could not calibrate the threshold mechanism")
    return ThresholdNoise(groups_per_teacher, target_epsilon, target_delta, scale, low, measurement)


# --- zero-concentrated DP: Gaussian noise, rho composed, converted to (epsilon, delta) ---


@dataclass(frozen=True)
class GaussianNoise:
    """Gaussian noise of standard deviation ``scale`` (sigma) on a vector, calibrated in
    zero-concentrated DP: ``rho`` for an L2 sensitivity. Integers get the discrete
    Gaussian (OpenDP ``make_gaussian`` on 64-bit integers), floats the continuous one.

    Both are sub-Gaussian with variance proxy sigma^2 (for the discrete Gaussian:
    Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for Differential Privacy",
    Corollary 9, and its variance is at most sigma^2), which gives the rigorous tail
    bounds the publish thresholds rest on; intervals use the normal quantile of the
    sum's variance (an approximation that the discrete draw's smaller variance keeps
    on the wide side).
    """

    sensitivity: float  # L2
    rho: float
    scale: float
    integer: bool
    _measurement: Any

    def release(self, values: Sequence[float]) -> list[Any]:
        if not values:
            return []
        if self.integer:
            return [int(v) for v in self._measurement([int(c) for c in values])]
        return [float(v) for v in self._measurement([float(s) for s in values])]

    def half_width(self, alpha: float = 0.05) -> float:
        """Half-width of the (1 - alpha) interval of one cell's noise (OpenDP's)."""
        if self.integer:
            return float(_dp().discrete_gaussian_scale_to_accuracy(self.scale, alpha))
        return float(_dp().gaussian_scale_to_accuracy(self.scale, alpha))

    def tail(self, k: float) -> float:
        """An upper bound on P(noise >= k): exp(-k^2 / (2 sigma^2)) for k > 0."""
        return self.sum_tail(1, k)

    @property
    def variance(self) -> float:
        """sigma^2 (an upper bound for the discrete Gaussian)."""
        return self.scale * self.scale

    def log_mgf(self, s: float) -> float:
        """An upper bound on log E[e^{sZ}]: s^2 sigma^2 / 2, for every s."""
        return 0.5 * s * s * self.scale * self.scale

    def sum_tail(self, terms: int, k: float) -> float:
        """An upper bound on P(Z_1 + ... + Z_terms >= k): the Chernoff bound of a
        sub-Gaussian sum, exp(-k^2 / (2 terms sigma^2)), in closed form."""
        if k <= 0:
            return 1.0
        return math.exp(-(k * k) / (2.0 * max(terms, 1) * self.variance))

    def sum_half_width(self, terms: int, alpha: float = 0.05) -> float:
        """The (1 - alpha) half-width of a sum of ``terms`` draws: a normal quantile of
        its variance, ``terms`` sigma^2 (exact for continuous Gaussian noise)."""
        if terms <= 1:
            return self.half_width(alpha)
        return float(_dp().gaussian_scale_to_accuracy(self.scale * math.sqrt(terms), alpha))


@lru_cache(maxsize=256)
def gaussian_noise(sensitivity: float, rho: Decimal, *, integer: bool) -> GaussianNoise:
    """Gaussian noise costing at most ``rho`` (zCDP) for an L2 ``sensitivity``: sigma is
    ``sensitivity / sqrt(2 rho)``, confirmed by OpenDP's privacy map. Integer noise
    takes a whole-number L2 bound (rounded up: a teacher in g cells moves the counts by
    sqrt(g) in L2, bounded by its ceiling)."""
    dp = _dp()
    if integer:
        d_in: Any = math.ceil(sensitivity - 1e-12)
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64")
    else:
        d_in = float(sensitivity)
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
    target = float(rho)
    if target <= 0:
        raise CalibrationFailed("rho must be greater than 0")
    scale = float(d_in) / math.sqrt(2.0 * target)
    for _ in range(64):
        measurement = dp.m.make_gaussian(*space, scale=scale)
        if measurement.map(d_in) <= target:
            return GaussianNoise(float(d_in), target, scale, integer, measurement)
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    raise CalibrationFailed("no noise scale meets rho")  # pragma: no cover


@lru_cache(maxsize=1)
def _zcdp_converter() -> Any:
    """A unit-scale Gaussian converted from zCDP to (epsilon, delta): its privacy map
    at distance d is the profile of a rho = d^2 / 2 mechanism."""
    dp = _dp()
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    return dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*space, scale=1.0))


@lru_cache(maxsize=4096)
def zcdp_epsilon(rho: Decimal, delta: Decimal) -> float:
    """The epsilon at ``delta`` of a rho-zCDP mechanism, by OpenDP's conversion
    (``make_zCDP_to_approxDP``, tighter than rho + 2 sqrt(rho log(1/delta)))."""
    if rho <= 0:
        return 0.0
    distance = math.nextafter(math.sqrt(2.0 * float(rho)), math.inf)  # never below rho
    return float(_zcdp_converter().map(distance).epsilon(float(delta)))


def _classic_rho(epsilon: float, delta: float) -> float:
    """The rho of the classic conversion epsilon = rho + 2 sqrt(rho log(1/delta)), which
    OpenDP's never exceeds: a rho that surely fits."""
    log = math.log(1.0 / delta)
    root = -math.sqrt(log) + math.sqrt(log + epsilon)
    return root * root


@lru_cache(maxsize=256)
def zcdp_rho(epsilon: Decimal, delta: Decimal) -> Decimal:
    """The largest rho (to about 1e-7 relative, rounded down to 12 significant digits)
    whose conversion at ``delta`` costs at most ``epsilon``."""
    target = float(epsilon)

    def fits(rho: float) -> bool:
        return zcdp_epsilon(Decimal(repr(rho)), delta) <= target

    low = _classic_rho(target, float(delta)) * (1 - 1e-9)
    if not fits(low):  # pragma: no cover (OpenDP's conversion is the tighter one)
        raise CalibrationFailed("no rho meets the budget")
    high = low * 1.5
    while fits(high):
        low, high = high, high * 1.5
    while high - low > 1e-7 * low:
        middle = (low + high) / 2.0
        if fits(middle):
            low = middle
        else:
            high = middle
    found = Decimal(repr(low))
    return found.quantize(Decimal(1).scaleb(found.adjusted() - 11), rounding="ROUND_FLOOR")
