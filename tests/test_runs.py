"""Sorted runs: a growing key set agrees with a plain dictionary, however keys arrive."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.ingest.runs import SortedRuns

batches = st.lists(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    max_size=30,
)


@given(batches, st.integers(2, 64), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20))
def test_lookups_match_a_dictionary(
    arriving: list[list[int]], run_cap: int, probes: list[int]
) -> None:
    runs = SortedRuns(run_cap=run_cap)
    plain: dict[int, int] = {}
    for number, batch in enumerate(arriving):
        keys = np.array(sorted(set(batch) - set(plain)), dtype=np.int64)[::-1]  # unsorted
        values = np.arange(len(keys), dtype=np.int64) + 1000 * number
        runs.add(keys, values)
        plain.update(zip(keys.tolist(), values.tolist(), strict=True))
        asked = np.array(list(plain)[:7] + probes, dtype=np.int64)
        found, got = runs.lookup(asked)
        assert found.tolist() == [k in plain for k in asked.tolist()]
        assert got.tolist() == [plain.get(k, -1) for k in asked.tolist()]
    assert len(runs) == len(plain)
    # Merging keeps few runs: O(log n) of them below the cap, plus one per cap's worth.
    assert len(runs._runs) <= 2 * max(1, len(plain)).bit_length() + len(plain) // run_cap + 1
