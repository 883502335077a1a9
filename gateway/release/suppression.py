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
values consistent with everything published (and with what the marks say: a
primary cell is small, a complementary one is not) are computed. A cell hidden
for being small must remain anywhere from 0 to the minimum cell size minus one
(the protection interval), or up to its smallest line total when that is less:
no pattern can hide a cell better than ``0 <= cell <= total``. A cell that
fails gets another cell of one of its lines suppressed, and the audit runs again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

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
    bounds: Mapping[GroupKey, tuple[float, float | None]] | None = None,
) -> tuple[float, float]:
    """Min and max of ``target`` given published cells, every line total and what the
    attacker knows of each hidden cell (``bounds``, default ``[0, inf)``), by LP."""
    from scipy.optimize import linprog  # imported here: SciPy is slow to import

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
    known = bounds or {}
    box = [known.get(key, (0.0, None)) for key in unknown]
    cost = np.zeros(len(unknown))
    cost[index[target]] = 1.0
    a_eq = np.array(rows) if rows else None
    b_eq = np.array(rhs) if rows else None
    low = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=box, method="highs")
    high = linprog(-cost, A_eq=a_eq, b_eq=b_eq, bounds=box, method="highs")
    lower = float(low.fun) if low.status == 0 else 0.0
    upper = float(-high.fun) if high.status == 0 else float("inf")
    return lower, upper


def suppress(
    values: Mapping[GroupKey, float],
    *,
    below_minimum: set[GroupKey],
    minimum: int,
    small_counts: set[GroupKey] | None = None,
    remembered: set[GroupKey] = frozenset(),  # type: ignore[assignment]
    max_rounds: int = 200,
    audit: bool = True,
) -> SuppressionResult:
    """Primary, complementary and audited suppression of an additive table.

    ``values`` holds each cell's true teacher count; ``below_minimum`` the cells failing
    the minimum-cell rule, of which ``small_counts`` (default: all) fail it by their
    teacher count; ``remembered`` the cells suppressed in earlier releases of the same
    table, suppressed again for consistency.

    The audit assumes the attacker knows every line total, every published cell
    exactly, and what each mark says: a "primary" cell small by its count holds at
    most ``minimum - 1`` teachers, a "complementary" one at least ``minimum``. Each
    cell small by its count must stay anywhere in ``[0, minimum - 1]`` (or in
    ``[0, total]`` when a line through it totals less than that). With ``audit``
    false only the line rule applies (no linear programming).
    """
    keys = list(values)
    result = SuppressionResult(primary=set(below_minimum) & set(keys))
    small = result.primary if small_counts is None else set(small_counts) & result.primary
    result.complementary = (set(remembered) & set(keys)) - result.primary
    lines = lines_of(keys)
    lines_through: dict[GroupKey, list[list[GroupKey]]] = defaultdict(list)
    for line in lines:
        for key in line:
            lines_through[key].append(line)
    line_totals = {id(line): sum(values[k] for k in line) for line in lines}
    grand_total = sum(values.values())

    def required_top(key: GroupKey) -> float:
        # No pattern hides a cell better than 0 <= cell <= (smallest line total).
        totals = [line_totals[id(line)] for line in lines_through[key]] or [grand_total]
        return min(float(minimum - 1), *totals)

    def knowledge() -> dict[GroupKey, tuple[float, float | None]]:
        known: dict[GroupKey, tuple[float, float | None]] = {}
        for key in result.suppressed:
            if key in small:
                known[key] = (0.0, float(minimum - 1))
            elif key in result.complementary:
                known[key] = (float(minimum), None)
        return known

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
        if not audit:  # the line rule only (decide.py: tables too wide to audit)
            return result
        # Audit every suppressed cell by linear programming.
        failing = []
        result.intervals = {}
        known = knowledge()
        for key in sorted(result.suppressed, key=repr):
            low, high = feasible_interval(key, result.suppressed, values, lines, known)
            result.intervals[key] = (low, high)
            if key in small and (low > 1e-9 or high < required_top(key) - 1e-9):
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
            # Nothing left to suppress on these cells' lines: every line through them
            # is hidden whole, and only totals published elsewhere could narrow them.
            result.unprotectable = set(failing)
            return result
    raise RuntimeError("suppression did not converge")  # pragma: no cover
