"""Finding rows that repeat an earlier row's key, across a whole file, in bounded memory.

A million-row file has a million keys; holding them as Python tuples costs
hundreds of megabytes. Instead each key column is turned into small integer
codes (the educator's number in this upload, or a per-column dictionary code)
and the codes are packed into one 64-bit integer per row. Seen keys live in sorted
NumPy runs (:mod:`gateway.ingest.runs`), 12 bytes a key, so each chunk costs
what its own keys cost, however many were seen before. Keys too wide to pack (more than 62
bits of codes) fall back to a dictionary of code tuples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.agreements.models import ColumnSpec
from gateway.errors import SchemaError
from gateway.ingest.runs import SortedRuns

IntArray = np.ndarray[Any, np.dtype[np.int64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

_EDUCATOR_BITS = 26  # 67 million educators in one upload
_FREE_BITS = 22  # distinct values of an uncoded key column
_DATE_BITS = 20
_PACKABLE_BITS = 62


def _bits_for(spec: ColumnSpec) -> int:
    if spec.codes:
        return max(1, len(spec.codes).bit_length())
    if spec.type == "date":
        return _DATE_BITS
    if (
        spec.type == "integer"
        and spec.range
        and spec.range.min is not None
        and spec.range.max is not None
    ):
        return max(1, int(spec.range.max - spec.range.min + 1).bit_length())
    return _FREE_BITS


class DuplicateKeys:
    """Remembers every key seen so far and reports each repeat with the row it repeats."""

    def __init__(
        self, columns: Sequence[str], specs: Mapping[str, ColumnSpec], id_column: str | None
    ):
        self.columns = list(columns)
        self._id_column = id_column
        self._codes: dict[str, dict[Any, int]] = {c: {} for c in columns if c != id_column}
        self._bits = [_EDUCATOR_BITS if c == id_column else _bits_for(specs[c]) for c in columns]
        self._packed = sum(self._bits) <= _PACKABLE_BITS
        self._seen = SortedRuns()  # packed key -> the row that first had it
        self._seen_tuples: dict[tuple[int, ...], int] = {}

    def _column_codes(self, column: str, values: pa.Array | IntArray, bits: int) -> IntArray:
        if column == self._id_column:
            codes = np.asarray(values, dtype=np.int64)
        else:
            encoded = pc.dictionary_encode(values)
            mapping = self._codes[column]
            distinct = [mapping.setdefault(v, len(mapping)) for v in encoded.dictionary.to_pylist()]
            indices = np.asarray(pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False))
            codes = np.asarray(distinct, dtype=np.int64)[indices] if distinct else indices
        codes = codes.astype(np.int64)
        if self._packed and codes.size and int(codes.max()) >= (1 << bits):
            raise SchemaError(f"column {column!r} has more distinct values than a key may have")
        return codes

    def find(
        self,
        values: Mapping[str, pa.Array | IntArray],
        good: BoolArray,
        row_numbers: IntArray,
    ) -> list[tuple[int, int]]:
        """(position, first row) of each good row whose key was seen before; remembers the rest."""
        positions = np.flatnonzero(good)
        if positions.size == 0:
            return []
        codes = [
            self._column_codes(c, values[c], bits)[positions]
            for c, bits in zip(self.columns, self._bits, strict=True)
        ]
        rows = row_numbers[positions]
        if not self._packed:
            return self._find_tuples(codes, positions, rows)
        keys = np.zeros(positions.size, dtype=np.int64)
        for column_codes, bits in zip(codes, self._bits, strict=True):
            keys = (keys << bits) | column_codes
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_row_of_key = rows[first]
        # Keys already seen in earlier chunks, and the row that first had each.
        known, earlier = self._seen.lookup(unique)
        earlier = np.where(known, earlier, -1)
        repeat_of = np.where(earlier[inverse] >= 0, earlier[inverse], first_row_of_key[inverse])
        is_repeat = (earlier[inverse] >= 0) | (repeat_of != rows)
        fresh = ~known
        self._seen.add(unique[fresh], first_row_of_key[fresh])
        return [
            (int(p), int(r))
            for p, r in zip(positions[is_repeat], repeat_of[is_repeat], strict=True)
        ]

    def _find_tuples(
        self, codes: list[IntArray], positions: IntArray, rows: IntArray
    ) -> list[tuple[int, int]]:
        repeats: list[tuple[int, int]] = []
        columns = [c.tolist() for c in codes]
        for position, row, key in zip(
            positions.tolist(), rows.tolist(), zip(*columns, strict=True), strict=True
        ):
            first = self._seen_tuples.setdefault(key, row)
            if first != row:
                repeats.append((position, first))
        return repeats
