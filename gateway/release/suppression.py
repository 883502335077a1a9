"""Minimum cell sizes: primary and complementary suppression, audited by linear programming.

A table is a set of cells, each keyed by its group (one value per dimension).
Every cell whose true count of teachers (or, for student-derived measures, of
students) is below the agreement's minimum is suppressed: that is *primary*
suppression, decided on true counts, as the minimum-cell rule requires.

Then *complementary* suppression: an attacker is assumed to know every
marginal total of the table (from this release or another), and the exact
value of every published cell. A line of cells (all cells that share every
dimension but one) with one suppressed cell would give that cell away by
subtraction, so a second cell of the line is suppressed, the smallest one,
preferring cells already suppressed in earlier releases of the same table.

Finally every pattern is *audited* by linear programming (``scipy.optimize
.linprog`` with HiGHS): for each suppressed cell, the smallest and largest
values consistent with everything published are computed; the width of that
feasible interval must be at least the protection interval (the minimum cell
size), or, for a cell on a line whose whole total is smaller than that, the
line total itself: no pattern can hide a cell better than ``0 <= cell <=
total``. A cell that fails gets another cell of one of its lines suppressed, and
the audit runs again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

GroupKey = tuple[Hashable, ...]


@dataclass
class SuppressionResult:
    primary: set[GroupKey] = field(default_factory=set)
    complementary: set[GroupKey] = field(default_factory=set)
    intervals: dict[GroupKey, tuple[float, float]] = field(default_factory=dict)
    unprotectable: set[GroupKey] = field(default_factory=set)

    @property
    def suppressed(self) -> set[GroupKey]:
        return self.primary | self.complementary

    def reason(self, key: GroupKey) -> str | None:
        if key in self.primary:
            return "primary"
        if key in self.complementary:
            return "complementary"
        return None


def lines_of(keys: Sequence[GroupKey]) -> list[list[GroupKey]]:
    """Every line of the table: cells equal in all dimensions but one (length > 1)."""
    if not keys:
        return []
    width = len(keys[0])
    if width == 0:
        return []
    lines: list[list[GroupKey]] = []
    for free in range(width):
        buckets: dict[GroupKey, list[GroupKey]] = defaultdict(list)
        for key in keys:
            buckets[key[:free] + key[free + 1 :]].append(key)
        lines += [cells for cells in buckets.values() if len(cells) > 1]
    return lines


def feasible_interval(
    target: GroupKey,
    suppressed: set[GroupKey],
    values: Mapping[GroupKey, float],
    lines: Sequence[Sequence[GroupKey]],
) -> tuple[float, float]:
    """Min and max of ``target`` given published cells and every line total (an LP)."""
    unknown = sorted(suppressed, key=repr)
    index = {key: i for i, key in enumerate(unknown)}
    rows, rhs = [], []
    for line in lines:
        hidden = [k for k in line if k in index]
        if not hidden:
            continue
        row = np.zeros(len(unknown))
        for key in hidden:
            row[index[key]] = 1.0
        rows.append(row)
        rhs.append(sum(values[k] for k in hidden))  # total minus published cells
    bounds = [(0.0, None)] * len(unknown)
    cost = np.zeros(len(unknown))
    cost[index[target]] = 1.0
    a_eq = np.array(rows) if rows else None
    b_eq = np.array(rhs) if rows else None
    low = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    high = linprog(-cost, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    lower = float(low.fun) if low.status == 0 else 0.0
    upper = float(-high.fun) if high.status == 0 else float("inf")
    return lower, upper


def suppress(
    values: Mapping[GroupKey, float],
    *,
    below_minimum: set[GroupKey],
    protection: float,
    remembered: set[GroupKey] = frozenset(),  # type: ignore[assignment]
    max_rounds: int = 200,
) -> SuppressionResult:
    """Primary, complementary and audited suppression of an additive table.

    ``values`` holds each cell's true, additive count (teachers); ``below_minimum``
    the cells failing the minimum-cell rule; ``remembered`` the cells suppressed in
    earlier releases of the same table, suppressed again for consistency.
    """
    keys = list(values)
    result = SuppressionResult(primary=set(below_minimum) & set(keys))
    result.complementary = (set(remembered) & set(keys)) - result.primary
    lines = lines_of(keys)
    lines_through: dict[GroupKey, list[list[GroupKey]]] = defaultdict(list)
    for line in lines:
        for key in line:
            lines_through[key].append(line)

    line_totals = {id(line): sum(values[k] for k in line) for line in lines}
    grand_total = sum(values.values())

    def required_width(key: GroupKey) -> float:
        # No suppression can hide a cell better than its smallest line total does
        # (0 <= cell <= total): such a cell needs an interval as wide as that total.
        totals = [line_totals[id(line)] for line in lines_through[key]] or [grand_total]
        return min(protection, *totals)

    def cheapest_in(line: Sequence[GroupKey]) -> GroupKey | None:
        published = [k for k in line if k not in result.suppressed]
        if not published:
            return None
        return min(published, key=lambda k: (k not in remembered, values[k], repr(k)))

    for _ in range(max_rounds):
        # A line with exactly one suppressed cell gives it away: suppress a second.
        changed = False
        for line in lines:
            hidden = [k for k in line if k in result.suppressed]
            if len(hidden) == 1:
                extra = cheapest_in(line)
                if extra is not None:
                    result.complementary.add(extra)
                    changed = True
        if changed:
            continue
        # Audit every suppressed cell by linear programming.
        failing = []
        result.intervals = {}
        for key in sorted(result.suppressed, key=repr):
            low, high = feasible_interval(key, result.suppressed, values, lines)
            result.intervals[key] = (low, high)
            if high - low < required_width(key):
                failing.append(key)
        added = False
        for key in failing:
            for line in lines_through[key]:
                extra = cheapest_in(line)
                if extra is not None:
                    result.complementary.add(extra)
                    added = True
                    break
            if added:
                break
        if not added:
            # Nothing left to suppress on these cells' lines: the whole line is hidden,
            # and the interval is as wide as the line total allows.
            result.unprotectable = set(failing)
            return result
    raise RuntimeError("suppression did not converge")  # pragma: no cover
