"""A growing set of 64-bit keys, each with a 32-bit value, in sorted NumPy runs.

Uploads remember every key of a file (duplicate keys, educators) while reading it
chunk by chunk. Re-sorting everything seen at every chunk makes a file's cost grow
with the square of its length; Python dictionaries cost some hundred bytes a key.
Instead each chunk's new keys become a sorted run, and runs of similar size are
merged (a log-structured merge): each key is merged O(log n) times, a lookup
searches O(log n) runs, and a key costs 12 bytes. Runs stop growing at
:data:`RUN_CAP` keys, so a merge never needs more than some 25 MB beside what is
stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IntArray = np.ndarray[Any, np.dtype[np.int64]]
Int32Array = np.ndarray[Any, np.dtype[np.int32]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

#: Largest run built by merging (keys); larger sets are held as several runs.
RUN_CAP = 1 << 20


class SortedRuns:
    """Distinct int64 keys, each with an int32 value (a row number, a local number)."""

    def __init__(self, *, run_cap: int = RUN_CAP) -> None:
        self._runs: list[tuple[IntArray, Int32Array]] = []
        self._run_cap = run_cap
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return sum(keys.nbytes + values.nbytes for keys, values in self._runs)

    def lookup(self, keys: IntArray) -> tuple[BoolArray, IntArray]:
        """Whether each key is held, and its value (-1 where it is not)."""
        found = np.zeros(len(keys), dtype=bool)
        values = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self._runs:
            where = np.searchsorted(run_keys, keys)
            inside = where < len(run_keys)
            hit = np.zeros(len(keys), dtype=bool)
            hit[inside] = run_keys[where[inside]] == keys[inside]
            values[hit] = run_values[where[hit]]
            found |= hit
        return found, values

    def add(self, keys: IntArray, values: IntArray) -> None:
        """Hold ``keys`` (distinct, none held yet) with their ``values``."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order].astype(np.int64), values[order].astype(np.int32)))
        self._size += len(keys)
        # Merge the newest run into the one before while they are of similar size.
        while len(self._runs) > 1:
            (older_keys, _), (newer_keys, _) = self._runs[-2], self._runs[-1]
            if len(older_keys) > 2 * len(newer_keys):
                break
            if len(older_keys) + len(newer_keys) > self._run_cap:
                break
            newer = self._runs.pop()
            self._runs[-1] = _merge(self._runs[-1], newer)


def _merge(
    older: tuple[IntArray, Int32Array], newer: tuple[IntArray, Int32Array]
) -> tuple[IntArray, Int32Array]:
    """Two sorted runs with no key in common as one: a linear merge, no re-sort."""
    (a_keys, a_values), (b_keys, b_values) = older, newer
    size = len(a_keys) + len(b_keys)
    into = np.searchsorted(a_keys, b_keys) + np.arange(len(b_keys))
    from_b = np.zeros(size, dtype=bool)
    from_b[into] = True
    keys = np.empty(size, dtype=np.int64)
    values = np.empty(size, dtype=np.int32)
    keys[into], values[into] = b_keys, b_values
    keys[~from_b], values[~from_b] = a_keys, a_values
    return keys, values
