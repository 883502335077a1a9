"""The query model (SPEC section 7) and the allowlist that every query must pass.

A query names datasets of one agreement (linked on the educator pseudonym), a
measure, dimensions to group by and filters. Before any data is read, every
field it touches is resolved to one dataset column and checked against the
recipient's release allowlist; a field that is not allowed is refused with
the rule that refused it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.agreements.loader import Registry
from gateway.agreements.models import Agreement, ColumnSpec, DatasetSchema
from gateway.errors import PolicyViolation, SchemaError

#: Budgets are an exact ledger of integer units: epsilon in 10^-12, delta in 10^-18.
EPSILON_PLACES = 12
#: No one release may ask for more (budgets are far smaller; this bounds the arithmetic).
MAX_EPSILON = 100
DELTA_PLACES = 18
MAX_GROUPS_PER_TEACHER = 10

Scalar = str | int | float | bool
#: The largest whole number JSON (RFC 8785, the audit log's encoding) holds exactly.
SAFE_INTEGER = 2**53 - 1


class Filter(BaseModel):
    """``field`` compared with ``value``: eq (one value), in (a list), between (two bounds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Literal["eq", "in", "between"]
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if self.op == "eq" and isinstance(self.value, list):
            raise ValueError("'eq' takes one value; use 'in' for a list")
        if self.op == "in" and (not isinstance(self.value, list) or not self.value):
            raise ValueError("'in' takes a non-empty list of values")
        if self.op == "between" and (not isinstance(self.value, list) or len(self.value) != 2):
            raise ValueError("'between' takes a list of two bounds [low, high]")
        values = self.value if isinstance(self.value, list) else [self.value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError("a number in a filter must be finite")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > SAFE_INTEGER:
                # Beyond any code or year; and the audit log's JSON (RFC 8785) holds
                # whole numbers exactly only up to 2^53 - 1.
                raise ValueError(
                    f"a whole number in a filter must be between -{SAFE_INTEGER} and {SAFE_INTEGER}"
                )
        return self


class Measure(BaseModel):
    """What each cell holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["count", "sum", "mean", "distribution", "rate", "retention", "agreement", "joint"]
    field: str | None = None
    condition: Filter | None = None
    #: For an agreement (share of teachers whose two scores are equal) or a joint
    #: distribution (teachers per pair of scores): the field compared with ``field``.
    compare_to: str | None = None
    #: For a retention: the share of teachers still there this many years after their
    #: first year (``field`` is the year column, e.g. staffing's ``school_year``).
    years_after: Annotated[int, Field(ge=1, le=10)] | None = None

    @model_validator(mode="after")
    def _arguments(self) -> Measure:
        if (self.kind == "retention") != (self.years_after is not None):
            raise ValueError("'years_after' is required for a retention, and only for one")
        paired = self.kind in ("agreement", "joint")
        if paired != (self.compare_to is not None):
            raise ValueError("'compare_to' is required for an agreement or joint, and only then")
        needs_field = self.kind in (
            "sum",
            "mean",
            "distribution",
            "retention",
            "agreement",
            "joint",
        )
        if needs_field and self.field is None:
            raise ValueError(f"a {self.kind} measure needs a 'field'")
        if not needs_field and self.field is not None:
            raise ValueError(f"a {self.kind} measure takes no 'field'")
        if (self.kind == "rate") != (self.condition is not None):
            raise ValueError("a 'condition' is required for a rate, and only for a rate")
        return self


def _exact(value: Decimal, places: int, name: str) -> Decimal:
    try:
        exact = value == value.quantize(Decimal(1).scaleb(-places))
    except InvalidOperation:  # too many digits to quantize: far beyond any budget
        exact = False
    if not exact:
        raise ValueError(f"{name} may have at most {places} decimal places")
    return value


class Query(BaseModel):
    """An ad-hoc aggregate over allowed fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: list[str] = Field(min_length=1, max_length=4)
    measure: Measure
    group_by: list[str] = Field(default_factory=list, max_length=4)
    filters: list[Filter] = Field(default_factory=list, max_length=8)
    epsilon: Annotated[Decimal, Field(gt=0, le=MAX_EPSILON)]
    delta: Annotated[Decimal, Field(ge=0, lt=1)] = Decimal(0)
    max_groups_per_teacher: Annotated[int, Field(ge=1, le=MAX_GROUPS_PER_TEACHER)] | None = None
    #: Columns every dataset has that rows must share to link, besides the pseudonym
    #: (an EPP's and a district's observations of the same domain in the same year).
    link_on: list[str] = Field(default_factory=list, max_length=3)
    #: Roll cells too small to publish up along the agreement's hierarchies (rating
    #: bands, program areas, pooled years, declared groupings) instead of suppressing
    #: them: see release/coarsen.py. Reports ask for it.
    coarsen: bool = False
    #: Zero-concentrated DP accounting: Gaussian noise costing this rho, converted to
    #: (epsilon, delta) for the ledger (``epsilon`` must cover the conversion: see
    #: release/plan.py). Reports set it when it answers better than Laplace noise.
    rho: Annotated[Decimal, Field(gt=0, le=MAX_EPSILON)] | None = None

    @field_validator("epsilon")
    @classmethod
    def _epsilon_exact(cls, value: Decimal) -> Decimal:
        return _exact(value, EPSILON_PLACES, "epsilon")

    @field_validator("delta")
    @classmethod
    def _delta_exact(cls, value: Decimal) -> Decimal:
        return _exact(value, DELTA_PLACES, "delta")

    @field_validator("rho")
    @classmethod
    def _rho_exact(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _exact(value, DELTA_PLACES, "rho")

    @field_validator("datasets", "group_by", "link_on")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names must not repeat")
        return value

    def canonical(self) -> str:
        """One text for every query that means the same: the key of repeated-query reuse."""
        body = self.model_dump(mode="json")
        body["datasets"] = sorted(body["datasets"])
        body["filters"] = sorted(
            (
                {**f, "value": sorted(f["value"], key=str) if f["op"] == "in" else f["value"]}
                for f in body["filters"]
            ),
            key=lambda f: json.dumps(f, sort_keys=True),
        )
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass(frozen=True)
class FieldRef:
    """A query field resolved to one column of one of the query's datasets."""

    dataset: str
    column: str
    spec: ColumnSpec

    @property
    def label(self) -> str:
        return self.column


@dataclass(frozen=True)
class ResolvedQuery:
    """A query whose every field is known, typed and allowed for the recipient."""

    query: Query
    schemas: dict[str, DatasetSchema]
    group_by: list[FieldRef]
    filters: list[tuple[FieldRef, Filter]]
    measure_field: FieldRef | None
    condition: tuple[FieldRef, Filter] | None
    linked: bool  # rows describe educators (pseudonym-linked datasets)
    compare_field: FieldRef | None = None
    link_on: tuple[str, ...] = ()


def _resolve_field(
    name: str, query: Query, agreement: Agreement, schemas: dict[str, DatasetSchema]
) -> FieldRef:
    dataset_name, dot, column = name.rpartition(".")
    candidates = [dataset_name] if dot else list(query.datasets)
    if dot and dataset_name not in query.datasets:
        raise SchemaError(
            f"field {name!r} names dataset {dataset_name!r}, which the query does not use"
        )
    found = [
        d
        for d in candidates
        if column in agreement.dataset(d).stored_fields and column in schemas[d].columns
    ]
    if not found:
        raise SchemaError(
            f"field {name!r} is not stored in dataset(s) {', '.join(candidates)} of this agreement"
        )
    if len(found) > 1:
        raise SchemaError(
            f"field {name!r} is in several datasets ({', '.join(found)}); "
            f"write it as {found[0]}.{column}"
        )
    return FieldRef(found[0], column, schemas[found[0]].columns[column])


def _allowed(agreement: Agreement, party: str, ref: FieldRef, *, as_measure: bool) -> None:
    fields = agreement.recipient_fields(party)
    listed = fields.measures if as_measure else [*fields.dimensions, *fields.measures]
    if ref.column in listed or f"{ref.dataset}.{ref.column}" in listed:
        return
    kind = "measures" if as_measure else "dimensions or measures"
    raise PolicyViolation(
        f"field {ref.dataset}.{ref.column} is not among the {kind} that agreement "
        f"{agreement.id!r} lets {party!r} receive (releases.{party})",
        details=[
            {
                "rule": f"releases.{party}.{'measures' if as_measure else 'dimensions'}",
                "field": f"{ref.dataset}.{ref.column}",
            }
        ],
    )


def resolve(query: Query, *, agreement: Agreement, registry: Registry, party: str) -> ResolvedQuery:
    """Resolve every field of ``query`` and check it against ``party``'s allowlist."""
    agreement.party(party)
    if party not in agreement.releases:
        raise PolicyViolation(
            f"agreement {agreement.id!r} lists no release fields for {party!r} (releases)"
        )
    schemas = {name: registry.schema_for(agreement.dataset(name)) for name in query.datasets}
    linked_flags = {name: schema.educator_id_column is not None for name, schema in schemas.items()}
    if len(query.datasets) > 1 and not all(linked_flags.values()):
        unlinked = [n for n, linked in linked_flags.items() if not linked]
        raise SchemaError(
            f"dataset(s) {', '.join(unlinked)} carry no educator ID and cannot be linked "
            "with other datasets"
        )
    group_by: list[FieldRef] = []
    for name in query.group_by:
        ref = _resolve_field(name, query, agreement, schemas)
        _allowed(agreement, party, ref, as_measure=False)
        if ref.spec.role != "quasi_identifier":
            raise PolicyViolation(f"field {name!r} is a {ref.spec.role}; only dimensions can group")
        if any((r.dataset, r.column) == (ref.dataset, ref.column) for r in group_by):
            raise SchemaError(f"group_by names {ref.dataset}.{ref.column} twice")
        group_by.append(ref)
    filters = []
    for item in query.filters:
        ref = _resolve_field(item.field, query, agreement, schemas)
        _allowed(agreement, party, ref, as_measure=False)
        filters.append((ref, item))
    measure_field = None
    if query.measure.field is not None:
        measure_field = _resolve_field(query.measure.field, query, agreement, schemas)
        retention = query.measure.kind == "retention"
        # A retention reads a year dimension (when each teacher was there), not a measure.
        _allowed(agreement, party, measure_field, as_measure=not retention)
        if retention:
            _check_retention(
                measure_field,
                filters,
                linked=all(linked_flags.values()),
                years_after=query.measure.years_after or 0,
            )
        if query.measure.kind == "distribution" and not (
            measure_field.spec.ordinal or measure_field.spec.codes
        ):
            raise SchemaError(
                f"a distribution needs an ordinal or coded field, not {query.measure.field!r}"
            )
        if query.measure.kind in ("sum", "mean") and measure_field.spec.type not in (
            "integer",
            "number",
        ):
            raise SchemaError(
                f"a {query.measure.kind} needs a numeric field, not {query.measure.field!r}"
            )
        if query.measure.kind in ("sum", "mean") and not _bounded(measure_field.spec):
            raise SchemaError(
                f"field {query.measure.field!r} has no range in its schema, so its "
                "contribution cannot be bounded"
            )
    condition = None
    if query.measure.condition is not None:
        ref = _resolve_field(query.measure.condition.field, query, agreement, schemas)
        _allowed(agreement, party, ref, as_measure=False)
        condition = (ref, query.measure.condition)
    compare_field = None
    if query.measure.compare_to is not None:
        assert measure_field is not None
        compare_field = _resolve_field(query.measure.compare_to, query, agreement, schemas)
        _allowed(agreement, party, compare_field, as_measure=True)
        for ref in (measure_field, compare_field):
            if ref.spec.role == "student_measure":
                # Paired scores carry no count of students to hold to the minimum.
                raise SchemaError(
                    f"an {query.measure.kind} compares teachers' own scores; "
                    f"{ref.label!r} is derived from students"
                )
            if not (ref.spec.ordinal or ref.spec.codes):
                raise SchemaError(
                    f"an {query.measure.kind} compares ordinal or coded fields, not {ref.label!r}"
                )
    _check_link_on(query, agreement, party, schemas, linked=all(linked_flags.values()))
    return ResolvedQuery(
        query=query,
        schemas=schemas,
        group_by=group_by,
        filters=filters,
        measure_field=measure_field,
        condition=condition,
        linked=all(linked_flags.values()),
        compare_field=compare_field,
        link_on=tuple(query.link_on),
    )


def allowed_recipients(query: Query, *, agreement: Agreement, registry: Registry) -> list[str]:
    """Every recipient allowed all of ``query``'s fields: each receives its release."""
    allowed = []
    for party in sorted(agreement.releases):
        try:
            resolve(query, agreement=agreement, registry=registry, party=party)
        except (PolicyViolation, SchemaError):
            continue
        allowed.append(party)
    return allowed


def _check_link_on(
    query: Query,
    agreement: Agreement,
    party: str,
    schemas: dict[str, DatasetSchema],
    *,
    linked: bool,
) -> None:
    if not query.link_on:
        return
    if not linked or len(query.datasets) < 2:
        raise SchemaError("'link_on' links two or more datasets with educator IDs")
    for column in query.link_on:
        for name in query.datasets:
            ref = _resolve_field(f"{name}.{column}", query, agreement, schemas)
            if ref.spec.role != "quasi_identifier":
                raise SchemaError(f"'link_on' takes dimensions; {ref.label!r} is a {ref.spec.role}")
            _allowed(agreement, party, ref, as_measure=False)


def retention_window(
    measure_field: FieldRef, filters: list[tuple[FieldRef, Filter]]
) -> tuple[int, int] | None:
    """The first and last year of a retention's window: its filter on the year field."""
    for ref, item in filters:
        if (ref.dataset, ref.column) != (measure_field.dataset, measure_field.column):
            continue
        values = item.value if isinstance(item.value, list) else [item.value]
        years = [_year(v) for v in values]
        if not years or any(y is None for y in years) or item.op == "eq":
            return None
        whole = [y for y in years if y is not None]
        return min(whole), max(whole)
    return None


def _year(value: Any) -> int | None:
    """A whole year from a filter value (a number or digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


class WindowTooShort(SchemaError):
    """A retention whose window of years cannot hold anyone it would count: refused
    before anything is spent (it depends on the query alone)."""

    code = "window_too_short"


def _check_retention(
    measure_field: FieldRef,
    filters: list[tuple[FieldRef, Filter]],
    *,
    linked: bool,
    years_after: int,
) -> None:
    if not linked:
        raise SchemaError("a retention follows teachers: its datasets need educator IDs")
    if measure_field.spec.type != "integer":
        raise SchemaError(f"a retention needs a year field, not {measure_field.label!r}")
    window = retention_window(measure_field, filters)
    if window is None:
        raise SchemaError(
            f"a retention needs its window of years as a filter on {measure_field.label!r} "
            "(op 'in' or 'between', whole years), so which years count is public"
        )
    # A teacher counts when hired after the window's first year and early enough for
    # the years after to fall within it (aggregate._retention_rows): k + 2 years at least.
    first, last = window
    if last - first + 1 < years_after + 2:
        raise WindowTooShort(
            f"a retention after {years_after} year(s) counts teachers hired after the "
            f"window's first year and at least {years_after} year(s) before its last, so it "
            f"needs a window of at least {years_after + 2} school years; {first} to {last} "
            "has none to count (nothing was spent)"
        )


def _bounded(spec: ColumnSpec) -> bool:
    if spec.codes:
        return True
    return spec.range is not None and spec.range.min is not None and spec.range.max is not None


def bounds(spec: ColumnSpec) -> tuple[float, float]:
    """The clamping bounds of a numeric measure: its range, or its codes' extremes."""
    if spec.range is not None and spec.range.min is not None and spec.range.max is not None:
        return float(spec.range.min), float(spec.range.max)
    values = [float(v) for v in spec.code_values if isinstance(v, int | float)]
    return min(values), max(values)


def parse_query(body: Any) -> Query:
    """A :class:`Query` from JSON-like data, with a clear error when it is not one."""
    try:
        return Query.model_validate(body)
    except ValidationError as error:
        # Where and what, never the value sent: a filter value may be an identifier.
        reasons = [
            f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}"
            for e in error.errors(include_input=False)
        ]
        raise SchemaError(
            f"the query is not valid: {'; '.join(reasons)}", details=reasons
        ) from None
