"""The educators of one upload, held as columns: pseudonym -> local number -> reference.

An upload numbers the educators it meets (a small local number, used in duplicate
keys) and needs each one's stored reference (``educators.id``) for its rows. A
statewide extract names millions of teachers; a Python dictionary and string per
teacher cost some 700 bytes each, so instead the index is NumPy columns, about 28
bytes a teacher:

- the first 64 bits of each pseudonym, in sorted runs, give its local number
  (:class:`~gateway.ingest.runs.SortedRuns`);
- the next 64 bits, by local number, confirm the match (two pseudonyms sharing 64
  bits are an error, not a silent merge of two teachers);
- the stored reference, by local number (-1 until a good row needs it).

Pseudonyms are computed once per distinct spelling in a chunk; a spelling met again
in a later chunk is hashed again, which costs no more than the per-row HMAC of the
baseline an upload is measured against, and keeps no raw ID in memory past its chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection

from gateway.ingest.runs import SortedRuns
from gateway.pseudonym import Pseudonymizer
from gateway.storage import educators as stored_educators

IntArray = np.ndarray[Any, np.dtype[np.int64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
Words = np.ndarray[Any, np.dtype[np.uint64]]


def _words(pseudonyms: list[str]) -> tuple[IntArray, Words]:
    """The first and second 64 bits of each pseudonym (16 letters, 4 bits each)."""
    if not pseudonyms:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
    text = np.frombuffer("".join(pseudonyms).encode("ascii"), dtype=np.uint8)
    letters = text.reshape(len(pseudonyms), -1)[:, :32]
    # The pseudonym alphabet maps each hex digit to a letter whose low four bits differ
    # for every digit (gateway.pseudonym), so the low nibbles carry all 128 bits.
    nibbles = (letters & 0x0F).astype(np.uint64)
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    first = np.bitwise_or.reduce(nibbles[:, :16] << shifts, axis=1)
    second = np.bitwise_or.reduce(nibbles[:, 16:] << shifts, axis=1)
    return first.view(np.int64), second


class EducatorIndex:
    """Raw spelling -> pseudonym -> local number -> stored reference, for one upload."""

    def __init__(self, pseudonymizer: Pseudonymizer, *, agreement_id: str) -> None:
        self._pseudonymizer = pseudonymizer
        self._agreement_id = agreement_id
        self._local = SortedRuns()  # first 64 bits -> local number
        self._second = np.empty(1024, dtype=np.uint64)  # by local number
        self._refs = np.empty(1024, dtype=np.int64)  # by local number; -1: not stored yet
        self._count = 0
        self._chunk_named: list[str] = []  # this chunk's pseudonyms
        self._chunk_numbers: IntArray = np.empty(0, dtype=np.int64)  # its distinct ones' numbers
        self._chunk_where: IntArray = np.empty(0, dtype=np.int64)  # and their places in named
        self.pattern = pseudonymizer.normalisation.pattern

    def __len__(self) -> int:
        return self._count

    def identify(self, raw: pa.Array) -> tuple[IntArray, BoolArray, BoolArray]:
        """Local educator number per row (-1 when bad), and the missing and invalid rows."""
        encoded = pc.dictionary_encode(pc.fill_null(raw, ""))
        spellings: list[str] = encoded.dictionary.to_pylist()
        pseudonyms = self._pseudonymizer.pseudonymize_distinct(spellings, {})
        valid = np.array([p is not None for p in pseudonyms], dtype=bool)
        named = [p for p in pseudonyms if p is not None]
        first, second = _words(named)
        # Distinct spellings may share a pseudonym ("0042" and "42"): number each once.
        distinct, where, inverse = np.unique(first, return_index=True, return_inverse=True)
        if not np.array_equal(second[where][inverse], second):
            raise RuntimeError("two pseudonyms share their first 64 bits")  # pragma: no cover
        known, numbers = self._local.lookup(distinct)
        if known.any() and not np.array_equal(self._second[numbers[known]], second[where][known]):
            raise RuntimeError("two pseudonyms share their first 64 bits")  # pragma: no cover
        fresh = np.flatnonzero(~known)
        if fresh.size:
            numbers[fresh] = np.arange(self._count, self._count + fresh.size)
            self._grow(self._count + fresh.size)
            self._second[numbers[fresh]] = second[where][fresh]
            self._refs[numbers[fresh]] = -1
            self._count += int(fresh.size)
            self._local.add(distinct[fresh], numbers[fresh])
        # For references(): which pseudonym of this chunk each local number is.
        self._chunk_named, self._chunk_numbers, self._chunk_where = named, numbers, where
        local = np.full(len(spellings), -1, dtype=np.int64)
        local[valid] = numbers[inverse]
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        rows = local[codes]
        blank = np.array([not s.strip() for s in spellings], dtype=bool) & ~valid
        missing = blank[codes]
        return rows, missing, (rows < 0) & ~missing

    def _grow(self, size: int) -> None:
        if size <= len(self._refs):
            return
        capacity = max(size, 2 * len(self._refs))
        self._second = np.resize(self._second, capacity)
        self._refs = np.resize(self._refs, capacity)

    def references(self, connection: Connection, key_version: int, local: IntArray) -> IntArray:
        """Stored references for these local numbers (of the last chunk identified),
        storing the educators not stored yet."""
        refs = self._refs[local]
        unknown = np.unique(local[refs < 0])
        if unknown.size:
            order = np.argsort(self._chunk_numbers)
            at = order[np.searchsorted(self._chunk_numbers, unknown, sorter=order)]
            wanted = [self._chunk_named[i] for i in self._chunk_where[at].tolist()]
            self._refs[unknown] = stored_educators.store(
                connection,
                agreement_id=self._agreement_id,
                key_version=key_version,
                pseudonyms=wanted,
            )
            refs = self._refs[local]
        return refs
