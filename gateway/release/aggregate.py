"""True per-cell aggregates after contribution bounding: never released as such.

The privacy unit is one teacher. Each teacher's rows are reduced to one value per
group (mean of a numeric measure, lower median of an ordinal one, "any row meets it"
for a rate condition), values are clamped to the schema's bounds, and a teacher counts
in at most ``groups_per_teacher`` groups (a fixed pseudo-random choice when more).
For a student-derived measure, a teacher counts in a cell only with at least
``students_per_teacher`` students there, so that the minimum of teachers implies the
minimum of students (decide.py needs one floor, on teachers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gateway.release.canonical import column_value
from gateway.release.groupkeys import plain
from gateway.release.plan import Plan, paired
from gateway.release.query import ResolvedQuery, retention_window
from gateway.release.rows import bounds_of
from gateway.release.suppression import GroupKey


@dataclass
class TrueCell:
    teachers: int = 0
    students: int | None = None
    total: float = 0.0  # clamped sum
    meeting: int = 0  # rate numerator
    members: np.ndarray[Any, np.dtype[np.int64]] = field(
        default_factory=lambda: np.empty(0, dtype=np.int64)
    )


def _pick_groups(frame: pd.DataFrame, key_columns: list[str], limit: int) -> pd.DataFrame:
    """Keep at most ``limit`` groups per teacher, chosen by a fixed pseudo-random order."""
    if limit <= 0 or frame.empty:
        return frame
    if int(frame["educator_ref"].value_counts().max()) <= limit:
        return frame  # no teacher is in more groups than allowed: nothing to choose
    order = pd.util.hash_pandas_object(frame[["educator_ref", *key_columns]], index=False)
    frame = frame.assign(_order=order.to_numpy())
    frame = frame.sort_values(["educator_ref", "_order"])
    rank = frame.groupby("educator_ref").cumcount()
    return frame[rank < limit].drop(columns="_order")


def true_cells(
    frame: pd.DataFrame, resolved: ResolvedQuery, plan: Plan
) -> dict[GroupKey, TrueCell]:
    """Exact per-cell aggregates after contribution bounding (never released as such)."""
    query = resolved.query
    group_cols = [f"{ref.dataset}.{ref.column}" for ref in resolved.group_by]
    measure_col = (
        f"{resolved.measure_field.dataset}.{resolved.measure_field.column}"
        if resolved.measure_field is not None
        else None
    )
    paired_needed = (
        [f"{r.dataset}.{r.column}" for r in paired(resolved)]
        if resolved.compare_field is not None
        else []
    )
    frame = frame.dropna(subset=group_cols + ([measure_col] if measure_col else []) + paired_needed)
    if resolved.condition is not None:
        ref, item = resolved.condition
        column = frame[f"{ref.dataset}.{ref.column}"]
        if item.op == "eq":
            meets = column == column_value(ref.spec, item.value)
        elif item.op == "in":
            meets = column.isin([column_value(ref.spec, v) for v in item.value])  # type: ignore[union-attr]
        else:
            low, high = bounds_of(item)
            meets = column.between(column_value(ref.spec, low), column_value(ref.spec, high))
        frame = frame.assign(_meets=meets.astype(int))
    if query.measure.kind == "retention":
        assert measure_col is not None and resolved.measure_field is not None
        frame = _retention_rows(frame, resolved, measure_col)
        measure_col = None  # the year column was only for finding who stayed
    if not resolved.linked:
        assert measure_col is not None and plan.clamp is not None
        grouped = (
            frame.assign(_v=frame[measure_col].clip(*plan.clamp)).groupby(
                group_cols, dropna=False, sort=False
            )
            if group_cols
            else None
        )
        cells: dict[GroupKey, TrueCell] = {}
        if grouped is None:
            total = float(frame[measure_col].clip(*plan.clamp).sum())
            cells[()] = TrueCell(teachers=round(total), total=total)
            return cells
        for key, part in grouped:
            key_tuple = key if isinstance(key, tuple) else (key,)
            total = float(part["_v"].sum())
            cells[tuple(key_tuple)] = TrueCell(teachers=round(total), total=total)
        return cells

    # One row per teacher per group.
    per_teacher_cols = ["educator_ref", *group_cols]
    aggregations: dict[str, Any] = {}
    paired_cols: list[str] = []
    if query.measure.kind in ("agreement", "joint"):
        # Each teacher's own score on each side (lower median of their rows in the group).
        paired_cols = [f"{r.dataset}.{r.column}" for r in paired(resolved)]
        for column in paired_cols:
            aggregations[column] = _lower_median
        measure_col = None
    if measure_col is not None:
        if query.measure.kind == "distribution":
            aggregations[measure_col] = lambda s: s.sort_values().iloc[(len(s) - 1) // 2]
        else:
            aggregations[measure_col] = "mean"
        spec = resolved.measure_field.spec if resolved.measure_field else None
        if spec is not None and spec.role == "student_measure" and spec.student_count_column:
            student_col = f"{resolved.measure_field.dataset}.{spec.student_count_column}"  # type: ignore[union-attr]
            aggregations[student_col] = "sum"
    if "_meets" in frame:
        aggregations["_meets"] = "max"
    if aggregations:
        teachers = frame.groupby(per_teacher_cols, dropna=False, sort=False).agg(aggregations)
        teachers = teachers.reset_index()
    else:
        teachers = frame[per_teacher_cols].drop_duplicates()
    if query.measure.kind == "agreement":
        teachers["_meets"] = (teachers[paired_cols[0]] == teachers[paired_cols[1]]).astype(int)
    student_spec = resolved.measure_field.spec if resolved.measure_field else None
    if (
        student_spec is not None
        and student_spec.role == "student_measure"
        and student_spec.student_count_column
        and resolved.measure_field is not None
    ):
        # Too few students behind a teacher's score in this group: the teacher is left
        # out of the cell, so that `minimum` teachers always rest on enough students.
        column = f"{resolved.measure_field.dataset}.{student_spec.student_count_column}"
        teachers = teachers[teachers[column] >= plan.students_per_teacher]
    key_cols = list(group_cols)
    if query.measure.kind == "joint":
        key_cols += paired_cols
    if query.measure.kind == "distribution":
        assert measure_col is not None
        key_cols.append(measure_col)
    teachers = _pick_groups(teachers, group_cols, plan.groups_per_teacher)
    if plan.clamp is not None and measure_col is not None:
        teachers[measure_col] = teachers[measure_col].clip(*plan.clamp)
    cells = {}
    if not key_cols:
        iterator: Any = [((), teachers)]
    else:
        iterator = teachers.groupby(key_cols, dropna=False, sort=False)
    for key, part in iterator:
        key_tuple = key if isinstance(key, tuple) else (key,)
        cell = TrueCell(
            teachers=int(part["educator_ref"].nunique()),
            members=np.unique(part["educator_ref"].to_numpy(dtype=np.int64)),
        )
        if measure_col is not None and query.measure.kind in ("sum", "mean"):
            cell.total = float(part[measure_col].sum())
        if "_meets" in part:
            cell.meeting = int(part["_meets"].sum())
        spec = resolved.measure_field.spec if resolved.measure_field else None
        if spec is not None and spec.role == "student_measure" and spec.student_count_column:
            student_col = f"{resolved.measure_field.dataset}.{spec.student_count_column}"  # type: ignore[union-attr]
            cell.students = int(part[student_col].sum())
        cells[tuple(plain(v) for v in key_tuple)] = cell
    return cells


def _lower_median(values: pd.Series) -> Any:
    return values.sort_values().iloc[(len(values) - 1) // 2]


def _retention_rows(frame: pd.DataFrame, resolved: ResolvedQuery, year_col: str) -> pd.DataFrame:
    """The rows of the teachers a retention counts, each marked whether the teacher was
    still there ``years_after`` years after their first year.

    A teacher's first year is their earliest row in the window. Teachers already
    there in the window's first year are left out (they were hired before it, when is
    unknown), and so are those hired too late for ``years_after`` to fall within it.
    """
    assert resolved.measure_field is not None
    window = retention_window(resolved.measure_field, resolved.filters)
    assert window is not None  # checked when the query was resolved
    first, last = window
    years_after = resolved.query.measure.years_after or 0
    years = frame[year_col].astype(int)
    hired = years.groupby(frame["educator_ref"]).transform("min")
    there = frame.loc[years == hired + years_after, "educator_ref"].unique()
    marked = frame.assign(_meets=frame["educator_ref"].isin(there).astype(int))
    eligible = (hired > first) & (hired + years_after <= last)
    return marked[eligible.to_numpy()]


def distinct_teachers(
    cells: Mapping[GroupKey, TrueCell], *, linked: bool
) -> Callable[[Sequence[GroupKey]], int]:
    """The hard floor's count for a set of cells merged into one (release/coarsen.py):
    the distinct teachers under them (for rows of counts, the units they sum)."""

    def count(keys: Sequence[GroupKey]) -> int:
        present = [cells[k] for k in keys if k in cells]
        if not linked:  # below the minimum only when the merged sum is
            return math.floor(sum(cell.total for cell in present))
        if len(present) == 1:
            return present[0].teachers
        parts = [cell.members for cell in present if cell.members.size]
        return int(np.unique(np.concatenate(parts)).size) if parts else 0

    return count
