"""The canonical form of a query: every rewording of one meaning is one text, and the
rewritten filters keep exactly the rows the asked ones kept."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from gateway.agreements.loader import load_registry
from gateway.release.canonical import canonical_text, normalise
from gateway.release.query import parse_query, resolve
from gateway.release.rows import filter_mask
from tests.conftest import AGREEMENT, AGREEMENTS_DIR, DISTRICT, EPP, POLICIES_DIR

REGISTRY = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
AGREEMENT_ = REGISTRY.agreements[AGREEMENT]

# Stored values always lie in the column's declared domain (checked at upload).
DOMAINS: dict[str, Any] = {
    "school_year": st.integers(2000, 2100),
    "summative_rating": st.integers(1, 4),
    "grade_band": st.sampled_from(["PK-2", "3-5", "6-8", "9-12"]),
    "school_code": st.sampled_from(["101", "S-01", "2025", "x"]),
}
VALUES = st.one_of(
    st.integers(1990, 2110),
    st.integers(-2, 6),
    st.floats(-3, 2200, allow_nan=False).map(lambda v: round(v * 2) / 2),
    # 2**53 - 1: the largest whole number a filter takes (query.SAFE_INTEGER).
    st.sampled_from(["2025", "pk-2", "9-12", "x", "", True, 2**53 - 1, 101, "101", "S-01"]),
)
FILTERS = st.lists(
    st.builds(
        lambda field, op, values: {
            "field": field,
            "op": op,
            "value": values[0] if op == "eq" else values[:2] if op == "between" else values,
        },
        st.sampled_from(sorted(DOMAINS)),
        st.sampled_from(["eq", "in", "between"]),
        st.lists(VALUES, min_size=2, max_size=5),
    ),
    max_size=4,
)


def _resolved(filters: list[dict[str, Any]], party: str = EPP, **extra: Any) -> Any:
    body = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "filters": filters,
        "epsilon": "0.5",
        **extra,
    }
    return resolve(parse_query(body), agreement=AGREEMENT_, registry=REGISTRY, party=party)


def _kept(resolved: Any, table: pa.Table) -> list[bool]:
    mask = [True] * table.num_rows
    for ref, item in resolved.filters:
        column = table.column(ref.column)
        kept = filter_mask(column, ref, item).to_pylist()
        mask = [a and bool(b) for a, b in zip(mask, kept, strict=True)]
    return mask


@hyp_settings(max_examples=300, deadline=None)
@given(
    filters=FILTERS,
    rows=st.lists(st.fixed_dictionaries(DOMAINS), max_size=25),
)
def test_the_canonical_filters_keep_exactly_the_rows_the_asked_ones_keep(
    filters: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    asked = _resolved(filters, party=DISTRICT)  # the district may filter on schools
    canonical = normalise(asked, AGREEMENT_)
    table = pa.table(
        {
            "school_year": pa.array([r["school_year"] for r in rows], pa.int16()),
            "summative_rating": pa.array([r["summative_rating"] for r in rows], pa.int8()),
            "grade_band": pa.array([r["grade_band"] for r in rows], pa.string()),
            "school_code": pa.array([r["school_code"] for r in rows], pa.string()),
        }
    )
    assert _kept(canonical, table) == _kept(asked, table)
    # And the canonical form is a fixed point: normalising it again changes nothing.
    assert canonical_text(normalise(canonical, AGREEMENT_)) == canonical_text(canonical)


@hyp_settings(max_examples=100, deadline=None)
@given(filters=FILTERS, data=st.data())
def test_filter_order_and_dataset_qualification_do_not_change_the_text(
    filters: list[dict[str, Any]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(filters))
    qualified = [{**f, "field": f"evaluations.{f['field']}"} for f in shuffled]
    texts = {
        canonical_text(normalise(_resolved(f, party=DISTRICT), AGREEMENT_))
        for f in (filters, qualified)
    }
    assert len(texts) == 1


def test_a_filter_that_keeps_the_whole_domain_of_a_required_column_is_dropped() -> None:
    whole = _resolved([{"field": "summative_rating", "op": "in", "value": [4, 3, 2, 1]}])
    assert normalise(whole, AGREEMENT_).filters == []
    # grade_band is not required: a row without one is excluded by the filter, so it stays.
    bands = ["PK-2", "3-5", "6-8", "9-12"]
    optional = _resolved([{"field": "grade_band", "op": "in", "value": bands}])
    assert len(normalise(optional, AGREEMENT_).filters) == 1


def test_delta_counts_only_when_a_group_key_comes_from_the_data() -> None:
    public = normalise(_resolved([], group_by=["grade_band"], delta="1e-8"), AGREEMENT_)
    assert '"delta":"0"' in canonical_text(public)
    asked = _resolved([], party=DISTRICT, group_by=["school_code"], delta="1e-8")
    private = normalise(asked, AGREEMENT_)
    assert '"delta":"0.00000001"' in canonical_text(private)


def _text(filters: list[dict[str, Any]], **extra: Any) -> str:
    return canonical_text(normalise(_resolved(filters, **extra), AGREEMENT_))


def test_rewordings_found_in_review_are_one_text() -> None:
    year = "school_year"
    # A long integer range with fractional bounds is its whole-number range.
    assert _text([{"field": year, "op": "between", "value": [2000.5, 2040.5]}]) == _text(
        [{"field": year, "op": "between", "value": [2001, 2040]}]
    )
    # Two ranges on one field are their intersection.
    assert _text(
        [
            {"field": year, "op": "between", "value": [2001, 2060]},
            {"field": year, "op": "between", "value": [2010, 2090]},
        ]
    ) == _text([{"field": year, "op": "between", "value": [2010, 2060]}])
    # The default number of groups per teacher, left out or spelled out.
    assert _text([], group_by=["grade_band"]) == _text(
        [], group_by=["grade_band"], max_groups_per_teacher=1
    )


def test_a_condition_that_excludes_nothing_is_kept_as_the_whole_domain() -> None:
    body = {
        "datasets": ["value_added"],
        "measure": {
            "kind": "rate",
            "condition": {"field": "growth_score", "op": "between", "value": [-5, 150]},
        },
        "epsilon": "0.5",
    }
    asked = resolve(parse_query(body), agreement=AGREEMENT_, registry=REGISTRY, party=EPP)
    _, condition = normalise(asked, AGREEMENT_).condition  # type: ignore[misc]
    assert (condition.op, condition.value) == ("between", [1.0, 99.0])  # never "in []"
