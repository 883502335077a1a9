"""The noise plan of a release: mechanisms, scales, the publish threshold and the cost.

Everything here depends on the query and the agreement only, never on the data, so
a preview shows exactly what a release will spend and how accurate it will be,
and a refusal at this stage says nothing about the data. A query outside the
profile's per-release bounds (``per_release_minimum`` to ``per_release_cap``) is
refused here with the bound it broke.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from itertools import product
from typing import Any

from gateway.agreements.models import Agreement, ColumnSpec
from gateway.errors import PolicyViolation, SchemaError
from gateway.release import coarsen, decide, noise
from gateway.release.canonical import MAX_LISTED_INTEGERS, exact_release, public_values
from gateway.release.coarsen import Ladder
from gateway.release.query import FieldRef, ResolvedQuery, bounds
from gateway.release.suppression import GroupKey

#: Public key sets larger than this are refused: a table that wide is mostly suppressed.
MAX_CELLS = 5000


class EpsilonOutOfBounds(PolicyViolation):
    """The query's epsilon or delta is outside the profile's per-release bounds."""

    code = "epsilon_out_of_bounds"


#: The ledger's unit of epsilon (query.EPSILON_PLACES).
_EPSILON_UNIT = Decimal("1e-12")


@dataclass(frozen=True)
class Composed:
    """A table of a report accounted in zCDP (reports.py): the rho measured by the
    report's tables before it in this run, and the report's whole epsilon (the floor's
    coupling argument is made over the composed report, decide.floor_tail)."""

    rho_before: Decimal
    report_epsilon: Decimal


def conversion_delta(agreement: Agreement) -> Decimal:
    """The delta at which zCDP is converted to (epsilon, delta): the largest power of
    ten that fits beside the floor's delta within the per-release cap."""
    profile = agreement.resolved_disclosure
    room = profile.per_release_cap.delta - profile.floor_delta
    if room <= 0:
        raise EpsilonOutOfBounds(
            f"agreement {agreement.id!r} leaves no delta for zCDP accounting beside the "
            "floor's (disclosure.per_release_cap.delta)"
        )
    return Decimal(f"1e{room.adjusted()}")


def _ledger_epsilon(value: float) -> Decimal:
    """A converted epsilon rounded up to the ledger's unit."""
    return Decimal(repr(value)).quantize(_EPSILON_UNIT, rounding=ROUND_CEILING)


def zcdp_charge(rho: Decimal, rho_before: Decimal, delta: Decimal) -> Decimal:
    """What a table measured at ``rho`` after ``rho_before`` (in the same report) adds to
    the report's converted epsilon: eps(before + rho) - eps(before), each rounded up to
    the ledger's unit. Charges telescope: the tables released so far have paid exactly
    the converted epsilon of their composed rho (rounded up), wherever the report stops.
    """
    after = _ledger_epsilon(noise.zcdp_epsilon(rho_before + rho, delta))
    before = _ledger_epsilon(noise.zcdp_epsilon(rho_before, delta)) if rho_before else Decimal(0)
    return after - before


@dataclass
class Plan:
    """What each mechanism of a release costs and how accurate it is."""

    epsilon: Decimal
    selection_delta: Decimal  # delta of selecting data-dependent group keys (0 if none)
    floor_delta: Decimal  # delta of the hard true-data floors (docs/releases.md)
    groups_per_teacher: int
    dimensions: list[str]
    public_positions: list[int]  # dimensions whose keys are public
    private_positions: list[int]  # dimensions whose keys come from the data
    public_combinations: list[GroupKey]
    minimum: int  # teachers (or counted units) a published cell must rest on
    students_per_teacher: int  # for student-derived measures: see aggregate.true_cells
    threshold: int = 0  # a cell is published only if its deciding noisy count reaches it
    #: Rows about posted positions, released exactly: no noise, no minimum, no cost.
    exact: bool = False
    counts: noise.IntegerNoise | noise.GaussianNoise | None = None
    selection: noise.ThresholdNoise | None = None
    sums: noise.FloatNoise | noise.GaussianNoise | None = None
    numerators: noise.IntegerNoise | noise.GaussianNoise | None = None
    #: zCDP accounting (Gaussian noise): the rho measured, the delta of its conversion
    #: to (epsilon, delta) charged with it (0 when an earlier table of the same report
    #: paid it), and the epsilon the floor's coupling argument uses (decide.floor_tail).
    rho: Decimal | None = None
    conversion_delta: Decimal = Decimal(0)
    coupling_epsilon: float | None = None
    composed: Composed | None = None  # where a report's zCDP table stands in it
    clamp: tuple[float, float] | None = None
    #: How the table's cells roll up when too small (a query that asks to coarsen).
    ladder: Ladder | None = None
    #: Statistics are derived from the whole table per group (a joint table's kappa).
    summarised: bool = False
    #: Publish thresholds of cells made of several measured cells, by their number.
    node_thresholds: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        """The levels a cell may be published at: one, or the ladder's steps."""
        return len(self.ladder.steps) if self.ladder is not None else 1

    @property
    def delta_used(self) -> Decimal:
        """All the delta the release spends: selection, floors and a zCDP conversion."""
        return self.selection_delta + self.floor_delta + self.conversion_delta

    @property
    def decided_by_sum(self) -> bool:
        """Rows of counts (no educators) are decided on the noisy sum of the counts."""
        return self.counts is None

    def count_half_width(self, alpha: float = 0.05) -> float:
        return self.counts.half_width(alpha) if self.counts is not None else 0.0

    def keys(self, selected: list[GroupKey]) -> list[GroupKey]:
        """Every cell: each selected data-dependent key with every public combination."""
        out = []
        width = len(self.dimensions)
        for private in selected:
            for public in self.public_combinations:
                key: list[Any] = [None] * width
                for position, value in zip(self.private_positions, private, strict=True):
                    key[position] = value
                for position, value in zip(self.public_positions, public, strict=True):
                    key[position] = value
                out.append(tuple(key))
        return out

    def private_part(self, key: GroupKey) -> GroupKey:
        return tuple(key[i] for i in self.private_positions)

    def accuracy(self) -> dict[str, Any]:
        """95% half-widths of each noisy quantity, and the publish threshold."""
        if self.exact:
            return {"exact": True}
        out: dict[str, Any] = {"publish_threshold": self.threshold}
        if self.rho is not None:
            out["rho"] = float(self.rho)
        if self.counts is not None:
            out["count_half_width"] = self.counts.half_width()
        if self.selection is not None:
            out["selection_threshold"] = self.selection.threshold
        if self.sums is not None:
            out["sum_half_width"] = self.sums.half_width()
        if self.numerators is not None:
            out["numerator_half_width"] = self.numerators.half_width()
        if self.ladder is not None and not self.private_positions:
            out["coarsening"] = self._ladder_accuracy()
        return out

    def _ladder_accuracy(self) -> list[dict[str, Any]]:
        """For each step of the ladder: its levels, how many cells it has, and the
        publish threshold and 95% half-width of a count there (from its smallest to its
        largest cell, by the number of measured cells each merges)."""
        assert self.ladder is not None
        noisy = self.counts if self.counts is not None else self.sums
        assert noisy is not None
        roots = coarsen.tree(self.keys([()]), self.ladder)
        sizes: dict[int, list[int]] = {}
        stack = list(roots)
        while stack:
            node = stack.pop()
            sizes.setdefault(node.step, []).append(len(node.leaves))
            stack += node.children

        def span(values: list[float]) -> float | list[float]:
            low, high = min(values), max(values)
            return low if low == high else [low, high]

        out = []
        for step in range(len(self.ladder.steps)):
            found = sorted(set(sizes.get(step, [])))
            if not found:
                continue
            out.append(
                {
                    "level": self.ladder.level_names(step),
                    "cells": len(sizes[step]),
                    "publish_threshold": span([decide.node_threshold(self, k) for k in found]),
                    "count_half_width": span([round(noisy.sum_half_width(k), 4) for k in found]),
                }
            )
        return out

    def zcdp(self) -> dict[str, str] | None:
        """How a zCDP release was accounted, for the release and its audit event: its
        rho, the rho of its report's tables before it, the report's epsilon and the
        delta of the conversion it paid (0 when an earlier table paid it)."""
        if self.rho is None:
            return None
        before = self.composed.rho_before if self.composed is not None else Decimal(0)
        return {
            "rho": str(self.rho),
            "rho_before": str(before),
            "report_epsilon": str(self.composed.report_epsilon) if self.composed else "",
            "conversion_delta_paid": str(self.conversion_delta),
        }

    def mechanisms(self) -> list[str]:
        if self.rho is not None:
            out = ["opendp make_gaussian (zCDP, rho composed and converted to (epsilon, delta))"]
            if self.counts is not None or self.numerators is not None:
                out.append("opendp make_gaussian (integers: discrete Gaussian)")
            if self.sums is not None:
                out.append("opendp make_gaussian (floats)")
            return out
        out = []
        if self.counts is not None or self.numerators is not None:
            out.append("opendp make_laplace (integers: discrete Laplace)")
        if self.sums is not None:
            out.append("opendp make_laplace (floats)")
        if self.selection is not None:
            out.append("opendp make_laplace_threshold (group selection)")
        return out


def paired(resolved: ResolvedQuery) -> tuple[FieldRef, FieldRef]:
    assert resolved.measure_field is not None and resolved.compare_field is not None
    return resolved.measure_field, resolved.compare_field


def ordinal_values(spec: ColumnSpec) -> list[Any]:
    """The values a distribution is taken over: the codes, or a small integer range."""
    if spec.codes:
        return list(spec.code_values)
    if (
        spec.type == "integer"
        and spec.range
        and spec.range.min is not None
        and spec.range.max is not None
    ):
        low, high = int(spec.range.min), int(spec.range.max)
        if high - low < MAX_LISTED_INTEGERS:
            return list(range(low, high + 1))
    raise SchemaError("a distribution needs a field with codes or a small integer range")


def _delta_that_fits(agreement: Agreement) -> str:
    """A round selection delta within the per-release cap, beside the floor's delta."""
    profile = agreement.resolved_disclosure
    room = profile.per_release_cap.delta - profile.floor_delta
    if room <= 0:
        return str(profile.per_release_minimum.delta)
    return f"1e{room.adjusted()}"


def _check_zcdp(
    resolved: ResolvedQuery, agreement: Agreement, composed: Composed | None
) -> tuple[Decimal, float]:
    """A zCDP query's epsilon covers its conversion, and its noise is within the
    profile's per-release bounds; its conversion delta (0 when an earlier table of the
    report paid it) and the epsilon of the floor's coupling argument."""
    query = resolved.query
    assert query.rho is not None
    profile = agreement.resolved_disclosure
    cap, least = profile.per_release_cap, profile.per_release_minimum
    delta = conversion_delta(agreement)
    before = composed.rho_before if composed is not None else Decimal(0)
    charge = zcdp_charge(query.rho, before, delta)
    if query.epsilon < charge:
        raise EpsilonOutOfBounds(
            f"rho {query.rho} converts to epsilon {charge} at delta {delta} (zCDP); the "
            f"query offers only epsilon {query.epsilon}: ask for at least {charge}"
        )
    # The noise's own level, as if released alone, is what the bounds are about.
    alone = _ledger_epsilon(noise.zcdp_epsilon(query.rho, delta))
    if alone < least.epsilon or alone > cap.epsilon:
        raise EpsilonOutOfBounds(
            f"rho {query.rho} is worth epsilon {alone} alone (zCDP at delta {delta}); "
            f"agreement {agreement.id!r} allows from {least.epsilon} to {cap.epsilon} "
            "per release (disclosure.per_release_minimum and per_release_cap)"
        )
    paid = Decimal(0) if before else delta
    if paid + profile.floor_delta > cap.delta:
        raise EpsilonOutOfBounds(
            f"a zCDP release spends delta {paid + profile.floor_delta}; agreement "
            f"{agreement.id!r} allows at most {cap.delta} (disclosure.per_release_cap)"
        )
    coupling = float(composed.report_epsilon) if composed is not None else float(alone)
    return paid, max(coupling, float(query.epsilon))


def _check_bounds(resolved: ResolvedQuery, agreement: Agreement, private: bool) -> Decimal:
    """The query's epsilon and delta within the profile's bounds; the delta of selection."""
    query = resolved.query
    profile = agreement.resolved_disclosure
    cap, least = profile.per_release_cap, profile.per_release_minimum
    if query.epsilon < least.epsilon:
        raise EpsilonOutOfBounds(
            f"the query asks for epsilon {query.epsilon}; agreement {agreement.id!r} needs "
            f"at least {least.epsilon} per release (disclosure.per_release_minimum): below "
            "it the noise drowns every cell"
        )
    selection_delta = query.delta if private else Decimal(0)
    if private and selection_delta < least.delta:
        raise EpsilonOutOfBounds(
            f"the values of a dimension are not public, so they are selected with a small "
            f"delta; agreement {agreement.id!r} needs at least {least.delta} "
            f'(disclosure.per_release_minimum): add e.g. "delta": {_delta_that_fits(agreement)}'
        )
    spent = selection_delta + profile.floor_delta
    if query.epsilon > cap.epsilon or spent > cap.delta:
        raise EpsilonOutOfBounds(
            f"the query asks for epsilon {query.epsilon} and delta {spent} (with the "
            f"floor's {profile.floor_delta}); agreement {agreement.id!r} allows at most "
            f"epsilon {cap.epsilon} and delta {cap.delta} per release "
            "(disclosure.per_release_cap)"
        )
    return selection_delta


def plan_query(
    resolved: ResolvedQuery, agreement: Agreement, composed: Composed | None = None
) -> Plan:
    """Choose mechanisms, scales and the publish threshold for a normalised query
    (``composed``: a zCDP table of a report, after the report's earlier tables)."""
    query = resolved.query
    profile = agreement.resolved_disclosure
    dimensions = [ref.column for ref in resolved.group_by]
    key_lists = [public_values(ref, resolved.filters, agreement) for ref in resolved.group_by]
    measure = query.measure
    if measure.kind == "distribution":
        assert resolved.measure_field is not None
        dimensions.append(resolved.measure_field.column)
        key_lists.append(ordinal_values(resolved.measure_field.spec))
    elif measure.kind == "joint":
        for ref in paired(resolved):  # named with their datasets: both may be "score"
            dimensions.append(f"{ref.dataset}.{ref.column}")
            key_lists.append(ordinal_values(ref.spec))
    ladder = _ladder(resolved, agreement, dimensions, key_lists) if query.coarsen else None
    public_positions = [i for i, values in enumerate(key_lists) if values is not None]
    private_positions = [i for i, values in enumerate(key_lists) if values is None]
    public_lists = [key_lists[i] or [] for i in public_positions]
    size = 1
    for values in public_lists:
        size *= len(values)
    if size > MAX_CELLS:
        raise SchemaError(f"the table would have {size:,} cells; at most {MAX_CELLS:,}")
    if not resolved.linked and measure.kind != "sum":
        raise SchemaError(
            "datasets without educator IDs hold counts, not teachers: ask for the sum of "
            "one of their count fields"
        )
    if exact_release(resolved, agreement):
        plan = _exact_plan(dimensions, public_positions, private_positions, public_lists)
        assert resolved.measure_field is not None  # a sum: checked above
        plan.clamp = bounds(resolved.measure_field.spec)
        return plan
    if private_positions and query.rho is not None:
        names = ", ".join(dimensions[i] for i in private_positions)
        raise SchemaError(
            f"zCDP accounting (rho) needs public values, and those of {names} are not "
            "(no schema codes, no filter listing them): list them, or ask without rho"
        )
    if private_positions and query.delta == 0:
        names = ", ".join(dimensions[i] for i in private_positions)
        raise SchemaError(
            f"the values of {names} are not public (no schema codes, no filter listing "
            "them), so they must be selected with a small delta: add e.g. "
            f'"delta": {_delta_that_fits(agreement)}'
        )
    if query.rho is not None:
        conversion, coupling = _check_zcdp(resolved, agreement, composed)
        selection_delta = Decimal(0)
    else:
        if composed is not None:  # pragma: no cover (reports set rho with it)
            raise ValueError("a composed table needs rho")
        conversion, coupling = Decimal(0), None
        selection_delta = _check_bounds(resolved, agreement, bool(private_positions))
    # Spelled out by the canonical form (canonical._groups_per_teacher).
    groups = query.max_groups_per_teacher or 1
    minimum = profile.min_cell_teachers
    plan = Plan(
        epsilon=query.epsilon,
        selection_delta=selection_delta,
        floor_delta=profile.floor_delta,
        groups_per_teacher=groups,
        dimensions=dimensions,
        public_positions=public_positions,
        private_positions=private_positions,
        public_combinations=[tuple(k) for k in product(*public_lists)],
        minimum=minimum,
        # A teacher counts in a student-derived cell only with this many students, so
        # that a cell of `minimum` teachers rests on `min_cell_students` students.
        students_per_teacher=max(1, -(-profile.min_cell_students // minimum)),
        ladder=ladder,
        summarised=measure.kind == "joint",
        rho=query.rho,
        conversion_delta=conversion,
        coupling_epsilon=coupling,
        composed=composed,
    )
    try:
        if query.rho is not None:
            _choose_gaussian(plan, resolved, query.rho)
        else:
            _choose_noise(plan, resolved, query.epsilon)
        plan.threshold = decide.publish_threshold(plan, profile.publish_threshold)
    except noise.CalibrationFailed as error:
        raise EpsilonOutOfBounds(
            f"this table cannot be noised at epsilon {query.epsilon} and delta "
            f"{selection_delta} ({error}); ask for more"
        ) from None
    return plan


def _ladder(
    resolved: ResolvedQuery,
    agreement: Agreement,
    dimensions: list[str],
    key_lists: list[list[Any] | None],
) -> Ladder | None:
    """The coarsening ladder over the dimensions whose keys are public and that have a
    hierarchy under the agreement; None when none has (the table is decided flat)."""
    refs: list[tuple[FieldRef, str]] = [(ref, "codes") for ref in resolved.group_by]
    kind = resolved.query.measure.kind
    if kind == "distribution" and resolved.measure_field is not None:
        refs.append((resolved.measure_field, "values"))
    elif kind == "joint":
        refs += [(ref, "values") for ref in paired(resolved)]
    axes = []
    for position, ((ref, role), values) in enumerate(zip(refs, key_lists, strict=True)):
        hierarchy = agreement.hierarchy(ref.dataset, ref.column)
        if hierarchy is None or values is None:
            continue
        found = coarsen.axis(position, dimensions[position], hierarchy, values, kind=role)
        if found is not None:
            axes.append(found)
    return coarsen.ladder(axes)


def _exact_plan(
    dimensions: list[str],
    public_positions: list[int],
    private_positions: list[int],
    public_lists: list[list[Any]],
) -> Plan:
    """Rows about posted positions, not people (docs/agreements.md#the-unit-of-a-dataset):
    every cell is released as it is, free, whether its keys are public or not."""
    return Plan(
        epsilon=Decimal(0),
        selection_delta=Decimal(0),
        floor_delta=Decimal(0),
        groups_per_teacher=1,
        dimensions=dimensions,
        public_positions=public_positions,
        private_positions=private_positions,
        public_combinations=[tuple(k) for k in product(*public_lists)],
        minimum=0,
        students_per_teacher=1,
        exact=True,
    )


def _choose_noise(plan: Plan, resolved: ResolvedQuery, epsilon: Decimal) -> None:
    """Split epsilon over the mechanisms the measure needs and calibrate each."""
    measure = resolved.query.measure
    groups = plan.groups_per_teacher
    rest = epsilon
    if plan.private_positions:
        # Half the budget selects which data-dependent groups exist (with its delta).
        plan.selection = noise.threshold_noise(groups, epsilon / 2, plan.selection_delta)
        rest = epsilon - epsilon / 2
    half = rest / 2
    if measure.kind in ("count", "distribution", "joint"):
        plan.counts = noise.integer_noise(groups, rest)
    elif measure.kind in ("sum", "mean"):
        assert resolved.measure_field is not None
        plan.clamp = bounds(resolved.measure_field.spec)
        if not resolved.linked:
            # Rows of counts: the unit is one counted person or position, and the cell
            # is decided on the noisy sum itself.
            plan.sums = noise.float_noise(1.0, rest)
            return
        # A teacher adds at most max(|low|, |high|) to each of its groups; the noisy
        # count of teachers decides whether the cell is published.
        unit = max(abs(plan.clamp[0]), abs(plan.clamp[1]))
        plan.sums = noise.float_noise(groups * unit, half)
        plan.counts = noise.integer_noise(groups, rest - half)
    else:  # rate, retention, agreement: a noisy numerator over a noisy count
        plan.numerators = noise.integer_noise(groups, half)
        plan.counts = noise.integer_noise(groups, rest - half)


def _choose_gaussian(plan: Plan, resolved: ResolvedQuery, rho: Decimal) -> None:
    """Split rho over the mechanisms the measure needs (rho adds up) and calibrate each
    Gaussian for its L2 sensitivity: a teacher in ``g`` cells moves a vector of counts
    by ``sqrt(g)``, and of sums by ``sqrt(g)`` times the largest value it may add."""
    measure = resolved.query.measure
    root = math.sqrt(plan.groups_per_teacher)
    half = rho / 2
    if measure.kind in ("count", "distribution", "joint"):
        plan.counts = noise.gaussian_noise(root, rho, integer=True)
    elif measure.kind in ("sum", "mean"):
        assert resolved.measure_field is not None
        plan.clamp = bounds(resolved.measure_field.spec)
        if not resolved.linked:
            plan.sums = noise.gaussian_noise(1.0, rho, integer=False)
            return
        unit = max(abs(plan.clamp[0]), abs(plan.clamp[1]))
        plan.sums = noise.gaussian_noise(root * unit, half, integer=False)
        plan.counts = noise.gaussian_noise(root, rho - half, integer=True)
    else:  # rate, retention, agreement
        plan.numerators = noise.gaussian_noise(root, half, integer=True)
        plan.counts = noise.gaussian_noise(root, rho - half, integer=True)
