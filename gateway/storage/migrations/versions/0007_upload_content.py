"""row digests: row_batches.content_digest, from which data versions are computed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:00:00

Every stored batch gets an order-independent digest of its rows, written with the
batch from now on (``gateway.storage.batches.content_digest``); a dataset's data
version adds up the digests of the batches a release would read, so it depends on
what is stored, not on which uploads stored it. This revision fills the digest of
every batch stored before it, one batch in memory at a time (a page of ids, then each
payload on its own). The algorithm is frozen in this file, as revision 0006 froze its
tables: a later change to the gateway's digest needs its own migration, and this one
keeps computing what the code computed when it was written (a test checks the two
agree).

The column stays nullable: adding a NOT NULL column on SQLite means copying the whole
table of payloads. The gateway computes the digest of a batch that lacks one when it
reads it. The downgrade drops the column.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

IDS_PER_PAGE = 1_000

# --- the row digest, frozen (gateway.storage.batches as of this revision) ----------------

LANES = 2
DIGEST_LABEL = b"gateway row digest v1\x00"
MIX_1 = np.uint64(0xFF51AFD7ED558CCD)
MIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
SHIFT = np.uint64(33)

Words = np.ndarray[Any, np.dtype[np.uint64]]


def _mix(words: Words) -> Words:
    scratch = np.empty_like(words)
    for multiplier in (MIX_1, MIX_2):
        np.right_shift(words, SHIFT, out=scratch)
        words ^= scratch
        words *= multiplier
    np.right_shift(words, SHIFT, out=scratch)
    words ^= scratch
    return words


def _key(label: str) -> Words:
    digest = hashlib.sha256(DIGEST_LABEL + label.encode()).digest()
    return np.frombuffer(digest[: 8 * LANES], dtype="<u8").astype(np.uint64)


def _table(words: Words, key: Words) -> Words:
    table = np.zeros((len(words) + 1, LANES), dtype=np.uint64)
    table[:-1] = words if words.ndim == 2 else words[:, np.newaxis]
    table[:-1] ^= key
    _mix(table[:-1])
    return table


def _cell_hashes(array: pa.Array, key: Words) -> Words:
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        array = pc.dictionary_encode(array)
        kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary.cast(pa.string()).to_pylist()
        text = b"".join(
            hashlib.blake2b((v or "").encode("utf-8"), digest_size=8 * LANES).digest()
            for v in values
        )
        words = np.frombuffer(text, dtype="<u8").astype(np.uint64)
        table = _table(words.reshape(len(values), LANES), key)
        table[[i for i, v in enumerate(values) if v is None]] = 0
        codes = pc.fill_null(array.indices.cast(pa.int64()), len(values))
        looked_up: Words = table[codes.to_numpy(zero_copy_only=False)]
        return looked_up
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if pa.types.is_floating(kind):
        floats = pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        words = (floats + 0.0).view(np.uint64)
    elif pa.types.is_integer(kind) or pa.types.is_date32(kind) or pa.types.is_boolean(kind):
        if not pa.types.is_integer(kind):
            array = array.cast(pa.int32() if pa.types.is_date32(kind) else pa.int8())
        filled = pc.fill_null(array, 0)
        words = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64).view(np.uint64)
    else:
        raise TypeError(f"no row digest for Arrow type {kind}")
    hashes = _mix(words[:, np.newaxis] ^ key)
    if valid is not None:
        hashes[~valid] = 0
    return hashes


def payload_digest(payload: bytes) -> str:
    """The digest of a stored batch's rows, from its Arrow IPC stream."""
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        table = reader.read_all()
    rows = np.zeros((table.num_rows, LANES), dtype=np.uint64)
    for name in table.column_names:
        array = table.column(name).combine_chunks()
        if array.null_count == len(array):
            continue
        rows += _cell_hashes(array, _key("column " + name))
    rows ^= _key("row")
    _mix(rows)
    return "".join(f"{int(rows[:, lane].sum(dtype=np.uint64)):016x}" for lane in range(LANES))


# --- the migration ------------------------------------------------------------------------


def upgrade() -> None:
    op.add_column("row_batches", sa.Column("content_digest", sa.String(length=32), nullable=True))
    bind = op.get_bind()
    batches = sa.table(
        "row_batches",
        sa.column("id", sa.Integer()),
        sa.column("payload", sa.LargeBinary()),
        sa.column("content_digest", sa.String()),
    )
    last = 0
    while True:
        ids = bind.scalars(
            sa.select(batches.c.id)
            .where(batches.c.id > last, batches.c.content_digest.is_(None))
            .order_by(batches.c.id)
            .limit(IDS_PER_PAGE)
        ).all()
        if not ids:
            return
        for batch_id in ids:
            payload = bind.execute(
                sa.select(batches.c.payload).where(batches.c.id == batch_id)
            ).scalar_one()
            bind.execute(
                batches.update()
                .where(batches.c.id == batch_id)
                .values(content_digest=payload_digest(bytes(payload)))
            )
        last = ids[-1]


def downgrade() -> None:
    op.drop_column("row_batches", "content_digest")
