"""Measuring a table: every noisy number of a release, drawn through noise.py.

Data-dependent group keys are first selected by a thresholded noisy count (OpenDP's
``make_laplace_threshold``); then each cell's teacher count, clamped sum and rate
numerator get the noise the plan calibrated. Nothing after this stage reads a true
aggregate except the hard floor in decide.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.release.aggregate import TrueCell
from gateway.release.groupkeys import key_text
from gateway.release.plan import Plan
from gateway.release.suppression import GroupKey


@dataclass
class Measurements:
    """The noisy measurements of each cell of a table, in table order."""

    keys: list[GroupKey]
    counts: dict[GroupKey, int] = field(default_factory=dict)
    sums: dict[GroupKey, float] = field(default_factory=dict)
    numerators: dict[GroupKey, int] = field(default_factory=dict)
    #: For a coarsened table's cells: how many measured cells each one sums (else 1).
    terms: dict[GroupKey, int] = field(default_factory=dict)

    def deciding(self, plan: Plan) -> dict[GroupKey, float]:
        """The noisy count each cell's publication is decided on."""
        if plan.decided_by_sum:
            return dict(self.sums)
        return {k: float(v) for k, v in self.counts.items()}


def select_groups(
    cells: Mapping[GroupKey, TrueCell], plan: Plan, *, linked: bool
) -> dict[GroupKey, TrueCell]:
    """Keep the data-dependent groups whose noisy teacher count clears the threshold.

    The count of a data-dependent key is the number of distinct teachers under it
    (each teacher is in at most ``groups_per_teacher`` of them); the selected keys
    are then combined with every public combination, empty cells included.
    """
    assert plan.selection is not None
    members: dict[GroupKey, list[np.ndarray[Any, np.dtype[np.int64]]]] = {}
    for key, cell in cells.items():
        members.setdefault(plan.private_part(key), []).append(cell.members)
    if linked:
        counts = {
            key_text(k): int(np.unique(np.concatenate(parts)).size) for k, parts in members.items()
        }
    else:  # rows of counts: the unit is one counted person or position
        totals: dict[GroupKey, int] = {}
        for key, cell in cells.items():
            part = plan.private_part(key)
            totals[part] = totals.get(part, 0) + cell.teachers
        counts = {key_text(k): v for k, v in totals.items()}
    released = plan.selection.release(counts)
    selected = sorted((k for k in members if key_text(k) in released), key=key_text)
    return {k: cells.get(k, TrueCell()) for k in plan.keys(selected)}


def table_cells(
    found: Mapping[GroupKey, TrueCell], plan: Plan, *, linked: bool
) -> dict[GroupKey, TrueCell]:
    """The table's cells: every public key (empty ones too: never left out, never
    shown as 0), with data-dependent keys first selected by a noisy count."""
    if plan.selection is not None:
        return select_groups(found, plan, linked=linked)
    if plan.exact and plan.private_positions:  # exact data: its keys are not secret
        parts = sorted({plan.private_part(k) for k in found}, key=key_text)
        return {k: found.get(k, TrueCell()) for k in plan.keys(parts)}
    return {k: found.get(k, TrueCell()) for k in plan.keys([()])}


def measure(cells: Mapping[GroupKey, TrueCell], plan: Plan) -> Measurements:
    """Draw every cell's noise (OpenDP) in one vector per mechanism (none for an exact
    plan: its sums are the true ones)."""
    keys = list(cells)
    out = Measurements(keys=keys)
    if plan.exact:  # rows about positions, not people: no noise (plan.py)
        out.sums = {k: cells[k].total for k in keys}
        return out
    if plan.counts is not None:
        noisy = plan.counts.release([cells[k].teachers for k in keys])
        out.counts = dict(zip(keys, noisy, strict=True))
    if plan.sums is not None:
        noisy_sums = plan.sums.release([cells[k].total for k in keys])
        out.sums = dict(zip(keys, noisy_sums, strict=True))
    if plan.numerators is not None:
        noisy = plan.numerators.release([cells[k].meeting for k in keys])
        out.numerators = dict(zip(keys, noisy, strict=True))
    return out
