"""One form for every spelling of a query: the key of a stored (free) repeat.

A query that means the same as an earlier one on the same data must come back as
the stored release, or an analyst could average fresh noise by rewording it. So
before anything else a resolved query is rewritten into its canonical form, and
the release is computed from that form, never from the spelling:

- datasets and group_by are sorted (the answer keeps the asked order:
  :func:`present`);
- filter values are the column's own values (``"elem"`` is ``ELEM``, ``"2025"`` and
  ``2025.0`` are ``2025`` in an integer column, ``50`` is ``50.0`` in a number column);
- ``eq x`` is ``in [x]``; ``in`` lists are sorted and deduplicated; a ``between`` on an
  integer column spanning few values is the ``in`` list of them; a ``between`` is cut
  to the column's declared range;
- several set filters on one field are one filter (their intersection);
- a filter that cannot exclude any value of a required column's declared domain (every
  code, the whole range) is dropped, unless it is the window of a retention;
- epsilon and delta are exact decimals; delta counts only when group keys come from
  the data (otherwise it buys nothing and is zero); a query released exactly (rows
  about posted positions) spends nothing, so both are zero.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from gateway.agreements.models import Agreement, ColumnSpec
from gateway.release.budget import decimal_text
from gateway.release.model import Cell
from gateway.release.query import FieldRef, Filter, Query, ResolvedQuery

#: A between on an integer column spanning at most this many values is an ``in`` list.
MAX_LISTED_INTEGERS = 30


def column_value(spec: ColumnSpec, value: Any) -> Any:
    """``value`` as the column holds it, when it can; otherwise unchanged (it then
    matches nothing, as in SQL)."""
    if isinstance(value, bool):
        return value
    if spec.codes and isinstance(value, str):
        for code in spec.code_values:
            if isinstance(code, str) and code.upper() == value.upper():
                return code
    if spec.type == "integer":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if spec.type == "number" and isinstance(value, int):
        return float(value)
    if spec.type == "number" and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _sort_key(value: Any) -> tuple[str, Any, str]:
    """Numbers in numeric order (1 before 10), then other values by type and text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("", value, type(value).__name__)  # ints and floats compare exactly
    return (type(value).__name__, 0.0, json.dumps(value, default=str))


def _distinct(values: Sequence[Any]) -> list[Any]:
    seen: dict[tuple[str, Any, str], Any] = {}
    for value in values:
        seen.setdefault(_sort_key(value), value)
    return [seen[k] for k in sorted(seen)]


def _range(spec: ColumnSpec) -> tuple[float | None, float | None]:
    if spec.range is None:
        return None, None
    return spec.range.min, spec.range.max


def _domain(spec: ColumnSpec) -> list[Any] | None:
    """Every value a stored row of the column can hold, when that is a short list."""
    if spec.codes:
        return list(spec.code_values)
    if spec.type == "boolean":
        return [False, True]
    low, high = _range(spec)
    bounded = spec.type == "integer" and low is not None and high is not None
    if bounded and high - low < MAX_LISTED_INTEGERS:  # type: ignore[operator]
        return list(range(int(low), int(high) + 1))  # type: ignore[arg-type]
    return None


def _as_set(ref: FieldRef, item: Filter) -> list[Any] | None:
    """The values a filter keeps, as a list, when it is one (eq, in, a short integer
    between); None for a range."""
    spec = ref.spec
    if item.op == "eq":
        return [column_value(spec, item.value)]
    if item.op == "in":
        assert isinstance(item.value, list)
        return _distinct([column_value(spec, v) for v in item.value])
    low, high = (column_value(spec, v) for v in item.value)  # type: ignore[union-attr]
    numbers = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in (low, high)
    )
    if spec.type == "integer" and numbers:
        # An integer column holds whole numbers: x >= 1.5 is x >= 2, x <= 3.5 is x <= 3.
        low, high = math.ceil(low), math.floor(high)
        r_low, r_high = _range(spec)
        low = low if r_low is None else max(low, math.ceil(r_low))
        high = high if r_high is None else min(high, math.floor(r_high))
        if high < low:
            return []
        if high - low < MAX_LISTED_INTEGERS:
            return _distinct(list(range(low, high + 1)))
    return None


def _normal_filter(ref: FieldRef, item: Filter) -> Filter | None:
    """The canonical filter, or None when it cannot exclude any stored value."""
    spec = ref.spec
    values = _as_set(ref, item)
    domain = _domain(spec)
    if values is not None:
        kept = {_sort_key(v) for v in values}
        if spec.required and domain is not None and all(_sort_key(d) in kept for d in domain):
            return None  # keeps every value a stored row can hold
        return Filter.model_construct(field=_qualified(ref), op="in", value=values)
    low, high = (column_value(spec, v) for v in item.value)  # type: ignore[union-attr]
    r_low, r_high = _range(spec)
    numeric = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in (low, high)
    )
    if numeric and spec.type == "integer":
        low, high = math.ceil(low), math.floor(high)  # whole numbers, as in _as_set
    if numeric and spec.type in ("integer", "number"):
        if r_low is not None and low < r_low:
            low = float(r_low) if spec.type == "number" else int(r_low)
        if r_high is not None and high > r_high:
            high = float(r_high) if spec.type == "number" else int(r_high)
        whole = r_low is not None and r_high is not None and low <= r_low and high >= r_high
        if whole and spec.required:
            return None
    return Filter.model_construct(field=_qualified(ref), op="between", value=[low, high])


def _qualified(ref: FieldRef) -> str:
    return f"{ref.dataset}.{ref.column}"


def _merge(ref: FieldRef, items: list[Filter]) -> list[Filter]:
    """Set filters on one field become one (their intersection), and so do numeric
    ranges on one field; anything else stays apart."""
    sets = [f for f in items if f.op == "in"]
    others = [f for f in items if f.op != "in"]
    ranges = [f for f in others if _numeric_range(f)]
    if len(ranges) > 1:
        low = max(f.value[0] for f in ranges)  # type: ignore[index]
        high = min(f.value[1] for f in ranges)  # type: ignore[index]
        merged_range = Filter.model_construct(
            field=_qualified(ref), op="between", value=[low, high]
        )
        others = [f for f in others if not _numeric_range(f)] + [merged_range]
    if len(sets) <= 1:
        return sets + others
    keep = {_sort_key(v): v for v in sets[0].value}  # type: ignore[union-attr]
    for other in sets[1:]:
        mine = {_sort_key(v) for v in other.value}  # type: ignore[union-attr]
        keep = {k: v for k, v in keep.items() if k in mine}
    merged = Filter.model_construct(
        field=_qualified(ref), op="in", value=[keep[k] for k in sorted(keep)]
    )
    return [merged, *others]


def _numeric_range(item: Filter) -> bool:
    return item.op == "between" and all(
        isinstance(v, int | float) and not isinstance(v, bool)
        for v in item.value  # type: ignore[union-attr]
    )


def _window(ref: FieldRef, item: Filter) -> Filter:
    """A retention's window as asked, its years as the column holds them: never cut to
    the declared range or dropped, since which teachers count depends on where it
    starts (docs/releases.md)."""
    values = item.value if isinstance(item.value, list) else [item.value]
    years = [column_value(ref.spec, v) for v in values]
    if item.op == "in":
        years = _distinct(years)
    return Filter.model_construct(field=_qualified(ref), op=item.op, value=years)


def _always(ref: FieldRef) -> Filter:
    """A condition every stored row meets, in one spelling: the whole domain."""
    domain = _domain(ref.spec)
    if domain is not None:
        return Filter.model_construct(field=_qualified(ref), op="in", value=domain)
    low, high = _range(ref.spec)
    cast = float if ref.spec.type == "number" else int
    return Filter.model_construct(
        field=_qualified(ref),
        op="between",
        value=[cast(low), cast(high)],  # type: ignore[arg-type]
    )


def normalise(resolved: ResolvedQuery, agreement: Agreement) -> ResolvedQuery:
    """The canonical form of ``resolved`` (see the module docstring)."""
    window = resolved.measure_field if resolved.query.measure.kind == "retention" else None
    by_field: dict[tuple[str, str], tuple[FieldRef, list[Filter]]] = {}
    windows: list[tuple[FieldRef, Filter]] = []
    for ref, item in resolved.filters:
        # The retention's window is its first filter on the year field (query.py).
        is_window = (
            not windows
            and window is not None
            and (ref.dataset, ref.column)
            == (
                window.dataset,
                window.column,
            )
        )
        if is_window:  # kept apart: never merged with another filter on the year
            windows.append((ref, _window(ref, item)))
            continue
        normal = _normal_filter(ref, item)
        if normal is None:
            continue
        by_field.setdefault((ref.dataset, ref.column), (ref, []))[1].append(normal)
    filters: list[tuple[FieldRef, Filter]] = list(windows)
    for key in sorted(by_field):
        ref, items = by_field[key]
        merged = _merge(ref, items)
        filters += sorted(((ref, f) for f in merged), key=lambda p: _filter_text(p[1]))
    condition = resolved.condition
    if condition is not None:
        ref, item = condition
        # Every teacher meets a condition that excludes nothing: still a rate, of all.
        condition = (ref, _normal_filter(ref, item) or _always(ref))
    private = _has_private_keys(resolved, filters, agreement)
    exact = exact_release(resolved, agreement)
    query = resolved.query
    measure_field, compare_field = resolved.measure_field, resolved.compare_field
    if query.measure.kind == "agreement" and measure_field and compare_field:
        # Whether two scores are equal does not depend on which is named first.
        measure_field, compare_field = sorted((measure_field, compare_field), key=_qualified)
    canonical_query = Query.model_construct(
        datasets=sorted(query.datasets),
        measure=query.measure,
        group_by=sorted(_qualified(r) for r in resolved.group_by),
        filters=[f for _, f in filters],
        # Released exactly, a query spends nothing: its epsilon and delta are moot.
        epsilon=Decimal(0) if exact else query.epsilon.normalize(),
        delta=query.delta.normalize() if private and not exact else Decimal(0),
        max_groups_per_teacher=_groups_per_teacher(resolved, filters, agreement),
        link_on=sorted(query.link_on),
        # Released exactly, every cell is published: nothing to roll up; and a table
        # none of whose dimensions has a hierarchy is the flat table, one release.
        coarsen=query.coarsen and not exact and _has_hierarchy(resolved, agreement),
        rho=None if exact or query.rho is None else query.rho.normalize(),
    )
    return replace(
        resolved,
        query=canonical_query,
        group_by=sorted(resolved.group_by, key=_qualified),
        measure_field=measure_field,
        compare_field=compare_field,
        filters=filters,
        condition=condition,
        link_on=tuple(sorted(resolved.link_on)),
    )


def _has_hierarchy(resolved: ResolvedQuery, agreement: Agreement) -> bool:
    """Whether any dimension of the table (a grouping, or a distribution's or joint's
    values) coarsens under the agreement."""
    refs = list(resolved.group_by)
    kind = resolved.query.measure.kind
    if kind in ("distribution", "joint") and resolved.measure_field is not None:
        refs.append(resolved.measure_field)
    if kind == "joint" and resolved.compare_field is not None:
        refs.append(resolved.compare_field)
    return any(agreement.hierarchy(ref.dataset, ref.column) is not None for ref in refs)


def exact_release(resolved: ResolvedQuery, agreement: Agreement) -> bool:
    """Whether the query reads only rows about posted positions (not people) under a
    profile that releases them exactly (``position_data: exact``, the default)."""
    if agreement.resolved_disclosure.position_data != "exact":
        return False
    return all(resolved.schemas[name].unit == "position" for name in resolved.query.datasets)


def _groups_per_teacher(
    resolved: ResolvedQuery, filters: list[tuple[FieldRef, Filter]], agreement: Agreement
) -> int:
    """In how many groups a teacher may count, spelled out: the query's own, else one,
    or one per year when the table is broken down by year (at most 5); always one for
    rows without educators."""
    if not resolved.linked:
        return 1
    if resolved.query.max_groups_per_teacher is not None:
        return resolved.query.max_groups_per_teacher
    for ref in resolved.group_by:
        if ref.column in ("school_year", "cohort_year"):
            values = public_values(ref, filters, agreement)
            return min(len(values), 5) if values else 5
    return 1


def _has_private_keys(
    resolved: ResolvedQuery, filters: list[tuple[FieldRef, Filter]], agreement: Agreement
) -> bool:
    """Whether some group key would come from the data (see plan.public_values)."""
    return any(public_values(ref, filters, agreement) is None for ref in resolved.group_by)


def public_values(
    ref: FieldRef, filters: Sequence[tuple[FieldRef, Filter]], agreement: Agreement
) -> list[Any] | None:
    """A dimension's keys when they are public: the query's own set filter on it, the
    agreement's public values (its programs), or the schema's codes; None when the
    keys can only come from the data."""
    for other, item in filters:
        if (other.dataset, other.column) == (ref.dataset, ref.column):
            values = _as_set(ref, item)
            if values is not None:
                return values
    if ref.column in agreement.public_values:
        return list(agreement.public_values[ref.column])
    return _domain(ref.spec) if (ref.spec.codes or ref.spec.type == "boolean") else None


def _filter_text(item: Filter) -> str:
    return json.dumps(
        {"field": item.field, "op": item.op, "value": item.value}, sort_keys=True, default=str
    )


def canonical_text(resolved: ResolvedQuery) -> str:
    """The canonical query as one JSON text (``resolved`` already normalised)."""

    def qualified(ref: FieldRef) -> str:
        return _qualified(ref)

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
        measure["condition"] = {"field": qualified(ref), "op": item.op, "value": item.value}
    body: dict[str, Any] = {
        "datasets": list(query.datasets),
        "measure": measure,
        "group_by": [qualified(ref) for ref in resolved.group_by],
        "filters": [
            {"field": qualified(ref), "op": item.op, "value": item.value}
            for ref, item in resolved.filters
        ],
        "epsilon": decimal_text(query.epsilon),
        "delta": decimal_text(query.delta),
        "max_groups_per_teacher": query.max_groups_per_teacher,
    }
    if resolved.link_on:
        body["link_on"] = list(resolved.link_on)
    if query.coarsen:
        body["coarsen"] = True
    if query.rho is not None:
        body["rho"] = decimal_text(query.rho)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def table_signature(resolved: ResolvedQuery, dimensions: Sequence[str]) -> str:
    """The identity of a table whatever is measured in it: datasets, filters and the
    set of its dimensions (the key of the suppression memory)."""
    body = json.loads(canonical_text(resolved))
    signature = {
        "datasets": body["datasets"],
        "filters": body["filters"],
        "dims": sorted(dimensions),
    }
    if body.get("coarsen"):  # its cells are named by level: another table
        signature["coarsen"] = True
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def present(cells: Sequence[Cell], asked: Sequence[str], dimensions: Sequence[str]) -> list[Cell]:
    """Cells computed in canonical dimension order, shown in the asked order: each
    group's keys in ``asked`` order (the rest after them, as computed) and the cells
    ordered as a table of that order would be."""
    order = [d for d in asked if d in dimensions] + [d for d in dimensions if d not in asked]
    first_seen: dict[str, dict[str, int]] = {d: {} for d in order}
    for cell in cells:
        for d in order:
            text = json.dumps(cell.group.get(d), default=str)
            first_seen[d].setdefault(text, len(first_seen[d]))

    def rank(cell: Cell) -> tuple[int, ...]:
        return tuple(first_seen[d][json.dumps(cell.group.get(d), default=str)] for d in order)

    return [
        cell.model_copy(update={"group": {d: cell.group[d] for d in order if d in cell.group}})
        for cell in sorted(cells, key=rank)
    ]
