"""Storing an upload's educators: pseudonyms in, stored references out, in bulk.

A pseudonym is stored once per agreement's key version (``educators.pseudonym`` is
unique); an upload asks for the references of a chunk's educators, adding those not
stored yet. On PostgreSQL the pseudonyms travel by COPY into a temporary table that
one INSERT ... ON CONFLICT and one join read; on SQLite one JSON array does.
Pseudonyms are inserted in sorted order, so the unique index is written in one sweep
rather than at random places.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy import Connection

IntArray = np.ndarray[Any, np.dtype[np.int64]]


def store(
    connection: Connection, *, agreement_id: str, key_version: int, pseudonyms: list[str]
) -> IntArray:
    """The reference of each of ``pseudonyms`` (distinct), storing those not stored yet,
    in the caller's transaction."""
    if not pseudonyms:
        return np.empty(0, dtype=np.int64)
    ordered = sorted(pseudonyms)
    cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if connection.dialect.name == "postgresql":
            found = _store_postgresql(cursor, agreement_id, key_version, ordered)
        else:
            found = _store_sqlite(cursor, agreement_id, key_version, ordered)
    finally:
        cursor.close()
    if len(found) != len(ordered):
        raise RuntimeError("educator references could not be resolved")  # pragma: no cover
    return np.array([found[p] for p in pseudonyms], dtype=np.int64)


def _store_sqlite(cursor: Any, agreement_id: str, key_version: int, ordered: list[str]) -> Any:
    listed = json.dumps(ordered)
    # The transaction holds SQLite's write lock (BEGIN IMMEDIATE), so the rows above the
    # highest id now are exactly those inserted here: reading them back by id costs a
    # third less than INSERT ... RETURNING.
    cursor.execute("SELECT coalesce(max(id), 0) FROM educators")
    (highest,) = cursor.fetchone()
    # "WHERE true" settles SQLite's parsing ambiguity of INSERT ... SELECT ... ON CONFLICT.
    cursor.execute(
        "INSERT INTO educators (agreement_id, key_version, pseudonym) "
        "SELECT ?, ?, value FROM json_each(?) WHERE true "
        "ON CONFLICT (pseudonym) DO NOTHING",
        (agreement_id, key_version, listed),
    )
    cursor.execute("SELECT pseudonym, id FROM educators WHERE id > ?", (highest,))
    found: dict[str, int] = dict(cursor.fetchall())
    if len(found) < len(ordered):
        cursor.execute(
            "SELECT pseudonym, id FROM educators "
            "WHERE pseudonym IN (SELECT value FROM json_each(?))",
            (listed,),
        )
        found.update(cursor.fetchall())
    return found


def _store_postgresql(
    cursor: Any, agreement_id: str, key_version: int, ordered: list[str]
) -> dict[str, int]:
    # ON COMMIT DELETE ROWS: the pseudonyms never outlive the transaction that needs them.
    cursor.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS educator_intake (pseudonym text NOT NULL) "
        "ON COMMIT DELETE ROWS"
    )
    cursor.execute("TRUNCATE educator_intake")
    with cursor.copy("COPY educator_intake (pseudonym) FROM STDIN") as copy:
        for pseudonym in ordered:
            copy.write_row((pseudonym,))
    cursor.execute(
        "INSERT INTO educators (agreement_id, key_version, pseudonym) "
        "SELECT %s, %s, pseudonym FROM educator_intake ORDER BY pseudonym "
        "ON CONFLICT (pseudonym) DO NOTHING",
        (agreement_id, key_version),
    )
    cursor.execute(
        "SELECT e.pseudonym, e.id FROM educators e JOIN educator_intake i "
        "ON i.pseudonym = e.pseudonym"
    )
    return dict(cursor.fetchall())


def pseudonyms_of(
    connection: Connection, *, agreement_id: str, key_version: int, refs: list[int]
) -> dict[int, str]:
    """The internal pseudonym of each stored reference of the agreement's key version
    (an extract keys its recipient's teacher IDs over them)."""
    from sqlalchemy import select

    from gateway.storage.datasets import Educator

    found: dict[int, str] = {}
    wanted = sorted(set(refs))
    for start in range(0, len(wanted), 5000):  # bounded IN lists on either database
        chunk = wanted[start : start + 5000]
        statement = select(Educator.id, Educator.pseudonym).where(
            Educator.agreement_id == agreement_id,
            Educator.key_version == key_version,
            Educator.id.in_(chunk),
        )
        found.update({ref: pseudonym for ref, pseudonym in connection.execute(statement)})
    return found
