"""Suppression invariants on random tables: nothing small shown, nothing hidden recoverable."""

from __future__ import annotations

from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.release.suppression import feasible_interval, lines_of, suppress

MINIMUM = 10


@st.composite
def tables(draw: st.DrawFn) -> dict[tuple[int, ...], float]:
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    keys = list(product(*(range(n) for n in shape)))
    counts = draw(
        st.lists(
            st.one_of(st.integers(0, 9), st.integers(10, 60)),
            min_size=len(keys),
            max_size=len(keys),
        )
    )
    return {k: float(c) for k, c in zip(keys, counts, strict=True)}


@settings(max_examples=60, deadline=None)
@given(tables())
def test_no_published_cell_is_below_the_minimum(table: dict[tuple[int, ...], float]) -> None:
    below = {k for k, v in table.items() if v < MINIMUM}
    result = suppress(table, below_minimum=below, minimum=MINIMUM)
    published = set(table) - result.suppressed
    assert all(table[k] >= MINIMUM for k in published)
    assert result.primary == below


@settings(max_examples=60, deadline=None)
@given(tables())
def test_every_small_cell_stays_anywhere_in_its_protection_interval(
    table: dict[tuple[int, ...], float],
) -> None:
    below = {k for k, v in table.items() if v < MINIMUM}
    result = suppress(table, below_minimum=below, minimum=MINIMUM)
    lines = lines_of(list(table))
    # What the attacker knows: published cells exactly, every line total, and the marks.
    known = {k: (0.0, MINIMUM - 1.0) for k in result.primary}
    known |= {k: (float(MINIMUM), None) for k in result.complementary}
    for key in result.primary:
        low, high = feasible_interval(key, result.suppressed, table, lines, known)
        assert low <= table[key] <= high  # the truth is always feasible
        totals = [sum(table[k] for k in line) for line in lines if key in line]
        top = min([MINIMUM - 1.0, *totals]) if totals else min(MINIMUM - 1.0, sum(table.values()))
        if low > 1e-9 or high < top - 1e-9:
            # Only when nothing more can be hidden: every line through it is hidden
            # whole, and only totals published elsewhere could bound it.
            assert key in result.unprotectable
            assert all(k in result.suppressed for line in lines if key in line for k in line)


@settings(max_examples=60, deadline=None)
@given(tables())
def test_no_line_has_a_single_suppressed_cell(table: dict[tuple[int, ...], float]) -> None:
    below = {k for k, v in table.items() if v < MINIMUM}
    result = suppress(table, below_minimum=below, minimum=MINIMUM)
    for line in lines_of(list(table)):
        assert sum(1 for k in line if k in result.suppressed) != 1


def test_remembered_cells_are_suppressed_again() -> None:
    table = {("a",): 30.0, ("b",): 25.0, ("c",): 40.0}
    result = suppress(table, below_minimum=set(), minimum=MINIMUM, remembered={("b",)})
    assert ("b",) in result.suppressed and len(result.suppressed) == 2
