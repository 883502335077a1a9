"""Validating one column of an extract against its schema, vectorised with pyarrow.

A column arrives as text; it leaves typed (integers, numbers, dates, booleans
or canonical codes), with NULL where a cell is empty or invalid, and with the
positions of its problems grouped by what was expected. Problem descriptions
say what the schema expects and what *kind* of thing was found, never the
value itself: a misaligned column can put a teacher's name anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.agreements.models import ColumnSpec

FORMULA_PREFIXES = ("=", "+", "-", "@")

_INTEGER = r"^[+-]?[0-9]{1,18}(\.0*)?$"
_NUMBER = r"^[+-]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_US_DATE = r"^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}$"
_TRUE = ("true", "1", "yes", "y", "t")
_FALSE = ("false", "0", "no", "n", "f")

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
IndexArray = np.ndarray[Any, np.dtype[np.intp]]


@dataclass(frozen=True)
class ProblemGroup:
    """Rows (by position in the chunk) that fail one rule of one column."""

    positions: IndexArray
    column: str | None
    expected: str
    found: str


@dataclass
class ColumnResult:
    values: pa.Array
    bad: BoolArray
    problems: list[ProblemGroup] = field(default_factory=list)


def _np(mask: pa.Array | pa.ChunkedArray) -> BoolArray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


class _Checker:
    """Accumulates problems for one column; a row is reported once, for its first problem."""

    def __init__(self, column: str, size: int) -> None:
        self.column = column
        self.bad: BoolArray = np.zeros(size, dtype=bool)
        self.problems: list[ProblemGroup] = []

    def flag(self, mask: BoolArray, expected: str, found: str) -> None:
        positions = np.flatnonzero(mask & ~self.bad)
        if positions.size:
            self.bad[positions] = True
            self.problems.append(ProblemGroup(positions, self.column, expected, found))


def describe_expected(spec: ColumnSpec) -> str:
    """What a valid value of this column looks like, in words."""
    if spec.codes:
        shown = ", ".join(str(c.value) for c in spec.codes)
        return f"one of {shown}"
    noun = {
        "integer": "a whole number",
        "number": "a number",
        "date": "a date written YYYY-MM-DD (or MM/DD/YYYY)",
        "boolean": "true or false",
        "string": "text",
    }[spec.type]
    if spec.range is not None and spec.type in ("integer", "number"):
        low, high = spec.range.min, spec.range.max
        if low is not None and high is not None:
            return f"{noun} from {_fmt(low)} to {_fmt(high)}"
        if low is not None:
            return f"{noun} of at least {_fmt(low)}"
        if high is not None:
            return f"{noun} of at most {_fmt(high)}"
    if spec.pattern is not None and spec.type == "string":
        # In words (the schema's rule), never the regular expression itself.
        return spec.rule or "text in the format the agreement sets (see the data dictionary)"
    return noun


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def validate_column(
    name: str, spec: ColumnSpec, text: pa.Array, *, formula_cells: str
) -> ColumnResult:
    """Check and convert one text column; see the module docstring."""
    text = pc.utf8_trim_whitespace(text)
    size = len(text)
    check = _Checker(name, size)
    empty = _np(pc.equal(text, ""))
    expected = describe_expected(spec)
    if spec.required:
        check.flag(empty, f"{expected} (the column is required)", "an empty cell")
    present = ~empty

    if spec.type == "string":
        values = _string_values(check, spec, text, present, expected, formula_cells)
    elif spec.type == "integer":
        values = _numeric_values(check, spec, text, present, expected, integer=True)
    elif spec.type == "number":
        values = _numeric_values(check, spec, text, present, expected, integer=False)
    elif spec.type == "date":
        values = _date_values(check, text, present, expected)
    else:
        values = _boolean_values(check, text, present, expected)

    null_mask = pa.array(check.bad | empty)
    values = pc.if_else(null_mask, pa.scalar(None, values.type), values)
    return ColumnResult(values=values, bad=check.bad, problems=check.problems)


def _formula_cells(text: pa.Array, present: BoolArray) -> BoolArray:
    starts = np.zeros(len(text), dtype=bool)
    for prefix in FORMULA_PREFIXES:
        starts |= _np(pc.starts_with(text, prefix))
    return starts & present


def _string_values(
    check: _Checker,
    spec: ColumnSpec,
    text: pa.Array,
    present: BoolArray,
    expected: str,
    formula_cells: str,
) -> pa.Array:
    """Codes, patterns and spreadsheet formulas of a text column.

    A cell that starts like a formula (=, +, - or @) but is a valid code or
    matches the column's pattern is data ("-S01" can be a school code). Any
    other such cell is refused as a formula, or, in a free-text column when the
    profile says ``neutralise``, prefixed with an apostrophe (OWASP's remedy:
    spreadsheets then show it as text instead of running it).
    """
    formulas = _formula_cells(text, present)
    if spec.codes:
        canonical = [str(c.value) for c in spec.codes]
        # Codes match whatever their case ("elem" is ELEM) and are stored canonical.
        upper_codes = pa.array([c.upper() for c in canonical], pa.string())
        index = pc.index_in(pc.utf8_upper(text), value_set=upper_codes)
        valid = _np(pc.is_valid(index))
        _flag_formulas(check, formulas & ~valid)
        check.flag(present & ~valid, expected, "a value not in that list")
        return pc.take(pa.array(canonical, pa.string()), index)
    if spec.pattern is not None:
        valid = _regex_matches(text, spec.pattern)
        _flag_formulas(check, formulas & ~valid)
        check.flag(present & ~valid, expected, "text not matching that pattern")
        return text
    if formula_cells == "neutralise":
        return pc.if_else(pa.array(formulas), pc.binary_join_element_wise("'", text, ""), text)
    _flag_formulas(check, formulas)
    return text


def _flag_formulas(check: _Checker, mask: BoolArray) -> None:
    check.flag(
        mask,
        "text that does not start with =, +, - or @",
        "a spreadsheet formula (a cell starting with =, +, - or @)",
    )


def _regex_matches(text: pa.Array, pattern: str) -> BoolArray:
    """Whether each value matches ``pattern`` in full (as a schema pattern means)."""
    try:
        return _np(pc.match_substring_regex(text, f"^(?:{pattern})$"))
    except pa.ArrowInvalid:  # RE2 lacks some Python features (look-ahead): fall back
        compiled = re.compile(pattern)
        return np.array([compiled.fullmatch(v) is not None for v in text.to_pylist()], dtype=bool)


def _numeric_values(
    check: _Checker,
    spec: ColumnSpec,
    text: pa.Array,
    present: BoolArray,
    expected: str,
    *,
    integer: bool,
) -> pa.Array:
    shape = _np(pc.match_substring_regex(text, _INTEGER if integer else _NUMBER))
    _flag_formulas(check, _formula_cells(text, present) & ~shape)
    check.flag(
        present & ~shape,
        expected,
        "text that is not a whole number" if integer else "text that is not a number",
    )
    usable = pa.array(present & shape)
    if integer:
        cleaned = pc.replace_substring_regex(text, r"\.0*$", "")
        values = pc.cast(pc.if_else(usable, cleaned, pa.scalar(None, pa.string())), pa.int64())
    else:
        values = pc.cast(pc.if_else(usable, text, pa.scalar(None, pa.string())), pa.float64())
    if spec.codes:
        allowed = pa.array([c.value for c in spec.codes], values.type)
        check.flag(
            _np(pc.invert(pc.is_in(values, value_set=allowed))) & present,
            expected,
            "a value not in that list",
        )
    if spec.range is not None:
        if spec.range.min is not None:
            check.flag(
                _np(pc.less(values, spec.range.min)),
                expected,
                f"a number below {_fmt(spec.range.min)}",
            )
        if spec.range.max is not None:
            check.flag(
                _np(pc.greater(values, spec.range.max)),
                expected,
                f"a number above {_fmt(spec.range.max)}",
            )
    return values


def _date_values(check: _Checker, text: pa.Array, present: BoolArray, expected: str) -> pa.Array:
    """Dates written YYYY-MM-DD or MM/DD/YYYY, checked strictly (no 30 February).

    Each distinct spelling is parsed once with Python's strict parser: date columns
    have few distinct values, and Arrow's parser rolls impossible dates over.
    """
    encoded = pc.dictionary_encode(text)
    parsed: list[date | None] = [_parse_date(v) for v in encoded.dictionary.to_pylist()]
    values = pc.take(pa.array(parsed, pa.date32()), encoded.indices)
    invalid = present & _np(pc.is_null(values))
    _flag_formulas(check, _formula_cells(text, present) & invalid)
    check.flag(invalid, expected, "text that is not a valid date")
    return values


def _parse_date(text: str) -> date | None:
    for pattern, layout in ((_ISO_DATE, "%Y-%m-%d"), (_US_DATE, "%m/%d/%Y")):
        if re.fullmatch(pattern, text):
            try:
                return datetime.strptime(text, layout).date()
            except ValueError:
                return None
    return None


def _boolean_values(check: _Checker, text: pa.Array, present: BoolArray, expected: str) -> pa.Array:
    lowered = pc.utf8_lower(text)
    truthy = _np(pc.is_in(lowered, value_set=pa.array(_TRUE)))
    falsy = _np(pc.is_in(lowered, value_set=pa.array(_FALSE)))
    _flag_formulas(check, _formula_cells(text, present) & ~(truthy | falsy))
    check.flag(present & ~(truthy | falsy), expected, "a value that is not true or false")
    values: list[bool | None] = [
        True if t else False if f else None for t, f in zip(truthy, falsy, strict=True)
    ]
    return pa.array(values, pa.bool_())


def first_problems(
    groups: Sequence[ProblemGroup], row_numbers: np.ndarray[Any, np.dtype[np.int64]], limit: int
) -> list[tuple[int, ProblemGroup]]:
    """Up to ``limit`` (row number, group) pairs in row order, for listing."""
    pairs: list[tuple[int, int, ProblemGroup]] = []
    for order, group in enumerate(groups):
        for position in group.positions[:limit]:
            pairs.append((int(row_numbers[position]), order, group))
    pairs.sort(key=lambda item: (item[0], item[1]))
    return [(row, group) for row, _, group in pairs[:limit]]
