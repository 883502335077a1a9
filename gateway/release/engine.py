"""Releases: the one domain function behind ``gateway release`` and the API.

The path of a release, in order (each step refuses with a clear error, and
every refusal is in the audit log):

1. the agreement must be in force; the query is resolved against it and the
   recipient's allowlist;
2. the noise plan is made: which OpenDP mechanisms, at which scales, for what
   (epsilon, delta), within the agreement's per-release cap; a preview stops
   here and spends nothing;
3. the current rows are read (replaced uploads are gone; only the current
   pseudonym key version links), filtered, linked on the pseudonym; an
   identical earlier query on the same data, under the same terms, returns the
   stored release at no cost;
4. **contribution bounding**: the privacy unit is one teacher. Each teacher's
   rows are reduced to one value per group (mean of a numeric measure, lower
   median of an ordinal one, "any row meets it" for a rate condition), values
   are clamped to the schema's bounds, and a teacher counts in at most
   ``max_groups_per_teacher`` groups (a fixed pseudo-random choice when more);
5. the budget is **reserved** (committed) before anything data-dependent is
   decided or drawn, never refunded;
6. a query whose cells differ from an earlier release's cells by fewer than the
   minimum number of teachers is refused (differencing), its reservation spent;
7. true cell counts decide **suppression**: primary (minimum cell size for
   teachers, and for students behind student-derived measures), complementary,
   audited by linear programming, consistent with earlier releases;
8. OpenDP draws the noise; each cell gets its noisy value and 95% interval;
   rates and shares near 0% or 100% are top- and bottom-coded;
9. the release, its cells' teacher sets and its audit event are committed in
   one transaction, and only then is the release returned.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from gateway import audit, keys
from gateway.agreements.models import Agreement, ColumnSpec
from gateway.context import Gateway
from gateway.errors import GatewayError, PolicyViolation, SchemaError
from gateway.release import budget as budget_ledger
from gateway.release import noise
from gateway.release.query import (
    FieldRef,
    Filter,
    Query,
    ResolvedQuery,
    bounds,
    resolve,
    retention_window,
)
from gateway.release.suppression import GroupKey, suppress
from gateway.storage import batches
from gateway.storage.datasets import Upload
from gateway.storage.releases import Release, ReleaseCell, SuppressedCell

#: Public key sets larger than this are refused: a table that wide is mostly suppressed.
MAX_CELLS = 5000
#: NCES-style top and bottom coding of percentages.
BOTTOM_CODE = 0.05
TOP_CODE = 0.95
MAX_YEAR_KEYS = 30


class DifferencingRefused(PolicyViolation):
    code = "differencing_refused"


class ReleaseFailed(GatewayError):
    """The release failed after its budget was reserved; the reservation stays spent."""

    code = "release_failed"
    status = 500
    exit_code = 10


@dataclass
class Plan:
    """The noise plan of a query: what each mechanism costs and how accurate it is."""

    epsilon: Decimal
    delta: Decimal
    groups_per_teacher: int
    dimensions: list[str]
    public_positions: list[int]  # dimensions whose keys are public
    private_positions: list[int]  # dimensions whose keys come from the data
    public_combinations: list[GroupKey]
    counts: noise.IntegerNoise | None = None
    selection: noise.ThresholdNoise | None = None
    sums: noise.FloatNoise | None = None
    numerators: noise.IntegerNoise | None = None
    clamp: tuple[float, float] | None = None

    @property
    def delta_used(self) -> Decimal:
        """Delta is spent only when groups are selected from the data."""
        return self.delta if self.selection is not None else Decimal(0)

    def count_half_width(self, alpha: float = 0.05) -> float:
        """Half-width of a noisy count's interval (0 when counts carry no noise)."""
        return self.counts.half_width(alpha) if self.counts is not None else 0.0

    def keys(self, selected: Sequence[GroupKey]) -> list[GroupKey]:
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
        """95% half-widths of each noisy quantity, for the preview and the release."""
        out: dict[str, Any] = {}
        if self.counts is not None:
            out["count_half_width"] = self.counts.half_width()
        if self.selection is not None:
            out["selection_threshold"] = self.selection.threshold
        if self.sums is not None:
            out["sum_half_width"] = self.sums.half_width()
        if self.numerators is not None:
            out["numerator_half_width"] = self.numerators.half_width()
        return out


# --- planning ----------------------------------------------------------------------------


def _filter_values(ref: FieldRef, item: Filter) -> list[Any] | None:
    if item.op == "eq":
        return [item.value]
    if item.op == "in":
        assert isinstance(item.value, list)
        return list(item.value)
    low, high = _bounds_of(item)
    integer_range = ref.spec.type == "integer" and isinstance(low, int) and isinstance(high, int)
    if integer_range and high - low + 1 <= MAX_YEAR_KEYS:
        return list(range(low, high + 1))
    return None


def _bounds_of(item: Filter) -> tuple[Any, Any]:
    assert isinstance(item.value, list) and len(item.value) == 2
    return item.value[0], item.value[1]


def _public_values(
    ref: FieldRef, resolved: ResolvedQuery, agreement: Agreement
) -> list[Any] | None:
    """A dimension's keys when they are public: the query's own filter, the
    agreement's public values (its programs), or the schema's codes."""
    for other, item in resolved.filters:
        if (other.dataset, other.column) == (ref.dataset, ref.column):
            values = _filter_values(ref, item)
            if values is not None:
                return [_canonical_value(ref.spec, v) for v in values]
    if ref.column in agreement.public_values:
        return list(agreement.public_values[ref.column])
    if ref.spec.codes:
        return list(ref.spec.code_values)
    if ref.spec.type == "boolean":
        return [False, True]
    return None


def _canonical_value(spec: ColumnSpec, value: Any) -> Any:
    if spec.codes and isinstance(value, str):
        for code in spec.code_values:
            if isinstance(code, str) and code.upper() == value.upper():
                return code
    if spec.type == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def plan_query(resolved: ResolvedQuery, agreement: Agreement) -> Plan:
    """Choose mechanisms and scales for ``resolved`` within the agreement's caps."""
    query = resolved.query
    cap = agreement.resolved_disclosure.per_release_cap
    if query.epsilon > cap.epsilon or query.delta > cap.delta:
        raise PolicyViolation(
            f"the query asks for epsilon {query.epsilon} and delta {query.delta}; agreement "
            f"{agreement.id!r} allows at most epsilon {cap.epsilon} and delta {cap.delta} per "
            "release (disclosure.per_release_cap)"
        )
    dimensions = [ref.column for ref in resolved.group_by]
    key_lists = [_public_values(ref, resolved, agreement) for ref in resolved.group_by]
    measure = query.measure
    if measure.kind == "distribution":
        assert resolved.measure_field is not None
        dimensions.append(resolved.measure_field.column)
        key_lists.append(_ordinal_values(resolved.measure_field.spec))
    elif measure.kind == "joint":
        for ref in _paired(resolved):  # named with their datasets: both may be "score"
            dimensions.append(f"{ref.dataset}.{ref.column}")
            key_lists.append(_ordinal_values(ref.spec))
    public_positions = [i for i, values in enumerate(key_lists) if values is not None]
    private_positions = [i for i, values in enumerate(key_lists) if values is None]
    public_lists = [key_lists[i] or [] for i in public_positions]
    size = int(np.prod([len(v) for v in public_lists])) if public_lists else 1
    if size > MAX_CELLS:
        raise SchemaError(f"the table would have {size:,} cells; at most {MAX_CELLS:,}")
    if not resolved.linked:
        groups = 1
    elif query.max_groups_per_teacher is not None:
        groups = query.max_groups_per_teacher
    else:
        groups = _default_groups_per_teacher(resolved, agreement)
    plan = Plan(
        epsilon=query.epsilon,
        delta=query.delta,
        groups_per_teacher=groups,
        dimensions=dimensions,
        public_positions=public_positions,
        private_positions=private_positions,
        public_combinations=[tuple(k) for k in product(*public_lists)],
    )
    if private_positions and query.delta == 0:
        names = ", ".join(dimensions[i] for i in private_positions)
        raise SchemaError(
            f"the values of {names} are not public (no schema codes, no filter listing "
            'them), so they must be selected with a small delta: add e.g. "delta": 1e-7'
        )
    if not resolved.linked and measure.kind != "sum":
        raise SchemaError(
            "datasets without educator IDs hold counts, not teachers: ask for the sum of "
            "one of their count fields"
        )
    rest = query.epsilon
    if private_positions:
        # Half the budget selects which data-dependent groups exist (with all of delta).
        plan.selection = noise.threshold_noise(groups, query.epsilon / 2, query.delta)
        rest = query.epsilon - query.epsilon / 2
    half = rest / 2
    if measure.kind in ("count", "distribution", "joint"):
        plan.counts = noise.integer_noise(groups, rest)
    elif measure.kind == "sum":
        assert resolved.measure_field is not None
        plan.clamp = bounds(resolved.measure_field.spec)
        # A teacher adds at most max(|low|, |high|) to each of its groups; on datasets
        # without educators the unit is one counted person or position.
        unit = max(abs(plan.clamp[0]), abs(plan.clamp[1])) if resolved.linked else 1.0
        plan.sums = noise.float_noise(groups * unit, rest)
    elif measure.kind == "mean":
        assert resolved.measure_field is not None
        plan.clamp = bounds(resolved.measure_field.spec)
        plan.sums = noise.float_noise(groups * max(abs(plan.clamp[0]), abs(plan.clamp[1])), half)
        plan.counts = noise.integer_noise(groups, rest - half)
    else:  # rate
        plan.numerators = noise.integer_noise(groups, half)
        plan.counts = noise.integer_noise(groups, rest - half)
    return plan


def _paired(resolved: ResolvedQuery) -> tuple[FieldRef, FieldRef]:
    assert resolved.measure_field is not None and resolved.compare_field is not None
    return resolved.measure_field, resolved.compare_field


def _ordinal_values(spec: ColumnSpec) -> list[Any]:
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
        if high - low < MAX_YEAR_KEYS:
            return list(range(low, high + 1))
    raise SchemaError("a distribution needs a field with codes or a small integer range")


def _default_groups_per_teacher(resolved: ResolvedQuery, agreement: Agreement) -> int:
    """One group per teacher, or one per year when the table is broken down by year."""
    for ref in resolved.group_by:
        if ref.column in ("school_year", "cohort_year"):
            values = _public_values(ref, resolved, agreement)
            return min(len(values), 5) if values else 5
    return 1


# --- reading the data --------------------------------------------------------------------


def _needed_columns(resolved: ResolvedQuery) -> dict[str, set[str]]:
    """The columns each dataset's rows need once filtered (filters read their own)."""
    needed: dict[str, set[str]] = {d: set() for d in resolved.query.datasets}
    refs = list(resolved.group_by)
    if resolved.measure_field is not None:
        refs.append(resolved.measure_field)
        spec = resolved.measure_field.spec
        if spec.role == "student_measure" and spec.student_count_column:
            needed[resolved.measure_field.dataset].add(spec.student_count_column)
    if resolved.condition is not None:
        refs.append(resolved.condition[0])
    if resolved.compare_field is not None:
        refs.append(resolved.compare_field)
    for ref in refs:
        needed[ref.dataset].add(ref.column)
    for column in resolved.link_on:
        for columns in needed.values():
            columns.add(column)
    return needed


def _filter_value(ref: FieldRef, value: Any) -> pa.Scalar:
    """A filter value as an Arrow scalar of its own type: comparing it with the column
    promotes as SQL does (3.5 never equals an integer), rather than truncating it."""
    value = _canonical_value(ref.spec, value)
    if isinstance(value, bool) and ref.spec.type != "boolean":
        raise TypeError("a boolean matches only a boolean column")  # Arrow would cast it to 1
    if ref.spec.type == "date" and isinstance(value, str):
        value = date.fromisoformat(value)
    return pa.scalar(value)


_NO_MATCH = (pa.ArrowException, OverflowError, TypeError, ValueError)


def _filter_mask(column: pa.ChunkedArray, ref: FieldRef, item: Filter) -> pa.ChunkedArray:
    """Which rows a filter keeps; a null, or a value the column cannot hold, never
    matches, as in SQL."""
    nothing = pa.chunked_array([pa.array(np.zeros(len(column), dtype=bool))])
    if item.op == "in":
        assert isinstance(item.value, list)
        values = []
        for value in item.value:
            try:  # only values the column holds exactly (2.0 is 2; 2.5 and "x" are none)
                values.append(_filter_value(ref, value).cast(column.type).as_py())
            except _NO_MATCH:
                continue
        return pc.is_in(column, value_set=pa.array(values, type=column.type))
    try:
        if item.op == "eq":
            return pc.equal(column, _filter_value(ref, item.value))
        low, high = _bounds_of(item)
        return pc.and_(
            pc.greater_equal(column, _filter_value(ref, low)),
            pc.less_equal(column, _filter_value(ref, high)),
        )
    except _NO_MATCH:
        return nothing


def _period_range(resolved: ResolvedQuery, dataset: str) -> tuple[int, int] | None:
    """The years a dataset's filters allow, when they are whole years, to skip batches."""
    low, high = None, None
    for ref, item in resolved.filters:
        if ref.dataset != dataset or ref.column not in ("school_year", "cohort_year"):
            continue
        values = item.value if item.op != "eq" else [item.value]
        assert isinstance(values, list)
        years = [_canonical_value(ref.spec, v) for v in values]
        if not years or not all(isinstance(y, int) and not isinstance(y, bool) for y in years):
            continue
        first, last = min(years), max(years)
        low = first if low is None else max(low, first)
        high = last if high is None else min(high, last)
    return None if low is None or high is None else (low, high)


def load_rows(
    connection: Connection, resolved: ResolvedQuery, agreement: Agreement, key_version: int | None
) -> tuple[pd.DataFrame, list[list[Any]]]:
    """The query's rows, filtered and linked on the pseudonym; and the data versions used.

    Rows come from the stored column batches of the accepted uploads; an upload made
    under an earlier key version holds pseudonyms that no longer link, so it is read
    only for datasets without educators.
    """
    frames: list[pd.DataFrame] = []
    versions: list[list[Any]] = []
    for name in resolved.query.datasets:
        schema = resolved.schemas[name]
        columns = sorted(_needed_columns(resolved)[name])
        uploads = _accepted_uploads(connection, agreement, name)
        seqs = [seq for seq, _ in uploads]
        versions.append([name, seqs])
        readable = [
            seq
            for seq, version in uploads
            if schema.educator_id_column is None or version == key_version
        ]
        filters = [(ref, item) for ref, item in resolved.filters if ref.dataset == name]
        filtered = sorted({ref.column for ref, _ in filters} - set(columns))

        def keep(rows: pa.Table, filters: list[tuple[FieldRef, Filter]] = filters) -> pa.Table:
            for ref, item in filters:
                rows = rows.filter(_filter_mask(rows.column(ref.column), ref, item))
            return rows

        table = batches.read_rows(
            connection,
            schema.name,
            readable,
            [*columns, *filtered],
            periods=_period_range(resolved, name),
            keep=keep if filters else None,
        ).select([batches.EDUCATOR_REF, *columns])
        frame = table.rename_columns(
            [batches.EDUCATOR_REF, *(f"{name}.{c}" for c in columns)]
        ).to_pandas()
        measured = any(
            ref is not None and ref.dataset == name
            for ref in (resolved.measure_field, resolved.compare_field)
        )
        if resolved.linked and not measured:
            # Only the measured dataset's rows count as rows. Elsewhere a teacher's
            # repeated rows add nothing but would repeat measured rows in the join (two
            # cohorts of one program, say: the students behind a score counted twice),
            # so only one row per teacher and grouping values is kept.
            frame = frame.drop_duplicates(ignore_index=True)
        for column in resolved.link_on:  # a shared name to link on, besides the pseudonym
            frame[f"_link.{column}"] = frame[f"{name}.{column}"]
        frames.append(frame)
    if not resolved.linked:
        return frames[0], versions
    keys = ["educator_ref", *(f"_link.{c}" for c in resolved.link_on)]
    linked = frames[0]
    for frame in frames[1:]:
        linked = linked.merge(frame, on=keys, how="inner")
    return linked.drop(columns=keys[1:]), versions


# --- true aggregates -------------------------------------------------------------------


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
        [f"{r.dataset}.{r.column}" for r in _paired(resolved)]
        if resolved.compare_field is not None
        else []
    )
    frame = frame.dropna(subset=group_cols + ([measure_col] if measure_col else []) + paired_needed)
    if resolved.condition is not None:
        ref, item = resolved.condition
        column = frame[f"{ref.dataset}.{ref.column}"]
        if item.op == "eq":
            meets = column == _canonical_value(ref.spec, item.value)
        elif item.op == "in":
            meets = column.isin([_canonical_value(ref.spec, v) for v in item.value])  # type: ignore[union-attr]
        else:
            low, high = _bounds_of(item)
            meets = column.between(
                _canonical_value(ref.spec, low), _canonical_value(ref.spec, high)
            )
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
        paired_cols = [f"{r.dataset}.{r.column}" for r in _paired(resolved)]
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
        cells[tuple(_plain(v) for v in key_tuple)] = cell
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


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- the release -------------------------------------------------------------------------


def _named_key(plan: Plan, key: GroupKey) -> str:
    """A cell's key as dimension -> value, in name order: the same cell whatever the
    order of ``group_by`` (used by the suppression memory)."""
    named = dict(zip(plan.dimensions, (_plain(v) for v in key), strict=True))
    return json.dumps(named, sort_keys=True, separators=(",", ":"), default=str)


def _key_text(key: GroupKey) -> str:
    return json.dumps([_plain(v) for v in key], separators=(",", ":"), default=str)


def canonical_query(resolved: ResolvedQuery) -> str:
    """One text for every query that means the same: fields qualified with their
    dataset, numbers normalised, lists and filters sorted."""

    def qualified(ref: FieldRef) -> str:
        return f"{ref.dataset}.{ref.column}"

    def value(ref: FieldRef, item: Filter) -> Any:
        if isinstance(item.value, list):
            values = [_canonical_value(ref.spec, v) for v in item.value]
            return sorted(values, key=str) if item.op == "in" else values
        return _canonical_value(ref.spec, item.value)

    query = resolved.query
    measure: dict[str, Any] = {"kind": query.measure.kind}
    if resolved.measure_field is not None:
        measure["field"] = qualified(resolved.measure_field)
    if query.measure.years_after is not None:
        measure["years_after"] = query.measure.years_after
    if resolved.compare_field is not None:
        measure["compare_to"] = qualified(resolved.compare_field)
    if resolved.condition is not None:
        ref, item = resolved.condition
        measure["condition"] = {"field": qualified(ref), "op": item.op, "value": value(ref, item)}
    body = {
        "datasets": sorted(query.datasets),
        "measure": measure,
        "group_by": [qualified(ref) for ref in resolved.group_by],
        "filters": sorted(
            (
                {"field": qualified(ref), "op": item.op, "value": value(ref, item)}
                for ref, item in resolved.filters
            ),
            key=lambda f: json.dumps(f, sort_keys=True, default=str),
        ),
        "epsilon": str(query.epsilon.normalize()),
        "delta": str(query.delta.normalize()),
        "max_groups_per_teacher": query.max_groups_per_teacher,
    }
    if resolved.link_on:
        body["link_on"] = sorted(resolved.link_on)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def _table_signature(resolved: ResolvedQuery) -> str:
    """The identity of a table, whatever is measured in it and however it is spelled:
    datasets, filters and the set of dimensions."""
    body = json.loads(canonical_query(resolved))
    dimensions = sorted(body["group_by"])
    if resolved.query.measure.kind == "distribution" and resolved.measure_field is not None:
        dimensions.append(body["measure"]["field"])
    if resolved.query.measure.kind == "joint":
        dimensions += [body["measure"]["field"], body["measure"]["compare_to"]]
    signature = {"datasets": body["datasets"], "filters": body["filters"], "dims": dimensions}
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def _measure_signature(canonical: str) -> str:
    """The measure as the canonical query spells it (qualified fields, sorted values)."""
    measure = json.loads(canonical)["measure"]
    return hashlib.sha256(json.dumps(measure, sort_keys=True).encode()).hexdigest()


def _pack(members: np.ndarray[Any, np.dtype[np.int64]]) -> bytes:
    # Level 1: a third of the time of the default level, and any level reads back alike.
    return zlib.compress(np.asarray(members, dtype=np.int64).tobytes(), 1)


def _unpack(blob: bytes) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.frombuffer(zlib.decompress(blob), dtype=np.int64)


def _check_differencing(
    session: Session,
    *,
    agreement: Agreement,
    party: str,
    measure_signature: str,
    cells: Mapping[GroupKey, TrueCell],
    published: Sequence[GroupKey],
    minimum: int,
) -> None:
    """Refuse if a published cell's teachers differ from an earlier cell's by 1..minimum-1."""
    earlier = session.execute(
        select(ReleaseCell.teachers, ReleaseCell.members)
        .join(Release, Release.release_id == ReleaseCell.release_id)
        .where(
            Release.agreement_id == agreement.id,
            Release.party == party,
            Release.measure_signature == measure_signature,
        )
    ).all()
    if not earlier:
        return
    for key in published:
        cell = cells[key]
        for teachers, blob in earlier:
            if abs(teachers - cell.teachers) >= minimum:
                continue
            other = _unpack(blob)
            common = np.intersect1d(cell.members, other, assume_unique=True).size
            difference = cell.teachers + other.size - 2 * common
            if 0 < difference < minimum:
                # The message does not say by how many: that would be a free count.
                raise DifferencingRefused(
                    "refused: a cell of this query differs from a cell released earlier by "
                    f"fewer than the minimum of {minimum} teachers; comparing the two would "
                    "single teachers out"
                )


def _ci(
    value: float, half_width: float, low: float | None = None, high: float | None = None
) -> list[float]:
    lo, hi = value - half_width, value + half_width
    if low is not None:
        lo = max(lo, low)
    if high is not None:
        hi = min(hi, high)
    return [round(lo, 6), round(hi, 6)]


def _coded(share: float) -> str | None:
    if share < BOTTOM_CODE:
        return f"<{round(BOTTOM_CODE * 100)}%"
    if share > TOP_CODE:
        return f">{round(TOP_CODE * 100)}%"
    return None


def request_release(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    query: Query,
    actor: audit.Actor,
    dry_run: bool = False,
    report: str | None = None,
) -> dict[str, Any]:
    """Run ``query`` for ``party`` (or preview it); see the module docstring.

    ``report`` names the report a query is a table of, for the audit log.

    Every refusal, including a budget that does not fit and a failure after the
    budget was reserved, is written to the audit log before the error is raised.
    """
    agreement: Agreement | None = None
    try:
        agreement = gateway.agreement(agreement_id)
        gateway.require_active(agreement, refused="releases")
        agreement.require_in_force(datetime.now(UTC).date(), refused="releases")
        resolved = resolve(query, agreement=agreement, registry=gateway.registry, party=party)
        plan = plan_query(resolved, agreement)
        if dry_run:
            return _preview(gateway, agreement, party, resolved, plan)
        return _release(gateway, agreement, party, resolved, plan, actor, report)
    except GatewayError as error:
        if not dry_run:
            _record_refusal(gateway, agreement, party, query, actor, error)
        raise
    except Exception:
        # A failure nobody foresaw is still a refusal in the log (its message, which
        # might hold a value, is not: the operator's log has the exception's type).
        if not dry_run:
            failed = GatewayError("the release failed: internal error")
            _record_refusal(gateway, agreement, party, query, actor, failed)
        raise


def _preview(
    gateway: Gateway, agreement: Agreement, party: str, resolved: ResolvedQuery, plan: Plan
) -> dict[str, Any]:
    with gateway.sessions() as session:
        states = {s.party: s for s in budget_ledger.budget_states(session, agreement.id)}
        # Asked before on the same data: the stored release comes back, at no cost.
        repeat = _stored_repeat(session, agreement, party, resolved) is not None
    state = states.get(party)
    return {
        "preview": True,
        "agreement": {"id": agreement.id, "version": agreement.version},
        "epsilon": float(plan.epsilon),
        "delta": float(plan.delta_used),
        "repeat": repeat,
        "epsilon_cost": 0.0 if repeat else float(plan.epsilon),
        "groups_per_teacher": plan.groups_per_teacher,
        "accuracy_95": plan.accuracy(),
        "cells": len(plan.public_combinations) if not plan.private_positions else None,
        "budget_remaining": float(state.epsilon_remaining) if state else 0.0,
        "delta_remaining": float(state.delta_remaining) if state else 0.0,
        "would_fit": repeat
        or bool(
            state
            and plan.epsilon <= state.epsilon_remaining
            and plan.delta_used <= state.delta_remaining
        ),
    }


def _data_versions(
    connection: Connection, resolved: ResolvedQuery, agreement: Agreement, key_version: int | None
) -> str:
    """The uploads a query would read now, as :func:`load_rows` records them."""
    versions = [
        [name, [seq for seq, _ in _accepted_uploads(connection, agreement, name)]]
        for name in resolved.query.datasets
    ]
    return json.dumps({"datasets": versions, "key_version": key_version})


def _accepted_uploads(
    connection: Connection, agreement: Agreement, dataset: str
) -> list[tuple[int, int | None]]:
    """The accepted uploads of ``dataset``, in order, each with its key version."""
    uploads = (
        select(Upload.seq, Upload.key_version)
        .where(
            Upload.agreement_id == agreement.id,
            Upload.dataset == dataset,
            Upload.status == "accepted",
        )
        .order_by(Upload.seq)
    )
    return [(seq, version) for seq, version in connection.execute(uploads)]


def _stored_repeat(
    session: Session,
    agreement: Agreement,
    party: str,
    resolved: ResolvedQuery,
    data_versions: str | None = None,
) -> Release | None:
    """An earlier release of the same canonical query, on the same data, under the same
    terms (a changed minimum, say, is other terms); None if there is none."""
    if data_versions is None:
        key = keys.current_key_version(session, agreement.id)
        data_versions = _data_versions(
            session.connection(), resolved, agreement, key.version if key else None
        )
    fingerprint = hashlib.sha256(canonical_query(resolved).encode()).hexdigest()
    return session.scalars(
        select(Release).where(
            Release.agreement_id == agreement.id,
            Release.party == party,
            Release.query_hash == fingerprint,
            Release.data_versions == data_versions,
            Release.agreement_hash == agreement.content_hash,
        )
    ).first()


def _release(
    gateway: Gateway,
    agreement: Agreement,
    party: str,
    resolved: ResolvedQuery,
    plan: Plan,
    actor: audit.Actor,
    report: str | None = None,
) -> dict[str, Any]:
    query = resolved.query
    profile = agreement.resolved_disclosure
    minimum = profile.min_cell_teachers
    canonical = canonical_query(resolved)
    measure_signature = _measure_signature(canonical)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    with gateway.sessions() as session:
        key = keys.current_key_version(session, agreement.id)
        key_version = key.version if key else None
        # A repeat is answered from the stored release: look for one before reading data.
        data_versions = _data_versions(session.connection(), resolved, agreement, key_version)
        repeated = _stored_repeat(session, agreement, party, resolved, data_versions)
        if repeated is None:
            frame, versions = load_rows(session.connection(), resolved, agreement, key_version)
            data_versions = json.dumps({"datasets": versions, "key_version": key_version})
    if repeated is not None:
        return _repeat(gateway, agreement, party, repeated, actor, report)

    found = true_cells(frame, resolved, plan)
    if not plan.private_positions:
        # Every public key is a cell, empty ones included: never left out, never shown as 0.
        cells = {k: found.get(k, TrueCell()) for k in plan.keys([()])}
    else:
        cells = found

    def below_minimum(cells: Mapping[GroupKey, TrueCell]) -> set[GroupKey]:
        return {
            k
            for k, c in cells.items()
            if c.teachers < minimum
            or (c.students is not None and c.students < profile.min_cell_students)
        }

    below = below_minimum(cells)
    signature = _table_signature(resolved)
    release_id = str(uuid.uuid4())
    # Reserve the budget, committed, before anything data-dependent is decided or drawn:
    # even a refusal for differencing then costs what the query asked for, so probing
    # with refused queries is not free. Never refunded.
    with gateway.sessions() as session, session.begin():
        state = budget_ledger.reserve(
            session,
            agreement=agreement,
            party=party,
            epsilon=query.epsilon,
            delta=plan.delta_used,
            release_id=release_id,
            actor=actor,
        )
    with gateway.sessions() as session:
        remembered_text = set(
            session.scalars(
                select(SuppressedCell.group_key).where(
                    SuppressedCell.agreement_id == agreement.id,
                    SuppressedCell.party == party,
                    SuppressedCell.table_signature == signature,
                )
            )
        )
        if resolved.linked:
            _check_differencing(
                session,
                agreement=agreement,
                party=party,
                measure_signature=measure_signature,
                cells=cells,
                published=[k for k in cells if k not in below],
                minimum=minimum,
            )
    remembered = {k for k in cells if _named_key(plan, k) in remembered_text}
    try:
        if plan.selection is not None:
            cells = _select(cells, plan, linked=resolved.linked)
            below = below_minimum(cells)
        pattern = suppress(
            {k: float(c.teachers) for k, c in cells.items()},
            below_minimum=below,
            minimum=minimum,
            small_counts={k for k in below if cells[k].teachers < minimum},
            remembered=remembered,
        )
        body_cells = _noisy_cells(cells, pattern, plan, resolved, coding=profile.top_bottom_coding)
    except Exception as error:  # the reservation stays spent
        raise ReleaseFailed(
            f"the release could not be computed ({type(error).__name__}); the budget "
            "reserved for it stays spent"
        ) from error
    published = [k for k in cells if k not in pattern.suppressed]

    table = body_cells
    table_sha256 = hashlib.sha256(
        json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    body: dict[str, Any] = {
        "release_id": release_id,
        "agreement": {"id": agreement.id, "version": agreement.version},
        "party": party,
        "query": json.loads(canonical),
        "cells": table,
        "epsilon_spent": float(query.epsilon),
        "delta_spent": float(plan.delta_used),
        "budget_remaining": float(state.epsilon_remaining),
        "noise": {
            "mechanisms": _mechanisms(plan),
            "groups_per_teacher": plan.groups_per_teacher,
            "accuracy_95": plan.accuracy(),
        },
        "minimum_cell": {"teachers": minimum, "students": profile.min_cell_students},
        # Hidden cells whose every line is hidden whole: only totals published
        # elsewhere could bound them (docs/releases.md).
        "unprotectable": [
            dict(zip(plan.dimensions, (_plain(v) for v in k), strict=True))
            for k in sorted(pattern.unprotectable, key=repr)
        ],
        "created_at": datetime.now(UTC).isoformat(),
    }
    with gateway.sessions() as session, session.begin():
        event = audit.append_event(
            session,
            kind="release",
            actor=actor,
            details={
                "release_id": release_id,
                "requester": party,
                "query": json.loads(canonical),
                "data_versions": json.loads(data_versions),
                "epsilon": str(query.epsilon.normalize()),
                "delta": str(plan.delta_used.normalize()),
                "cells_released": len(published),
                "cells_suppressed": len(pattern.suppressed),
                "cells_unprotectable": len(pattern.unprotectable),
                "table_sha256": table_sha256,
                **({"report": report} if report else {}),
            },
            agreement=agreement,
        )
        body["audit_event"] = event.event_id
        session.add(
            Release(
                release_id=release_id,
                agreement_id=agreement.id,
                agreement_hash=agreement.content_hash,
                party=party,
                query_hash=fingerprint,
                query=canonical,
                data_versions=data_versions,
                measure_signature=measure_signature,
                epsilon=budget_ledger.epsilon_units(query.epsilon),
                delta=budget_ledger.delta_units(plan.delta_used),
                body=json.dumps(body),  # in order: a repeat shows its groups as the first did
                table_sha256=table_sha256,
                created_at=datetime.now(UTC),
            )
        )
        session.flush()
        if resolved.linked:
            session.add_all(
                ReleaseCell(
                    release_id=release_id,
                    group_key=_key_text(k),
                    teachers=cells[k].teachers,
                    members=_pack(cells[k].members),
                )
                for k in published
            )
        now = datetime.now(UTC)
        for key_ in pattern.suppressed - remembered:
            session.merge(
                SuppressedCell(
                    agreement_id=agreement.id,
                    party=party,
                    table_signature=signature,
                    group_key=_named_key(plan, key_),
                    created_at=now,
                )
            )
    return body


def _mechanisms(plan: Plan) -> list[str]:
    out = []
    if plan.counts is not None or plan.numerators is not None:
        out.append("opendp make_laplace (integers: discrete Laplace)")
    if plan.sums is not None:
        out.append("opendp make_laplace (floats)")
    if plan.selection is not None:
        out.append("opendp make_laplace_threshold (group selection)")
    return out


def _select(
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
            _key_text(k): int(np.unique(np.concatenate(parts)).size) for k, parts in members.items()
        }
    else:  # rows of counts: the unit is one counted person or position
        totals: dict[GroupKey, int] = {}
        for key, cell in cells.items():
            part = plan.private_part(key)
            totals[part] = totals.get(part, 0) + cell.teachers
        counts = {_key_text(k): v for k, v in totals.items()}
    released = plan.selection.release(counts)
    selected = [k for k in members if _key_text(k) in released]
    return {k: cells.get(k, TrueCell()) for k in plan.keys(selected)}


def _noisy_cells(
    cells: Mapping[GroupKey, TrueCell],
    pattern: Any,
    plan: Plan,
    resolved: ResolvedQuery,
    *,
    coding: bool,
) -> list[dict[str, Any]]:
    """Draw the noise (OpenDP) and build the released cells.

    With top and bottom coding (the profile's ``top_bottom_coding``), a rate or share
    whose true value is below 5% or above 95% is shown only as "<5%" or ">95%"; a
    distribution cell so coded withholds its count too, which would otherwise give the
    share away.
    """
    kind = resolved.query.measure.kind
    keys = list(cells)
    names = plan.dimensions
    counts: dict[GroupKey, int] = {}
    if plan.counts is not None:
        counts = dict(
            zip(keys, plan.counts.release([cells[k].teachers for k in keys]), strict=True)
        )
    sums: dict[GroupKey, float] = {}
    if plan.sums is not None:
        sums = dict(zip(keys, plan.sums.release([cells[k].total for k in keys]), strict=True))
    numerators: dict[GroupKey, int] = {}
    if plan.numerators is not None:
        numerators = dict(
            zip(keys, plan.numerators.release([cells[k].meeting for k in keys]), strict=True)
        )
    count_hw = plan.count_half_width()
    sum_hw = plan.sums.half_width() if plan.sums else 0.0
    out: list[dict[str, Any]] = []
    # A share is given only where no cell of its group is suppressed: a group total
    # taken over suppressed cells would let them be computed back.
    group_totals: dict[GroupKey, float | None] = {}
    true_totals: dict[GroupKey, int] = {}
    for key in keys:
        true_totals[key[:-1]] = true_totals.get(key[:-1], 0) + cells[key].teachers
    if kind == "distribution":
        for k in keys:
            total = group_totals.get(k[:-1], 0.0)
            hidden = k in pattern.suppressed
            group_totals[k[:-1]] = None if hidden or total is None else total + max(counts[k], 0)
    for k in keys:
        cell: dict[str, Any] = {"group": dict(zip(names, (_plain(v) for v in k), strict=True))}
        reason = pattern.reason(k)
        if reason is not None:
            cell.update(value=None, ci95=None, suppressed=True, reason=reason)
            out.append(cell)
            continue
        if kind in ("count", "distribution", "joint"):
            value = float(max(counts[k], 0))
            cell.update(value=value, ci95=_ci(value, count_hw, low=0.0), suppressed=False)
            total = group_totals.get(k[:-1]) if kind == "distribution" else None
            if kind == "distribution":
                cell["share"] = None
            if total:
                share = value / total
                # Coded on the true share, like the minimum cell: the band tells what is
                # true, and noise never labels a 75% cell ">95%".
                true_total = true_totals.get(k[:-1], 0)
                true_share = cells[k].teachers / true_total if true_total else 0.0
                code = _coded(true_share) if coding else None
                cell["share"] = None if code else round(share, 4)
                if code:
                    cell.update(value=None, ci95=None, coded=code)
        elif kind == "sum":
            floor = 0.0 if plan.clamp and plan.clamp[0] >= 0 else None
            # A sum of non-negative values is never negative: clip (post-processing).
            value = sums[k] if floor is None else max(sums[k], floor)
            cell.update(
                value=round(value, 4), ci95=_ci(sums[k], sum_hw, low=floor), suppressed=False
            )
        elif kind == "mean":
            assert plan.clamp is not None and plan.sums is not None
            n = max(counts[k], 1)
            value = min(max(sums[k] / n, plan.clamp[0]), plan.clamp[1])
            # 95% together: each noisy part at 97.5%, combined by interval arithmetic.
            s_hw = plan.sums.half_width(0.025)
            c_hw = plan.count_half_width(0.025)
            lo_n, hi_n = max(n - c_hw, 1.0), n + c_hw
            candidates = [
                (sums[k] - s_hw) / lo_n,
                (sums[k] - s_hw) / hi_n,
                (sums[k] + s_hw) / lo_n,
                (sums[k] + s_hw) / hi_n,
            ]
            interval = [
                round(max(min(candidates), plan.clamp[0]), 4),
                round(min(max(candidates), plan.clamp[1]), 4),
            ]
            cell.update(value=round(value, 4), ci95=interval, suppressed=False)
        else:  # rate
            assert plan.numerators is not None
            den = max(counts[k], 1)
            num = min(max(numerators[k], 0), den)
            share = num / den
            n_hw = plan.numerators.half_width(0.025)
            d_hw = plan.count_half_width(0.025)
            low = max(0.0, (num - n_hw) / (den + d_hw))
            high = min(1.0, (num + n_hw) / max(den - d_hw, 1.0))
            true_share = cells[k].meeting / cells[k].teachers if cells[k].teachers else 0.0
            code = _coded(true_share) if coding else None  # on the true share, as above
            if code:
                cell.update(value=None, ci95=None, suppressed=False, coded=code)
            else:
                cell.update(
                    value=round(share, 4), ci95=[round(low, 4), round(high, 4)], suppressed=False
                )
        out.append(cell)
    return out


def _repeat(
    gateway: Gateway,
    agreement: Agreement,
    party: str,
    earlier: Release,
    actor: audit.Actor,
    report: str | None = None,
) -> dict[str, Any]:
    """Return an identical earlier release again: same numbers, no new noise, no cost."""
    body: dict[str, Any] = json.loads(earlier.body)
    with gateway.sessions() as session, session.begin():
        event = audit.append_event(
            session,
            kind="release-repeated",
            actor=actor,
            details={
                "release_id": earlier.release_id,
                "requester": party,
                "query": json.loads(earlier.query),
                "table_sha256": earlier.table_sha256,
                "epsilon": "0",
                "delta": "0",
                **({"report": report} if report else {}),
            },
            agreement=agreement,
        )
        states = {s.party: s for s in budget_ledger.budget_states(session, agreement.id)}
    body["repeated"] = True
    body["epsilon_spent"] = 0.0
    body["delta_spent"] = 0.0
    body["audit_event"] = event.event_id
    if party in states:
        body["budget_remaining"] = float(states[party].epsilon_remaining)
    return body


def _redacted(query: Query) -> dict[str, Any]:
    """The query as a refusal event keeps it: field names and operators, no values.

    A refused query may name fields it may not see (an educator ID, say); its values
    are not needed to review the refusal and must not enter the permanent log.
    """
    body: dict[str, Any] = json.loads(query.canonical())
    body["filters"] = [{"field": f["field"], "op": f["op"]} for f in body["filters"]]
    if body["measure"].get("condition"):
        condition = body["measure"]["condition"]
        body["measure"]["condition"] = {"field": condition["field"], "op": condition["op"]}
    return body


def _record_refusal(
    gateway: Gateway,
    agreement: Agreement | None,
    party: str,
    query: Query,
    actor: audit.Actor,
    error: GatewayError,
) -> None:
    with gateway.sessions() as session, session.begin():
        audit.append_event(
            session,
            kind="release-refused",
            actor=actor,
            details={
                "requester": party[:128],
                "query": _redacted(query),
                "code": error.code,
                "reason": error.message,
            },
            agreement=agreement,
        )


__all__ = ["DifferencingRefused", "Plan", "ReleaseFailed", "plan_query", "request_release"]
