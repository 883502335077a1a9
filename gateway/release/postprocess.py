"""Post-processing: released values and their 95% intervals, from noisy measurements.

Nothing here reads a true aggregate: values are clipped to what they can be (a
count is never negative, a mean stays in its range, a rate in [0, 1]), intervals
come from the noise's known distribution, and shares and their labels are computed
from the noisy counts. Post-processing costs no budget.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.agreements.models import Agreement
from gateway.release import decide
from gateway.release.groupkeys import named_group
from gateway.release.measure import Measurements
from gateway.release.model import AgreementRef, Cell, Release
from gateway.release.plan import Plan
from gateway.release.suppression import GroupKey, SuppressionResult


def _ci(value: float, half_width: float, low: float | None = None) -> list[float]:
    lo, hi = value - half_width, value + half_width
    if low is not None:
        lo = max(lo, low)
    return [round(lo, 6), round(hi, 6)]


def cells(
    measured: Measurements,
    pattern: SuppressionResult,
    plan: Plan,
    *,
    kind: str,
    coding: bool,
) -> list[Cell]:
    """The released cells of a table, in table order."""
    counts, sums, numerators = measured.counts, measured.sums, measured.numerators
    count_hw = plan.count_half_width()
    shares = _distribution_shares(measured, pattern) if kind == "distribution" else {}
    out: list[Cell] = []
    for key in measured.keys:
        group = named_group(plan.dimensions, key)
        reason = pattern.reason(key)
        if reason is not None:
            out.append(Cell(group=group, value=None, ci95=None, suppressed=True, reason=reason))
            continue
        if kind in ("count", "distribution", "joint"):
            value = float(max(counts[key], 0))
            share = shares.get(key)
            code = decide.share_label(share, coding=coding) if share is not None else None
            # A distribution's cells carry a share (None where it cannot be given).
            extra: dict[str, Any] = {"share": None} if kind == "distribution" else {}
            if code is not None:
                out.append(
                    Cell(group=group, value=None, ci95=None, suppressed=False, coded=code, **extra)
                )
                continue
            if share is not None:
                extra["share"] = round(share, 4)
            out.append(
                Cell(
                    group=group,
                    value=value,
                    ci95=_ci(value, count_hw, low=0.0),
                    suppressed=False,
                    **extra,
                )
            )
        elif kind == "sum":
            out.append(_sum_cell(group, sums[key], plan))
        elif kind == "mean":
            out.append(_mean_cell(group, sums[key], counts[key], plan))
        else:  # rate, retention, agreement
            out.append(_rate_cell(group, numerators[key], counts[key], plan, coding=coding))
    return out


def _distribution_shares(
    measured: Measurements, pattern: SuppressionResult
) -> dict[GroupKey, float]:
    """Each value's noisy share of its group (the key without its last dimension),
    only where no cell of the group is hidden: a total over hidden cells would let
    them be computed back."""
    totals: dict[GroupKey, float | None] = {}
    for key in measured.keys:
        total = totals.get(key[:-1], 0.0)
        hidden = key in pattern.suppressed
        totals[key[:-1]] = None if hidden or total is None else total + max(measured.counts[key], 0)
    shares = {}
    for key in measured.keys:
        total = totals.get(key[:-1])
        if total:
            shares[key] = max(measured.counts[key], 0) / total
    return shares


def _sum_cell(group: dict[str, Any], noisy: float, plan: Plan) -> Cell:
    if plan.exact:  # the true sum: its interval is the value itself
        return Cell(group=group, value=round(noisy, 4), ci95=[noisy, noisy], suppressed=False)
    assert plan.sums is not None
    floor = 0.0 if plan.clamp and plan.clamp[0] >= 0 else None
    # A sum of non-negative values is never negative: clip (post-processing).
    value = noisy if floor is None else max(noisy, floor)
    return Cell(
        group=group,
        value=round(value, 4),
        ci95=_ci(noisy, plan.sums.half_width(), low=floor),
        suppressed=False,
    )


def _mean_cell(group: dict[str, Any], noisy_sum: float, noisy_count: int, plan: Plan) -> Cell:
    assert plan.clamp is not None and plan.sums is not None
    n = max(noisy_count, 1)
    value = min(max(noisy_sum / n, plan.clamp[0]), plan.clamp[1])
    # 95% together: each noisy part at 97.5%, combined by interval arithmetic.
    s_hw = plan.sums.half_width(0.025)
    c_hw = plan.count_half_width(0.025)
    lo_n, hi_n = max(n - c_hw, 1.0), n + c_hw
    candidates = [
        (noisy_sum - s_hw) / lo_n,
        (noisy_sum - s_hw) / hi_n,
        (noisy_sum + s_hw) / lo_n,
        (noisy_sum + s_hw) / hi_n,
    ]
    interval = [
        round(max(min(candidates), plan.clamp[0]), 4),
        round(min(max(candidates), plan.clamp[1]), 4),
    ]
    return Cell(group=group, value=round(value, 4), ci95=interval, suppressed=False)


def _rate_cell(
    group: dict[str, Any], numerator: int, count: int, plan: Plan, *, coding: bool
) -> Cell:
    assert plan.numerators is not None
    den = max(count, 1)
    num = min(max(numerator, 0), den)
    share = num / den
    code = decide.share_label(share, coding=coding)
    if code is not None:
        return Cell(group=group, value=None, ci95=None, suppressed=False, coded=code)
    n_hw = plan.numerators.half_width(0.025)
    d_hw = plan.count_half_width(0.025)
    low = max(0.0, (num - n_hw) / (den + d_hw))
    high = min(1.0, (num + n_hw) / max(den - d_hw, 1.0))
    return Cell(
        group=group, value=round(share, 4), ci95=[round(low, 4), round(high, 4)], suppressed=False
    )


def release(
    *,
    release_id: str,
    agreement: Agreement,
    party: str,
    recipients: list[str],
    query: dict[str, Any],
    table: list[Cell],
    pattern: SuppressionResult,
    plan: Plan,
    budget_remaining: float,
) -> Release:
    """The typed release, as every recipient will see it."""
    profile = agreement.resolved_disclosure
    return Release(
        release_id=release_id,
        agreement=AgreementRef(id=agreement.id, version=agreement.version),
        party=party,
        recipients=recipients,
        query=query,
        cells=table,
        epsilon_spent=float(plan.epsilon),
        delta_spent=float(plan.delta_used),
        budget_remaining=budget_remaining,
        noise={
            "mechanisms": plan.mechanisms(),
            "groups_per_teacher": plan.groups_per_teacher,
            "accuracy_95": plan.accuracy(),
        },
        minimum_cell={"teachers": plan.minimum, "students": profile.min_cell_students},
        decisions={
            "exact": plan.exact,
            "publish_threshold": plan.threshold,
            "floor_delta": float(plan.floor_delta),
            "students_per_teacher": plan.students_per_teacher,
        },
        # Hidden cells whose every line is hidden whole (docs/releases.md).
        unprotectable=[
            named_group(plan.dimensions, k) for k in sorted(pattern.unprotectable, key=repr)
        ],
        created_at=datetime.now(UTC).isoformat(),
    )


__all__ = ["cells", "release"]
