"""Publish or suppress, and every label: decided on noisy measurements only.

The invariant: whatever a recipient can see that depends on the data (a number,
whether a cell is published or suppressed and why, a top- or bottom-coding label)
is a function of noisy measurements drawn within the release's budget. The only
true-data check is a hard safety floor, the minimum cell, and its effect is
counted in delta:

    a cell is published  iff  its noisy count >= tau  and  its true count >= minimum

tau is chosen so that a cell whose true count is below the minimum reaches tau
with probability at most ``p = floor_delta / (g * (1 + e^epsilon))`` (``g``: the cells
one teacher can change). Without the floor the release M is (epsilon, 0)-DP (it is
post-processing of the noisy counts); call the release with the floor M'. Take
neighbouring datasets D, D' (one teacher's rows added or removed). Cells whose true
counts are equal in D and D' have identical output distributions under M' (the floor
acts on both alike and their noise is independent of the rest), so fix them. Of the at
most ``g`` cells whose counts differ, M' differs from M only when such a cell is below
the minimum and its noisy count reaches tau: probability at most ``g * p``. Hence
``P[M'(D) in S] <= P[M(D) in S] + g p <= e^eps P[M(D') in S] + g p
<= e^eps (P[M'(D') in S] + g p) + g p = e^eps P[M'(D') in S] + (1 + e^eps) g p``,
and with ``p`` as above the release is (epsilon, floor_delta)-DP. docs/releases.md
sets the argument out for a privacy officer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.release import coarsen
from gateway.release.coarsen import Node
from gateway.release.noise import FloatNoise, IntegerNoise
from gateway.release.suppression import GroupKey, SuppressionResult, suppress

if TYPE_CHECKING:
    from gateway.release.plan import Plan

#: Top and bottom coding of percentages (NCES style), on the noisy share.
#: Tables up to this many cells get the linear-programming audit of suppression.
MAX_AUDITED_CELLS = 64
BOTTOM_CODE = 0.05
TOP_CODE = 0.95


def floor_tail(plan: Plan) -> float:
    """The chance each cell below the minimum may have of reaching the threshold.

    One teacher changes at most ``groups_per_teacher`` cells of a table; in a coarsened
    table, at most that many nodes at each of the ladder's steps and as many
    remainders (release/coarsen.py). So at most that many cells' floors differ
    between neighbouring datasets.
    """
    # The coupling is made over the mechanism whose (epsilon, delta) the ledger
    # charges: the release, or for a zCDP table the report it composes with.
    coupling = plan.coupling_epsilon if plan.coupling_epsilon is not None else plan.epsilon
    exponent = min(float(coupling), 700.0)
    # A coarsened table publishes nodes and remainders: two cells per step at most;
    # a joint table's statistics stand for one more cell per group (postprocess.py).
    cells = plan.groups_per_teacher * (
        (1 if plan.ladder is None else 2 * plan.steps) + (1 if plan.summarised else 0)
    )
    return float(plan.floor_delta) / (cells * (1.0 + math.exp(exponent)))


def publish_threshold(plan: Plan, profile_threshold: int | None) -> int:
    """The smallest tau that keeps the floor's effect within ``floor_delta``, or the
    profile's own ``publish_threshold`` when that is higher (default: the minimum)."""
    p = floor_tail(plan)
    if plan.rho is not None:  # Gaussian noise: the sub-Gaussian bound (noise.py)
        noise_ = plan.counts if plan.counts is not None else plan.sums
        assert noise_ is not None
        margin = _smallest_margin(lambda m: noise_.tail(m) <= p)
    elif isinstance(plan.counts, IntegerNoise):
        a = math.exp(-1.0 / plan.counts.scale)
        # a^k / (1 + a) <= p  <=>  k >= log(p (1 + a)) / log(a)
        margin = max(1, math.ceil(math.log(p * (1.0 + a)) / math.log(a) - 1e-9))
        while plan.counts.tail(margin) > p:  # guard against rounding
            margin += 1
    else:
        assert isinstance(plan.sums, FloatNoise)
        margin = max(1, math.ceil(plan.sums.scale * math.log(1.0 / (2.0 * p))))
    derived = plan.minimum - 1 + margin
    return max(derived, profile_threshold or plan.minimum)


def _smallest_margin(holds: Callable[[int], bool]) -> int:
    """The smallest whole margin of at least 1 for which ``holds`` (which, once true,
    stays true for every larger margin): doubling, then binary search."""
    margin = 1
    while not holds(margin):
        margin *= 2
    low, high = margin // 2 + 1, margin
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return low


def node_threshold(plan: Plan, leaves: int) -> int:
    """The publish threshold of a cell made of ``leaves`` measured cells, whose noisy
    count is the sum of theirs (release/coarsen.py).

    A teacher is in at most ``min(g, leaves)`` of them, so a cell with fewer than
    ``minimum`` distinct teachers sums to at most ``min(g, leaves) * (minimum - 1)``;
    the margin above that bounds the tail of a sum of ``leaves`` independent draws
    (exact for discrete Laplace, noise.py) by the same ``p`` as one cell's. With one
    leaf this is :func:`publish_threshold`.
    """
    if leaves <= 1:
        return plan.threshold
    cached = plan.node_thresholds.get(leaves)
    if cached is not None:
        return cached
    p = floor_tail(plan)
    noise_ = plan.counts if plan.counts is not None else plan.sums
    assert noise_ is not None
    low = _smallest_margin(lambda m: noise_.sum_tail(leaves, m) <= p)
    # Rows of counts (decided on noisy sums): a merged cell below the minimum sums to
    # less than it, not to at most one less (a count field need not be whole).
    floor = (
        plan.minimum
        if plan.decided_by_sum
        else min(plan.groups_per_teacher, leaves) * (plan.minimum - 1)
    )
    derived = floor + max(low, 1)
    # The profile's own threshold, for one cell, holds for a merged one too.
    threshold = max(derived, plan.threshold)
    plan.node_thresholds[leaves] = threshold
    return threshold


def decide(
    true_counts: Mapping[GroupKey, int],
    noisy_counts: Mapping[GroupKey, float],
    *,
    plan: Plan,
    remembered: set[GroupKey],
) -> SuppressionResult:
    """Which cells are published, suppressed (primary) or suppressed to protect
    another (complementary).

    ``noisy_counts`` are the deciding noisy measurements (teachers, or counted units
    for rows of counts); ``true_counts`` enter only through the floor. Complementary
    suppression and its linear-programming audit (suppression.py) work on the noisy
    counts: post-processing, free of charge. ``remembered`` (cells suppressed in
    earlier releases of the same table, themselves decided this way) are suppressed
    again, so the same table never shows a cell it hid before.
    """
    if plan.exact:  # rows about positions, not people: nothing to protect (plan.py)
        return SuppressionResult()
    primary = {
        key
        for key, noisy in noisy_counts.items()
        if noisy < plan.threshold or true_counts.get(key, 0) < plan.minimum
    }
    values = {key: max(float(noisy), 0.0) for key, noisy in noisy_counts.items()}
    return suppress(
        values,
        below_minimum=primary,
        minimum=plan.minimum,
        small_counts={k for k in primary if values[k] < plan.minimum},
        remembered=remembered,
        # The audit's cost grows steeply with the table (seconds at 100 cells, minutes
        # at 400); wider tables keep the line rule, and their values are noisy anyway.
        audit=len(values) <= MAX_AUDITED_CELLS,
    )


@dataclass
class Coarsened:
    """A coarsened table's decisions: its tree's roots, the nodes published (disjoint,
    in table order) and the suppression pattern of the roots."""

    roots: list[Node]
    published: list[Node]
    pattern: SuppressionResult
    hidden: list[Node] = field(default_factory=list)  # remainders suppressed


def decide_coarsened(
    leaves: Sequence[GroupKey],
    noisy_counts: Mapping[GroupKey, float],
    teachers: Callable[[Sequence[GroupKey]], int],
    *,
    plan: Plan,
    remembered: Callable[[GroupKey], bool],
) -> Coarsened:
    """Publish each cell at the finest level where its whole family clears, on noisy
    sums only, with the hard floor on ``teachers`` (distinct, under a set of leaves).

    The roots (the cells of the ladder's top step) are decided as a flat table is,
    complementary suppression included; under each root that is published, the
    decision goes down the tree, all or none (release/coarsen.py).
    """
    assert plan.ladder is not None
    roots = coarsen.tree(leaves, plan.ladder)
    verdicts: dict[tuple[GroupKey, ...], bool] = {}

    def clears(merged: Sequence[GroupKey]) -> bool:
        key = tuple(merged)
        found = verdicts.get(key)
        if found is None:
            noisy = sum(noisy_counts[leaf] for leaf in merged)
            found = noisy >= node_threshold(plan, len(merged)) and (
                teachers(merged) >= plan.minimum
            )
            verdicts[key] = found
        return found

    values = {root.key: max(sum(noisy_counts[leaf] for leaf in root.leaves), 0.0) for root in roots}
    primary = {root.key for root in roots if not clears(root.leaves)}
    pattern = suppress(
        values,
        below_minimum=primary,
        minimum=plan.minimum,
        small_counts={k for k in primary if values[k] < plan.minimum},
        remembered={root.key for root in roots if remembered(root.key)},
        audit=len(values) <= MAX_AUDITED_CELLS,
    )
    shown = [root for root in roots if root.key not in pattern.suppressed]
    tree = coarsen.decide_tree(shown, clears, plan.ladder.stepped)
    order = {leaf: i for i, leaf in enumerate(leaves)}
    tree.published.sort(key=lambda node: order[node.leaves[0]])
    tree.hidden.sort(key=lambda node: order[node.leaves[0]])
    # A remainder too small beside siblings published on their own: suppressed.
    pattern.primary |= {node.key for node in tree.hidden}
    return Coarsened(roots=roots, published=tree.published, pattern=pattern, hidden=tree.hidden)


def share_label(share: float, *, coding: bool) -> str | None:
    """ "<5%" or ">95%" for a noisy share near 0% or 100% (when the profile codes them)."""
    if not coding:
        return None
    if share < BOTTOM_CODE:
        return f"<{round(BOTTOM_CODE * 100)}%"
    if share > TOP_CODE:
        return f">{round(TOP_CODE * 100)}%"
    return None
