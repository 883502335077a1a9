"""Post-processing: released values and their 95% intervals, from noisy measurements.

Nothing here reads a true aggregate: values are clipped to what they can be (a
count is never negative, a mean stays in its range, a rate in [0, 1]), intervals
come from the noise's known distribution, and shares and their labels are computed
from the noisy counts. Post-processing costs no budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.agreements.models import Agreement
from gateway.release import coarsen, decide, derived, noise
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
    shares: dict[GroupKey, derived.Derived] | None = None,
) -> list[Cell]:
    """The released cells of a table, in table order (a distribution's shares computed
    here unless given)."""
    counts, sums, numerators = measured.counts, measured.sums, measured.numerators
    if shares is None:
        shares = _distribution_shares(measured, pattern, plan) if kind == "distribution" else {}
    out: list[Cell] = []
    for key in measured.keys:
        group = named_group(plan.dimensions, key)
        reason = pattern.reason(key)
        if reason is not None:
            out.append(Cell(group=group, value=None, ci95=None, suppressed=True, reason=reason))
            continue
        terms = measured.terms.get(key, 1)
        if kind in ("count", "distribution", "joint"):
            value = round(float(max(counts[key], 0)), 2)
            count_hw = _half_width(plan.counts, terms)
            figure = shares.get(key)
            share = figure.value if figure is not None else None
            code = decide.share_label(share, coding=coding) if share is not None else None
            # A distribution's cells carry a share (None where it cannot be given).
            extra: dict[str, Any] = {"share": None} if kind == "distribution" else {}
            if code is not None:
                out.append(
                    Cell(group=group, value=None, ci95=None, suppressed=False, coded=code, **extra)
                )
                continue
            if figure is not None and share is not None:
                extra["share"] = round(share, 4)
                extra["share_ci95"] = list(figure.ci95) if figure.ci95 else None
                extra["note"] = figure.note
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
            out.append(_sum_cell(group, sums[key], plan, terms))
        elif kind == "mean":
            out.append(_mean_cell(group, sums[key], counts[key], plan, terms))
        else:  # rate, retention, agreement
            out.append(_rate_cell(group, numerators[key], counts[key], plan, terms, coding=coding))
    return out


def statistics(
    measured: Measurements,
    plan: Plan,
    teachers: Callable[[Sequence[GroupKey]], int],
) -> list[dict[str, Any]]:
    """A joint table's statistics, per group (every dimension but the two scores): the
    quadratic-weighted kappa and the exact agreement of the two raters, computed from
    the noisy counts of every cell of the group, published or not (post-processing,
    derived.py), with 95% intervals from the noise.

    A group's statistics are shown only when the group, merged, would be published as
    one cell (its noisy total at the threshold, its teachers at the minimum: the
    floor, counted in delta by decide.floor_tail); otherwise the entry says so.
    """
    assert plan.counts is not None
    variance = plan.counts.variance
    groups: dict[GroupKey, list[GroupKey]] = {}
    for key in measured.keys:
        groups.setdefault(key[:-2], []).append(key)
    first = sorted({key[-2] for key in measured.keys}, key=_score_order)
    second = sorted({key[-1] for key in measured.keys}, key=_score_order)
    scores = sorted(set(first) | set(second), key=_score_order)
    out = []
    for group, keys in groups.items():
        entry: dict[str, Any] = {"group": named_group(plan.dimensions[:-2], group)}
        noisy = sum(measured.counts[k] for k in keys)
        if noisy < decide.node_threshold(plan, len(keys)) or teachers(keys) < plan.minimum:
            entry["note"] = (
                "not shown: the group's teachers together are too few to publish "
                "(the minimum cell applies to a statistic as to a cell)"
            )
            out.append(entry)
            continue
        index = {score: i for i, score in enumerate(scores)}
        table = [[derived.Noisy(0.0, 0.0)] * len(scores) for _ in scores]
        for key in keys:
            table[index[key[-2]]][index[key[-1]]] = derived.Noisy(
                float(measured.counts[key]), variance
            )
        entry["weighted_kappa"] = derived.weighted_kappa(table).to_json()
        entry["exact_agreement"] = derived.exact_agreement(table).to_json()
        out.append(entry)
    return out


def _score_order(value: Any) -> tuple[bool, Any]:
    return (isinstance(value, str), value)


def _half_width(
    noise_: noise.IntegerNoise | noise.FloatNoise | noise.GaussianNoise | None,
    terms: int,
    alpha: float = 0.05,
) -> float:
    """The (1 - alpha) half-width of a sum of ``terms`` draws of ``noise_`` (0 if none)."""
    return noise_.sum_half_width(terms, alpha) if noise_ is not None else 0.0


def coarsened_table(
    coarse: decide.Coarsened,
    measured: Measurements,
    plan: Plan,
    *,
    kind: str,
    coding: bool,
) -> list[Cell]:
    """A coarsened table's cells: each published node with its consistent values and the
    level it stands at, then each suppressed root (release/coarsen.py)."""
    ladder = plan.ladder
    assert ladder is not None
    nodes = Measurements(keys=[])
    steps: dict[GroupKey, int] = {}
    covers: dict[GroupKey, dict[str, list[Any]]] = {}
    # (leaf measurements, the nodes' values, whether they are never negative)
    fields: list[tuple[Mapping[GroupKey, float], dict[GroupKey, Any], bool]] = [
        (measured.counts, nodes.counts, True),
        (measured.numerators, nodes.numerators, True),
        (measured.sums, nodes.sums, plan.clamp is not None and plan.clamp[0] >= 0),
    ]
    values = [
        coarsen.consistent(coarse.roots, source, non_negative=positive) if source else {}
        for source, _, positive in fields
    ]
    for node in coarse.published:
        nodes.keys.append(node.key)
        nodes.terms[node.key] = len(node.leaves)
        steps[node.key] = node.step
        if node.covers is not None:
            name = plan.dimensions[ladder.stepped(node.step)]
            covers[node.key] = {name: node.covers}
        for (_, target, _), found in zip(fields, values, strict=True):
            if found:
                target[node.key] = node.value(found)
    for node in coarse.hidden:  # remainders suppressed beside published siblings
        nodes.keys.append(node.key)
        steps[node.key] = node.step
        name = plan.dimensions[ladder.stepped(node.step)]
        covers[node.key] = {name: node.covers or []}
    for root in coarse.roots:
        if root.key in coarse.pattern.suppressed:
            nodes.keys.append(root.key)
            steps[root.key] = root.step
    shares = _node_shares(coarse, nodes, plan) if kind == "distribution" else {}
    table = cells(nodes, coarse.pattern, plan, kind=kind, coding=coding, shares=shares)
    additive: noise.IntegerNoise | noise.FloatNoise | noise.GaussianNoise | None = None
    if kind in ("count", "distribution", "joint"):
        additive = plan.counts
    elif kind == "sum":
        additive = plan.sums
    # The interval of a count or sum is the noise's interval around the cell's raw
    # noisy sum (exactly 95%), widened to hold the consistent value it shows.
    raw_source: Mapping[GroupKey, float] | None = None
    if kind in ("count", "distribution", "joint"):
        raw_source = measured.counts
    elif kind == "sum":
        raw_source = measured.sums
    raw = {
        node.key: sum(raw_source[leaf] for leaf in node.leaves)
        for node in coarse.published
        if raw_source
    }
    return [
        cell.model_copy(
            update={
                "level": ladder.level_names(steps[key]),
                "steps": steps[key],
                "covers": covers.get(key),
                "noise_sd": (
                    round(math.sqrt(nodes.terms.get(key, 1) * additive.variance), 4)
                    if additive is not None and not cell.suppressed
                    else None
                ),
                **(
                    {"ci95": _around(cell, raw[key], additive, nodes.terms.get(key, 1))}
                    if key in raw and additive is not None and cell.ci95 is not None
                    else {}
                ),
            }
        )
        for cell, key in zip(table, nodes.keys, strict=True)
    ]


def _around(
    cell: Cell,
    raw: float,
    additive: noise.IntegerNoise | noise.FloatNoise | noise.GaussianNoise,
    terms: int,
) -> list[float]:
    """The 95% interval of a sum of ``terms`` draws around the ``raw`` noisy sum, widened
    to hold the cell's (consistent) value, never below 0 where the cell's was not."""
    half = additive.sum_half_width(terms)
    assert cell.value is not None and cell.ci95 is not None
    low = min(raw - half, cell.value)
    if cell.ci95[0] >= 0:
        low = max(low, 0.0)
    return [round(low, 6), round(max(raw + half, cell.value), 6)]


def _node_shares(
    coarse: decide.Coarsened, nodes: Measurements, plan: Plan
) -> dict[GroupKey, derived.Derived]:
    """A coarsened distribution's shares: each published cell's part of the cells of
    its group (the same labels and levels in every dimension but the last, the values),
    where those cells cover the whole group and none of it is suppressed."""
    ladder = plan.ladder
    assert ladder is not None
    values = len(plan.dimensions) - 1
    leaves = [leaf for root in coarse.roots for leaf in root.leaves]
    groups: dict[tuple[Any, ...], list[GroupKey]] = {}
    covered: dict[tuple[Any, ...], int] = {}
    steps: dict[tuple[Any, ...], int] = {}
    for node in coarse.published:
        levels = tuple(
            level
            for axis, level in zip(ladder.axes, ladder.steps[node.step], strict=True)
            if axis.position != values
        )
        group = (levels, node.key[:-1])
        groups.setdefault(group, []).append(node.key)
        covered[group] = covered.get(group, 0) + len(node.leaves)
        steps[group] = node.step
    out: dict[GroupKey, derived.Derived] = {}
    for group, keys in groups.items():
        # The leaves of the group: any step with its levels places them alike.
        whole = sum(1 for leaf in leaves if ladder.node(leaf, steps[group])[:-1] == group[1])
        if covered[group] == whole:
            out.update(_shares(keys, nodes.counts, nodes.terms, plan))
    return out


def _shares(
    keys: Sequence[GroupKey],
    counts: Mapping[GroupKey, float],
    terms: Mapping[GroupKey, int],
    plan: Plan,
) -> dict[GroupKey, derived.Derived]:
    """Each cell's noisy share of its group's noisy total (counts clipped at 0), with
    its 95% interval from the noise (derived.py: the cell against the rest of its
    group) and, when it is too wide to use, a note saying so and what would help."""
    assert plan.counts is not None
    one = plan.counts.variance
    values = {k: max(float(counts[k]), 0.0) for k in keys}
    total = sum(values.values())
    if total <= 0:
        return {}
    variance = {k: one * terms.get(k, 1) for k in keys}
    whole_variance = sum(variance.values())
    return {
        key: derived.share(
            part=derived.Noisy(values[key], variance[key]),
            rest=derived.Noisy(total - values[key], whole_variance - variance[key]),
        )
        for key in keys
    }


def _distribution_shares(
    measured: Measurements, pattern: SuppressionResult, plan: Plan
) -> dict[GroupKey, derived.Derived]:
    """Each value's noisy share of its group (the key without its last dimension),
    only where no cell of the group is hidden: a total over hidden cells would let
    them be computed back."""
    groups: dict[GroupKey, list[GroupKey]] = {}
    hidden: set[GroupKey] = set()
    for key in measured.keys:
        groups.setdefault(key[:-1], []).append(key)
        if key in pattern.suppressed:
            hidden.add(key[:-1])
    out: dict[GroupKey, derived.Derived] = {}
    for group, keys in groups.items():
        if group not in hidden:
            out.update(_shares(keys, measured.counts, measured.terms, plan))
    return out


def _sum_cell(group: dict[str, Any], noisy: float, plan: Plan, terms: int = 1) -> Cell:
    if plan.exact:  # the true sum: its interval is the value itself
        return Cell(group=group, value=round(noisy, 4), ci95=[noisy, noisy], suppressed=False)
    assert plan.sums is not None
    floor = 0.0 if plan.clamp and plan.clamp[0] >= 0 else None
    # A sum of non-negative values is never negative: clip (post-processing).
    value = noisy if floor is None else max(noisy, floor)
    return Cell(
        group=group,
        value=round(value, 4),
        ci95=_ci(noisy, _half_width(plan.sums, terms), low=floor),
        suppressed=False,
    )


def _mean_cell(
    group: dict[str, Any], noisy_sum: float, noisy_count: float, plan: Plan, terms: int = 1
) -> Cell:
    assert plan.clamp is not None and plan.sums is not None
    n = max(noisy_count, 1)
    value = min(max(noisy_sum / n, plan.clamp[0]), plan.clamp[1])
    # 95% together: each noisy part at 97.5%, combined by interval arithmetic.
    s_hw = _half_width(plan.sums, terms, 0.025)
    c_hw = _half_width(plan.counts, terms, 0.025)
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
    group: dict[str, Any],
    numerator: float,
    count: float,
    plan: Plan,
    terms: int = 1,
    *,
    coding: bool,
) -> Cell:
    assert plan.numerators is not None
    den = max(count, 1)
    num = min(max(numerator, 0), den)
    share = num / den
    code = decide.share_label(share, coding=coding)
    if code is not None:
        return Cell(group=group, value=None, ci95=None, suppressed=False, coded=code)
    n_hw = _half_width(plan.numerators, terms, 0.025)
    d_hw = _half_width(plan.counts, terms, 0.025)
    low = max(0.0, (num - n_hw) / (den + d_hw))
    high = min(1.0, (num + n_hw) / max(den - d_hw, 1.0))
    return Cell(
        group=group,
        value=round(share, 4),
        ci95=[round(low, 4), round(high, 4)],
        suppressed=False,
        note=derived.uncertain_note((low, high), range_width=1.0),
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
    stats: list[dict[str, Any]] | None = None,
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
            **({"zcdp": plan.zcdp()} if plan.rho is not None else {}),
        },
        minimum_cell={"teachers": plan.minimum, "students": profile.min_cell_students},
        decisions={
            "exact": plan.exact,
            "publish_threshold": plan.threshold,
            "floor_delta": float(plan.floor_delta),
            "students_per_teacher": plan.students_per_teacher,
            **({"coarsening": plan.ladder.describe()} if plan.ladder is not None else {}),
        },
        # Hidden cells whose every line is hidden whole (docs/releases.md).
        unprotectable=[
            named_group(plan.dimensions, k) for k in sorted(pattern.unprotectable, key=repr)
        ],
        statistics=stats or [],
        created_at=datetime.now(UTC).isoformat(),
    )


__all__ = ["cells", "release"]
