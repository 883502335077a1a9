"""Duplicate keys across chunks: the packed index agrees with a plain dictionary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from gateway.agreements.models import ColumnSpec
from gateway.ingest.duplicates import DuplicateKeys

YEAR = ColumnSpec(type="integer", role="quasi_identifier", required=True, description="y",
                  range={"min": 2000, "max": 2100})  # fmt: skip
CODE = ColumnSpec(type="string", role="quasi_identifier", required=True, description="c",
                  codes=["A", "B", "C"])  # fmt: skip
FREE = ColumnSpec(type="string", role="quasi_identifier", required=True, description="f")

rows = st.lists(
    st.tuples(
        st.integers(0, 6), st.integers(2020, 2023), st.sampled_from("ABC"),
        st.sampled_from(["x", "y", "zz"]), st.booleans(),
    ),
    min_size=1, max_size=60,
)  # fmt: skip


def naive(data: list[tuple[int, int, str, str, bool]], width: int) -> list[tuple[int, int]]:
    seen: dict[tuple[object, ...], int] = {}
    repeats = []
    for position, (educator, year, code, free, good) in enumerate(data):
        if not good:
            continue
        key = (educator, year, code, free)[:width]
        row = position + 2
        first = seen.setdefault(key, row)
        if first != row:
            repeats.append((position, first))
    return repeats


@given(rows, st.integers(1, 7), st.sampled_from([2, 4]), st.booleans())
def test_repeats_match_a_plain_dictionary(
    data: list[tuple[int, int, str, str, bool]], chunk: int, width: int, wide: bool
) -> None:
    specs = {"year": YEAR, "code": CODE, "free": FREE}
    columns = ["educator", "year", "code", "free"][:width]
    index = DuplicateKeys(columns, specs, "educator")
    if wide:
        index._packed = False  # exercise the tuple fallback on the same data
    found: list[tuple[int, int]] = []
    for start in range(0, len(data), chunk):
        part = data[start : start + chunk]
        values = {
            "educator": np.array([r[0] for r in part], dtype=np.int64),
            "year": pa.array([r[1] for r in part], pa.int64()),
            "code": pa.array([r[2] for r in part]),
            "free": pa.array([r[3] for r in part]),
        }
        good = np.array([r[4] for r in part], dtype=bool)
        numbers = np.arange(start + 2, start + 2 + len(part), dtype=np.int64)
        found += [(p + start, first) for p, first in index.find(values, good, numbers)]
    assert sorted(found) == naive(data, width)
