"""Accepted rows, stored column by column: one Arrow IPC stream per :class:`RowBatch`.

A batch holds the columns an upload kept plus ``educator_ref`` (the stored
educator, never a raw ID), typed as :data:`~gateway.storage.datasets.DATASET_COLUMNS`
says. Text columns are dictionary-encoded (codes repeat on every row) and integers
are stored in the narrowest type that holds the batch's values; reading widens them
back, so readers always see :func:`storage_schema`'s types.

The streams are not compressed, on purpose: the leak and destruction tests search
every stored byte for raw IDs, names and pseudonyms, and compression would hide
them from such a scan instead of keeping them out. For the same reason migration
0006 stores the column ``STORAGE EXTERNAL`` on PostgreSQL (out of line, never
TOAST-compressed).

Writing happens inside the caller's transaction (one step of an upload, whose rows
no release reads until the upload is switched on: :mod:`gateway.storage.staging`),
and so does deleting: an upload or a termination is still atomic. On PostgreSQL a
batch is written with COPY.

Each batch also stores a digest of its rows (:func:`content_digest`), from which
:func:`~gateway.storage.versions.data_version` tells, without reading a row, whether a
dataset's stored content is the same as before: a re-upload of identical rows keeps the
version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, func, insert, select

from gateway.storage.datasets import DATASET_COLUMNS, EDUCATOR_DATASETS, RowBatch, Upload

# Data versions are summed from the digests made here, without Arrow (storage/versions.py).
from gateway.storage.versions import LANES as _LANES
from gateway.storage.versions import add_digests, data_version

#: The Arrow type each schema type is read back as.
ARROW_TYPES: Mapping[str, pa.DataType] = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
}

EDUCATOR_REF = "educator_ref"

_NARROW_INTEGERS = (pa.int8(), pa.int16(), pa.int32())
_LIMITS = {t: (-(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1) for t in _NARROW_INTEGERS}


def storage_schema(schema_name: str) -> pa.Schema:
    """Every storable column of a dataset schema, as readers get them."""
    columns = DATASET_COLUMNS[schema_name]
    return pa.schema(
        [
            pa.field(EDUCATOR_REF, pa.int64(), nullable=schema_name not in EDUCATOR_DATASETS),
            *(pa.field(name, ARROW_TYPES[kind]) for name, kind in columns.items()),
        ]
    )


def _compact(array: pa.Array, target: pa.DataType) -> pa.Array:
    """The array in the smallest exact form it can be stored in."""
    if array.type != target:
        array = array.cast(target)  # safe cast: raises rather than lose a value
    if pa.types.is_string(target):
        return pc.dictionary_encode(array)
    if pa.types.is_int64(target) and len(array) and array.null_count < len(array):
        low, high = pc.min_max(array).values()
        for narrow in _NARROW_INTEGERS:
            floor, ceiling = _LIMITS[narrow]
            if floor <= low.as_py() and high.as_py() <= ceiling:
                return array.cast(narrow)
    return array


def _compacted(schema_name: str, columns: Mapping[str, pa.Array]) -> pa.RecordBatch:
    """``columns`` (storable names, equal lengths) in the schema's order, compacted."""
    schema = storage_schema(schema_name)
    unknown = sorted(set(columns) - set(schema.names))
    if unknown:
        raise ValueError(f"rows_{schema_name} has no column(s) {', '.join(unknown)}")
    names = [name for name in schema.names if name in columns]  # the schema's order
    arrays = [_compact(columns[name], schema.field(name).type) for name in names]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def encode(schema_name: str, columns: Mapping[str, pa.Array]) -> bytes:
    """One batch's bytes: ``columns`` (storable names, equal lengths) as an IPC stream."""
    return _stream(_compacted(schema_name, columns))


def decode(payload: bytes, schema_name: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A batch's rows with ``columns`` (default: all), in the storage schema's types.

    A column the upload did not keep reads as nulls, as an absent value should.
    """
    schema = storage_schema(schema_name)
    wanted = list(schema.names if columns is None else columns)
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        stored = reader.read_all()
    arrays: list[pa.ChunkedArray | pa.Array] = []
    for name in wanted:
        target = schema.field(name).type
        if name in stored.column_names:
            arrays.append(stored.column(name).cast(target))
        else:
            arrays.append(pa.nulls(stored.num_rows, target))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in wanted]))


def write_batch(
    connection: Connection,
    *,
    upload_seq: int,
    schema_name: str,
    period: int,
    columns: Mapping[str, pa.Array],
) -> None:
    """Store one batch of an upload's rows, all of one period, in the caller's transaction."""
    sizes = {len(array) for array in columns.values()}
    if len(sizes) != 1:
        raise ValueError("a batch's columns must all have the same length")
    batch = _compacted(schema_name, columns)
    row = (
        upload_seq,
        period,
        sizes.pop(),
        _stream(batch),
        content_digest(dict(zip(batch.schema.names, batch.columns, strict=True))),
    )
    if connection.dialect.name == "postgresql":
        # COPY in binary: the payload goes as its bytes, not as an escaped literal.
        cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(
                "COPY row_batches (upload_seq, period, rows, payload, content_digest) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int4", "int4", "int4", "bytea", "varchar"])
                copy.write_row(row)
        finally:
            cursor.close()
        return
    connection.execute(
        insert(RowBatch).values(
            dict(
                zip(("upload_seq", "period", "rows", "payload", "content_digest"), row, strict=True)
            )
        )
    )


def read_rows(
    connection: Connection,
    schema_name: str,
    upload_seqs: Sequence[int],
    columns: Sequence[str],
    *,
    periods: tuple[int, int] | None = None,
    keep: Callable[[pa.Table], pa.Table] | None = None,
) -> pa.Table:
    """The stored rows of these uploads: ``educator_ref`` and ``columns``, in upload order.

    ``periods`` (first and last year) skips the batches of other years unread; ``keep``
    filters each batch as it is decoded, so only the rows kept are held at once.
    """
    wanted = [EDUCATOR_REF, *(c for c in columns if c != EDUCATOR_REF)]
    statement = select(RowBatch.payload).where(RowBatch.upload_seq.in_(list(upload_seqs)))
    if periods is not None:
        statement = statement.where(RowBatch.period.between(*periods))
    tables = []
    for payload in connection.scalars(statement.order_by(RowBatch.upload_seq, RowBatch.id)):
        table = decode(payload, schema_name, wanted)
        tables.append(keep(table) if keep is not None else table)
    if not tables:
        schema = storage_schema(schema_name)
        return pa.schema([schema.field(n) for n in wanted]).empty_table()
    return pa.concat_tables(tables)


def delete_rows(connection: Connection, *, upload_seq: int, period: int | None = None) -> None:
    """Delete an upload's batches (of one period, if given), in the caller's transaction."""
    condition = RowBatch.upload_seq == upload_seq
    if period is not None:
        condition = condition & (RowBatch.period == period)
    connection.execute(delete(RowBatch).where(condition))


def rows_by_schema(connection: Connection, upload_seqs: Any) -> dict[str, int]:
    """How many rows the given uploads (a list or a subquery of seqs) store, per schema."""
    counts = connection.execute(
        select(Upload.schema_name, func.sum(RowBatch.rows))
        .join(Upload, Upload.seq == RowBatch.upload_seq)
        .where(RowBatch.upload_seq.in_(upload_seqs))
        .group_by(Upload.schema_name)
    )
    return {name: int(total) for name, total in counts if total}


# --- what a dataset holds: row digests and data versions ------------------------------
#
# A batch's digest is an order-independent sum of its rows' hashes: two lanes, each the
# sum modulo 2**64 of a 64-bit hash of every row (so 128 bits). A row's hash in a lane
# mixes the sum of its cells' hashes, each a bijective mix of the cell's value (its
# 64-bit pattern, or for text a BLAKE2b of its UTF-8 bytes) under a key of its column
# and lane; an empty cell adds nothing, so a column a batch lacks (read as nulls) and one
# it holds empty give the same digest. Digests of batches add up the same way, so a
# dataset's digest is the sum over its current batches, however its rows were split
# into files, chunks and years, and in whatever order. Values are hashed as readers see
# them: integers whatever width they are stored in, text whatever its encoding, -0.0 as
# 0.0. Migration 0007 holds a frozen copy of this algorithm for existing batches;
# changing it here means a migration that recomputes every stored digest.
#
# The hash is not keyed (a migration must compute it without the master key), so it
# detects any accidental change, not rows crafted to collide; a collision could make a
# release look like a repeat and be answered with the stored, earlier release.

_DIGEST_LABEL = b"gateway row digest v1\x00"
_MIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)

Words = np.ndarray[Any, np.dtype[np.uint64]]


def _mix(words: Words, scratch: Words | None = None) -> Words:
    """MurmurHash3's 64-bit finaliser, in place: a bijection that spreads every bit.

    ``scratch``, of the same shape, spares a temporary array per step.
    """
    if scratch is None:
        scratch = np.empty_like(words)
    for multiplier in (_MIX_1, _MIX_2):
        np.right_shift(words, _SHIFT, out=scratch)
        words ^= scratch
        words *= multiplier
    np.right_shift(words, _SHIFT, out=scratch)
    words ^= scratch
    return words


@cache
def _key(label: str) -> Words:
    """One 64-bit key per lane for ``label``."""
    digest = hashlib.sha256(_DIGEST_LABEL + label.encode()).digest()
    return np.frombuffer(digest[: 8 * _LANES], dtype="<u8").astype(np.uint64)


def _table(words: Words, key: Words) -> Words:
    """The hashes of a few distinct values (a row each; one more row, of zeros, for an
    empty cell), from their 64-bit words: one per value, or one per value and lane."""
    table = np.zeros((len(words) + 1, _LANES), dtype=np.uint64)
    table[:-1] = words if words.ndim == 2 else words[:, np.newaxis]
    table[:-1] ^= key
    _mix(table[:-1])
    return table


def _cell_hashes(array: pa.Array, key: Words, out: Words, scratch: Words) -> None:
    """Each cell's hash in every lane, into ``out`` (a row per cell); 0 for an empty cell.

    Text and integers spanning no more values than there are cells are hashed once per
    distinct value and looked up; other values are hashed where they are.
    """
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        array = pc.dictionary_encode(array)
        kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary.cast(pa.string()).to_pylist()
        text = b"".join(
            hashlib.blake2b((v or "").encode("utf-8"), digest_size=8 * _LANES).digest()
            for v in values
        )
        words = np.frombuffer(text, dtype="<u8").astype(np.uint64)
        table = _table(words.reshape(len(values), _LANES), key)
        table[[i for i, v in enumerate(values) if v is None]] = 0  # an empty value: a null
        codes = array.indices
        if codes.null_count:
            codes = pc.fill_null(codes.cast(pa.int64()), len(values))  # the row of zeros
        np.take(table, codes.to_numpy(zero_copy_only=False), axis=0, out=out, mode="clip")
        return
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if pa.types.is_floating(kind):
        floats = pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        words = (floats + 0.0).view(np.uint64)  # -0.0 + 0.0 is 0.0
    elif pa.types.is_integer(kind) or pa.types.is_date32(kind) or pa.types.is_boolean(kind):
        if not pa.types.is_integer(kind):
            array = array.cast(pa.int32() if pa.types.is_date32(kind) else pa.int8())
        filled = array if valid is None else pc.fill_null(array, 0)
        integers = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64)
        low, high = (v.as_py() for v in pc.min_max(array).values())
        if high - low <= len(array):
            table = _table(np.arange(low, high + 1, dtype=np.int64).view(np.uint64), key)
            positions = integers - low
            if valid is not None:
                positions[~valid] = high - low + 1
            np.take(table, positions, axis=0, out=out, mode="clip")
            return
        words = integers.view(np.uint64)
    else:
        raise TypeError(f"no row digest for Arrow type {kind}")
    out[:] = words[:, np.newaxis]
    out ^= key
    _mix(out, scratch)
    if valid is not None:
        out[~valid] = 0


def content_digest(columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> str:
    """The digest of a batch's rows: 32 hex digits, the same for the same rows in any
    order, split in any way (see :func:`add_digests`), with or without all-empty columns."""
    sizes = {len(array) for array in columns.values()}
    if len(sizes) > 1:
        raise ValueError("a batch's columns must all have the same length")
    size = sizes.pop() if sizes else 0
    rows = np.zeros((size, _LANES), dtype=np.uint64)
    cells = np.empty_like(rows)
    scratch = np.empty_like(rows)
    for name, array in columns.items():
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if array.null_count == size:  # no value: adds nothing
            continue
        _cell_hashes(array, _key("column " + name), cells, scratch)
        rows += cells
    rows ^= _key("row")
    _mix(rows, scratch)
    lanes = (rows[:, lane].sum(dtype=np.uint64) for lane in range(_LANES))  # wraps: mod 2**64
    return "".join(f"{int(lane):016x}" for lane in lanes)


def payload_digest(payload: bytes) -> str:
    """The digest of a stored batch, from its bytes."""
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        table = reader.read_all()
    return content_digest({name: table.column(name) for name in table.column_names})


__all__ = [
    "ARROW_TYPES",
    "EDUCATOR_REF",
    "add_digests",
    "content_digest",
    "data_version",
    "decode",
    "delete_rows",
    "encode",
    "payload_digest",
    "read_rows",
    "rows_by_schema",
    "storage_schema",
    "write_batch",
]
