"""Stored rows as column batches: exact round trips, narrowing, nulls and refusals."""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.storage import batches
from gateway.storage.datasets import DATASET_COLUMNS, EDUCATOR_DATASETS

INT64 = (-(2**63), 2**63 - 1)

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "integer": st.one_of(st.integers(-200, 200), st.integers(*INT64)),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.sampled_from(["MATH", "ELA", "S-01", "", "ÉLÈVE", "'=1+2"]),
    "date": st.dates(min_value=date(1990, 1, 1), max_value=date(2040, 12, 31)),
    "boolean": st.booleans(),
}


@st.composite
def stored_columns(draw: st.DrawFn) -> tuple[str, dict[str, list[Any]]]:
    """A schema, some of its columns (as an upload keeps them) and rows with nulls."""
    schema = draw(st.sampled_from(sorted(DATASET_COLUMNS)))
    types = DATASET_COLUMNS[schema]
    kept = draw(st.lists(st.sampled_from(sorted(types)), unique=True, max_size=len(types)))
    size = draw(st.integers(0, 40))
    columns: dict[str, list[Any]] = {
        name: draw(st.lists(st.none() | VALUES[types[name]], min_size=size, max_size=size))
        for name in kept
    }
    if schema in EDUCATOR_DATASETS:
        columns[batches.EDUCATOR_REF] = draw(
            st.lists(st.integers(1, 2**40), min_size=size, max_size=size)
        )
    return schema, columns


def _arrays(schema: str, columns: dict[str, list[Any]]) -> dict[str, pa.Array]:
    types = batches.storage_schema(schema)
    return {name: pa.array(values, types.field(name).type) for name, values in columns.items()}


@settings(max_examples=200, deadline=None)
@given(stored_columns())
def test_every_value_reads_back_exactly_and_unkept_columns_read_as_nulls(
    case: tuple[str, dict[str, list[Any]]],
) -> None:
    schema, columns = case
    payload = batches.encode(schema, _arrays(schema, columns))
    table = batches.decode(payload, schema)
    assert table.schema == batches.storage_schema(schema)  # widened back, whatever was stored
    size = len(next(iter(columns.values()), []))
    if columns:
        assert table.num_rows == size
    for name in table.column_names:
        expected = columns.get(name, [None] * table.num_rows)
        assert table.column(name).to_pylist() == expected, name


def test_codes_are_dictionary_encoded_and_small_integers_narrowed() -> None:
    rows = 10_000
    columns = {
        "educator_ref": pa.array(range(1, rows + 1), pa.int64()),
        "school_year": pa.array([2025] * rows, pa.int64()),
        "assignment_subject": pa.array(["MATH", "ELA"] * (rows // 2), pa.string()),
    }
    payload = batches.encode("evaluations", columns)
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        stored = reader.schema
    assert stored.field("school_year").type == pa.int16()
    assert stored.field("educator_ref").type == pa.int16()
    assert pa.types.is_dictionary(stored.field("assignment_subject").type)
    # Two bytes a year, two a reference and four an index, plus the headers.
    assert len(payload) < rows * 9
    decoded = batches.decode(payload, "evaluations", ["assignment_subject", "school_year"])
    assert decoded.column_names == ["assignment_subject", "school_year"]
    assert decoded.column("assignment_subject").to_pylist()[:3] == ["MATH", "ELA", "MATH"]


def test_stored_bytes_are_not_compressed() -> None:
    """The leak scans read stored bytes: a text value must appear in them as itself."""
    marker = "S-MARKER-7731"
    payload = batches.encode("evaluations", {"school_code": pa.array([marker] * 100)})
    assert marker.encode() in payload


def test_a_column_the_schema_does_not_store_is_refused() -> None:
    with pytest.raises(ValueError, match="rows_evaluations has no column"):
        batches.encode("evaluations", {"last_name": pa.array(["Okafor"])})


def test_a_value_the_column_cannot_hold_is_refused_not_truncated() -> None:
    with pytest.raises(pa.ArrowInvalid):
        batches.encode("evaluations", {"summative_rating": pa.array([2.5])})
